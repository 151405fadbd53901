//! The client commands on values the API can return but a careless client
//! would choke on (times outside years 1-9999, stored before ingest refused
//! them), and on a reader that goes away (`vigil incidents | head`). Real
//! binary, real operations center on 127.0.0.1.

use std::process::Stdio;

use vigil_pki::Role;
use vigil_proto::Timestamp;

#[path = "support/client.rs"]
mod center;

use center::{Center, WAIT, alarm, command, now_secs, run_vigil};

fn args(flags: &[String], rest: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = rest.iter().map(|s| (*s).to_owned()).collect();
    v.splice(1..1, flags.iter().cloned());
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_outside_years_1_to_9999_print_without_a_panic() {
    let center = Center::start().await;
    // Year 0 (before 0001-01-01) and year 10000, written straight to the
    // store as an older ops-center might have.
    let mut early = alarm("p-1", 1, 3, now_secs());
    early.occurred_at = Some(Timestamp {
        seconds: -62_167_219_200,
        nanos: 0,
    });
    early.received_at = early.occurred_at;
    let mut late = alarm("p-1", 2, 4, now_secs());
    late.occurred_at = Some(Timestamp {
        seconds: 253_402_300_800,
        nanos: 0,
    });
    center.submit(vec![early, late]).await;
    let eve = center.flags(Role::Engineer, "eve");

    for cmd in [
        vec!["incidents", "--json"],
        vec!["incidents"],
        vec!["replay", "--post", "p-1"],
        vec!["watch", "--json", "--count", "1"],
        vec!["posts"],
        vec!["posts", "--json"],
    ] {
        let out = run_vigil(args(&eve, &cmd), vec![]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{cmd:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{cmd:?}: {stderr}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        if cmd.contains(&"--json") || cmd[0] == "replay" {
            for line in stdout.lines().filter(|l| !l.is_empty()) {
                serde_json::from_str::<serde_json::Value>(line)
                    .unwrap_or_else(|e| panic!("{cmd:?}: not JSON: {line}: {e}"));
            }
        }
    }
    // The replayed events are both there, without their unprintable times.
    let out = run_vigil(args(&eve, &["replay", "--post", "p-1"]), vec![]).await;
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for line in &lines {
        let event = &line["event"];
        assert!(event["seq"].is_u64(), "{line}");
        assert!(
            event.get("occurred_at").is_none_or(|t| t.is_null()),
            "{line}"
        );
    }
    center.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_the_command_quietly() {
    let center = Center::start().await;
    let t = now_secs();
    for seq in 1..=20 {
        center.submit(vec![alarm("p-1", seq, seq as u32, t)]).await;
    }
    let alice = center.flags(Role::Analyst, "alice");
    for cmd in [
        vec!["incidents"],
        vec!["incidents", "--json"],
        vec!["posts"],
    ] {
        let argv = args(&alice, &cmd);
        let out = tokio::time::timeout(
            WAIT,
            tokio::task::spawn_blocking(move || {
                // A pipe whose reading end is already closed: the first
                // write fails with EPIPE, as under `vigil incidents | head`
                // once head has gone.
                let (reader, writer) = std::io::pipe().expect("pipe");
                drop(reader);
                command(&argv, &[])
                    .stdout(Stdio::from(writer))
                    .stderr(Stdio::piped())
                    .output()
                    .expect("run vigil")
            }),
        )
        .await
        .expect("vigil finishes in time")
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{cmd:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{cmd:?}: {stderr}");
    }
    center.stop().await;
}
