//! `kill -9` of a gateway process at the worst moment — right after it
//! ACKed a panel — loses nothing: after a restart every ACKed alarm reaches
//! the operations center, exactly once.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use tokio_util::sync::CancellationToken;
use vigil_ops::store::Store;
use vigil_proto::v1::event;
use vigil_sim::panel::{self as simulator, PanelConfig};
use vigil_tests::{Region, WAIT, eventually, open_store, webhook::Receiver};

/// A free loopback port for TCP and UDP.
async fn free_port() -> SocketAddr {
    let (tcp, udp) = vigil_gateway::receiver::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = tcp.local_addr().unwrap();
    drop((tcp, udp));
    addr
}

fn spawn_gateway(config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["gateway", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start vigil gateway")
}

async fn wait_listening(addr: SocketAddr) {
    eventually("gateway listening", || {
        std::net::TcpStream::connect(addr).is_ok()
    })
    .await;
}

/// One message from panel 1234 with sequence `seq`; returns its data block
/// if the gateway ACKed it.
async fn send_one(dc09: SocketAddr, seq: u16) -> Option<String> {
    let mut config = PanelConfig::new(dc09.to_string(), "1234");
    config.count = Some(1);
    config.first_seq = seq;
    config.seed = Some(u64::from(seq));
    config.retries = 0;
    config.ack_timeout = Duration::from_secs(5);
    let summary = simulator::run(config, CancellationToken::new())
        .await
        .ok()?;
    summary
        .acked_events()
        .find(|id| id.token != vigil_dc09::Token::Null)
        .map(|id| id.payload.clone())
}

/// Unreceipted events left in the gateway's outbox (read from its file).
fn outbox_depth(data_dir: &Path) -> Option<i64> {
    let conn = rusqlite::Connection::open_with_flags(
        data_dir.join("outbox.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .ok()?;
    conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_right_after_an_ack_loses_nothing() {
    let region = Region::new();
    let broker = region.start_broker("127.0.0.1:0".parse().unwrap()).await;
    let ops = region.start_ops(broker.addr()).await;
    let dc09 = free_port().await;
    let config = region.write_gateway_config("p-1", broker.addr(), dc09, "");

    let mut acked = BTreeSet::new();
    let mut seq = 1u16;
    for round in 0..4 {
        let mut child = spawn_gateway(&config);
        wait_listening(dc09).await;
        // A few messages, then kill -9 the instant the last one is ACKed.
        for _ in 0..(3 + round) {
            if let Some(payload) = send_one(dc09, seq).await {
                acked.insert((seq, payload));
            }
            seq += 1;
        }
        child.kill().expect("kill -9");
        child.wait().expect("reap");
    }
    assert!(acked.len() >= 10, "the panel got ACKs: {}", acked.len());

    // Restarted for good: what was ACKed and not yet receipted goes out.
    let mut child = spawn_gateway(&config);
    wait_listening(dc09).await;
    let data_dir = region.path("p-1-data");
    eventually("outbox drained by receipts", || {
        outbox_depth(&data_dir) == Some(0)
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let data = tokio::time::timeout(WAIT, ops.stop())
        .await
        .expect("ops stops");
    broker.stop().await;

    let store = open_store(&data);
    let events: Vec<_> = store
        .events("p-1", 1, 10_000)
        .unwrap()
        .into_iter()
        .filter_map(|s| s.event)
        .collect();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "gap-free, each once"
    );
    let stored: BTreeSet<(u16, String)> = events
        .iter()
        .filter_map(|e| match &e.body {
            Some(event::Body::Alarm(a)) => {
                let payload = a
                    .raw_data
                    .split_once('|')
                    .map_or(a.raw_data.as_str(), |(_, p)| p);
                Some((a.dc09_sequence as u16, payload.to_owned()))
            }
            _ => None,
        })
        .collect();
    for item in &acked {
        assert!(
            stored.contains(item),
            "ACKed {item:?} was lost; stored {stored:?}"
        );
    }
}

fn spawn_ops(config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["ops", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start vigil ops")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_ops_center_mid_ingest_loses_and_duplicates_nothing() {
    let region = Region::new();
    let broker = region.start_broker("127.0.0.1:0".parse().unwrap()).await;
    let gateway = region.start_gateway("p-1", broker.addr(), "").await;
    let ops_config = region.write_ops_config(broker.addr());

    // Panels keep sending while the operations center is killed and
    // restarted underneath them.
    let dc09 = gateway.dc09;
    let panel = tokio::spawn(async move {
        let mut config = PanelConfig::new(dc09.to_string(), "1234");
        config.count = Some(120);
        config.interval = Duration::from_millis(10);
        simulator::run(config, CancellationToken::new())
            .await
            .expect("panel")
    });
    for pause_ms in [150u64, 400, 250] {
        let mut ops = spawn_ops(&ops_config);
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        ops.kill().expect("kill -9");
        ops.wait().expect("reap");
    }
    let summary = tokio::time::timeout(WAIT, panel)
        .await
        .expect("panel ends")
        .unwrap();
    assert_eq!(summary.counts.failed, 0, "{summary}");

    // A last run of the operations center, in process, to the end.
    let ops = region.start_ops(broker.addr()).await;
    eventually("every event receipted", || {
        let (last, receipted, depth) = gateway.outbox();
        last > 0 && receipted == last && depth == 0
    })
    .await;
    let (last, ..) = gateway.outbox();
    gateway.stop().await;
    let data = ops.stop().await;
    broker.stop().await;

    let store = open_store(&data);
    let seqs: Vec<u64> = store
        .events("p-1", 1, 10_000)
        .unwrap()
        .into_iter()
        .filter_map(|s| s.event.map(|e| e.seq))
        .collect();
    assert_eq!(
        seqs,
        (1..=last).collect::<Vec<_>>(),
        "stored exactly once, gap-free"
    );
    assert_eq!(store.durable_through("p-1").unwrap(), last);
}

/// Each request's delivery id and the status it was answered with.
fn deliveries(hook: &Receiver) -> Vec<(String, u16)> {
    hook.got()
        .into_iter()
        .map(|g| (g.delivery, g.status))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_a_notification_pending_delivers_it_after_the_restart() {
    let region = Region::new();
    let broker = region.start_broker("127.0.0.1:0".parse().unwrap()).await;
    let gateway = region.start_gateway("p-1", broker.addr(), "").await;
    let hook = Receiver::start(&[], false, None).await;
    hook.answer(503);
    std::fs::write(region.path("hook.secret"), "kill-9-secret").unwrap();
    let notify = format!(
        "[[notify.webhook]]\nname = \"pager\"\nurl = \"{}\"\nsecret_file = \"hook.secret\"\n\
         events = [\"opened\"]\nretry_initial_ms = 50\nretry_max_secs = 1\n",
        hook.url
    );
    let ops_config = region.write_ops_config(broker.addr());
    let text = vigil_tests::merge_toml(&std::fs::read_to_string(&ops_config).unwrap(), &notify);
    std::fs::write(&ops_config, text).unwrap();

    // The ops center opens an incident and tries its notification, which
    // the receiver refuses for now (503: tried again), and is killed.
    let mut ops = spawn_ops(&ops_config);
    struct Kill<'a>(&'a mut Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let guard = Kill(&mut ops);
    // A mixed panel: burglary, fire and panic alarms among others, each a
    // new incident and so a notification.
    let mut panel = PanelConfig::new(gateway.dc09.to_string(), "1234");
    panel.count = Some(20);
    panel.interval = Duration::from_millis(10);
    let summary = simulator::run(panel, CancellationToken::new())
        .await
        .expect("panel");
    assert_eq!(summary.counts.failed, 0, "{summary}");
    eventually("a notification tried", || !deliveries(&hook).is_empty()).await;
    drop(guard);
    let before = deliveries(&hook);
    assert!(
        before.iter().all(|(d, code)| d.len() == 32 && *code == 503),
        "{before:?}"
    );
    let tried: BTreeSet<String> = before.into_iter().map(|(d, _)| d).collect();

    // Restarted (in process), with the receiver taking them now: each one
    // tried before is delivered, once.
    hook.answer(200);
    let ops = region.start_ops_with(broker.addr(), &notify).await;
    eventually("delivered after the restart", || {
        let ok: BTreeSet<String> = deliveries(&hook)
            .into_iter()
            .filter(|(_, code)| *code == 200)
            .map(|(d, _)| d)
            .collect();
        tried.is_subset(&ok)
    })
    .await;
    // Whatever the gateway sends again after the restart may open more
    // incidents: wait for every event, then for an empty queue.
    eventually("every event receipted", || gateway.all_receipted()).await;
    eventually("nothing left waiting", || {
        open_store(&ops.data_dir)
            .notification_count(vigil_ops::store::NotifyState::Pending)
            .unwrap()
            == 0
    })
    .await;
    // The ops center first: a gateway going away opens an incident (post
    // offline), whose notification would still be waiting.
    let data = ops.stop().await;
    gateway.stop().await;
    broker.stop().await;
    let store = open_store(&data);
    use vigil_ops::store::NotifyState;
    let delivered = store
        .notifications(NotifyState::Delivered, None, 1000)
        .unwrap();
    let stored: BTreeSet<String> = delivered.iter().map(|n| n.delivery.clone()).collect();
    assert_eq!(stored.len(), delivered.len(), "one row per delivery id");
    assert!(tried.is_subset(&stored));
    // Each delivered exactly once (one 200 per delivery id).
    let oks: Vec<String> = deliveries(&hook)
        .into_iter()
        .filter(|(_, code)| *code == 200)
        .map(|(d, _)| d)
        .collect();
    assert_eq!(oks.len(), stored.len(), "{oks:?}");
    assert!(
        store
            .notifications(NotifyState::Pending, None, 10)
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .notifications(NotifyState::Failed, None, 10)
            .unwrap()
            .is_empty()
    );
}
