//! `vigil ops` and `vigil config default ops` as an operator runs them.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
};

mod support;

use support::{sigterm_and_wait, vigil};

#[test]
fn default_ops_config_is_valid_toml_with_the_stable_keys() {
    let out = vigil(&["config", "default", "ops"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let value: toml::Table = toml::from_str(&text).unwrap();
    assert!(value.contains_key("data_dir"));
    assert!(
        value["mqtt"]["servers"]
            .as_array()
            .is_some_and(|l| !l.is_empty())
    );
    assert!(value["api"].get("listen").is_some());
    assert!(value["tls"].get("ca").is_some());
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn bad_ops_configs_exit_64_with_one_line_before_anything_happens() {
    let dir = tempfile::tempdir().unwrap();
    let default = String::from_utf8(vigil(&["config", "default", "ops"]).stdout).unwrap();
    for (name, text, want) in [
        (
            "unknown.toml",
            default.replace("keep_alive_secs", "keepalive_secs"),
            "keepalive_secs",
        ),
        (
            "server.toml",
            default.replace("localhost:8883", "localhost"),
            "mqtt.server",
        ),
        // The default names certificate files that do not exist here.
        ("nocert.toml", default.clone(), "tls.ca"),
    ] {
        let path = write(dir.path(), name, &text);
        let out = vigil(&["ops", "--config", &path]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{name}: {stderr}");
        assert!(stderr.contains(want), "{name}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{name}: {stderr}");
    }
    assert!(!dir.path().join("ops-data").exists(), "nothing was created");
}

#[test]
fn ops_shuts_down_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let d = pki.display().to_string();
    assert!(vigil(&["pki", "init", "--dir", &d]).status.success());
    assert!(
        vigil(&[
            "pki",
            "issue",
            "--dir",
            &d,
            "--role",
            "ops",
            "--id",
            "ops-1",
            "--san",
            "localhost"
        ])
        .status
        .success()
    );
    let default = String::from_utf8(vigil(&["config", "default", "ops"]).stdout).unwrap();
    // Nothing listens on port 1: ingest keeps retrying until the signal.
    let path = write(
        dir.path(),
        "ops.toml",
        &default
            .replace("localhost:8883", "127.0.0.1:1")
            .replace("0.0.0.0:50051", "127.0.0.1:0"),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["ops", "--config", &path])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("ops-center logs its start").unwrap();
        if line.contains("operations center starting") {
            break;
        }
    }
    let status = sigterm_and_wait(&mut child);
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(status.success(), "{status:?} {rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("operations center stopped")),
        "{rest:?}"
    );
    assert!(dir.path().join("ops-data/ops.db").exists());
}
