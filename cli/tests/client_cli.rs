//! The `vigil` client commands, run as the real binary against a real
//! operations center (writer, SQLite store, gRPC API over mutual TLS) on
//! 127.0.0.1, with certificates from a fresh region CA.

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    sync::mpsc as std_mpsc,
    time::{Duration, Instant},
};

use prost_reflect::{DescriptorPool, DynamicMessage};
use vigil_ops::store::{ReceivedFilter, Store};
use vigil_pki::Role;
use vigil_proto::v1::{Disposition, Incident, IncidentState, StoredEvent};

#[path = "support/client.rs"]
mod center;

use center::{Center, WAIT, alarm, command, now_secs, run_vigil};

fn args(flags: &[String], rest: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = rest.iter().map(|s| (*s).to_owned()).collect();
    // The subcommand first, then everything else.
    v.splice(1..1, flags.iter().cloned());
    v
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn pool() -> DescriptorPool {
    DescriptorPool::decode(vigil_proto::FILE_DESCRIPTOR_SET).unwrap()
}

/// Decodes one line of the client's JSON back into the message.
fn from_json<M: prost::Message + Default>(pool: &DescriptorPool, name: &str, line: &str) -> M {
    let desc = pool
        .get_message_by_name(&format!("vigil.v1.{name}"))
        .unwrap();
    let mut de = serde_json::Deserializer::from_str(line);
    DynamicMessage::deserialize(desc, &mut de)
        .unwrap_or_else(|e| panic!("{name} JSON {line}: {e}"))
        .transcode_to()
        .unwrap()
}

fn incident(center: &Center, id: &str) -> Incident {
    center.store().incident(id).unwrap().expect("incident")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_lists_for_people_and_for_scripts() {
    let center = Center::start().await;
    let t = now_secs();
    center.submit(vec![alarm("p-1", 1, 1, t)]).await;
    center.submit(vec![alarm("p-2", 1, 7, t)]).await;
    let alice = center.flags(Role::Analyst, "alice");

    let out = run_vigil(args(&alice, &["incidents"]), vec![]).await;
    assert!(out.status.success());
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("ID"), "{text}");
    assert_eq!(lines.len(), 3, "{text}");
    // Newest first.
    assert!(lines[1].starts_with("inc-000002") && lines[1].contains("p-2"));
    assert!(lines[2].starts_with("inc-000001") && lines[2].contains("p-1"));
    assert!(lines[2].contains("open") && lines[2].contains("P2"));

    let out = run_vigil(args(&alice, &["incidents", "--json"]), vec![]).await;
    assert!(out.status.success());
    let list: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    let pool = pool();
    for item in list {
        let got: Incident = from_json(&pool, "Incident", &item.to_string());
        assert_eq!(
            got,
            incident(&center, &got.id),
            "JSON is the stored incident"
        );
    }

    // Filters and paging.
    let out = run_vigil(
        args(&alice, &["incidents", "--post", "p-1", "--json"]),
        vec![],
    )
    .await;
    let list: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["post_id"], "p-1");
    let out = run_vigil(args(&alice, &["incidents", "--limit", "1"]), vec![]).await;
    assert_eq!(stdout(&out).lines().count(), 3, "header, one row, more");
    assert!(stdout(&out).contains("more incidents"));
    let out = run_vigil(args(&alice, &["incidents", "--state", "resolved"]), vec![]).await;
    assert_eq!(stdout(&out).trim(), "no incidents");

    // One incident in full.
    let out = run_vigil(args(&alice, &["incidents", "inc-000001"]), vec![]).await;
    assert!(out.status.success());
    let text = stdout(&out);
    for part in [
        "incident        inc-000001",
        "events:",
        "p-1#1",
        "audit:",
        "opened by system",
    ] {
        assert!(text.contains(part), "{part:?} in {text}");
    }
    let out = run_vigil(args(&alice, &["incidents", "inc-000001", "--json"]), vec![]).await;
    let detail: vigil_proto::v1::IncidentDetail =
        from_json(&pool, "IncidentDetail", stdout(&out).trim());
    let store = center.store();
    assert_eq!(detail.incident, store.incident("inc-000001").unwrap());
    assert_eq!(detail.events, store.incident_events("inc-000001").unwrap());
    assert_eq!(detail.audit, store.audit("inc-000001").unwrap());
    let out = run_vigil(args(&alice, &["incidents", "inc-000042"]), vec![]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no incident inc-000042"),
        "{}",
        stderr(&out)
    );
    center.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_at_a_stale_version_changes_nothing_and_shows_the_current_state() {
    let center = Center::start().await;
    center.submit(vec![alarm("p-1", 1, 1, now_secs())]).await;
    let seen = incident(&center, "inc-000001").version;
    let alice = center.flags(Role::Analyst, "alice");
    let bob = center.flags(Role::Analyst, "bob");

    // Without --version: the current one is used.
    let out = run_vigil(
        args(&alice, &["ack", "inc-000001", "--note", "mine"]),
        vec![],
    )
    .await;
    assert!(out.status.success());
    let said = stdout(&out);
    assert!(said.starts_with("inc-000001 acknowledged"), "{said}");
    // The id once, not again in the summary.
    assert_eq!(said.matches("inc-000001").count(), 1, "{said}");
    let acked = incident(&center, "inc-000001");
    assert_eq!(acked.state(), IncidentState::Acknowledged);
    assert_eq!(acked.acknowledged_by, "alice");

    // Bob acts on the version he saw before Alice's change.
    let v = seen.to_string();
    let out = run_vigil(args(&bob, &["ack", "inc-000001", "--version", &v]), vec![]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("changed since version {seen}")),
        "{err}"
    );
    assert!(err.contains("nothing was done"), "{err}");
    assert!(err.contains("acknowledged by alice"), "{err}");
    assert!(
        err.contains(&format!("--version {}", acked.version)),
        "{err}"
    );
    // With --json the current incident goes to stdout for scripts.
    let out = run_vigil(
        args(&bob, &["ack", "inc-000001", "--version", &v, "--json"]),
        vec![],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let current: Incident = from_json(&pool(), "Incident", stdout(&out).trim());
    assert_eq!(current, acked);
    assert_eq!(incident(&center, "inc-000001"), acked, "nothing changed");

    // Acknowledging again at the current version: not allowed in this state.
    let out = run_vigil(args(&bob, &["ack", "inc-000001"]), vec![]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("only an open incident"),
        "{}",
        stderr(&out)
    );
    center.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn note_assign_and_resolve_are_stored_with_who_did_them() {
    let center = Center::start().await;
    center.submit(vec![alarm("p-1", 1, 1, now_secs())]).await;
    let alice = center.flags(Role::Analyst, "alice");
    let sam = center.flags(Role::Supervisor, "sam");

    let out = run_vigil(args(&alice, &["note", "inc-000001", "on my way"]), vec![]).await;
    assert!(out.status.success());
    let notes = center.store().notes("inc-000001").unwrap();
    assert_eq!(notes.len(), 1);
    assert_eq!(
        (notes[0].author.as_str(), notes[0].text.as_str()),
        ("alice", "on my way")
    );

    let out = run_vigil(args(&alice, &["assign", "inc-000001"]), vec![]).await;
    assert!(out.status.success());
    assert!(
        stdout(&out).contains("assigned to alice"),
        "{}",
        stdout(&out)
    );
    let out = run_vigil(
        args(&sam, &["assign", "inc-000001", "--to", "bob", "--json"]),
        vec![],
    )
    .await;
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["assignee"], "bob");
    let out = run_vigil(
        args(&sam, &["escalate", "inc-000001", "--reason", "no answer"]),
        vec![],
    )
    .await;
    assert!(out.status.success());
    assert_eq!(incident(&center, "inc-000001").escalation_level, 1);

    // Resolving needs an acknowledgment first.
    let out = run_vigil(
        args(
            &alice,
            &["resolve", "inc-000001", "--disposition", "genuine"],
        ),
        vec![],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot resolve"), "{}", stderr(&out));
    assert!(
        run_vigil(args(&alice, &["ack", "inc-000001"]), vec![])
            .await
            .status
            .success()
    );
    let out = run_vigil(
        args(
            &alice,
            &[
                "resolve",
                "inc-000001",
                "--disposition",
                "user-error",
                "--note",
                "wrong code",
            ],
        ),
        vec![],
    )
    .await;
    assert!(out.status.success());
    let inc = incident(&center, "inc-000001");
    assert_eq!(inc.state(), IncidentState::Resolved);
    assert_eq!(inc.resolved_by, "alice");
    assert_eq!(inc.disposition(), Disposition::UserError);
    let audit = center.store().audit("inc-000001").unwrap();
    let actors: Vec<(&str, &str)> = audit
        .iter()
        .map(|a| (a.actor.as_str(), a.actor_role.as_str()))
        .collect();
    assert!(actors.contains(&("sam", "supervisor")), "{actors:?}");
    assert!(actors.contains(&("alice", "analyst")), "{actors:?}");

    // And back: a supervisor reopens.
    let out = run_vigil(
        args(&sam, &["reopen", "inc-000001", "--reason", "again"]),
        vec![],
    )
    .await;
    assert!(out.status.success());
    assert_eq!(incident(&center, "inc-000001").state(), IncidentState::Open);
    center.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_and_test_mode() {
    let center = Center::start().await;
    let t = now_secs();
    center
        .submit(vec![alarm("p-1", 1, 1, t), alarm("p-1", 2, 1, t)])
        .await;
    let alice = center.flags(Role::Analyst, "alice");
    let out = run_vigil(args(&alice, &["posts"]), vec![]).await;
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.lines().any(|l| l.starts_with("p-1 ")), "{text}");
    let out = run_vigil(args(&alice, &["posts", "--json"]), vec![]).await;
    let list: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(list[0]["post_id"], "p-1");
    assert_eq!(list[0]["last_seq"], 2);
    assert_eq!(list[0]["durable_through_seq"], 2);
    assert_eq!(list[0]["open_incidents"], 1);

    let sam = center.flags(Role::Supervisor, "sam");
    let out = run_vigil(
        args(
            &sam,
            &["test-mode", "p-1", "--for", "30m", "--reason", "drill"],
        ),
        vec![],
    )
    .await;
    assert!(out.status.success());
    assert!(
        stdout(&out).contains("p-1 in test mode until"),
        "{}",
        stdout(&out)
    );
    let post = center.store().post("p-1").unwrap().unwrap();
    let until = post.test_mode_until.expect("in test mode").seconds;
    let now = i64::try_from(now_secs()).unwrap();
    assert!(
        (now + 1700..=now + 1900).contains(&until),
        "{until} vs {now}"
    );
    let out = run_vigil(args(&sam, &["test-mode", "p-1", "--end"]), vec![]).await;
    assert!(out.status.success());
    assert!(
        center
            .store()
            .post("p-1")
            .unwrap()
            .unwrap()
            .test_mode_until
            .is_none()
    );
    let out = run_vigil(args(&sam, &["test-mode", "p-1", "--for", "5d"]), vec![]).await;
    assert_eq!(out.status.code(), Some(64));
    // Over the server's cap (8 h by default): refused, naming the cap, and
    // the post is not put into test mode for less than was asked.
    let out = run_vigil(args(&sam, &["test-mode", "p-1", "--for", "9h"]), vec![]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("at most 8h") && err.contains("9h"), "{err}");
    let post = center.store().post("p-1").unwrap().unwrap();
    assert!(post.test_mode_until.is_none());
    center.stop().await;
}

/// Every stored event in received order (`received_at`, post, seq), read
/// from the store itself.
fn stored_in_received_order(center: &Center) -> Vec<StoredEvent> {
    center
        .store()
        .events_received(&ReceivedFilter::default(), None, 10_000)
        .unwrap()
        .into_iter()
        .map(|(_, e)| e)
        .collect()
}

fn read_events(pool: &DescriptorPool, text: &str) -> Vec<StoredEvent> {
    text.lines()
        .map(|l| from_json(pool, "StoredEvent", l))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_writes_exactly_the_stored_events_in_order() {
    let center = Center::start().await;
    center
        .submit((1..=5).map(|s| alarm("p-1", s, 1, 100 + s)).collect())
        .await;
    center
        .submit(vec![alarm("p-2", 1, 1, 102), alarm("p-2", 2, 1, 104)])
        .await;
    let eve = center.flags(Role::Engineer, "eve");
    let pool = pool();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("replay.jsonl");
    let f = file.display().to_string();

    let out = run_vigil(args(&eve, &["replay", "--to-file", &f]), vec![]).await;
    assert!(out.status.success());
    assert!(stdout(&out).is_empty(), "the file, not stdout");
    assert!(
        stderr(&out).contains("replay: 7 events to"),
        "{}",
        stderr(&out)
    );
    let got = read_events(&pool, &std::fs::read_to_string(&file).unwrap());
    let want = stored_in_received_order(&center);
    assert_eq!(want.len(), 7);
    assert_eq!(got, want, "every stored event, whole, in received order");

    // One post's seq range, both ends inclusive, paced 1000x.
    let out = run_vigil(
        args(
            &eve,
            &[
                "replay",
                "--post",
                "p-1",
                "--from-seq",
                "2",
                "--to-seq",
                "4",
                "--pace",
                "1000x",
            ],
        ),
        vec![],
    )
    .await;
    assert!(out.status.success());
    let got = read_events(&pool, &stdout(&out));
    let want: Vec<StoredEvent> = (2..=4)
        .map(|s| center.store().event("p-1", s).unwrap().unwrap())
        .collect();
    assert_eq!(got, want);

    // A time range: from inclusive, to exclusive; kinds.
    let out = run_vigil(
        args(
            &eve,
            &[
                "replay",
                "--from",
                "1970-01-01T00:01:42Z",
                "--to",
                "1970-01-01T00:01:44Z",
                "--kind",
                "alarm",
            ],
        ),
        vec![],
    )
    .await;
    let got: Vec<(String, u64)> = read_events(&pool, &stdout(&out))
        .into_iter()
        .map(|e| {
            let e = e.event.unwrap();
            (e.post_id, e.seq)
        })
        .collect();
    let p = |post: &str, seq| (post.to_owned(), seq);
    assert_eq!(got, vec![p("p-1", 2), p("p-2", 1), p("p-1", 3)]);
    let out = run_vigil(args(&eve, &["replay", "--kind", "camera"]), vec![]).await;
    assert!(out.status.success() && stdout(&out).is_empty());

    // Bad flags are usage errors with one clear line.
    for (bad, want) in [
        (vec!["replay", "--pace", "3y"], "--pace"),
        (vec!["replay", "--from", "yesterday"], "RFC 3339"),
        (vec!["replay", "--from-seq", "2"], "exactly one --post"),
    ] {
        let out = run_vigil(args(&eve, &bad), vec![]).await;
        assert_eq!(out.status.code(), Some(64), "{bad:?}");
        assert!(stderr(&out).contains(want), "{bad:?}: {}", stderr(&out));
        assert_eq!(stderr(&out).trim().lines().count(), 1);
    }
    center.stop().await;
}

/// A replay the server reads long without sending shows its progress on
/// stderr (never in the JSON lines), and the server's bound on what one
/// replay may read ends it with exit status 1 and the server's advice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_shows_the_servers_progress_and_its_bound() {
    let center = Center::builder()
        .replay_limits(vigil_ops::api::replay::Limits {
            max_scan_rows: 1200,
            // Progress after every page: no clock in the test.
            progress_every: std::time::Duration::ZERO,
        })
        .start()
        .await;
    for first in (1..=2000u64).step_by(500) {
        center
            .submit(
                (first..first + 500)
                    .map(|s| alarm("p-1", s, 1, 1_000 + s))
                    .collect(),
            )
            .await;
    }
    let eve = center.flags(Role::Engineer, "eve");
    let out = run_vigil(
        args(
            &eve,
            &["replay", "--post", "p-1", "--from", "2030-01-01T00:00:00Z"],
        ),
        vec![],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    let err = stderr(&out);
    for want in [
        "replay: still reading: 500 stored events read, 0 sent, at seq 500 (1970-01-01 00:25:00Z)",
        "replay: still reading: 1000 stored events read, 0 sent, at seq 1000",
        "too much for one request: replay stopped after reading 1200 stored events (0 sent)",
        "replay_max_scan_rows",
    ] {
        assert!(err.contains(want), "{want:?} not in:\n{err}");
    }
    center.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_configures_the_connection() {
    let center = Center::start().await;
    center.submit(vec![alarm("p-1", 1, 1, now_secs())]).await;
    let env = center.env(Role::Analyst, "alice");
    let out = run_vigil(vec!["incidents".into()], env).await;
    assert!(out.status.success());
    assert!(stdout(&out).contains("inc-000001"));

    // Nothing configured: a usage error naming the flag and the variable.
    let out = run_vigil(vec!["incidents".into()], vec![]).await;
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("--ca FILE is required (or set VIGIL_CA)"));
    // With the connection in the environment, a usage error does not show
    // --ca and friends as though they were required.
    let out = run_vigil(vec!["ack".into()], center.env(Role::Analyst, "alice")).await;
    assert_eq!(out.status.code(), Some(64));
    let err = stderr(&out);
    assert!(err.contains("Usage: vigil ack [OPTIONS] <ID>"), "{err}");
    assert!(!err.contains("--ca <FILE>"), "{err}");
    // A flag wins over the environment.
    let mut env = center.env(Role::Analyst, "alice");
    env.push(("VIGIL_SERVER".into(), "127.0.0.1:1".into()));
    env.retain(|(k, v)| k != "VIGIL_SERVER" || v == "127.0.0.1:1");
    let out = run_vigil(vec!["incidents".into()], env.clone()).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot connect to the operations center at 127.0.0.1:1"),
        "{}",
        stderr(&out)
    );
    let server = center.server();
    let out = run_vigil(vec!["incidents".into(), "--server".into(), server], env).await;
    assert!(out.status.success());
    center.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_may_not_gets_one_clear_line() {
    let center = Center::start().await;
    center.submit(vec![alarm("p-1", 1, 1, now_secs())]).await;
    let cases = [
        (
            Role::Analyst,
            "alice",
            vec!["escalate", "inc-000001", "--version", "1"],
            "permission denied: your certificate's role analyst may not escalate incidents (you are alice)",
        ),
        (
            Role::Engineer,
            "eve",
            vec!["ack", "inc-000001", "--version", "1"],
            "your certificate's role engineer may not acknowledge incidents",
        ),
        (
            Role::Analyst,
            "alice",
            vec!["replay"],
            "your certificate's role analyst may not replay events",
        ),
        (
            Role::Post,
            "p-1",
            vec!["incidents"],
            "your certificate's role post may not read incidents or posts",
        ),
    ];
    for (role, id, cmd, want) in cases {
        let out = run_vigil(args(&center.flags(role, id), &cmd), vec![]).await;
        assert_eq!(out.status.code(), Some(1), "{cmd:?}");
        let err = stderr(&out);
        assert!(err.contains(want), "{cmd:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    assert_eq!(
        incident(&center, "inc-000001").version,
        1,
        "nothing changed"
    );
    center.stop().await;
}

/// A running `vigil watch` whose output lines arrive on channels.
struct Watcher {
    child: std::process::Child,
    out: std_mpsc::Receiver<String>,
    err: std_mpsc::Receiver<String>,
}

impl Watcher {
    fn start(args: &[String]) -> Watcher {
        let mut child = command(args, &[])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = |r: Box<dyn std::io::Read + Send>| {
            // Bounded: the watcher prints a handful of lines in this test.
            let (tx, rx) = std_mpsc::sync_channel(1024);
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines().map_while(Result::ok) {
                    eprintln!("watch| {line}");
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
            rx
        };
        let out = lines(Box::new(child.stdout.take().unwrap()));
        let err = lines(Box::new(child.stderr.take().unwrap()));
        Watcher { child, out, err }
    }

    /// The next stdout line, within [`WAIT`].
    async fn line(&self) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.out.try_recv() {
                Ok(l) => return l,
                Err(std_mpsc::TryRecvError::Disconnected) => panic!("watch ended early"),
                Err(std_mpsc::TryRecvError::Empty) => {
                    assert!(Instant::now() < deadline, "no watch line in time");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// Waits (bounded) for the process to exit.
    async fn exit(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("watch did not exit in time");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let rest: Vec<String> = self.out.try_iter().collect();
        (status, rest)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_shows_the_feed_and_resumes_after_the_server_restarts() {
    let mut center = Center::start().await;
    let t = now_secs();
    center.submit(vec![alarm("p-1", 1, 1, t)]).await;
    let alice = center.flags(Role::Analyst, "alice");
    // Three updates: the snapshot, a live change, one made while the
    // server was down.
    let watch = Watcher::start(&args(&alice, &["watch", "--count", "3"]));
    let first = watch.line().await;
    assert!(
        first.contains("inc-000001") && first.contains("open"),
        "{first}"
    );
    let complete = watch.line().await;
    assert!(
        complete.starts_with("-- live changes follow (cursor "),
        "{complete}"
    );

    let out = run_vigil(args(&alice, &["ack", "inc-000001"]), vec![]).await;
    assert!(out.status.success());
    let live = watch.line().await;
    for part in ["inc-000001", "p-1", "acknowledged", "P2", "(acknowledged)"] {
        assert!(live.contains(part), "{part:?} in {live}");
    }

    // The server goes away; a new incident opens meanwhile; it comes back
    // on the same port.
    center.stop_api().await;
    center.submit(vec![alarm("p-2", 1, 7, t)]).await;
    let deadline = Instant::now() + WAIT;
    let said = loop {
        if let Ok(l) = watch.err.try_recv()
            && l.contains("reconnecting")
        {
            break l;
        }
        assert!(Instant::now() < deadline, "watch says it reconnects");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(said.contains("from cursor"), "{said}");
    center.restart_api().await;
    let resumed = watch.line().await;
    assert!(
        resumed.contains("inc-000002") && resumed.contains("p-2"),
        "the change made while disconnected, and not the snapshot again: {resumed}"
    );
    let (status, rest) = watch.exit().await;
    assert!(status.success(), "{status:?}");
    assert!(rest.is_empty(), "nothing after the third update: {rest:?}");
    center.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_falls_behind_resyncs_and_misses_nothing() {
    let center = Center::start().await;
    let alice = center.flags(Role::Analyst, "alice");
    let watch = Watcher::start(&args(&alice, &["watch"]));
    let complete = watch.line().await;
    assert!(
        complete.starts_with("-- live changes follow (cursor "),
        "{complete}"
    );
    // While nobody reads its output, far more changes than the server's
    // feed (1024), the client's HTTP/2 windows (hyper's defaults: 2 MiB a
    // stream, some 7000 items), the pipe and the line channel together
    // hold: one new incident at each of n posts. The watcher blocks on its
    // full stdout meanwhile. (12 000 was too close to that sum: the feed
    // hub, which trails the commits a little, sometimes had not published
    // enough by the time reading began.)
    let n: u64 = 40_000;
    let t = now_secs();
    let started = Instant::now();
    center
        .submit_all(
            (1..=n)
                .map(|i| vec![alarm(&format!("p-{i}"), 1, 1, t)])
                .collect(),
        )
        .await;
    eprintln!("{n} incidents committed in {:?}", started.elapsed());

    // Now read: every incident exactly once, with a resync on the way.
    let mut seen = std::collections::BTreeSet::new();
    let mut resynced = false;
    while (seen.len() as u64) < n {
        let line = watch.line().await;
        if line.starts_with("-- resynchronising") {
            resynced = true;
            continue;
        }
        let id = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("a feed line: {line}"))
            .to_owned();
        assert!(seen.insert(id), "repeated: {line}");
    }
    assert!(resynced, "it fell behind");
    let said: Vec<String> = watch.err.try_iter().collect();
    assert!(
        said.iter()
            .any(|l| l.contains("fell behind the feed; resuming from cursor")),
        "{said:?}"
    );
    let mut child = watch.child;
    child.kill().unwrap();
    child.wait().unwrap();
    center.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_is_refused_and_watch_gives_up_at_once() {
    let mut center = Center::start().await;
    center.issue(Role::Analyst, "mallory");
    let mallory = vigil_pki::Identity::new("mallory").unwrap();
    vigil_pki::authority::revoke(&center.pki, &mallory).unwrap();
    // The API reads the CRL when it starts.
    center.stop_api().await;
    center.restart_api().await;
    let flags = center.flags(Role::Analyst, "mallory");
    for cmd in [vec!["incidents"], vec!["watch"]] {
        let out = run_vigil(args(&flags, &cmd), vec![]).await;
        assert_eq!(out.status.code(), Some(1), "{cmd:?}");
        let err = stderr(&out);
        // With TLS 1.3 the server's alert is lost to its TCP reset; the
        // client can only say what probably happened.
        assert!(
            err.contains("without answering") && err.contains("may have refused your certificate"),
            "{cmd:?}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{cmd:?}: {err}");
    }
    center.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_for_scripts_with_a_post_filter_and_a_cursor() {
    let center = Center::start().await;
    let t = now_secs();
    center.submit(vec![alarm("p-1", 1, 1, t)]).await;
    center.submit(vec![alarm("p-2", 1, 7, t)]).await;
    let alice = center.flags(Role::Analyst, "alice");
    let pool = pool();
    let updates = |text: &str| -> Vec<vigil_proto::v1::FeedItem> {
        text.lines()
            .map(|l| from_json(&pool, "FeedItem", l))
            .filter(|i: &vigil_proto::v1::FeedItem| {
                matches!(i.item, Some(vigil_proto::v1::feed_item::Item::Update(_)))
            })
            .collect()
    };
    let id = |i: &vigil_proto::v1::FeedItem| match &i.item {
        Some(vigil_proto::v1::feed_item::Item::Update(u)) => {
            u.incident.as_ref().unwrap().id.clone()
        }
        _ => unreachable!(),
    };

    // The snapshot of one post only, as JSON lines.
    let out = run_vigil(
        args(
            &alice,
            &["watch", "--json", "--post", "p-2", "--count", "1"],
        ),
        vec![],
    )
    .await;
    assert!(out.status.success());
    let got = updates(&stdout(&out));
    assert_eq!(got.len(), 1);
    assert_eq!(id(&got[0]), "inc-000002");

    // From a cursor: only what changed after it.
    let out = run_vigil(args(&alice, &["watch", "--json", "--count", "2"]), vec![]).await;
    let snapshot = updates(&stdout(&out));
    assert_eq!(snapshot.len(), 2);
    let last = stdout(&out).lines().next_back().unwrap().to_owned();
    let cursor = serde_json::from_str::<serde_json::Value>(&last).unwrap()["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        run_vigil(args(&alice, &["note", "inc-000001", "seen"]), vec![])
            .await
            .status
            .success()
    );
    let out = run_vigil(
        args(
            &alice,
            &["watch", "--json", "--cursor", &cursor, "--count", "1"],
        ),
        vec![],
    )
    .await;
    let got = updates(&stdout(&out));
    assert_eq!(got.len(), 1);
    assert_eq!(id(&got[0]), "inc-000001");
    assert!(got[0].cursor.parse::<u64>().unwrap() > cursor.parse::<u64>().unwrap());
    center.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_for_people_orders_by_priority_and_says_its_cursor() {
    let center = Center::start().await;
    let t = now_secs();
    // A burglary (P2) first, then a fire (P1) at another post.
    center.submit(vec![alarm("p-1", 1, 1, t)]).await;
    let mut fire = alarm("p-2", 1, 4, t + 1);
    fire.category = vigil_proto::v1::EventCategory::Fire as i32;
    center.submit(vec![fire]).await;
    let alice = center.flags(Role::Analyst, "alice");
    assert!(
        run_vigil(args(&alice, &["ack", "inc-000001"]), vec![])
            .await
            .status
            .success()
    );

    // Not a terminal: no colour codes. The two incidents of the snapshot.
    let out = run_vigil(args(&alice, &["watch", "--count", "2"]), vec![]).await;
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(!text.contains('\x1b'), "{text:?}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    // The fire first, though it opened later; each says how it stands.
    assert!(
        lines[0].contains("inc-000002") && lines[0].contains("P1"),
        "{text}"
    );
    assert!(lines[1].contains("inc-000001"), "{text}");
    assert!(lines[1].contains("acknowledged"), "{text}");
    assert!(!text.contains("(open)"), "{text}");

    // A live change after the snapshot: the watch ends with its cursor,
    // and resuming from it shows only what came later.
    let mut watch = Watcher::start(&args(&alice, &["watch", "--count", "3"]));
    for _ in 0..2 {
        watch.line().await;
    }
    let complete = watch.line().await;
    assert!(complete.starts_with("-- live changes follow"), "{complete}");
    assert!(
        run_vigil(args(&alice, &["note", "inc-000002", "calling"]), vec![])
            .await
            .status
            .success()
    );
    let live = watch.line().await;
    assert!(
        live.contains("inc-000002") && live.contains("(note added)"),
        "{live}"
    );
    // Its stderr, read to the end once it has exited.
    let err = std::mem::replace(&mut watch.err, std_mpsc::channel().1);
    let (status, _) = watch.exit().await;
    assert!(status.success());
    let said: Vec<String> = std::iter::from_fn(|| err.recv_timeout(WAIT).ok()).collect();
    let resume = said
        .iter()
        .find_map(|l| l.split_once("resume with: vigil watch --cursor "))
        .map(|(_, c)| c.trim().to_owned())
        .unwrap_or_else(|| panic!("no cursor in {said:?}"));
    assert!(
        run_vigil(args(&alice, &["note", "inc-000001", "later"]), vec![])
            .await
            .status
            .success()
    );
    let out = run_vigil(
        args(&alice, &["watch", "--cursor", &resume, "--count", "1"]),
        vec![],
    )
    .await;
    assert!(out.status.success());
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(
        lines[0].contains("inc-000001") && lines[0].contains("(note added)"),
        "only what came after the cursor: {text}"
    );
    center.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_analysts_acking_at_once_one_wins_the_other_sees_who() {
    let center = Center::start().await;
    center.submit(vec![alarm("p-1", 1, 1, now_secs())]).await;
    let ack = |id: &str| {
        run_vigil(
            args(
                &center.flags(Role::Analyst, id),
                &["ack", "inc-000001", "--version", "1"],
            ),
            vec![],
        )
    };
    let (a, b) = tokio::join!(ack("alice"), ack("bob"));
    let (won, lost) = match (a.status.success(), b.status.success()) {
        (true, false) => ("alice", &b),
        (false, true) => ("bob", &a),
        other => panic!("exactly one wins: {other:?}"),
    };
    assert_eq!(lost.status.code(), Some(1));
    assert!(
        stderr(lost).contains(&format!("acknowledged by {won}")),
        "{}",
        stderr(lost)
    );
    assert_eq!(incident(&center, "inc-000001").acknowledged_by, won);
    center.stop().await;
}
