//! `vigil bench`, small: it must complete, lose nothing, and report every
//! figure. No assertion on speed: a benchmark prints figures, a test checks
//! behaviour.

use std::{
    io::Read,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

mod support;

use support::vigil;

/// Longest the small bench may take (it needs a few seconds).
const BENCH_WAIT: Duration = Duration::from_secs(180);

/// Runs `vigil bench` with `args` (bounded by [`BENCH_WAIT`]); returns its
/// stdout once it succeeded.
fn bench(args: &[&str], dir: &std::path::Path) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .arg("bench")
        .args(args)
        .args(["--json", "--dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run vigil bench");
    let deadline = Instant::now() + BENCH_WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("vigil bench did not finish within {BENCH_WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{status}\n{stderr}");
    stdout
}

/// With `--store-url`, the bench's operations center runs on PostgreSQL,
/// in a database of its own that then holds every event.
#[test]
fn a_small_bench_runs_on_postgresql() {
    let Some(pg) = vigil_tests::postgres::Postgres::start() else {
        return;
    };
    let url = pg.create_db();
    let dir = tempfile::tempdir().unwrap();
    let stdout = bench(
        &[
            "--posts",
            "10",
            "--count",
            "500",
            "--probes",
            "0",
            "--mosquitto",
            "off",
            "--no-reconnect-test",
            "--store-url",
            &url,
        ],
        dir.path(),
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect(&stdout);
    let run = &report["runs"][0];
    assert_eq!(run["lost"], 0, "{run}");
    assert_eq!(run["receipted"], 500, "{run}");
    // The run's own database holds them.
    let db = pg.url("vigil_bench_vigil");
    let counted: i64 = std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&db, postgres::NoTls).unwrap();
        c.query_one("SELECT count(*) FROM events", &[])
            .unwrap()
            .get(0)
    })
    .join()
    .unwrap();
    assert_eq!(counted, 500);
}

/// With two replicas and `--kill-leader-after`, the bench kills the
/// leading operations center with SIGKILL under load and times the
/// takeover; nothing is lost.
#[test]
fn a_bench_times_a_failover_under_load() {
    let Some(pg) = vigil_tests::postgres::Postgres::start() else {
        return;
    };
    let url = pg.create_db();
    let dir = tempfile::tempdir().unwrap();
    let stdout = bench(
        &[
            "--posts",
            "10",
            "--rate",
            "200",
            "--duration",
            "8s",
            "--probes",
            "1",
            "--mosquitto",
            "off",
            "--no-reconnect-test",
            "--store-url",
            &url,
            "--replicas",
            "2",
            "--kill-leader-after",
            "2s",
        ],
        dir.path(),
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect(&stdout);
    let run = &report["runs"][0];
    assert_eq!(run["lost"], 0, "{run}");
    assert_eq!(run["receipted"], run["events"], "{run}");
    let failover = &run["failover"];
    let leading = failover["leading_s"].as_f64().expect("a standby led");
    let receipting = failover["receipting_s"].as_f64().expect("receipts resumed");
    assert!(leading > 0.0 && receipting >= leading, "{failover}");
    let events = run["events"].as_i64().unwrap();
    let db = pg.url("vigil_bench_vigil");
    let counted: i64 = std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&db, postgres::NoTls).unwrap();
        c.query_one("SELECT count(*) FROM events WHERE post_id LIKE 'b-%'", &[])
            .unwrap()
            .get(0)
    })
    .join()
    .unwrap();
    assert_eq!(counted, events, "every event stored once");
}

#[test]
fn a_small_bench_completes_without_loss_and_reports_every_figure() {
    let dir = tempfile::tempdir().unwrap();
    let stdout = bench(
        &["--posts", "20", "--count", "2000", "--probes", "2"],
        dir.path(),
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect(&stdout);
    let runs = report["runs"].as_array().expect("runs");
    assert!(!runs.is_empty());
    assert_eq!(runs[0]["broker"], "vigil");
    for run in runs {
        assert_eq!(run["lost"], 0, "{run}");
        assert_eq!(run["events"], 2000, "{run}");
        assert_eq!(run["receipted"], 2000, "{run}");
        assert_eq!(run["posts"], 20, "{run}");
        for field in [
            "elapsed_s",
            "receipted_per_s",
            "stored_per_s",
            "broker_cpu_s",
            "broker_peak_rss_mb",
            "broker_mb_per_1000_posts",
            "ops_cpu_s",
            "ops_peak_rss_mb",
            "bench_cpu_s",
            "connect_s",
            "reconnect_s",
        ] {
            assert!(run[field].is_number(), "{field} in {run}");
        }
        let latency = &run["latency_ms"];
        assert!(latency["n"].as_u64().unwrap() >= 2, "{run}");
        assert_eq!(latency["missing"], 0, "{run}");
        for q in ["p50", "p90", "p99", "max"] {
            assert!(latency[q].is_number(), "{q} in {run}");
        }
    }
    // The post certificates stay for the next run.
    assert!(dir.path().join("pki/b-0020.pem").exists());
}

#[test]
fn bad_bench_flags_are_refused() {
    for (args, code) in [
        (&["bench", "--posts", "0"][..], 64),
        (&["bench", "--rate", "0"], 64),
        (&["bench", "--count", "0"], 64),
        (&["bench", "--batch", "0"], 64),
        // Refused by the argument parser, also 64.
        (&["bench", "--api", "127.0.0.1:1"], 64),
        (&["bench", "--rate", "10", "--count", "10"], 64),
        (&["bench", "--replicas", "2"], 64),
        (&["bench", "--replicas", "0"], 64),
        (&["bench", "--kill-leader-after", "5s"], 64),
    ] {
        let out = vigil(args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {out:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
}
