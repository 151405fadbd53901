//! Outbound webhook notifications end to end (`vigil_ops::notify`): the
//! writer and API of `vigil_tests::center` with webhooks, against real
//! HTTP and HTTPS receivers on 127.0.0.1 (hyper; the HTTPS one with a
//! certificate of a test CA). The receivers record every request; the
//! HMAC signatures are checked by Python's own `hmac` module.

use std::{path::Path, sync::Arc, time::Duration};

use tonic::Code;
use vigil_ops::{
    engine::{AckDeadlines, EngineConfig},
    notify::{NotifyConfig, Routes},
    site,
};
use vigil_pki::{Identity, Role, authority};
use vigil_proto::v1::{
    AcknowledgeRequest, ImportSiteRequest, ListIncidentsRequest, ListNotificationsRequest,
    NotificationState, ResolveRequest, RetryNotificationRequest, WebhookNotification,
};
use vigil_tests::{
    WAIT,
    center::{Center, alarm, now_secs},
    webhook::{Got, Receiver},
};

/// Routes from a `[notify]` TOML text, with `SECRET` and `KEY` files
/// written in `dir`.
fn routes(dir: &Path, toml_text: &str) -> Arc<Routes> {
    std::fs::write(dir.join("hook.secret"), "s3cret-of-the-hook\n").unwrap();
    std::fs::write(dir.join("pd.key"), "R0UT1NGKEY").unwrap();
    let mut config: NotifyConfig = toml::from_str(toml_text).unwrap();
    config.resolve_relative_to(dir);
    config.validate().unwrap();
    Routes::load(&config).unwrap()
}

/// Checks every request's signature with Python's `hmac` module: the
/// HMAC-SHA256 of `timestamp.body` under the secret.
fn python_verifies(secret: &str, got: &[Got]) {
    let lines: Vec<String> = got
        .iter()
        .map(|g| {
            serde_json::json!({
                "ts": g.timestamp,
                "sig": g.signature,
                "body": String::from_utf8(g.body.clone()).unwrap(),
            })
            .to_string()
        })
        .collect();
    let script = r#"
import hashlib, hmac, json, sys
secret = sys.argv[1].encode()
ok = 0
for line in sys.stdin:
    r = json.loads(line)
    mac = hmac.new(secret, (r["ts"] + "." + r["body"]).encode(), hashlib.sha256).hexdigest()
    if hmac.compare_digest("sha256=" + mac, r["sig"]):
        ok += 1
    else:
        print("bad signature", r["sig"])
print("verified", ok)
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script, secret])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all((lines.join("\n") + "\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.trim(), format!("verified {}", got.len()), "{text}");
}

async fn listed(ops: &Center, states: &[NotificationState]) -> Vec<WebhookNotification> {
    ops.client(Role::Supervisor, "sam")
        .await
        .list_notifications(ListNotificationsRequest {
            states: states.iter().map(|s| *s as i32).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .notifications
}

/// Waits until the notification listed first is in `state` (bounded).
async fn until_state(ops: &Center, state: NotificationState) -> WebhookNotification {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let all = listed(ops, &[]).await;
        if let Some(n) = all.iter().find(|n| n.state() == state) {
            return n.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {state:?}: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const SITE: &str = r#"
[[post]]
id = "p-1"
name = "Embassy Vienna"
timezone = "Europe/Vienna"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escalation_by_the_ack_deadline_reaches_the_receiver_signed_after_retries() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Receiver::start(&[500, 503], false, None).await;
    let routes = routes(
        dir.path(),
        &format!(
            r#"
[[webhook]]
name = "pager"
url = "{}"
secret_file = "hook.secret"
retry_initial_ms = 50
retry_max_secs = 1
"#,
            hook.url
        ),
    );
    let engine = EngineConfig {
        ack_deadline_secs: AckDeadlines {
            p1: 1,
            p2: 1,
            p3: 1,
            p4: 1,
        },
        max_escalation_level: 1,
        ..EngineConfig::default()
    };
    let ops = Center::builder()
        .engine(engine)
        .notify(routes)
        .start()
        .await;
    ops.client(Role::Admin, "ada")
        .await
        .import_site(ImportSiteRequest {
            site: Some(site::parse(SITE).unwrap()),
        })
        .await
        .unwrap();
    ops.submit(vec![alarm("p-1", 1, 1, now_secs())]).await;
    // Past the one-second deadline, the timers run (the ops center's
    // ticker does this every second).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    ops.tick().await;

    // Opened: not selected (escalations only by default). Escalated by the
    // deadline: refused twice with 5xx, then delivered; three requests of
    // one delivery.
    let got = hook.until(3).await;
    let delivered = until_state(&ops, NotificationState::Delivered).await;
    assert_eq!(delivered.attempts, 3);
    assert_eq!(delivered.event, "auto_escalated");
    assert_eq!(delivered.webhook, "pager");
    assert_eq!(delivered.last_error, "");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got_all = hook.got();
    assert_eq!(got_all.len(), 3, "delivered once, no more requests");
    assert!(got.iter().all(|g| g.delivery == delivered.delivery));
    assert!(got.iter().all(|g| g.path == "/hooks/in"));
    assert!(got.iter().all(|g| g.event == "incident.auto_escalated"));
    let body = got[2].json();
    assert_eq!(body["type"], "incident.auto_escalated");
    assert_eq!(body["delivery"], delivered.delivery.as_str());
    assert_eq!(body["incident"]["id"], delivered.incident_id.as_str());
    assert_eq!(body["incident"]["escalation_level"], 1);
    assert_eq!(body["incident"]["state"], "INCIDENT_STATE_OPEN");
    assert_eq!(body["post_id"], "p-1");
    assert_eq!(body["post_name"], "Embassy Vienna");
    assert!(body["time"].as_str().unwrap().ends_with('Z'));
    python_verifies("s3cret-of-the-hook", &got);

    let m = ops.metrics.snapshot();
    assert_eq!(
        (m.notify_delivered, m.notify_retried, m.notify_failed),
        (1, 2, 0)
    );
    ops.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_fails_at_once_is_listed_and_retried_by_supervisors_only() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Receiver::start(&[400], false, None).await;
    let routes = routes(
        dir.path(),
        &format!(
            r#"
[[webhook]]
name = "sms"
url = "{}"
secret_file = "hook.secret"
events = ["opened"]
priorities = [1, 2, 3, 4]
categories = ["burglary"]
retry_initial_ms = 50
"#,
            hook.url
        ),
    );
    let ops = Center::builder().notify(routes).start().await;
    ops.submit(vec![alarm("p-1", 1, 1, now_secs())]).await;
    let failed = until_state(&ops, NotificationState::Failed).await;
    assert_eq!(failed.attempts, 1);
    assert_eq!(failed.event, "opened");
    assert!(
        failed.last_error.contains("HTTP 400"),
        "{}",
        failed.last_error
    );
    assert_eq!(hook.got().len(), 1, "a 400 is not tried again");
    assert_eq!(listed(&ops, &[NotificationState::Failed]).await.len(), 1);
    assert!(listed(&ops, &[NotificationState::Pending]).await.is_empty());
    assert_eq!(ops.metrics.snapshot().notify_failed, 1);

    // Analysts may neither list nor retry.
    let mut alice = ops.client(Role::Analyst, "alice").await;
    let e = alice
        .list_notifications(ListNotificationsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = alice
        .retry_notification(RetryNotificationRequest { id: failed.id })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    // A supervisor puts it back; the receiver now takes it: the same
    // delivery id again.
    let mut sam = ops.client(Role::Supervisor, "sam").await;
    let back = sam
        .retry_notification(RetryNotificationRequest { id: failed.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.state(), NotificationState::Pending);
    assert_eq!(back.attempts, 0);
    let got = hook.until(2).await;
    assert_eq!(got[0].delivery, got[1].delivery);
    let delivered = until_state(&ops, NotificationState::Delivered).await;
    assert_eq!(delivered.id, failed.id);
    // Only a failed one can be retried; an unknown id is not found.
    let e = sam
        .retry_notification(RetryNotificationRequest { id: failed.id })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = sam
        .retry_notification(RetryNotificationRequest { id: 999_999 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    ops.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_never_answers_does_not_hold_up_another_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let dead = Receiver::start(&[], true, None).await;
    let live = Receiver::start(&[], false, None).await;
    let routes = routes(
        dir.path(),
        &format!(
            r#"
[[webhook]]
name = "dead"
url = "{}"
secret_file = "hook.secret"
events = ["opened"]
timeout_secs = 300
concurrency = 1

[[webhook]]
name = "live"
url = "{}"
secret_file = "hook.secret"
events = ["opened"]
"#,
            dead.url, live.url
        ),
    );
    let ops = Center::builder().notify(routes).start().await;
    // Three incidents (three zones), each a notification to both.
    ops.submit(vec![
        alarm("p-1", 1, 1, now_secs()),
        alarm("p-1", 2, 2, now_secs()),
        alarm("p-1", 3, 3, now_secs()),
    ])
    .await;
    let got = live.until(3).await;
    let mut incidents: Vec<String> = got
        .iter()
        .map(|g| g.json()["incident"]["id"].as_str().unwrap().to_owned())
        .collect();
    incidents.sort();
    incidents.dedup();
    assert_eq!(incidents.len(), 3);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let all = listed(&ops, &[]).await;
        let state = |name: &str, s: NotificationState| {
            all.iter()
                .filter(|n| n.webhook == name && n.state() == s)
                .count()
        };
        if state("live", NotificationState::Delivered) == 3 {
            assert_eq!(state("dead", NotificationState::Pending), 3);
            assert_eq!(state("dead", NotificationState::Delivered), 0);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{all:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The queue depth the sender counts: the three waiting for "dead".
    let deadline = tokio::time::Instant::now() + WAIT;
    while ops.metrics.snapshot().notify_pending != 3 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ops.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagerduty_events_go_over_https_to_a_server_of_a_configured_ca() {
    vigil_pki::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    // The receiver's own CA and certificate for localhost.
    let pki = dir.path().join("hook-pki");
    authority::init(&pki, "hook CA").unwrap();
    authority::issue(
        &pki,
        Role::Ops,
        &Identity::new("hook").unwrap(),
        &["localhost".to_owned()],
        30,
        false,
    )
    .unwrap();
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(pki.join("hook.pem"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(pki.join("hook.key")).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let hook = Receiver::start(
        &[],
        false,
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(server))),
    )
    .await;
    let routes = routes(
        dir.path(),
        &format!(
            r#"
[[webhook]]
name = "pd"
url = "{}"
secret_file = "hook.secret"
ca = "hook-pki/ca.pem"
format = "pagerduty"
routing_key_file = "pd.key"
events = ["opened", "resolved"]
"#,
            hook.url
        ),
    );
    let ops = Center::builder().notify(routes).start().await;
    ops.submit(vec![alarm("p-1", 1, 1, now_secs())]).await;
    let got = hook.until(1).await;
    let trigger = got[0].json();
    assert_eq!(trigger["routing_key"], "R0UT1NGKEY");
    assert_eq!(trigger["event_action"], "trigger");
    let id = trigger["dedup_key"].as_str().unwrap().to_owned();
    assert!(id.starts_with("inc-"), "{id}");
    let payload = &trigger["payload"];
    assert_eq!(payload["source"], "p-1");
    assert!(
        ["critical", "error", "warning", "info"].contains(&payload["severity"].as_str().unwrap()),
        "{payload}"
    );
    assert!(payload["summary"].as_str().unwrap().starts_with(&id));
    assert_eq!(payload["class"], "burglary");
    assert!(payload["timestamp"].as_str().unwrap().ends_with('Z'));

    // Acknowledged and resolved: a resolve of the same dedup key.
    let mut alice = ops.client(Role::Analyst, "alice").await;
    let inc = alice
        .list_incidents(ListIncidentsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .incidents
        .remove(0);
    assert_eq!(inc.id, id);
    let inc = alice
        .acknowledge(AcknowledgeRequest {
            incident_id: id.clone(),
            expected_version: inc.version,
            note: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    alice
        .resolve(ResolveRequest {
            incident_id: id.clone(),
            expected_version: inc.version,
            disposition: vigil_proto::v1::Disposition::Genuine as i32,
            note: "patrol found a broken window".into(),
        })
        .await
        .unwrap();
    let got = hook.until(2).await;
    let resolve = got[1].json();
    assert_eq!(
        resolve,
        serde_json::json!({
            "routing_key": "R0UT1NGKEY",
            "event_action": "resolve",
            "dedup_key": id,
        })
    );
    python_verifies("s3cret-of-the-hook", &got);
    ops.stop().await;
}
