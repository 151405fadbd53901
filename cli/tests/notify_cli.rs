//! `vigil notify list | retry`, as the real binary against a real
//! operations center (writer, API and notification sender) on 127.0.0.1,
//! with a webhook receiver there that refuses, then takes.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU16, AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vigil_ops::notify::{NotifyConfig, Routes};
use vigil_pki::Role;

#[path = "support/client.rs"]
mod center;

use center::{Center, WAIT, alarm, now_secs, run_vigil};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Answers every request with `status` (one per connection); counts them.
async fn receiver(status: Arc<AtomicU16>, seen: Arc<AtomicUsize>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/sms", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let (status, seen) = (status.clone(), seen.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = tcp.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break;
                    }
                }
                seen.fetch_add(1, SeqCst);
                let code = status.load(SeqCst);
                let answer =
                    format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = tcp.write_all(answer.as_bytes()).await;
            });
        }
    });
    url
}

fn notify_args(sub: &str, flags: &[String], rest: &[&str]) -> Vec<String> {
    let mut v = vec!["notify".to_owned(), sub.to_owned()];
    v.extend(flags.iter().cloned());
    v.extend(rest.iter().map(|s| (*s).to_owned()));
    v
}

async fn list_json(flags: &[String], rest: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["--json"];
    args.extend_from_slice(rest);
    let out = run_vigil(notify_args("list", flags, &args), vec![]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_notifications_are_listed_and_retried_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let status = Arc::new(AtomicU16::new(422));
    let seen = Arc::new(AtomicUsize::new(0));
    let url = receiver(status.clone(), seen.clone()).await;
    std::fs::write(dir.path().join("sms.secret"), "sms-secret").unwrap();
    let mut config: NotifyConfig = toml::from_str(&format!(
        "[[webhook]]\nname = \"sms\"\nurl = \"{url}\"\nsecret_file = \"sms.secret\"\nevents = [\"opened\"]\n"
    ))
    .unwrap();
    config.resolve_relative_to(dir.path());
    config.validate().unwrap();
    let center = Center::builder()
        .notify(Routes::load(&config).unwrap())
        .start()
        .await;
    let sam = center.flags(Role::Supervisor, "sam");
    let alice = center.flags(Role::Analyst, "alice");
    center.submit(vec![alarm("p-1", 1, 1, now_secs())]).await;

    // Refused with 422: failed at once, listed with its error.
    let deadline = tokio::time::Instant::now() + WAIT;
    let failed = loop {
        let list = list_json(&sam, &["--failed"]).await;
        if let Some(n) = list.first() {
            break n.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "never failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(failed["state"], "NOTIFICATION_STATE_FAILED");
    assert_eq!(failed["webhook"], "sms");
    assert_eq!(failed["event"], "opened");
    assert_eq!(failed["attempts"], 1);
    assert_eq!(failed["post_id"], "p-1");
    assert!(
        failed["last_error"].as_str().unwrap().contains("HTTP 422"),
        "{failed}"
    );
    let id = failed["id"].as_u64().unwrap();
    assert_eq!(seen.load(SeqCst), 1);

    // For people: one line with the state and the error.
    let out = run_vigil(notify_args("list", &sam, &[]), vec![]).await;
    let said = text(&out.stdout);
    assert!(
        said.contains("FAILED") && said.contains("HTTP 422"),
        "{said}"
    );
    assert!(said.contains(&format!("{id}")), "{said}");

    // Analysts may not see or retry them.
    for args in [
        notify_args("list", &alice, &[]),
        notify_args("retry", &alice, &[&id.to_string()]),
    ] {
        let out = run_vigil(args, vec![]).await;
        assert_eq!(out.status.code(), Some(1));
        assert!(
            text(&out.stderr).contains("permission denied"),
            "{}",
            text(&out.stderr)
        );
    }

    // Retried once the receiver takes it: delivered.
    status.store(200, SeqCst);
    let out = run_vigil(notify_args("retry", &sam, &[&id.to_string()]), vec![]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Back in the queue (or, should the sender be that quick, delivered).
    let said = text(&out.stdout);
    assert!(
        said.contains("pending") || said.contains("delivered"),
        "{said}"
    );
    assert!(!said.contains("FAILED"), "{said}");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let all = list_json(&sam, &["--all"]).await;
        if all
            .iter()
            .any(|n| n["id"] == id && n["state"] == "NOTIFICATION_STATE_DELIVERED")
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{all:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(list_json(&sam, &["--failed"]).await.is_empty());
    assert_eq!(seen.load(SeqCst), 2);

    // Retrying one that is not failed, or does not exist: a plain refusal.
    let out = run_vigil(notify_args("retry", &sam, &[&id.to_string()]), vec![]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("only a failed one"),
        "{}",
        text(&out.stderr)
    );
    let out = run_vigil(notify_args("retry", &sam, &["424242"]), vec![]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no notification 424242"),
        "{}",
        text(&out.stderr)
    );
    center.stop().await;
}
