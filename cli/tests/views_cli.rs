//! `vigil history` and `vigil report`, as the real binary against a real
//! operations center on 127.0.0.1: what they print (lines, JSON, CSV with
//! its header), who may run them, and bad flags refused with status 64.

use vigil_pki::Role;

#[path = "support/client.rs"]
mod center;

use center::{Center, alarm, now_secs, run_vigil};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn args(cmd: &str, flags: &[String], rest: &[&str]) -> Vec<String> {
    let mut v = vec![cmd.to_owned()];
    v.extend(flags.iter().cloned());
    v.extend(rest.iter().map(|s| (*s).to_owned()));
    v
}

/// RFC 3339 of `secs` after the epoch.
fn rfc3339(secs: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_report_from_the_command_line() {
    let center = Center::start().await;
    let now = now_secs();
    center
        .submit(vec![alarm("p-1", 1, 7, now), alarm("p-1", 2, 8, now + 1)])
        .await;
    let alice = center.flags(Role::Analyst, "alice");
    let sam = center.flags(Role::Supervisor, "sam");

    // Lines, newest first: the two events and the incidents they opened.
    let out = run_vigil(args("history", &alice, &["p-1"]), vec![]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    let lines: Vec<&str> = shown.lines().collect();
    assert!(
        lines.iter().any(|l| l.contains("incident inc-000001")),
        "{shown}"
    );
    let e2 = lines
        .iter()
        .position(|l| l.contains(" event ") && l.contains("#2"));
    let e1 = lines
        .iter()
        .position(|l| l.contains(" event ") && l.contains("#1"));
    assert!(e2.is_some() && e1.is_some() && e2 < e1, "{shown}");

    // JSON: a list of items, each an incident or an event; --limit cuts it
    // and says there is more.
    let out = run_vigil(args("history", &alice, &["p-1", "--json"]), vec![]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let items: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let items = items.as_array().unwrap();
    let events = items.iter().filter(|i| i["event"].is_object()).count();
    assert_eq!(events, 2, "{items:?}");
    let out = run_vigil(args("history", &alice, &["p-1", "--limit", "1"]), vec![]).await;
    assert!(
        text(&out.stdout).contains("(more history"),
        "{}",
        text(&out.stdout)
    );
    // A category filter: no fire at this post.
    let out = run_vigil(
        args("history", &alice, &["p-1", "--category", "fire"]),
        vec![],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("nothing in the history"),
        "{}",
        text(&out.stdout)
    );

    // Bad flags: status 64, with what is wrong.
    for (bad, says) in [
        (vec!["p-1", "--since", "yesterday"], "--since"),
        (vec!["p-1", "--category", "dragons"], "--category"),
        (
            vec![
                "p-1",
                "--since",
                "2026-02-01T00:00:00Z",
                "--until",
                "2026-01-01T00:00:00Z",
            ],
            "--since is after --until",
        ),
    ] {
        let out = run_vigil(args("history", &alice, &bad), vec![]).await;
        assert_eq!(
            out.status.code(),
            Some(64),
            "{bad:?}: {}",
            text(&out.stderr)
        );
        assert!(text(&out.stderr).contains(says), "{}", text(&out.stderr));
    }

    // The report: CSV with its header, one line per post.
    let (from, to) = (rfc3339(now - 3600), rfc3339(now + 3600));
    let period = ["--from", from.as_str(), "--to", to.as_str()];
    let out = run_vigil(args("report", &sam, &period), vec![]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let csv = text(&out.stdout);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], vigil_ops::report::csv_header(), "{csv}");
    assert_eq!(lines.len(), 2, "{csv}");
    let header: Vec<&str> = lines[0].split(',').collect();
    let row: Vec<&str> = lines[1].split(',').collect();
    let col = |name: &str| row[header.iter().position(|h| *h == name).unwrap()];
    assert_eq!(col("post_id"), "p-1");
    assert_eq!(col("alarm_events"), "2");
    assert_eq!(col("incidents_resolved"), "0");
    assert_eq!(col("false_alarm_rate"), "");
    // JSON with --json, and --post names the rows.
    let mut json_args = period.to_vec();
    json_args.extend(["--post", "p-1", "--post", "p-7", "--json"]);
    let out = run_vigil(args("report", &sam, &json_args), vec![]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let posts: Vec<&str> = report["posts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["post_id"].as_str().unwrap())
        .collect();
    assert_eq!(posts, ["p-1", "p-7"]);
    // Analysts may not; a missing or empty period is a usage error.
    let out = run_vigil(args("report", &alice, &period), vec![]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("permission denied"),
        "{}",
        text(&out.stderr)
    );
    let out = run_vigil(args("report", &sam, &["--from", from.as_str()]), vec![]).await;
    assert_eq!(out.status.code(), Some(64), "{}", text(&out.stderr));
    let out = run_vigil(
        args(
            "report",
            &sam,
            &["--from", from.as_str(), "--to", from.as_str()],
        ),
        vec![],
    )
    .await;
    assert_eq!(out.status.code(), Some(64), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("empty"), "{}", text(&out.stderr));
    center.stop().await;
}
