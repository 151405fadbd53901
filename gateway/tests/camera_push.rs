//! The camera HTTP push endpoint on a real loopback socket: what each kind
//! of request gets back, and that only good ones reach the outbox (before
//! their 202). Requests are written by hand so the test sees exactly what a
//! camera would send.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;
use vigil_gateway::{
    camera::{
        CameraInput,
        push::{self, PATH, PushCamera, PushConfig, PushMetrics},
    },
    outbox::{Outbox, OutboxLimits},
};
use vigil_proto::v1::{CameraEventKind, CameraEventState, EventCategory, event};
use vigil_tests::gateway::stored;

/// method, path, headers, body, expected status, words in the error.
type Case<'a> = (
    &'a str,
    &'a str,
    &'a [(&'a str, &'a str)],
    String,
    u16,
    &'a str,
);

const TOKEN: &str = "token-of-camera-two-0123";
const OTHER_TOKEN: &str = "token-of-camera-three-99";

struct Harness {
    addr: SocketAddr,
    outbox: Outbox,
    metrics: Arc<PushMetrics>,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(
        &dir.path().join("outbox.db"),
        "p-001",
        OutboxLimits::default(),
    )
    .unwrap();
    let input = CameraInput::new(outbox.clone(), Duration::from_secs(300));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = PushConfig {
        cameras: vec![
            PushCamera {
                camera: "cam-2".into(),
                token: TOKEN.into(),
            },
            PushCamera {
                camera: "cam-3".into(),
                token: OTHER_TOKEN.into(),
            },
        ],
        max_body_bytes: 1024,
        max_connections: 8,
        max_connections_per_source: 8,
        request_timeout: Duration::from_secs(5),
    };
    let metrics = Arc::new(PushMetrics::default());
    let shutdown = CancellationToken::new();
    tokio::spawn(push::serve(
        listener,
        config,
        input,
        metrics.clone(),
        shutdown.clone(),
    ));
    Harness {
        addr,
        outbox,
        metrics,
        shutdown,
        _dir: dir,
    }
}

/// Sends one request and returns the status code and body.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, serde_json::Value) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut text = format!(
        "{method} {path} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text.push_str(body);
    stream.write_all(text.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let status = answer[9..12].parse().unwrap();
    let (_, body) = answer.split_once("\r\n\r\n").unwrap();
    (status, serde_json::from_str(body).unwrap())
}

async fn post(addr: SocketAddr, token: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth));
    }
    request(addr, "POST", PATH, &headers, body).await
}

#[tokio::test]
async fn good_event_is_stored_before_202() {
    let h = start().await;
    let body = r#"{"camera": "cam-2", "kind": "intrusion", "state": "start",
        "region": "North fence", "confidence": 0.8, "time": "2026-11-26T09:00:00Z",
        "video_source": "1", "attributes": {"object": "human", "count": 2, "armed": true}}"#;
    let (status, answer) = post(h.addr, Some(TOKEN), body).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["seq"], 1);
    assert_eq!(answer["duplicate"], false);
    // The 202 came back, so the event must already be in the outbox.
    let events = stored(&h.outbox).await;
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e.seq, 1);
    assert_eq!(e.category(), EventCategory::VideoDetection);
    assert_eq!(e.occurred_at.unwrap().seconds, 1_795_683_600);
    let Some(event::Body::Camera(c)) = &e.body else {
        panic!("not a camera event: {e:?}")
    };
    assert_eq!(c.camera_id, "cam-2");
    assert_eq!(c.kind(), CameraEventKind::Intrusion);
    assert_eq!(c.state(), CameraEventState::Start);
    assert_eq!(c.region, "North fence");
    assert_eq!(c.confidence, Some(0.8));
    assert_eq!(c.video_source, "1");
    assert_eq!(c.attributes["count"], "2");
    assert_eq!(c.attributes["armed"], "true");

    // Unknown kinds are kept with their word as the topic; state defaults
    // to one-shot for them.
    let (status, _) = post(
        h.addr,
        Some(TOKEN),
        r#"{"camera": "cam-2", "kind": "loitering"}"#,
    )
    .await;
    assert_eq!(status, 202);
    let events = stored(&h.outbox).await;
    let Some(event::Body::Camera(c)) = &events[1].body else {
        panic!("not a camera event")
    };
    assert_eq!(c.kind(), CameraEventKind::Other);
    assert_eq!(c.topic, "loitering");
    assert_eq!(c.state(), CameraEventState::OneShot);
}

#[tokio::test]
async fn retried_id_is_stored_once() {
    let h = start().await;
    let body = r#"{"camera": "cam-2", "kind": "line_crossing", "id": "evt-1"}"#;
    let (status, first) = post(h.addr, Some(TOKEN), body).await;
    assert_eq!((status, first["duplicate"].as_bool()), (202, Some(false)));
    let (status, again) = post(h.addr, Some(TOKEN), body).await;
    assert_eq!((status, again["duplicate"].as_bool()), (202, Some(true)));
    assert_eq!(first["seq"], again["seq"]);
    assert_eq!(stored(&h.outbox).await.len(), 1);
}

#[tokio::test]
async fn bad_requests_get_clear_answers_and_store_nothing() {
    let h = start().await;
    let good = r#"{"camera": "cam-2", "kind": "motion", "state": "start"}"#;
    let big = format!(
        r#"{{"camera": "cam-2", "kind": "motion", "state": "start", "region": "{}"}}"#,
        "x".repeat(2000)
    );
    let json = [("Content-Type", "application/json")];
    let bearer = format!("Bearer {TOKEN}");
    let auth_only = [("Authorization", bearer.as_str())];
    let both = [
        ("Content-Type", "application/json"),
        ("Authorization", bearer.as_str()),
    ];
    let text = [
        ("Content-Type", "text/plain"),
        ("Authorization", bearer.as_str()),
    ];
    let cases: Vec<Case<'_>> =
        vec![
        ("POST", "/v1/other", &both, good.into(), 404, "no such path"),
        ("GET", PATH, &both, String::new(), 405, "use POST"),
        ("POST", PATH, &json, good.into(), 401, "missing Authorization"),
        ("POST", PATH, &text, good.into(), 415, "application/json"),
        ("POST", PATH, &auth_only, good.into(), 415, "application/json"),
        ("POST", PATH, &both, big, 413, "larger than 1024"),
        ("POST", PATH, &both, "{not json".into(), 400, "body"),
        (
            "POST",
            PATH,
            &both,
            r#"{"camera": "cam-2", "kind": "motion", "state": "start", "extra": 1}"#.into(),
            400,
            "unknown field",
        ),
        (
            "POST",
            PATH,
            &both,
            r#"{"camera": "cam-2", "kind": "motion"}"#.into(),
            400,
            "state: required",
        ),
        (
            "POST",
            PATH,
            &both,
            r#"{"camera": "cam-2", "kind": "motion", "state": "on"}"#.into(),
            400,
            "state",
        ),
        (
            "POST",
            PATH,
            &both,
            r#"{"camera": "cam-2", "kind": "motion", "state": "start", "confidence": 1.5}"#.into(),
            400,
            "confidence",
        ),
        (
            "POST",
            PATH,
            &both,
            r#"{"camera": "cam-2", "kind": "motion", "state": "start", "time": "yesterday"}"#
                .into(),
            400,
            "RFC 3339",
        ),
        (
            "POST",
            PATH,
            &both,
            r#"{"camera": "cam-2", "kind": "motion", "state": "start", "time": "0000-01-01T00:00:00Z"}"#
                .into(),
            400,
            "outside years 1-9999",
        ),
        (
            "POST",
            PATH,
            &both,
            // Year 1 in its own zone, year 0 in UTC.
            r#"{"camera": "cam-2", "kind": "motion", "state": "start", "time": "0001-01-01T00:30:00+01:00"}"#
                .into(),
            400,
            "outside years 1-9999",
        ),
        (
            "POST",
            PATH,
            &both,
            r#"{"camera": "cam-2", "kind": "motion", "state": "start", "attributes": {"a": [1]}}"#
                .into(),
            400,
            "attributes.a",
        ),
        (
            "POST",
            PATH,
            &both,
            r#"{"camera": "cam-9", "kind": "motion", "state": "start"}"#.into(),
            404,
            "unknown camera",
        ),
        (
            "POST",
            PATH,
            &both,
            r#"{"camera": "cam-3", "kind": "motion", "state": "start"}"#.into(),
            401,
            "not the token of camera",
        ),
    ];
    let count = cases.len() as u64;
    for (method, path, headers, body, want, message) in cases {
        let (status, answer) = request(h.addr, method, path, headers, &body).await;
        let error = answer["error"].as_str().unwrap_or_default();
        assert_eq!(status, want, "{method} {path} {body:.80}: {answer}");
        assert!(
            error.contains(message),
            "{want}: {error:?} lacks {message:?}"
        );
    }
    let wrong = post(h.addr, Some("not-a-token-of-anyone"), good).await;
    assert_eq!(wrong.0, 401);
    assert!(stored(&h.outbox).await.is_empty());
    assert_eq!(
        h.metrics
            .rejected
            .load(std::sync::atomic::Ordering::Relaxed),
        count + 1
    );
}
