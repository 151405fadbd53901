//! `vigil dev` as a newcomer runs it: the whole region comes up, the live
//! feed shows incidents (some verified by a camera), SIGTERM stops it
//! cleanly, and a second run reuses the folder.

mod support;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use support::sigterm_and_wait;

/// Longest the test waits for any one expected line.
const WAIT: Duration = Duration::from_secs(60);

struct Dev {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Dev {
    fn start(dir: &std::path::Path) -> Self {
        Self::start_with(dir, &[])
    }

    fn start_with(dir: &std::path::Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["dev", "--dir"])
            .arg(dir)
            .args([
                "--api",
                "127.0.0.1:0",
                "--metrics",
                "127.0.0.1:0",
                "--console",
                "127.0.0.1:0",
                "--posts",
                "2",
                "--interval",
                "100ms",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start vigil dev");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line that satisfies `want` and returns it.
    fn line(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!(
                        "no line with {what} within {WAIT:?}; output so far:\n{}",
                        self.seen.join("\n")
                    );
                }
            }
        }
    }

    fn stop(mut self) -> Vec<String> {
        let status = sigterm_and_wait(&mut self.child);
        assert!(status.success(), "vigil dev exited with {status}");
        self.seen.extend(self.lines.try_iter());
        self.seen
    }
}

/// The incident id (`inc-…`) in a feed line.
fn opened_id(line: &str) -> String {
    format!("inc-{:06}", incident_number(line))
}

fn incident_number(line: &str) -> u64 {
    let id = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("inc-"))
        .unwrap_or_else(|| panic!("no incident id in {line:?}"));
    id.parse().expect("incident number")
}

#[test]
fn dev_runs_a_region_and_reuses_its_folder() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("region");

    let mut dev = Dev::start(&dir);
    dev.line("the new PKI", |l| l.contains("(new PKI)"));
    let metrics = dev.line("the metrics endpoint", |l| l.contains("/metrics"));
    let metrics: std::net::SocketAddr = metrics
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {metrics:?}"));
    let console = dev.line("the console", |l| {
        l.contains("In a browser, as the analyst: https://")
    });
    assert!(!console.ends_with(":0/"), "{console}");
    dev.line("the bundle to import", |l| {
        l.contains("analyst.p12") && l.contains("password vigil-dev")
    });
    let exports = dev.line("the analyst's certificate", |l| {
        l.contains("VIGIL_CERT=") && l.contains("analyst.pem")
    });
    let server = exports
        .split("VIGIL_SERVER=")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no server in {exports:?}"))
        .to_owned();
    dev.line("the live feed heading", |l| l == "Live incident feed:");
    dev.line("the end of the snapshot", |l| {
        l.contains("live changes follow")
    });
    let opened = dev.line("an incident opened by a panel", |l| l.contains("(opened)"));
    assert!(opened.contains(" p-00"), "{opened}");
    dev.line("a camera-verified incident", |l| l.contains("(verified)"));
    // The post records and plans it seeded, imported through the API.
    let pki = dir.join("pki");
    let as_role = |role: &str, args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vigil"));
        cmd.args(args)
            .args(["--server", &server, "--ca"])
            .arg(pki.join("ca.pem"))
            .arg("--cert")
            .arg(pki.join(format!("{role}.pem")))
            .arg("--key")
            .arg(pki.join(format!("{role}.key")));
        cmd.output().expect("run vigil")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let exported = loop {
        let out = as_role("supervisor", &["site", "export"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("id = \"p-002\"") {
            break text;
        }
        assert!(Instant::now() < deadline, "site not imported: {text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(exported.contains("category = \"duress\""), "{exported}");
    let out = as_role("analyst", &["incidents", &opened_id(&opened)]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("Guard force desk"), "{shown}");
    assert!(shown.contains("duress words: 1, passcodes: 1"), "{shown}");
    // Every part's counters on the one endpoint, the gateways by post.
    let body = support::scrape(metrics).expect("metrics answer");
    for name in [
        "vigil_ops_events_stored_total",
        "vigil_broker_publishes_in_total",
        "vigil_gateway_dc09_acked_total{post=\"p-001\"}",
        "vigil_gateway_dc09_acked_total{post=\"p-002\"}",
        "vigil_gateway_camera_push_total{post=\"p-001\",outcome=\"accepted\"}",
        "vigil_gateway_onvif_subscriptions_total{post=\"p-001\"}",
        "vigil_gateway_onvif_subscriptions_total{post=\"p-002\"}",
    ] {
        let value =
            support::sample(&body, name).unwrap_or_else(|| panic!("{name} missing:\n{body}"));
        if !name.contains("camera") {
            assert!(value >= 1.0, "{name} = {value}");
        }
    }
    let first_run = dev.stop();
    assert!(
        first_run.iter().any(|l| l.starts_with("stopped;")),
        "no clean stop in:\n{}",
        first_run.join("\n")
    );
    let last_incident = first_run
        .iter()
        .filter(|l| l.contains(" inc-"))
        .map(|l| incident_number(l))
        .max()
        .expect("incidents in the first run");

    let pki = dir.join("pki");
    for file in [
        "ca.pem",
        "crl.pem",
        "analyst.pem",
        "analyst.key",
        "broker.pem",
        "ops.pem",
        "p-001.pem",
        "p-002.pem",
        "analyst.p12",
        "supervisor.p12",
        "engineer.p12",
    ] {
        assert!(pki.join(file).is_file(), "{file} missing");
    }
    let ca = std::fs::read(pki.join("ca.pem")).expect("ca");
    let analyst = std::fs::read(pki.join("analyst.pem")).expect("analyst");

    // Second run: same CA and certificates, same store.
    let mut dev = Dev::start(&dir);
    dev.line("the reused folder", |l| {
        l.contains("reusing its PKI and data")
    });
    dev.line("the end of the snapshot", |l| {
        l.contains("live changes follow")
    });
    let opened = dev.line("a new incident", |l| l.contains("(opened)"));
    assert!(
        incident_number(&opened) > last_incident,
        "incident numbers start again: {opened} after inc-{last_incident:06}"
    );
    let second_run = dev.stop();
    assert!(second_run.iter().any(|l| l.starts_with("stopped;")));
    assert_eq!(std::fs::read(pki.join("ca.pem")).expect("ca"), ca);
    assert_eq!(
        std::fs::read(pki.join("analyst.pem")).expect("analyst"),
        analyst
    );
}

#[test]
fn dev_refuses_bad_flags_with_usage() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for args in [
        vec!["--posts", "0"],
        vec!["--api", "0.0.0.0:50051"],
        vec!["--metrics", "0.0.0.0:9464"],
        vec!["--console", "0.0.0.0:8443"],
        vec!["--interval", "1ms"],
        vec!["--replicas", "2"],
        vec!["--replicas", "0"],
        vec![
            "--replicas",
            "2",
            "--store-url",
            "postgresql://u@/db",
            "--failover-every",
            "1s",
        ],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["dev", "--dir"])
            .arg(tmp.path().join("x"))
            .args(&args)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        assert!(!out.stderr.is_empty());
    }
}

#[test]
fn dev_on_a_busy_metrics_port_says_so_and_nothing_else() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Held open for the whole test: the port stays taken.
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy = held.local_addr().expect("addr").to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["dev", "--dir"])
        .arg(tmp.path().join("x"))
        .args(["--api", "127.0.0.1:0", "--broker", "127.0.0.1:0"])
        .args(["--metrics", &busy])
        .env("NO_COLOR", "1")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("metrics: cannot listen on"), "{err}");
    // One line: no part was started, so none logs an error on the way out.
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!err.contains("ERROR") && !err.contains("panicked"), "{err}");
    drop(held);
}

/// `vigil dev --replicas 2` on PostgreSQL shows a failover live: the
/// leading replica is stopped abruptly, the other leads a lease later, the
/// stopped one comes back standing by, and the feed goes on.
#[test]
fn dev_shows_a_failover_between_replicas() {
    let Some(pg) = vigil_tests::postgres::Postgres::start() else {
        return;
    };
    let url = pg.create_db();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut dev = Dev::start_with(
        &tmp.path().join("region"),
        &[
            "--replicas",
            "2",
            "--store-url",
            &url,
            "--failover-every",
            "5s",
        ],
    );
    let replicas: Vec<String> = (0..2)
        .map(|_| {
            dev.line("a replica in the banner", |l| {
                l.contains("ops center  gRPC")
            })
        })
        .collect();
    assert!(replicas[1].contains("ops-2.toml"), "{replicas:?}");
    dev.line("the live feed", |l| l.contains("live changes follow"));
    let stopped = dev.line("the leader stopped", |l| {
        l.starts_with("[replicas] stopping")
    });
    let took_over = dev.line("another replica leading", |l| {
        l.starts_with("[replicas]") && l.contains(" leads ")
    });
    let word = |l: &str, n: usize| l.split_whitespace().nth(n).unwrap_or_default().to_owned();
    let name = |l: &str| word(l, 1);
    let (old, new) = (word(&stopped, 2), name(&took_over));
    assert_ne!(old, new, "{stopped} / {took_over}");
    let back = dev.line("the stopped replica back", |l| l.contains("is back"));
    assert_eq!(name(&back), old, "{back}");
    dev.line("the feed going on", |l| l.contains("(opened)"));
    dev.stop();
}
