//! The browser console in a real browser: Debian's chromium driven by
//! Playwright (tests/browser/console.py) against a real writer, feed and
//! console over mutual TLS on 127.0.0.1 (the shared harness). The script
//! asks for alarms over its stdin and stdout and reports one `CHECK` line
//! per behaviour; this test asserts every one, and prints the figures
//! (never asserted).
//!
//! Without chromium or Python's playwright the test says so and passes,
//! unless `VIGIL_REQUIRE_BROWSER=1` (CI), where it fails.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, SystemTime},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::Command,
};
use vigil_ops::engine::EngineConfig;
use vigil_pki::Role;
use vigil_proto::v1::{Event, EventCategory, ImportSiteRequest};
use vigil_tests::center::{Center, alarm, now_secs};

/// The behaviours the script must report, all `ok`.
const CHECKS: &[&str] = &[
    "feed_renders_and_updates_live",
    "ack_in_one_context_appears_in_another",
    "version_conflict_shown",
    "filters_and_counts",
    "analyst_cannot_escalate",
    "change_without_the_header_refused",
    "keyboard_shortcuts",
    "plan_step_marked_in_the_browser",
    "posts_and_replay_views",
    "history_and_report_pages",
    "post_and_no_certificate_refused",
    "text_contrast",
];
/// p-1's record (two contacts, secrets an analyst may not see) and a
/// burglary plan of three steps.
const SITE: &str = r#"
[[post]]
id = "p-1"
name = "Embassy Vienna"
timezone = "Europe/Vienna"
duress_words = ["bluebird"]
passcodes = ["4711"]
[[post.contact]]
role = "guard"
name = "Gate desk"
phone = "+43 1 555 0100"
[[post.contact]]
role = "police"
name = "Station Innere Stadt"
phone = "133"
[[post.zone]]
number = 7
name = "Back office"

[[plan]]
category = "burglary"
post = "p-1"
steps = [
  { kind = "verify_cameras", text = "Look at the back office camera" },
  { kind = "call_contact", role = "guard", text = "Ask the gate for a patrol" },
  { kind = "dispatch", text = "Police if not cleared in 5 minutes" },
]
"#;
/// The whole browser run, seeding 1,000 incidents included.
const DEADLINE: Duration = Duration::from_secs(300);

fn chromium() -> PathBuf {
    std::env::var_os("VIGIL_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Why the browser test cannot run here, if it cannot.
fn missing() -> Option<String> {
    if !chromium().exists() {
        return Some(format!("no chromium at {}", chromium().display()));
    }
    let playwright = std::process::Command::new("python3")
        .args(["-c", "import playwright.sync_api"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !playwright.is_ok_and(|s| s.success()) {
        return Some("python3 cannot import playwright (pip install playwright)".into());
    }
    None
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser/console.py")
}

fn fire(post: &str, seq: u64, zone: u32) -> Event {
    Event {
        category: EventCategory::Fire as i32,
        ..alarm(post, seq, zone, now_secs())
    }
}

fn engine() -> EngineConfig {
    let mut engine = EngineConfig {
        // 1,000 incidents from a few posts at once: no flood folding.
        flood_limit: 100_000,
        flood_post_category_limit: 100_000,
        flood_post_limit: 100_000,
        ..EngineConfig::default()
    };
    engine.procedures.insert(
        "burglary".into(),
        "1. Check the cameras of the zone.\n2. Call the post's guard desk.\n3. No answer in 2 minutes: dispatch the response team.".into(),
    );
    engine.procedures.insert(
        "fire".into(),
        "1. Call the fire brigade.\n2. Call the post's guard desk and confirm evacuation.".into(),
    );
    engine
}

fn wall_ms() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    if let Some(why) = missing() {
        assert!(
            std::env::var("VIGIL_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "VIGIL_REQUIRE_BROWSER=1 but {why}"
        );
        eprintln!("skipped: {why}");
        return;
    }
    let mut center = Center::builder().engine(engine()).start().await;
    let port = center.start_console().await;
    center.issue(Role::Analyst, "alice");
    center.issue(Role::Supervisor, "bob");
    center.issue(Role::Engineer, "carol");
    center.issue(Role::Post, "p-9");
    let mut seqs: BTreeMap<String, u64> = BTreeMap::new();
    let mut next = |post: &str| {
        let s = seqs.entry(post.to_owned()).or_default();
        *s += 1;
        *s
    };
    // p-1's record and its burglary plan, for the plan and record checks.
    let mut bob = center.client(Role::Supervisor, "bob").await;
    bob.import_site(ImportSiteRequest {
        site: Some(vigil_ops::site::parse(SITE).unwrap()),
    })
    .await
    .unwrap();
    for (post, zone) in [("p-1", 7), ("p-2", 3), ("p-3", 12)] {
        center
            .submit(vec![alarm(post, next(post), zone, now_secs())])
            .await;
    }

    // The screenshot goes to a temporary folder unless asked for (the one
    // in docs/ is made with VIGIL_CONSOLE_SCREENSHOT=docs/console.png).
    let shot_dir = tempfile::tempdir().unwrap();
    let screenshot = std::env::var_os("VIGIL_CONSOLE_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| shot_dir.path().join("console.png"));
    let mut child = Command::new("python3")
        .arg(script())
        .args(["--url", &format!("https://127.0.0.1:{port}")])
        .arg("--pki")
        .arg(&center.pki)
        .arg("--screenshot")
        .arg(&screenshot)
        .arg("--chromium")
        .arg(chromium())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut results: BTreeMap<String, (bool, String)> = BTreeMap::new();
    let mut figures = Vec::new();
    let mut done = false;
    let run = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(cmd) = line.strip_prefix("CMD ") {
                let words: Vec<&str> = cmd.split_whitespace().collect();
                let answer = match words.as_slice() {
                    ["alarm", post, zone, rest @ ..] => {
                        let zone: u32 = zone.parse().unwrap();
                        let seq = next(post);
                        let event = if rest == ["fire"] {
                            fire(post, seq, zone)
                        } else {
                            alarm(post, seq, zone, now_secs())
                        };
                        let submitted = wall_ms();
                        center.submit(vec![event]).await;
                        format!("OK {submitted} {}", wall_ms())
                    }
                    ["seed", n] => {
                        let n: u32 = n.parse().unwrap();
                        // Ten zones a post, one batch a post, as a gateway
                        // would send them.
                        let mut batches = Vec::new();
                        for p in 0..n.div_ceil(10) {
                            let post = format!("s-{p:03}");
                            let batch: Vec<Event> = (0..10.min(n - p * 10))
                                .map(|z| alarm(&post, next(&post), 100 + z, now_secs()))
                                .collect();
                            batches.push(batch);
                        }
                        center.submit_all(batches).await;
                        "OK".to_owned()
                    }
                    _ => format!("ERR unknown command {cmd:?}"),
                };
                stdin
                    .write_all(format!("{answer}\n").as_bytes())
                    .await
                    .unwrap();
                stdin.flush().await.unwrap();
            } else if let Some(rest) = line.strip_prefix("CHECK ") {
                let mut parts = rest.splitn(3, ' ');
                let name = parts.next().unwrap_or_default().to_owned();
                let ok = parts.next() == Some("ok");
                let detail = parts.next().unwrap_or_default().to_owned();
                eprintln!("check {name}: {} {detail}", if ok { "ok" } else { "FAIL" });
                results.insert(name, (ok, detail));
            } else if let Some(figure) = line.strip_prefix("FIGURE ") {
                figures.push(figure.to_owned());
            } else if line == "DONE" {
                done = true;
                break;
            } else {
                eprintln!("browser: {line}");
            }
        }
    };
    tokio::time::timeout(DEADLINE, run)
        .await
        .expect("the browser run finishes in time");
    let status = child.wait().await.unwrap();
    eprintln!("==== console in chromium ====");
    for f in &figures {
        eprintln!("  {f}");
    }
    assert!(done && status.success(), "the script failed: {status}");
    for name in CHECKS {
        match results.get(*name) {
            Some((true, _)) => {}
            Some((false, detail)) => panic!("{name} failed: {detail}"),
            None => panic!("{name} was not reported"),
        }
    }
    center.stop().await;
}
