//! The broker against a third-party client: the real `mosquitto_pub` and
//! `mosquitto_sub` binaries, MQTT 3.1.1 and 5, over mTLS. Skipped, with a
//! notice, when they are not installed (CI installs them, see `.ci/run`).

use std::{
    io::Read,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use vigil_broker::Reject;
use vigil_proto::topics::{TopicKind, all_posts, topic};
use vigil_tests::broker::{Mqtt, TestBroker, WAIT, expect_publish};

const VERSIONS: [&str; 2] = ["mqttv311", "mqttv5"];

fn installed() -> bool {
    match Command::new("mosquitto_pub").arg("--help").output() {
        Ok(_) => true,
        Err(_) => {
            eprintln!(
                "mosquitto_pub/mosquitto_sub not installed: skipping the Mosquitto client tests"
            );
            false
        }
    }
}

/// Connection arguments for `cert` (None: no client certificate) with
/// client id `id`.
fn conn_args(b: &TestBroker, version: &str, cert: Option<&str>, id: &str) -> Vec<String> {
    let mut args = vec![
        "-h".into(),
        "127.0.0.1".into(),
        "-p".into(),
        b.addr().port().to_string(),
        "-V".into(),
        version.into(),
        "--cafile".into(),
        path(b, "ca.pem"),
        "-i".into(),
        id.into(),
    ];
    if let Some(cert) = cert {
        args.extend([
            "--cert".into(),
            path(b, &format!("{cert}.pem")),
            "--key".into(),
            path(b, &format!("{cert}.key")),
        ]);
    }
    args
}

fn path(b: &TestBroker, file: &str) -> String {
    b.pki.path(file).to_str().unwrap().to_owned()
}

/// Runs `mosquitto_pub` to completion (it has its own timeouts; ours is a
/// backstop).
fn publish(b: &TestBroker, version: &str, cert: Option<&str>, id: &str, extra: &[&str]) -> Output {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(conn_args(b, version, cert, id))
        .args(["-q", "1"])
        .args(extra);
    run_bounded(cmd)
}

fn run_bounded(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_bounded(&mut child);
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .unwrap();
    Output {
        status,
        stdout,
        stderr,
    }
}

fn wait_bounded(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("mosquitto client did not finish in {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A gateway stand-in: `mosquitto_sub` as `post` on its commands, with a
/// retained "offline" will on its status (and `extra` arguments), killed
/// with SIGKILL once connected: no DISCONNECT, the socket just closes.
async fn die_with_will(b: &TestBroker, version: &str, post: &str, extra: &[&str]) {
    let status = topic(post, TopicKind::Status);
    let before = b.metrics().authenticated;
    let mut gateway = Command::new("mosquitto_sub")
        .args(conn_args(b, version, Some(post), post))
        .args(["-q", "1", "-t", &topic(post, TopicKind::Commands)])
        .args(["--will-topic", &status, "--will-payload", "offline"])
        .args(["--will-qos", "1", "--will-retain"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    b.wait_metrics("gateway connected", |m| m.authenticated > before)
        .await;
    gateway.kill().unwrap();
    blocking(|| wait_bounded(&mut gateway));
}

/// Runs blocking client processes without stalling the broker's runtime.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_post_events_reach_mosquitto_ops() {
    if !installed() {
        return;
    }
    let b = TestBroker::start().await;
    for (pub_v, sub_v) in [("mqttv311", "mqttv5"), ("mqttv5", "mqttv311")] {
        let before = b.metrics().authenticated;
        let mut sub = Command::new("mosquitto_sub")
            .args(conn_args(&b, sub_v, Some("ops-1"), "ops-1"))
            .args(["-q", "1", "-C", "1", "-W", "10", "-t"])
            .arg(all_posts(TopicKind::Events))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        b.wait_metrics("subscriber connected", |m| m.authenticated > before)
            .await;
        let payload = format!("batch from {pub_v}");
        // The subscription lands just after the CONNECT: publish until the
        // subscriber has its message (bounded).
        let got = blocking(|| {
            for _ in 0..50 {
                let out = publish(
                    &b,
                    pub_v,
                    Some("p-1"),
                    "p-1",
                    &["-t", &topic("p-1", TopicKind::Events), "-m", &payload],
                );
                assert!(out.status.success(), "{out:?}");
                if let Some(status) = sub.try_wait().unwrap() {
                    let mut text = String::new();
                    sub.stdout
                        .take()
                        .unwrap()
                        .read_to_string(&mut text)
                        .unwrap();
                    return Some((status, text));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            None
        });
        let (status, text) = got.expect("subscriber got nothing");
        assert!(status.success(), "{status}");
        assert_eq!(text.trim_end(), payload);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_refusals() {
    if !installed() {
        return;
    }
    let b = TestBroker::with_limits(vigil_broker::Limits {
        max_payload_bytes: 1024,
        ..vigil_broker::Limits::default()
    })
    .await;
    let other = vigil_tests::broker::Pki::new();
    let mut ops = b.client(Mqtt::V5, "ops-1", "ops-1").connect().await;
    ops.subscribe_ok(&all_posts(TopicKind::Events)).await;
    let forged = ["-t", &topic("p-2", TopicKind::Events), "-m", "forged"];
    for version in VERSIONS {
        // No certificate, revoked certificate, certificate from another CA.
        let out = blocking(|| publish(&b, version, None, "p-1", &forged));
        assert!(!out.status.success(), "no cert: {out:?}");
        let out = blocking(|| publish(&b, version, Some("p-9"), "p-9", &forged));
        assert!(!out.status.success(), "revoked: {out:?}");
        let out = blocking(|| {
            let mut cmd = Command::new("mosquitto_pub");
            cmd.args(conn_args(&b, version, None, "p-1")).args([
                "--cert",
                other.path("p-1.pem").to_str().unwrap(),
                "--key",
                other.path("p-1.key").to_str().unwrap(),
                "-q",
                "1",
            ]);
            cmd.args(forged);
            run_bounded(cmd)
        });
        assert!(!out.status.success(), "other CA: {out:?}");

        // Publishing under another post's id: refused (3.1.1: closed;
        // 5: PUBACK "not authorized"), nothing delivered.
        let _ = blocking(|| publish(&b, version, Some("p-1"), "p-1", &forged));
        // Someone else's client id.
        let out = blocking(|| {
            publish(
                &b,
                version,
                Some("p-1"),
                "p-2",
                &["-t", &topic("p-1", TopicKind::Events), "-m", "x"],
            )
        });
        assert!(!out.status.success(), "foreign client id: {out:?}");
        // Oversize payload.
        let big = "x".repeat(2000);
        let _ = blocking(|| {
            publish(
                &b,
                version,
                Some("p-1"),
                "p-1",
                &["-t", &topic("p-1", TopicKind::Events), "-m", &big],
            )
        });
        // Subscribing to everything, or to another post's receipts.
        for filter in ["#".to_owned(), topic("p-2", TopicKind::Receipts)] {
            let out = blocking(|| {
                let mut cmd = Command::new("mosquitto_sub");
                cmd.args(conn_args(&b, version, Some("p-1"), "p-1"))
                    .args(["-q", "1", "-C", "1", "-W", "2", "-t", &filter]);
                run_bounded(cmd)
            });
            // 3.1.1: the connection closes (error exit); 5: mosquitto_sub
            // reports the SUBACK refusal and exits.
            let denied = String::from_utf8_lossy(&out.stderr).contains("denied");
            assert!(!out.status.success() || denied, "{filter}: {out:?}");
            assert!(out.stdout.is_empty(), "{filter}: {out:?}");
        }
    }
    ops.expect_no_publish().await;
    let m = b.metrics();
    assert_eq!(m.rejected(Reject::NoCertificate), 2, "{m:?}");
    assert_eq!(m.rejected(Reject::Revoked), 2, "{m:?}");
    assert_eq!(m.rejected(Reject::BadCertificate), 2, "{m:?}");
    assert_eq!(m.rejected(Reject::Publish), 2, "{m:?}");
    assert_eq!(m.rejected(Reject::NotAuthorized), 2, "{m:?}");
    assert_eq!(m.rejected(Reject::PayloadTooLarge), 2, "{m:?}");
    assert!(m.rejected(Reject::Subscribe) >= 4, "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_last_will_on_abrupt_disconnect() {
    if !installed() {
        return;
    }
    let b = TestBroker::start().await;
    let mut ops = b.client(Mqtt::V4, "ops-1", "ops-1").connect().await;
    ops.subscribe_ok(&all_posts(TopicKind::Status)).await;
    for (version, post) in [("mqttv311", "p-1"), ("mqttv5", "p-2")] {
        let status = topic(post, TopicKind::Status);
        die_with_will(&b, version, post, &[]).await;
        assert_eq!(expect_publish(&mut ops, &status).await, b"offline");
    }
}

/// Runs `mosquitto_sub` for one message and returns its payload.
fn subscribe_one(b: &TestBroker, version: &str, id: &str, filter: &str) -> Output {
    let mut cmd = Command::new("mosquitto_sub");
    cmd.args(conn_args(b, version, Some(id), id))
        .args(["-q", "1", "-C", "1", "-W", "5", "-t", filter]);
    run_bounded(cmd)
}

/// MQTT 5 properties belong to the connection that sent them. A post that
/// publishes with any of them (on its own topics, which it may) must not
/// reach into another client's connection: 3.1.1 and 5 subscribers keep
/// receiving, and fresh 3.1.1 clients still connect afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_properties_never_reach_other_clients() {
    if !installed() {
        return;
    }
    let b = TestBroker::start().await;
    let mut ops4 = b.client(Mqtt::V4, "ops-1", "ops-1").connect().await;
    let mut ops5 = b.client(Mqtt::V5, "ops-2", "ops-2").connect().await;
    for ops in [&mut ops4, &mut ops5] {
        ops.subscribe_ok(&all_posts(TopicKind::Events)).await;
        ops.subscribe_ok(&all_posts(TopicKind::Status)).await;
    }
    let events = topic("p-1", TopicKind::Events);
    let status = topic("p-1", TopicKind::Status);
    let properties: [&[&str]; 8] = [
        &["-D", "publish", "user-property", "k", "v"],
        &["-D", "publish", "topic-alias", "1"],
        &["-D", "publish", "message-expiry-interval", "60"],
        &["-D", "publish", "content-type", "text/plain"],
        &["-D", "publish", "payload-format-indicator", "1"],
        &["-D", "publish", "response-topic", &status],
        &["-D", "publish", "correlation-data", "abc"],
        &[
            "-D",
            "publish",
            "user-property",
            "a",
            "b",
            "-D",
            "publish",
            "content-type",
            "x",
        ],
    ];
    for (i, property) in properties.iter().enumerate() {
        let payload = format!("event {i}");
        let args = [
            &["-t", events.as_str(), "-m", payload.as_str()][..],
            property,
        ]
        .concat();
        let out = blocking(|| publish(&b, "mqttv5", Some("p-1"), "p-1", &args));
        assert!(
            out.status.success(),
            "{property:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for ops in [&mut ops4, &mut ops5] {
            assert_eq!(
                expect_publish(ops, &events).await,
                payload.as_bytes(),
                "{property:?}"
            );
        }
    }
    // A retained status carrying a property.
    let out = blocking(|| {
        publish(
            &b,
            "mqttv5",
            Some("p-1"),
            "p-1",
            &["-t", &status, "-m", "online", "-r"],
        )
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = blocking(|| {
        publish(
            &b,
            "mqttv5",
            Some("p-1"),
            "p-1",
            &[
                "-t",
                &status,
                "-m",
                "online2",
                "-r",
                "-D",
                "publish",
                "user-property",
                "k",
                "v",
            ],
        )
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for ops in [&mut ops4, &mut ops5] {
        assert_eq!(expect_publish(ops, &status).await, b"online");
        assert_eq!(expect_publish(ops, &status).await, b"online2");
    }
    // A will carrying properties, from a v5 post that dies.
    let p2_status = topic("p-2", TopicKind::Status);
    die_with_will(
        &b,
        "mqttv5",
        "p-2",
        &[
            "-D",
            "will",
            "user-property",
            "k",
            "v",
            "-D",
            "will",
            "content-type",
            "text/plain",
            "-D",
            "connect",
            "user-property",
            "k",
            "v",
        ],
    )
    .await;
    for ops in [&mut ops4, &mut ops5] {
        assert_eq!(expect_publish(ops, &p2_status).await, b"offline");
    }
    // Fresh 3.1.1 and 5 clients connect and read the retained statuses.
    for version in VERSIONS {
        let out = blocking(|| subscribe_one(&b, version, "ops-3", &status));
        assert!(
            out.status.success(),
            "{version}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, b"online2\n", "{version}");
    }
    let mut late = b.client(Mqtt::V4, "ops-4", "ops-4").connect().await;
    late.subscribe_ok(&p2_status).await;
    assert_eq!(expect_publish(&mut late, &p2_status).await, b"offline");
    // The first subscribers are still there.
    let out = blocking(|| {
        publish(
            &b,
            "mqttv311",
            Some("p-1"),
            "p-1",
            &["-t", &events, "-m", "last"],
        )
    });
    assert!(out.status.success());
    assert_eq!(expect_publish(&mut ops4, &events).await, b"last");
    assert_eq!(b.metrics().rejected_total(), 0, "{:?}", b.metrics());
}
