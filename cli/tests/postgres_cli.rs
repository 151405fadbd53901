//! `vigil ops` on PostgreSQL as an operator runs it: `kill -9` of the
//! leading process with a second one standing by, and `--import-sqlite`.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;
use vigil_ops::store::{Backend, PostgresBackend};
use vigil_sim::panel::{self as simulator, PanelConfig};
use vigil_tests::{
    Region, eventually, merge_toml,
    postgres::{Postgres, most_incidents_per_event, stored_seqs},
};

fn spawn_ops(config: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["ops", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start vigil ops")
}

/// The pid in the lease holder's name (`IDENTITY/PID/RANDOM`), if the
/// lease is live.
fn leader_pid(backend: &PostgresBackend) -> Option<u32> {
    let (holder, _, live) = backend.leader().ok()??;
    live.then(|| holder.split('/').nth(1)?.parse().ok())?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_leading_replica_loses_nothing() {
    let Some(pg) = Postgres::start() else { return };
    let url = pg.create_db();
    let region = Region::new();
    let broker = region.start_broker("127.0.0.1:0".parse().unwrap()).await;
    let base = std::fs::read_to_string(region.write_ops_config(broker.addr())).unwrap();
    let config = region.path("ops-replica.toml");
    std::fs::write(
        &config,
        merge_toml(
            &base,
            &format!("[store]\nurl = \"{url}\"\nlease_secs = 2\n"),
        ),
    )
    .unwrap();
    let backend = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || PostgresBackend::open(&url).unwrap())
            .await
            .unwrap()
    };
    let leader = |b: &PostgresBackend| {
        let b = b.clone();
        std::thread::spawn(move || leader_pid(&b)).join().unwrap()
    };

    let mut first = spawn_ops(&config);
    eventually("the first process leads", || {
        leader(&backend) == Some(first.id())
    })
    .await;
    let mut second = spawn_ops(&config);
    let gw = region.start_gateway("p-1", broker.addr(), "").await;

    let mut panel = PanelConfig::new(gw.dc09.to_string(), "1234");
    panel.count = Some(80);
    panel.interval = Duration::from_millis(25);
    panel.seed = Some(7);
    let sending = tokio::spawn(simulator::run(panel, CancellationToken::new()));
    eventually("the leader receipts", || gw.outbox().1 >= 10).await;

    // SIGKILL: no shutdown, no lease given back.
    first.kill().unwrap();
    first.wait().unwrap();
    let killed = Instant::now();
    eventually("the standby leads", || {
        leader(&backend) == Some(second.id())
    })
    .await;
    eprintln!("standby leading {:?} after the kill", killed.elapsed());

    let summary = sending.await.unwrap().expect("panel ran");
    assert_eq!(summary.counts.failed, 0, "{summary}");
    eventually("everything receipted", || gw.all_receipted()).await;
    let (last, ..) = gw.outbox();

    gw.stop().await;
    let _ = Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status();
    let status = second.wait().unwrap();
    assert!(
        status.success(),
        "the standby-turned-leader stops cleanly: {status}"
    );
    broker.stop().await;

    let (seqs, max_links) = tokio::task::spawn_blocking(move || {
        (stored_seqs(&url, "p-1"), most_incidents_per_event(&url))
    })
    .await
    .unwrap();
    assert_eq!(
        seqs,
        (1..=last).collect::<Vec<_>>(),
        "lost = 0, duplicated = 0"
    );
    assert!(max_links <= 1, "an event joined {max_links} incidents");
    drop(pg);
}

/// `vigil ops --import-sqlite DIR` copies a SQLite store into the database
/// of `[store] url` once, says what it copied, and refuses a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_sqlite_fills_a_new_database_once() {
    use vigil_ops::store::{Received, SqliteBackend};
    let Some(pg) = Postgres::start() else { return };
    let url = pg.create_db();
    let region = Region::new();
    let old = region.path("old-ops-data");
    {
        let sqlite = SqliteBackend::open(&old).unwrap();
        let mut w = sqlite.writer().unwrap();
        let mut tx = w.begin().unwrap();
        let events: Vec<Received> = (1..=3)
            .map(|seq| {
                vigil_proto::v1::Event {
                    post_id: "p-1".into(),
                    seq,
                    // The kind goes over with the event (seq 2 is health).
                    body: (seq == 2)
                        .then(|| vigil_proto::v1::event::Body::Health(Default::default())),
                    ..Default::default()
                }
                .into()
            })
            .collect();
        tx.insert_events("p-1", &events, std::time::SystemTime::now())
            .unwrap();
        tx.commit().unwrap();
    }
    let base =
        std::fs::read_to_string(region.write_ops_config("127.0.0.1:1".parse().unwrap())).unwrap();
    let config = region.path("ops-pg.toml");
    std::fs::write(
        &config,
        merge_toml(&base, &format!("[store]\nurl = \"{url}\"\n")),
    )
    .unwrap();
    let import = || {
        Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args([
                "ops",
                "--config",
                config.to_str().unwrap(),
                "--import-sqlite",
            ])
            .arg(&old)
            .output()
            .unwrap()
    };
    let first = import();
    assert!(first.status.success(), "{first:?}");
    let said = String::from_utf8_lossy(&first.stdout);
    assert!(said.contains("1 posts, 3 events"), "{said}");
    let second = import();
    assert!(!second.status.success());
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(said.contains("not empty"), "{said}");
    let backend = tokio::task::spawn_blocking(move || PostgresBackend::open(&url).unwrap())
        .await
        .unwrap();
    let (durable, health) = tokio::task::spawn_blocking(move || {
        let reader = backend.reader().unwrap();
        let filter = vigil_ops::store::ReceivedFilter {
            kinds: vec![vigil_proto::v1::EventKind::Health as i32],
            ..Default::default()
        };
        let health: Vec<u64> = reader
            .events_received(&filter, None, 10)
            .unwrap()
            .iter()
            .map(|(k, _)| k.seq)
            .collect();
        (reader.durable_through("p-1").unwrap(), health)
    })
    .await
    .unwrap();
    assert_eq!(durable, 3);
    assert_eq!(health, [2]);
    drop(pg);
}

/// `vigil watch --server A,B` with two replicas: when the process behind A
/// is killed with SIGKILL, the watch moves on to B, resumes from its cursor
/// and goes on printing the region's new incidents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_moves_to_another_replica_when_its_own_dies() {
    use std::io::{BufRead, BufReader};
    let Some(pg) = Postgres::start() else { return };
    let url = pg.create_db();
    let region = Region::new();
    let broker = region.start_broker("127.0.0.1:0".parse().unwrap()).await;
    let base = std::fs::read_to_string(region.write_ops_config(broker.addr())).unwrap();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (a, b) = (free(), free());
    let config = |name: &str, api: std::net::SocketAddr| {
        let path = region.path(name);
        std::fs::write(
            &path,
            merge_toml(
                &base,
                &format!("[store]\nurl = \"{url}\"\nlease_secs = 2\n[api]\nlisten = \"{api}\"\n"),
            ),
        )
        .unwrap();
        path
    };
    /// Killed when dropped, also when an assertion fails.
    struct Killed(Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut first = Killed(spawn_ops(&config("ops-a.toml", a)));
    let second = Killed(spawn_ops(&config("ops-b.toml", b)));
    for api in [a, b] {
        eventually("both replicas serve their API", || {
            std::net::TcpStream::connect(api).is_ok()
        })
        .await;
    }
    let gw = region.start_gateway("p-1", broker.addr(), "").await;
    region.issue(vigil_pki::Role::Analyst, "alice");
    let pki = region.path("pki");
    let mut watch = Killed(
        Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["watch", "--server", &format!("{a},{b}")])
            .env("VIGIL_CA", pki.join("ca.pem"))
            .env("VIGIL_CERT", pki.join("alice.pem"))
            .env("VIGIL_KEY", pki.join("alice.key"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start vigil watch"),
    );
    let lines = |out: Box<dyn std::io::Read + Send>| {
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        rx
    };
    let stdout = lines(Box::new(watch.0.stdout.take().unwrap()));
    let stderr = lines(Box::new(watch.0.stderr.take().unwrap()));
    let wait_for =
        |rx: &std::sync::mpsc::Receiver<String>, what: &str, want: &dyn Fn(&str) -> bool| {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut seen = Vec::new();
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                match rx.recv_timeout(left) {
                    Ok(line) if want(&line) => return line,
                    Ok(line) => seen.push(line),
                    Err(_) => break,
                }
            }
            panic!("no line with {what} within 60 s; saw:\n{}", seen.join("\n"));
        };
    // The watch on A, whichever replica leads.
    let mut panel = PanelConfig::new(gw.dc09.to_string(), "1234");
    panel.count = Some(3);
    panel.interval = Duration::from_millis(50);
    panel.seed = Some(3);
    simulator::run(panel, CancellationToken::new())
        .await
        .unwrap();
    wait_for(&stdout, "an incident before the kill", &|l| {
        l.contains("inc-")
    });

    first.0.kill().unwrap();
    first.0.wait().unwrap();
    wait_for(&stderr, "the move to B", &|l| {
        l.contains("now following") && l.contains(&b.to_string())
    });
    // A new incident, opened after the kill (by B, leading by then or
    // soon), reaches the watch.
    let mut panel = PanelConfig::new(gw.dc09.to_string(), "1234");
    panel.count = Some(40);
    panel.interval = Duration::from_millis(50);
    panel.first_seq = 100;
    panel.seed = Some(11);
    let sending = tokio::spawn(simulator::run(panel, CancellationToken::new()));
    wait_for(&stdout, "an incident opened after the kill", &|l| {
        l.contains("(opened)")
    });
    drop(watch);
    sending.await.unwrap().unwrap();
    gw.stop().await;
    drop(second);
    broker.stop().await;
    drop(pg);
}
