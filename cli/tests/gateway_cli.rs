//! `vigil gateway` as an operator runs it: bad configs are refused before
//! anything is bound, and SIGTERM stops it cleanly.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
};

mod support;

use support::{sigterm_and_wait, vigil};

fn pki(dir: &Path) {
    let d = dir.join("pki").display().to_string();
    assert!(vigil(&["pki", "init", "--dir", &d]).status.success());
    for (role, id) in [("post", "p-017"), ("analyst", "alice")] {
        assert!(
            vigil(&["pki", "issue", "--dir", &d, "--role", role, "--id", id])
                .status
                .success()
        );
    }
}

fn default_config() -> String {
    String::from_utf8(vigil(&["config", "default", "gateway"]).stdout).unwrap()
}

#[test]
fn bad_gateway_configs_exit_64_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    let default = default_config();
    let cases = [
        (
            default.replace("max_frame_bytes", "max_frame"),
            "unknown field `max_frame`",
        ),
        (
            default.replace(
                "# key = \"000102030405060708090a0b0c0d0e0f\"",
                "key = \"00ff\"",
            ),
            "dc09.accounts[0].key",
        ),
        (
            default.replace("pki/p-017.key", "pki/missing.key"),
            "missing.key",
        ),
        (
            default
                .replace("pki/p-017.pem", "pki/alice.pem")
                .replace("pki/p-017.key", "pki/alice.key"),
            "needs a post certificate",
        ),
        (
            default.clone()
                + "\n[[onvif]]\ncamera = \"cam-1\"\nurl = \"http://host:38001x/onvif/device_service\"\nusername = \"a\"\npassword = \"b\"\n",
            "onvif[0].url",
        ),
    ];
    for (text, want) in cases {
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, &text).unwrap();
        let out = vigil(&["gateway", "--config", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(64), "{want}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(want), "{want}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(!dir.path().join("data").exists(), "nothing was created");
    }
}

#[test]
fn gateway_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    // No broker at port 1: the publisher keeps retrying until the signal.
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let text = default_config()
        .replace("broker.example:8883", "127.0.0.1:1")
        .replace("0.0.0.0:7000", "127.0.0.1:0")
        + &format!("\n[metrics]\nlisten = \"{metrics}\"\n");
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["gateway", "--config", path.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("gateway logs its start").unwrap();
        // stderr is a pipe here, not a terminal: plain text, no colour.
        assert!(!line.contains('\x1b'), "{line:?}");
        if line.contains("DC-09 receiver listening") {
            // The address as an address, not a Debug dump of an Option.
            assert!(line.contains("listen=127.0.0.1:"), "{line}");
            break;
        }
    }
    // The endpoint is bound before the receiver starts.
    let body = support::scrape(metrics).expect("metrics endpoint answers");
    assert_eq!(
        support::sample(&body, "vigil_gateway_outbox_depth"),
        Some(0.0),
        "{body}"
    );
    assert!(
        support::sample(&body, "vigil_gateway_dc09_nak_total{reason=\"stale\"}").is_some(),
        "{body}"
    );
    assert!(
        body.contains(&format!(
            "vigil_build_info{{part=\"gateway\",version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )),
        "{body}"
    );
    assert!(
        body.contains("# TYPE vigil_gateway_dc09_ack_duration_seconds histogram"),
        "{body}"
    );
    let status = sigterm_and_wait(&mut child);
    assert!(status.success(), "{status:?}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        rest.iter().any(|l| l.contains("gateway stopped")),
        "{rest:?}"
    );
    assert!(dir.path().join("data/outbox.db").exists());
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    let text = default_config()
        .replace("broker.example:8883", "127.0.0.1:1")
        .replace("0.0.0.0:7000", "127.0.0.1:0");
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["--log-format", "json", "gateway", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    loop {
        let line = lines.next().expect("gateway logs its start").unwrap();
        let value: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
        assert!(value["timestamp"].is_string(), "{line}");
        assert!(value["level"].is_string(), "{line}");
        let message = value["fields"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        seen.push(message.clone());
        if message.contains("DC-09 receiver listening") {
            break;
        }
        assert!(seen.len() < 100, "no start line in {seen:?}");
    }
    let status = sigterm_and_wait(&mut child);
    assert!(status.success(), "{status:?}");
}

#[cfg(unix)]
#[test]
fn a_private_key_open_to_others_is_warned_about_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    let key = dir.path().join("pki/p-017.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let text = default_config()
        .replace("broker.example:8883", "127.0.0.1:1")
        .replace("0.0.0.0:7000", "127.0.0.1:0");
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["gateway", "--config", path.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut warned = false;
    let mut seen = Vec::new();
    while let Some(Ok(line)) = lines.next() {
        warned |= line.contains("private key is accessible to its group or others")
            && line.contains("p-017.key")
            && line.contains("044");
        let started = line.contains("DC-09 receiver listening");
        seen.push(line);
        if started {
            break;
        }
    }
    // Stopped before asserting, so a failure leaves no gateway behind.
    assert!(sigterm_and_wait(&mut child).success());
    assert!(warned, "a warning before the receiver starts: {seen:#?}");
}
