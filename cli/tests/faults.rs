//! The fault suite's `kill -9` scenarios: the real `vigil broker`, `vigil
//! gateway` and `vigil ops` processes are killed at random points while
//! simulated panels keep sending, then restarted. Each run ends with the
//! accounting of `vigil_tests::faults` (attempted, ACKed, stored, lost,
//! duplicated) and asserts lost = 0 and duplicated = 0.
//!
//! `VIGIL_FAULT_SEED=N` replays a run, `VIGIL_FAULT_LONG=1` makes it long.

use std::{net::SocketAddr, path::Path, sync::atomic::Ordering, time::Duration};

use rand::Rng;
use vigil_tests::{
    Region,
    faults::{
        Accounting, Daemon, FaultProxy, LinkMode, accounts_toml, eventually_within, iterations,
        join_panels, ms, outbox_on_disk, seeded_rng, spawn_fleet,
    },
    open_store,
};

/// How long the backlog may take to drain once the faults stop.
const DRAIN: Duration = Duration::from_secs(90);

fn vigil() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vigil"))
}

/// A loopback port free for TCP and UDP a moment ago.
async fn free_port() -> SocketAddr {
    let (tcp, udp) = vigil_gateway::receiver::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = tcp.local_addr().unwrap();
    drop((tcp, udp));
    addr
}

async fn listening(addr: SocketAddr, what: &str) {
    eventually_within(what, Duration::from_secs(30), || {
        std::net::TcpStream::connect(addr).is_ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_killed_at_random_points() {
    let (seed, mut rng) = seeded_rng("gateway kill -9");
    let region = Region::new();
    let broker = region.start_broker("127.0.0.1:0".parse().unwrap()).await;
    let ops = region.start_ops(broker.addr()).await;
    let dc09 = free_port().await;
    let accounts = ["1234", "1235", "1236"];
    let config = region.write_gateway_config("p-1", broker.addr(), dc09, &accounts_toml(&accounts));

    let mut gateway = Daemon::spawn(vigil(), "gateway", &config);
    listening(dc09, "gateway listening").await;
    let count = iterations(150, 2000);
    let panels = spawn_fleet(dc09, &accounts, count, 15..30, 0, &mut rng, |i, c| {
        if i == 2 {
            // An impatient panel: gives up at the first trouble, so a kill
            // between commit and ACK leaves a stored, unACKed message
            // (allowed) instead of a retransmission.
            c.retries = 0;
        }
    });

    // Random points: mid-commit, right after an ACK, mid-publish, while a
    // receipt is applied — wherever the clock happens to fall.
    let kills = iterations(5, 50);
    for _ in 0..kills {
        tokio::time::sleep(ms(&mut rng, 100..1200)).await;
        gateway.kill9();
        tokio::time::sleep(ms(&mut rng, 0..400)).await;
        gateway = Daemon::spawn(vigil(), "gateway", &config);
        listening(dc09, "gateway listening after restart").await;
    }

    let summaries = join_panels(panels).await;
    let data_dir = region.path("p-1-data");
    eventually_within("outbox drained by receipts", DRAIN, || {
        outbox_on_disk(&data_dir).is_some_and(|(last, depth)| last > 0 && depth == 0)
    })
    .await;
    // Everything is receipted, so one more kill -9 loses nothing either.
    gateway.kill9();
    let (last, _) = outbox_on_disk(&data_dir).expect("outbox");
    let data = ops.stop().await;
    broker.stop().await;

    let store = open_store(&data);
    let mut report = Accounting::new("gateway kill -9", seed);
    report.note(format!(
        "{kills} kill -9 of `vigil gateway`, each restarted"
    ));
    report.add_post(&store, "p-1", &summaries, Some(last));
    report.check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_center_killed_at_random_points() {
    let (seed, mut rng) = seeded_rng("ops kill -9");
    let region = Region::new();
    let broker = region.start_broker("127.0.0.1:0".parse().unwrap()).await;
    let accounts = ["1234", "1235"];
    let gw = region
        .start_gateway("p-1", broker.addr(), &accounts_toml(&accounts))
        .await;
    let ops_config = region.write_ops_config(broker.addr());
    let count = iterations(150, 2000);
    let panels = spawn_fleet(gw.dc09, &accounts, count, 15..30, 0, &mut rng, |_, _| {});

    let kills = iterations(5, 50);
    for _ in 0..kills {
        let ops = Daemon::spawn(vigil(), "ops", &ops_config);
        tokio::time::sleep(ms(&mut rng, 100..1500)).await;
        ops.kill9();
        tokio::time::sleep(ms(&mut rng, 0..400)).await;
    }
    let ops = Daemon::spawn(vigil(), "ops", &ops_config);

    let summaries = join_panels(panels).await;
    eventually_within("every event receipted", DRAIN, || {
        let (last, receipted, depth) = gw.outbox();
        last > 0 && receipted == last && depth == 0
    })
    .await;
    // A receipt follows the commit, so this last kill loses nothing.
    ops.kill9();
    let (last, ..) = gw.outbox();
    let resends = gw.metrics.publisher.resends.load(Ordering::Relaxed);
    gw.stop().await;
    broker.stop().await;

    let store = open_store(&region.path("ops-data"));
    let mut report = Accounting::new("ops center kill -9", seed);
    report.note(format!(
        "{kills} kill -9 of `vigil ops` (and one at the end); the gateway re-sent {resends} times"
    ));
    report.add_post(&store, "p-1", &summaries, Some(last));
    report.check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_at_random_points() {
    let (seed, mut rng) = seeded_rng("broker kill -9");
    let region = Region::new();
    let addr = free_port().await;
    let broker_config = region.write_broker_config(addr);
    let mut broker = Daemon::spawn(vigil(), "broker", &broker_config);
    listening(addr, "broker listening").await;
    let ops = region.start_ops(addr).await;
    let posts = [("p-1", ["1234", "1235"]), ("p-2", ["2234", "2235"])];
    let count = iterations(150, 2000);
    let mut gateways = Vec::new();
    let mut panels = Vec::new();
    for (post, accounts) in posts {
        let gw = region
            .start_gateway(post, addr, &accounts_toml(&accounts))
            .await;
        let first = 2 * panels.len();
        panels.push(spawn_fleet(
            gw.dc09,
            &accounts,
            count,
            15..30,
            first,
            &mut rng,
            |_, _| {},
        ));
        gateways.push(gw);
    }

    let kills = iterations(4, 40);
    for _ in 0..kills {
        tokio::time::sleep(ms(&mut rng, 200..1200)).await;
        broker.kill9();
        tokio::time::sleep(ms(&mut rng, 0..600)).await;
        broker = Daemon::spawn(vigil(), "broker", &broker_config);
        listening(addr, "broker listening after restart").await;
    }

    let mut summaries = Vec::new();
    for mine in panels {
        summaries.push(join_panels(mine).await);
    }
    let mut lasts = Vec::new();
    for gw in &gateways {
        eventually_within("backlog receipted", DRAIN, || {
            let (last, receipted, depth) = gw.outbox();
            last > 0 && receipted == last && depth == 0
        })
        .await;
        lasts.push(gw.outbox().0);
    }
    let resends: u64 = gateways
        .iter()
        .map(|g| g.metrics.publisher.resends.load(Ordering::Relaxed))
        .sum();
    for gw in gateways {
        gw.stop().await;
    }
    let data = ops.stop().await;
    broker.kill9();

    let store = open_store(&data);
    let mut report = Accounting::new("broker kill -9", seed);
    report.note(format!(
        "{kills} kill -9 of `vigil broker`, each restarted on the same port; gateways re-sent {resends} times"
    ));
    for (((post, _), summaries), last) in posts.iter().zip(&summaries).zip(lasts) {
        report.add_post(&store, post, summaries, Some(last));
    }
    report.check();
}

/// Every nemesis at once, Jepsen style: each step picks one of `kill -9`
/// of the broker, the gateway or the operations center (each restarted
/// after a random pause), or a fault on the gateway↔broker link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_faults_on_every_part() {
    let (seed, mut rng) = seeded_rng("mixed nemesis");
    let region = Region::new();
    let broker_addr = free_port().await;
    let broker_config = region.write_broker_config(broker_addr);
    let mut broker = Daemon::spawn(vigil(), "broker", &broker_config);
    listening(broker_addr, "broker listening").await;
    let ops_config = region.write_ops_config(broker_addr);
    let mut ops = Daemon::spawn(vigil(), "ops", &ops_config);
    let proxy = FaultProxy::start(broker_addr).await;
    let dc09 = free_port().await;
    let accounts = ["1234", "1235", "1236"];
    let gateway_config =
        region.write_gateway_config("p-1", proxy.addr(), dc09, &accounts_toml(&accounts));
    let mut gateway = Daemon::spawn(vigil(), "gateway", &gateway_config);
    listening(dc09, "gateway listening").await;

    let count = iterations(200, 2000);
    let panels = spawn_fleet(dc09, &accounts, count, 15..30, 0, &mut rng, |_, _| {});

    let steps = iterations(8, 80);
    let mut done = [0u32; 4];
    for _ in 0..steps {
        tokio::time::sleep(ms(&mut rng, 100..900)).await;
        let pause = ms(&mut rng, 0..500);
        let pick = rng.random_range(0..4);
        done[pick] += 1;
        match pick {
            0 => {
                broker.kill9();
                tokio::time::sleep(pause).await;
                broker = Daemon::spawn(vigil(), "broker", &broker_config);
                listening(broker_addr, "broker listening after restart").await;
            }
            1 => {
                gateway.kill9();
                tokio::time::sleep(pause).await;
                gateway = Daemon::spawn(vigil(), "gateway", &gateway_config);
                listening(dc09, "gateway listening after restart").await;
            }
            2 => {
                ops.kill9();
                tokio::time::sleep(pause).await;
                ops = Daemon::spawn(vigil(), "ops", &ops_config);
            }
            _ => {
                let mode = if rng.random_bool(0.5) {
                    LinkMode::Refuse
                } else {
                    LinkMode::Blackhole
                };
                proxy.set(mode);
                if mode == LinkMode::Refuse {
                    proxy.cut();
                }
                tokio::time::sleep(pause * 3).await;
                proxy.set(LinkMode::Pass);
            }
        }
    }

    let summaries = join_panels(panels).await;
    let data_dir = region.path("p-1-data");
    eventually_within("outbox drained by receipts", DRAIN, || {
        outbox_on_disk(&data_dir).is_some_and(|(last, depth)| last > 0 && depth == 0)
    })
    .await;
    let (last, _) = outbox_on_disk(&data_dir).expect("outbox");
    gateway.kill9();
    ops.kill9();
    broker.kill9();

    let store = open_store(&region.path("ops-data"));
    let mut report = Accounting::new("mixed nemesis", seed);
    report.note(format!(
        "{steps} faults: {} broker kill -9, {} gateway kill -9, {} ops kill -9, {} link faults",
        done[0], done[1], done[2], done[3]
    ));
    report.add_post(&store, "p-1", &summaries, Some(last));
    report.check();
}
