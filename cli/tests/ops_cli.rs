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

/// A config of a store in `dir/data` whose `[retention]` is `retention`
/// (certificates are not read by `prune`).
fn prune_config(dir: &Path, retention: &str) -> String {
    write(
        dir,
        "ops.toml",
        &format!(
            "data_dir = \"data\"\n[mqtt]\nserver = \"localhost:8883\"\n\
             [tls]\nca = \"ca.pem\"\ncert = \"ops.pem\"\nkey = \"ops.key\"\n{retention}"
        ),
    )
}

/// `vigil ops prune`: a dry run says what would go and deletes nothing; a
/// real one archives then deletes exactly that; `vigil replay --archive`
/// reads it back with the live replay's filters.
#[test]
fn ops_prune_dry_run_then_prune_then_replay_the_archive() {
    use vigil_ops::store::{Backend, Received, SqliteBackend};
    use vigil_proto::v1::{AlarmSignal, CameraEvent, Event, event::Body};
    let dir = tempfile::tempdir().unwrap();
    let config = prune_config(
        dir.path(),
        "[retention]\ncamera_days = 10\narchive_dir = \"archive\"\n",
    );
    let backend = SqliteBackend::open(&dir.path().join("data")).unwrap();
    let old = |seq: u64, body: Body| -> Received {
        Event {
            post_id: "p-1".into(),
            seq,
            // 2021-01-01 plus seq seconds: long past any period here.
            received_at: Some(prost_types::Timestamp {
                seconds: 1_609_459_200 + seq as i64,
                nanos: 0,
            }),
            body: Some(body),
            ..Default::default()
        }
        .into()
    };
    let mut events: Vec<Received> = (1..=5)
        .map(|s| old(s, Body::Camera(CameraEvent::default())))
        .collect();
    events.push(old(6, Body::Alarm(AlarmSignal::default())));
    {
        let mut writer = backend.writer().unwrap();
        let mut tx = writer.begin().unwrap();
        tx.insert_events("p-1", &events, std::time::SystemTime::now())
            .unwrap();
        tx.commit().unwrap();
    }
    let count = || backend.reader().unwrap().event_count().unwrap();

    let out = vigil(&["ops", "prune", "--config", &config, "--dry-run"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("would delete 5 events (5 camera), received 2021-01-01T00:00:01Z to 2021-01-01T00:00:05Z"),
        "{stdout}"
    );
    assert!(stdout.contains("would archive them first in"), "{stdout}");
    assert_eq!(count(), 6, "a dry run deletes nothing");
    assert!(!dir.path().join("archive").join("manifest.json").exists());

    let out = vigil(&["ops", "prune", "--config", &config]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("deleted 5 events (5 camera)"), "{stdout}");
    assert!(
        stdout.contains("1 file(s) events-camera-20210101-20210101-"),
        "{stdout}"
    );
    assert_eq!(count(), 1, "the alarm stays (kept for years)");

    let archive = dir.path().join("archive").display().to_string();
    let replay = |extra: &[&str]| -> Vec<u64> {
        let mut args = vec!["replay", "--archive", archive.as_str()];
        args.extend_from_slice(extra);
        let out = vigil(&args);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["event"]["seq"].as_u64().unwrap()
            })
            .collect()
    };
    assert_eq!(replay(&["--kind", "camera"]), [1, 2, 3, 4, 5]);
    assert_eq!(replay(&["--kind", "alarm"]), Vec::<u64>::new());
    assert_eq!(
        replay(&["--post", "p-1", "--from-seq", "2", "--to-seq", "3"]),
        [2, 3]
    );
    assert_eq!(
        replay(&["--from", "2021-01-01T00:00:04Z", "--limit", "1"]),
        [4]
    );
    let out = vigil(&["replay", "--archive", &dir.path().display().to_string()]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an archive folder"));
}

#[test]
fn bad_retention_settings_exit_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (retention, want) in [
        ("[retention]\ncamera_dayz = 3\n", "camera_dayz"),
        (
            "[retention.categories]\nburglar = 3\n",
            "retention.categories.burglar",
        ),
        ("[retention]\nbatch = 0\n", "retention.batch"),
        ("[retention]\ncamera_days = -1\n", "camera_days"),
    ] {
        let config = prune_config(dir.path(), retention);
        for args in [
            vec!["ops", "prune", "--config", config.as_str(), "--dry-run"],
            vec!["ops", "--config", config.as_str()],
        ] {
            let out = vigil(&args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{retention}: {stderr}");
            assert!(stderr.contains(want), "{retention}: {stderr}");
            assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        }
    }
    assert!(!dir.path().join("data").exists(), "nothing was created");
}
