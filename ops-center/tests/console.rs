//! The browser console's HTTP side, without a browser: a real writer, feed
//! and console over mutual TLS on 127.0.0.1 (the shared harness), spoken to
//! with plain HTTP/1.1 over rustls. The browser itself is driven in
//! `console_browser.rs`.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;
use vigil_pki::{Role, TlsConfig};
use vigil_tests::center::{Center, alarm, now_secs};

/// One answer: status code, headers (lower-case names) and body.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// A client of the console with the certificate `id` (issued as `role`), or
/// with none.
struct Browser {
    port: u16,
    connector: TlsConnector,
}

impl Browser {
    fn new(center: &Center, port: u16, who: Option<(Role, &str)>) -> Self {
        let config = match who {
            Some((role, id)) => {
                center.issue(role, id);
                TlsConfig {
                    ca: center.pki.join("ca.pem"),
                    cert: center.pki.join(format!("{id}.pem")),
                    key: center.pki.join(format!("{id}.key")),
                    crl: None,
                }
                .load()
                .unwrap()
                .client_config()
                .unwrap()
            }
            None => {
                let mut roots = rustls::RootCertStore::empty();
                roots
                    .add(CertificateDer::from_pem_file(center.pki.join("ca.pem")).unwrap())
                    .unwrap();
                rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth()
            }
        };
        Self {
            port,
            connector: TlsConnector::from(Arc::new(config)),
        }
    }

    /// One request on a new connection; `Connection: close`, so the answer
    /// is everything read.
    async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> std::io::Result<Answer> {
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).await?;
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = self.connector.connect(name, tcp).await?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.port,
            body.len()
        );
        if !body.is_empty() {
            req.push_str("Content-Type: application/json\r\n");
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        tls.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        // A TLS 1.3 server refuses a missing certificate after the
        // client's handshake finished: the refusal comes on the first read.
        tls.read_to_end(&mut raw).await?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_owned()
        };
        Ok(Answer {
            status,
            head: head.to_ascii_lowercase(),
            body,
        })
    }

    async fn get(&self, path: &str) -> Answer {
        self.request("GET", path, &[], "").await.unwrap()
    }

    /// A change as the console's page sends it.
    async fn act(&self, path: &str, body: serde_json::Value) -> Answer {
        let headers = [("X-Vigil-Action", "1"), ("Sec-Fetch-Site", "same-origin")];
        self.request("POST", path, &headers, &body.to_string())
            .await
            .unwrap()
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            out.push_str(&rest[..n.min(rest.len())]);
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_origins_conflicts_and_the_feed() {
    let mut center = Center::builder().revoked("mallory").start().await;
    let port = center.start_console().await;
    center.submit(vec![alarm("p-1", 1, 7, now_secs())]).await;

    let alice = Browser::new(&center, port, Some((Role::Analyst, "alice")));
    let bob = Browser::new(&center, port, Some((Role::Supervisor, "bob")));

    // The page and who is calling.
    let page = alice.get("/").await;
    assert_eq!(page.status, 200, "{page:?}");
    assert!(
        page.body.contains("<script type=\"module\""),
        "{}",
        page.body
    );
    assert!(
        page.head.contains("content-security-policy"),
        "{}",
        page.head
    );
    let me = alice.get("/api/me").await.json();
    assert_eq!(me["identity"], "alice");
    assert_eq!(me["role"], "analyst");
    assert_eq!(me["may"]["acknowledge"], true);
    assert_eq!(me["may"]["escalate"], false);
    assert_eq!(bob.get("/api/me").await.json()["may"]["escalate"], true);

    // The feed: the snapshot as server-sent events, each with the cursor.
    let events = read_feed(&alice, None, "event: ready").await;
    assert!(events.contains("event: update"), "{events}");
    assert!(events.contains("event: ready"), "{events}");
    let cursor = events
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("id: "))
        .expect("events carry ids")
        .to_owned();
    assert!(events.contains("\"id\":\"inc-000001\""), "{events}");

    let detail = alice.get("/api/incidents/inc-000001").await;
    assert_eq!(detail.status, 200, "{detail:?}");
    let detail = detail.json();
    assert_eq!(detail["incident"]["post_id"], "p-1");
    assert_eq!(detail["post"]["post_id"], "p-1");
    let version = detail["incident"]["version"].as_u64().unwrap();

    // Changes need the header and the same origin.
    let ack = serde_json::json!({ "expected_version": version });
    let plain = alice
        .request(
            "POST",
            "/api/incidents/inc-000001/acknowledge",
            &[],
            &ack.to_string(),
        )
        .await
        .unwrap();
    assert_eq!(plain.status, 403, "{plain:?}");
    assert!(plain.body.contains("X-Vigil-Action"), "{}", plain.body);
    let cross = alice
        .request(
            "POST",
            "/api/incidents/inc-000001/acknowledge",
            &[("X-Vigil-Action", "1"), ("Origin", "https://evil.example")],
            &ack.to_string(),
        )
        .await
        .unwrap();
    assert_eq!(cross.status, 403, "{cross:?}");
    let origin = format!("https://127.0.0.1:{port}");
    let same = alice
        .request(
            "POST",
            "/api/incidents/inc-000001/assign",
            &[("X-Vigil-Action", "1"), ("Origin", &origin)],
            &ack.to_string(),
        )
        .await
        .unwrap();
    assert_eq!(same.status, 200, "{same:?}");
    assert_eq!(same.json()["assignee"], "alice");

    // A stale version: 409 with the incident as it is now.
    let stale = alice
        .act("/api/incidents/inc-000001/acknowledge", ack)
        .await;
    assert_eq!(stale.status, 409, "{stale:?}");
    let current = stale.json()["current"].clone();
    assert_eq!(current["version"].as_u64(), Some(version + 1));
    assert_eq!(current["assignee"], "alice");

    // An analyst may not escalate: the server refuses a forged request.
    let forged = alice
        .act(
            "/api/incidents/inc-000001/escalate",
            serde_json::json!({ "expected_version": version + 1, "reason": "forged" }),
        )
        .await;
    assert_eq!(forged.status, 403, "{forged:?}");
    assert!(forged.body.contains("may not escalate"), "{}", forged.body);
    let escalated = bob
        .act(
            "/api/incidents/inc-000001/escalate",
            serde_json::json!({ "expected_version": version + 1, "reason": "to the duty officer" }),
        )
        .await;
    assert_eq!(escalated.status, 200, "{escalated:?}");

    // Resumed from the cursor: only what changed since.
    let resumed = read_feed(&alice, Some(&cursor), "AUDIT_ACTION_ESCALATED").await;
    assert!(!resumed.contains("event: ready"), "{resumed}");
    // One item per incident, as it is now (the gRPC feed's catch-up).
    assert!(resumed.contains("AUDIT_ACTION_ESCALATED"), "{resumed}");
    assert!(resumed.contains("\"assignee\":\"alice\""), "{resumed}");
    assert!(!resumed.contains("\"snapshot\":true"), "{resumed}");

    // Replay: engineers, not analysts.
    let refused = alice.get("/api/replay?post=p-1").await;
    assert_eq!(refused.status, 403, "{refused:?}");
    let carol = Browser::new(&center, port, Some((Role::Engineer, "carol")));
    let lines = carol.get("/api/replay?post=p-1&kind=alarm").await;
    assert_eq!(lines.status, 200, "{lines:?}");
    assert!(
        lines.head.contains("application/x-ndjson"),
        "{}",
        lines.head
    );
    let first: serde_json::Value =
        serde_json::from_str(lines.body.lines().next().unwrap()).unwrap();
    assert_eq!(first["event"]["post_id"], "p-1");
    assert_eq!(first["incident_id"], "inc-000001");

    // Posts.
    let posts = alice.get("/api/posts").await.json();
    assert_eq!(posts["posts"][0]["post_id"], "p-1");

    // Emergency mode, for the banner: `{}` when off.
    assert_eq!(
        alice.get("/api/emergency").await.json(),
        serde_json::json!({})
    );
    let mut sam = center.client(Role::Supervisor, "sam").await;
    let mode = |secs: u32| vigil_proto::v1::SetEmergencyRequest {
        duration_seconds: secs,
        post_ids: Vec::new(),
        reason: "storm".into(),
    };
    sam.set_emergency(mode(600)).await.unwrap();
    let on = alice.get("/api/emergency").await.json();
    assert_eq!(on["emergency"]["reason"], "storm", "{on}");
    assert_eq!(on["emergency"]["started_by"], "sam", "{on}");
    sam.set_emergency(mode(0)).await.unwrap();

    // A post's certificate is refused; no certificate never gets an answer.
    let post = Browser::new(&center, port, Some((Role::Post, "p-9")));
    let refused = post.get("/").await;
    assert_eq!(refused.status, 403, "{refused:?}");
    assert!(refused.body.contains("role post"), "{}", refused.body);
    // A revoked analyst: refused at the handshake, by the CRL.
    let mallory = Browser::new(&center, port, Some((Role::Analyst, "mallory")));
    let answer = mallory.request("GET", "/api/me", &[], "").await;
    assert!(
        answer.is_err() || answer.as_ref().is_ok_and(|a| a.status == 0),
        "{answer:?}"
    );
    let nobody = Browser::new(&center, port, None);
    let answer = nobody.request("GET", "/", &[], "").await;
    assert!(
        answer.is_err() || answer.as_ref().is_ok_and(|a| a.status == 0),
        "{answer:?}"
    );

    center.stop().await;
}

/// What the feed sends until `until` appears (it never ends by itself), or
/// for a few seconds.
async fn read_feed(browser: &Browser, cursor: Option<&str>, until: &str) -> String {
    let tcp = TcpStream::connect(("127.0.0.1", browser.port))
        .await
        .unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = browser.connector.connect(name, tcp).await.unwrap();
    let resume = cursor
        .map(|c| format!("Last-Event-ID: {c}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "GET /api/feed HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAccept: text/event-stream\r\n{resume}\r\n",
        browser.port
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, tls.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
        if String::from_utf8_lossy(&seen).contains(until) {
            // A moment more, for anything that should not be there.
            let _ = tokio::time::timeout(std::time::Duration::from_millis(200), tls.read(&mut buf))
                .await
                .map(|r| r.map(|n| seen.extend_from_slice(&buf[..n])));
            break;
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// The pages' endpoints of issue #17 over HTTP: a post's history and
/// record, the report as JSON and as a CSV download (supervisors only), a
/// plan step where no plan applies (409), and bad parameters (400).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_report_and_steps_over_http() {
    let mut center = Center::start().await;
    let port = center.start_console().await;
    let now = now_secs();
    center.submit(vec![alarm("p-1", 1, 7, now)]).await;
    let alice = Browser::new(&center, port, Some((Role::Analyst, "alice")));
    let bob = Browser::new(&center, port, Some((Role::Supervisor, "bob")));

    let me = alice.get("/api/me").await.json();
    assert_eq!(
        (
            &me["may"]["history"],
            &me["may"]["report"],
            &me["may"]["step"]
        ),
        (
            &serde_json::json!(true),
            &serde_json::json!(false),
            &serde_json::json!(true)
        )
    );

    let page = alice.get("/api/posts/p-1/history?limit=10").await;
    assert_eq!(page.status, 200, "{page:?}");
    let items = page.json()["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 2, "the alarm and its incident: {items:?}");
    assert_eq!(items[0]["incident"]["id"], "inc-000001", "{items:?}");
    assert_eq!(items[1]["event"]["event"]["seq"], 1, "{items:?}");
    let bad = alice
        .get("/api/posts/p-1/history?categories=burglary,dragons")
        .await;
    assert_eq!(bad.status, 400, "{bad:?}");
    assert!(bad.body.contains("dragons"), "{}", bad.body);
    let none = alice
        .get("/api/posts/p-1/history?categories=fire")
        .await
        .json();
    assert_eq!(none["items"], serde_json::json!([]));
    // No record was imported.
    assert_eq!(alice.get("/api/posts/p-1/record").await.status, 404);

    // The incident has no plan: a step mark is refused, 409 without an
    // incident (nothing to retry with); the stale-version conflict of a
    // mark is checked in the browser test, where a plan applies.
    let detail = alice.get("/api/incidents/inc-000001").await.json();
    assert!(detail["plan"].is_object(), "{detail}");
    assert!(detail["plan"]["plan"].is_null(), "{detail}");
    let v = detail["incident"]["version"].as_u64().unwrap();
    let no_plan = alice
        .act(
            "/api/incidents/inc-000001/step",
            serde_json::json!({"expected_version": v, "step": 1, "outcome": "done"}),
        )
        .await;
    assert_eq!(no_plan.status, 409, "{no_plan:?}");
    assert!(no_plan.body.contains("no action plan"), "{no_plan:?}");
    assert!(no_plan.json().get("current").is_none(), "{no_plan:?}");
    let bad = alice
        .act(
            "/api/incidents/inc-000001/step",
            serde_json::json!({"expected_version": v, "step": 1, "outcome": "maybe"}),
        )
        .await;
    assert_eq!(bad.status, 400, "{bad:?}");

    let (from, to) = ((now - 3600) * 1000, (now + 3600) * 1000);
    let path = format!("/api/report?from_ms={from}&to_ms={to}");
    assert_eq!(alice.get(&path).await.status, 403);
    let report = bob.get(&path).await;
    assert_eq!(report.status, 200, "{report:?}");
    let report = report.json();
    assert_eq!(report["posts"][0]["post_id"], "p-1");
    assert_eq!(report["posts"][0]["alarm_events"], 1);
    let csv = bob.get(&format!("{path}&format=csv")).await;
    assert_eq!(csv.status, 200, "{csv:?}");
    assert!(csv.head.contains("text/csv"), "{}", csv.head);
    assert!(csv.head.contains("vigil-report.csv"), "{}", csv.head);
    let lines: Vec<&str> = csv.body.lines().collect();
    assert_eq!(lines[0], vigil_ops::report::csv_header());
    assert!(lines[1].starts_with("p-1,1,1,"), "{}", csv.body);
    assert_eq!(bob.get("/api/report?from_ms=1").await.status, 400);
    assert_eq!(bob.get(&format!("{path}&format=xml")).await.status, 400);
    center.stop().await;
}
