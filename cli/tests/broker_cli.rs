//! `vigil broker` and `vigil config default` as an operator runs them.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

mod support;

use support::vigil;

#[test]
fn default_broker_config_is_printed() {
    let out = vigil(&["config", "default", "broker"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    for key in [
        "listen = \"0.0.0.0:8883\"",
        "[tls]",
        "[limits]",
        "max_payload_bytes",
    ] {
        assert!(text.contains(key), "{key} missing from:\n{text}");
    }
}

#[test]
fn every_part_prints_a_default_config_with_the_stable_keys() {
    for (part, keys) in [
        ("broker", &["listen", "[tls]"][..]),
        (
            "gateway",
            &["data_dir", "[tls]", "[mqtt]", "server", "[dc09]", "listen"][..],
        ),
        ("ops", &["data_dir", "[tls]", "[mqtt]", "[api]"][..]),
    ] {
        let out = vigil(&["config", "default", part]);
        assert!(out.status.success(), "{part}: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        for key in keys {
            assert!(text.contains(key), "{part} default config lacks {key}");
        }
    }
    let out = vigil(&["config", "default", "nothing"]);
    assert!(!out.status.success());
}

#[test]
fn bad_config_exits_64_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        (
            "unknown.toml",
            "listen = \"127.0.0.1:0\"\nport = 1\n",
            "unknown field",
        ),
        (
            "missing.toml",
            "[tls]\nca = \"pki/ca.pem\"\ncert = \"pki/b.pem\"\nkey = \"pki/b.key\"\n",
            "pki/ca.pem",
        ),
        (
            "limits.toml",
            "[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n[limits]\nmax_connections = 0\n",
            "limits.max_connections",
        ),
    ];
    for (name, text, want) in cases {
        let path = tmp.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = vigil(&["broker", "--config", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(64), "{name}: {out:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.trim_end().lines().count(), 1, "{name}: {err}");
        assert!(err.contains(want), "{name}: {err}");
    }
}

/// A broker process started from a fresh PKI and config, listening.
struct RunningBroker {
    _tmp: tempfile::TempDir,
    child: std::process::Child,
    addr: SocketAddr,
    metrics: SocketAddr,
}

fn start_broker(stderr: Stdio) -> RunningBroker {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let d = dir.to_str().unwrap();
    assert!(vigil(&["pki", "init", "--dir", d]).status.success());
    let out = vigil(&[
        "pki",
        "issue",
        "--dir",
        d,
        "--role",
        "broker",
        "--id",
        "broker-1",
        "--san",
        "127.0.0.1",
    ]);
    assert!(out.status.success(), "{out:?}");
    // A port that was free a moment ago.
    let addr: SocketAddr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let metrics: SocketAddr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = tmp.path().join("broker.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{addr}\"\n[tls]\nca = \"pki/ca.pem\"\ncert = \"pki/broker-1.pem\"\n\
             key = \"pki/broker-1.key\"\ncrl = \"pki/crl.pem\"\n[metrics]\nlisten = \"{metrics}\"\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["broker", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("broker exited early: {status}");
        }
        assert!(Instant::now() < deadline, "broker never listened on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
    RunningBroker {
        _tmp: tmp,
        child,
        addr,
        metrics,
    }
}

/// Sends SIGTERM and waits (bounded) for a clean exit.
fn terminate(child: &mut std::process::Child) {
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("broker did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn broker_serves_and_stops_on_sigterm() {
    let mut b = start_broker(Stdio::null());
    // The probe connections above were counted, and the endpoint says so.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let body = support::scrape(b.metrics).unwrap_or_default();
        let accepted = support::sample(&body, "vigil_broker_connections_accepted_total");
        if accepted.is_some_and(|n| n >= 1.0) {
            assert!(
                body.contains("# TYPE vigil_broker_rejects_total counter"),
                "{body}"
            );
            assert!(
                support::sample(&body, "vigil_broker_rejects_total{reason=\"tls\"}").is_some(),
                "{body}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed the connection: {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    terminate(&mut b.child);
}

/// An operator who started the broker as `vigil broker … 2>&1 | head`, or
/// whose log collector died: every log line now fails to write, and the
/// broker must still stop on SIGTERM.
#[test]
fn broker_stops_on_sigterm_after_its_stderr_closed() {
    let mut b = start_broker(Stdio::piped());
    drop(b.child.stderr.take());
    // Give it failing log lines to write: refused handshakes log at info.
    for _ in 0..3 {
        drop(TcpStream::connect(b.addr).unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while support::sample(
        &support::scrape(b.metrics).unwrap_or_default(),
        "vigil_broker_rejects_total{reason=\"tls\"}",
    )
    .is_none_or(|n| n < 3.0)
    {
        assert!(Instant::now() < deadline, "the refusals were never counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    terminate(&mut b.child);
}
