//! `vigil simulate camera` as a person runs it: the ONVIF camera serves
//! events a PullPoint client can subscribe to and stops on SIGTERM; the
//! pusher posts to a real push endpoint and fails on refusals.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

mod support;

use support::{sigterm_and_wait, vigil};
use tokio_util::sync::CancellationToken;
use vigil_gateway::{
    camera::{
        CameraInput,
        onvif::{OnvifClient, soap::Credentials},
        push::{self, PushCamera, PushConfig, PushMetrics},
    },
    outbox::{Outbox, OutboxLimits},
};

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn the_onvif_camera_serves_events_until_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args([
            "simulate",
            "camera",
            "onvif",
            "--listen",
            "127.0.0.1:0",
            "--username",
            "vigil",
            "--password",
            "pw-of-camera",
            "--every",
            "200ms",
            "--events",
            "motion,line",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run vigil");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut url = String::new();
    out.read_line(&mut url).unwrap();
    let url = url.trim().to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let topics = runtime.block_on(async {
        let client = OnvifClient::new(
            Credentials {
                username: "vigil".into(),
                password: "pw-of-camera".into(),
            },
            Duration::from_secs(5),
        );
        let events = client.events_address(&url).await.unwrap().unwrap();
        let (sub, _) = client.subscribe(&events, 60).await.unwrap();
        let mut topics = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while topics.len() < 3 {
            assert!(tokio::time::Instant::now() < deadline, "{topics:?}");
            let (notes, _) = client.pull(&sub, Duration::from_secs(1), 10).await.unwrap();
            topics.extend(
                notes
                    .into_iter()
                    .filter(|n| n.property_operation.as_deref() != Some("Initialized"))
                    .map(|n| n.topic),
            );
        }
        client.unsubscribe(&sub).await.unwrap();
        // A wrong password is refused.
        let wrong = OnvifClient::new(
            Credentials {
                username: "vigil".into(),
                password: "nope".into(),
            },
            Duration::from_secs(5),
        );
        let err = wrong.subscribe(&events, 60).await.unwrap_err();
        assert!(err.to_string().contains("NotAuthorized"), "{err}");
        topics
    });
    // Events made before the subscription are not kept, so the cycle may
    // be seen from any point.
    for topic in [
        "tns1:RuleEngine/CellMotionDetector/Motion",
        "tns1:RuleEngine/LineDetector/Crossed",
    ] {
        assert!(topics.iter().any(|t| t == topic), "{topic}: {topics:?}");
    }

    let status = sigterm_and_wait(&mut child);
    assert!(status.success(), "{status}");
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("subscriptions 1 "), "{rest}");
    assert!(rest.contains("unsubscribes 1 "), "{rest}");
    assert!(rest.contains("refused logins 1"), "{rest}");
}

#[test]
fn the_pusher_posts_to_the_push_endpoint() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let (addr, outbox) = runtime.block_on(async {
        let outbox = Outbox::open(
            &dir.path().join("outbox.db"),
            "p-001",
            OutboxLimits::default(),
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(push::serve(
            listener,
            PushConfig {
                cameras: vec![PushCamera {
                    camera: "cam-2".into(),
                    token: "token-of-camera-two-0123".into(),
                }],
                max_body_bytes: 4096,
                max_connections: 4,
                max_connections_per_source: 4,
                request_timeout: Duration::from_secs(5),
            },
            CameraInput::new(outbox.clone(), Duration::from_secs(300)),
            Arc::new(PushMetrics::default()),
            shutdown.clone(),
        ));
        (addr, outbox)
    });
    let url = format!("http://{addr}/v1/camera-events");
    let ok = vigil(&[
        "simulate",
        "camera",
        "push",
        "--url",
        &url,
        "--camera",
        "cam-2",
        "--token",
        "token-of-camera-two-0123",
        "--kind",
        "intrusion",
        "--region",
        "Yard",
        "--count",
        "2",
        "--interval",
        "10ms",
    ]);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.contains("intrusion start: 202"), "{stdout}");
    assert!(stdout.contains("intrusion stop: 202"), "{stdout}");
    let stored = runtime
        .block_on(outbox.read_from(1, 10, usize::MAX))
        .unwrap();
    assert_eq!(stored.len(), 2);

    let refused = vigil(&[
        "simulate",
        "camera",
        "push",
        "--url",
        &url,
        "--camera",
        "cam-2",
        "--token",
        "not-the-token-of-anyone",
        "--count",
        "1",
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stdout).contains("401"));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("1 of 1 events refused"));
    shutdown.cancel();
}
