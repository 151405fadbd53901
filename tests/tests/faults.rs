//! The fault suite, in process: simulated panels dial real gateways over
//! DC-09 while the broker is stopped and restarted, the gateway↔broker link
//! is cut, refused and blackholed, and the gateway's outbox runs out of
//! room. Each run ends with the accounting of `vigil_tests::faults` and
//! asserts lost = 0 and duplicated = 0. The `kill -9` scenarios need the
//! `vigil` binary and live in `cli/tests/faults.rs`.
//!
//! `VIGIL_FAULT_SEED=N` replays a run, `VIGIL_FAULT_LONG=1` makes it long.

use std::{sync::atomic::Ordering, time::Duration};

use rand::Rng;
use vigil_ops::store::Store;
use vigil_proto::v1::PostState;
use vigil_tests::{
    Region, RunningGateway,
    faults::{
        Accounting, FaultProxy, LinkMode, Tmpfs, accounts_toml, eventually_within, fault_panel,
        iterations, join_panels, ms, seeded_rng, spawn_fleet, spawn_panel,
    },
    open_store,
};

/// How long the backlog may take to drain once the faults stop: a resend
/// period, a reconnect backoff or two, and the work itself.
const DRAIN: Duration = Duration::from_secs(90);

async fn drained(gw: &RunningGateway, what: &str) -> u64 {
    eventually_within(what, DRAIN, || {
        let (last, receipted, depth) = gw.outbox();
        last > 0 && receipted == last && depth == 0
    })
    .await;
    gw.outbox().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stopped_and_restarted_while_panels_send() {
    let (seed, mut rng) = seeded_rng("broker restarts");
    let region = Region::new();
    let broker = region.start_broker("127.0.0.1:0".parse().unwrap()).await;
    let addr = broker.addr();
    let ops = region.start_ops(addr).await;
    let posts = [("p-1", ["1234", "1235"]), ("p-2", ["2234", "2235"])];
    let mut gateways = Vec::new();
    let mut panels = Vec::new();
    let count = iterations(120, 1500);
    for (post, accounts) in posts {
        let gw = region
            .start_gateway(post, addr, &accounts_toml(&accounts))
            .await;
        panels.push(spawn_fleet(
            gw.dc09,
            &accounts,
            count,
            15..30,
            panels.len(),
            &mut rng,
            |_, _| {},
        ));
        gateways.push(gw);
    }

    let mut broker = Some(broker);
    let restarts = iterations(4, 40);
    for _ in 0..restarts {
        tokio::time::sleep(ms(&mut rng, 200..900)).await;
        broker.take().expect("running").stop().await;
        tokio::time::sleep(ms(&mut rng, 50..700)).await;
        broker = Some(region.start_broker(addr).await);
    }

    let mut summaries = Vec::new();
    for mine in panels {
        summaries.push(join_panels(mine).await);
    }
    let mut lasts = Vec::new();
    for gw in &gateways {
        lasts.push(drained(gw, "backlog receipted after the restarts").await);
    }
    let resends: u64 = gateways
        .iter()
        .map(|g| g.metrics.publisher.resends.load(Ordering::Relaxed))
        .sum();
    let connects: u64 = gateways
        .iter()
        .map(|g| g.metrics.publisher.connects.load(Ordering::Relaxed))
        .sum();
    for gw in gateways {
        gw.stop().await;
    }
    let data = ops.stop().await;
    broker.take().expect("running").stop().await;

    let store = open_store(&data);
    let mut report = Accounting::new("broker stopped and restarted", seed);
    report.note(format!(
        "{restarts} broker restarts; gateways connected {connects} times, re-sent {resends} times"
    ));
    for (((post, _), summaries), last) in posts.iter().zip(&summaries).zip(lasts) {
        report.add_post(&store, post, summaries, Some(last));
    }
    report.check();
}

/// Two brokers, an operations center on both, and two gateways that list
/// both in opposite orders. Mid-ingest the first broker stops: its gateway
/// fails over to the second. The first comes back, then the second stops:
/// both gateways end on the first, which the operations center still
/// hears (it reconnected by itself). Every ACKed alarm is stored exactly
/// once and every outbox drains, through whichever broker is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_brokers_stopped_while_gateways_fail_over() {
    let (seed, mut rng) = seeded_rng("two brokers");
    let region = Region::new();
    let first = region.start_broker("127.0.0.1:0".parse().unwrap()).await;
    let second = region.start_broker("127.0.0.1:0".parse().unwrap()).await;
    let (a, b) = (first.addr(), second.addr());
    let ops = region.start_ops_on(&[a, b], "").await;
    let posts = [
        ("p-1", ["1234", "1235"], [a, b]),
        ("p-2", ["2234", "2235"], [b, a]),
    ];
    let mut gateways = Vec::new();
    let mut panels = Vec::new();
    let count = iterations(150, 1500);
    for (post, accounts, brokers) in posts {
        let gw = region
            .start_gateway_on(post, &brokers, 5, &accounts_toml(&accounts))
            .await;
        panels.push(spawn_fleet(
            gw.dc09,
            &accounts,
            count,
            15..30,
            panels.len(),
            &mut rng,
            |_, _| {},
        ));
        gateways.push(gw);
    }
    let failovers = |gw: &RunningGateway| gw.metrics.publisher.failovers.load(Ordering::Relaxed);
    // Each gateway is on the first broker of its own list (so one on each)
    // and gets receipts there: the operations center hears both at once.
    for gw in &gateways {
        eventually_within(
            "receipts through each gateway's first broker",
            Duration::from_secs(30),
            || gw.outbox().1 > 0,
        )
        .await;
        assert_eq!(failovers(gw), 0, "both brokers are up: no failover");
        assert_eq!(gw.metrics.publisher.broker.load(Ordering::Relaxed), 0);
    }

    tokio::time::sleep(ms(&mut rng, 300..1200)).await;
    first.stop().await;
    eventually_within(
        "p-1's gateway on its second broker",
        Duration::from_secs(30),
        || {
            let p = &gateways[0].metrics.publisher;
            failovers(&gateways[0]) > 0 && p.broker.load(Ordering::Relaxed) == 1
        },
    )
    .await;
    tokio::time::sleep(ms(&mut rng, 300..1500)).await;
    let first = region.start_broker(a).await;
    tokio::time::sleep(ms(&mut rng, 300..1500)).await;
    second.stop().await;

    let mut summaries = Vec::new();
    for mine in panels {
        summaries.push(join_panels(mine).await);
    }
    let mut lasts = Vec::new();
    for gw in &gateways {
        lasts.push(drained(gw, "backlog receipted through the broker left").await);
    }
    // Only the first broker is left: index 0 of p-1's list, 1 of p-2's.
    for (gw, index) in gateways.iter().zip([0, 1]) {
        assert!(failovers(gw) > 0, "each gateway lost a broker and moved on");
        assert_eq!(gw.metrics.publisher.broker.load(Ordering::Relaxed), index);
    }
    let note = format!(
        "gateways failed over {} and {} times, connected {} and {} times",
        failovers(&gateways[0]),
        failovers(&gateways[1]),
        gateways[0]
            .metrics
            .publisher
            .connects
            .load(Ordering::Relaxed),
        gateways[1]
            .metrics
            .publisher
            .connects
            .load(Ordering::Relaxed),
    );
    for gw in gateways {
        gw.stop().await;
    }
    let data = ops.stop().await;
    first.stop().await;

    let store = open_store(&data);
    let mut report = Accounting::new("one of two brokers stopped", seed);
    report.note(note);
    for (((post, _, _), summaries), last) in posts.iter().zip(&summaries).zip(lasts) {
        report.add_post(&store, post, summaries, Some(last));
    }
    report.check();
}

/// Sends `count` messages from a panel of `account` to `gw` and waits until
/// the outbox has grown and is receipted through its last seq.
async fn sent_and_receipted(gw: &RunningGateway, account: &str, count: u64, what: &str) {
    let (before, ..) = gw.outbox();
    let panel = spawn_panel(fault_panel(
        gw.dc09,
        account,
        count,
        Duration::from_millis(10),
        rand::random(),
    ));
    join_panels(vec![panel]).await;
    eventually_within(what, Duration::from_secs(60), || {
        let (last, receipted, _) = gw.outbox();
        last > before && receipted == last
    })
    .await;
}

/// With several brokers, a broker a post has left may deliver its last will
/// late: here the operations center's link to broker A is down when A
/// publishes p-1's will (retained), and p-1 is ONLINE through broker B by
/// the time the operations center hears A again. That will is of an older
/// connection than the ONLINE already heard, so the post stays ONLINE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_will_from_a_broker_left_behind_does_not_take_the_post_offline() {
    let region = Region::new();
    let a = region.start_broker("127.0.0.1:0".parse().unwrap()).await;
    let b = region.start_broker("127.0.0.1:0".parse().unwrap()).await;
    let ops_link = FaultProxy::start(a.addr()).await;
    let ops = region.start_ops_on(&[ops_link.addr(), b.addr()], "").await;
    let gw_link = FaultProxy::start(a.addr()).await;
    let gw = region
        .start_gateway_on(
            "p-1",
            &[gw_link.addr(), b.addr()],
            5,
            &accounts_toml(&["1234", "1235", "1236"]),
        )
        .await;
    // p-2 is on A only: its traffic shows when the operations center hears
    // A again.
    let marker = region
        .start_gateway("p-2", a.addr(), &accounts_toml(&["1234", "1235"]))
        .await;
    sent_and_receipted(&gw, "1234", 5, "p-1 receipted through A").await;
    sent_and_receipted(&marker, "1234", 5, "p-2 receipted through A").await;
    assert_eq!(gw.metrics.publisher.broker.load(Ordering::Relaxed), 0);

    // The operations center loses A; then p-1 loses A too, and A publishes
    // p-1's will, which only the retained copy keeps.
    ops_link.set(LinkMode::Refuse);
    ops_link.cut();
    eventually_within("the ops link to A down", Duration::from_secs(30), || {
        ops_link.open_connections() == 0
    })
    .await;
    gw_link.set(LinkMode::Refuse);
    gw_link.cut();
    eventually_within("p-1 on B", Duration::from_secs(30), || {
        let p = &gw.metrics.publisher;
        p.broker.load(Ordering::Relaxed) == 1 && p.connects.load(Ordering::Relaxed) >= 2
    })
    .await;
    // Its ONLINE through B went before these events, so it is committed.
    sent_and_receipted(&gw, "1235", 5, "p-1 receipted through B").await;

    // The operations center hears A again: the retained will arrives (and
    // p-2's retained ONLINE, which makes it ask p-2 to re-send).
    let asked = ops.metrics.resend_requests.load(Ordering::Relaxed);
    ops_link.set(LinkMode::Pass);
    eventually_within(
        "the ops session with A back",
        Duration::from_secs(30),
        || ops.metrics.resend_requests.load(Ordering::Relaxed) > asked,
    )
    .await;
    // The retained statuses came before anything p-2 publishes now.
    sent_and_receipted(&marker, "1235", 5, "p-2 receipted through A again").await;

    // The operations center stops first: what it holds is what it heard
    // while p-1 was up.
    let data = ops.stop().await;
    gw.stop().await;
    marker.stop().await;
    a.stop().await;
    b.stop().await;
    let store = open_store(&data);
    let status = store
        .post("p-1")
        .expect("read post")
        .and_then(|p| p.status)
        .expect("p-1 has a status");
    assert_eq!(status.state(), PostState::Online, "{status:?}");
    assert!(status.connection >= 2, "the ONLINE through B: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_links_cut_refused_and_blackholed() {
    let (seed, mut rng) = seeded_rng("link faults");
    let region = Region::new();
    let broker = region.start_broker("127.0.0.1:0".parse().unwrap()).await;
    // Both links go through a fault proxy; most faults hit the gateway's,
    // some the operations center's (events and receipts both cross it).
    let ops_proxy = FaultProxy::start(broker.addr()).await;
    let ops = region.start_ops(ops_proxy.addr()).await;
    let proxy = FaultProxy::start(broker.addr()).await;
    let accounts = ["1234", "1235", "1236"];
    let gw = region
        .start_gateway("p-1", proxy.addr(), &accounts_toml(&accounts))
        .await;
    let count = iterations(150, 2000);
    let panels = spawn_fleet(gw.dc09, &accounts, count, 15..30, 0, &mut rng, |_, _| {});

    let faults = iterations(6, 60);
    let mut injected = [0u32; 3];
    let mut on_ops_link = 0;
    for _ in 0..faults {
        tokio::time::sleep(ms(&mut rng, 150..700)).await;
        let proxy = if rng.random_bool(0.25) {
            on_ops_link += 1;
            &ops_proxy
        } else {
            &proxy
        };
        match rng.random_range(0..3) {
            0 => {
                // Both ends see the connection close; reconnects go through.
                proxy.cut();
                injected[0] += 1;
            }
            1 => {
                // Down for a while: open connections dropped, new ones
                // closed on accept.
                proxy.set(LinkMode::Refuse);
                proxy.cut();
                tokio::time::sleep(ms(&mut rng, 200..1500)).await;
                proxy.set(LinkMode::Pass);
                injected[1] += 1;
            }
            _ => {
                // Silent stall, sometimes longer than the keep-alive (5 s)
                // in long runs, so the gateway must notice on its own.
                proxy.set(LinkMode::Blackhole);
                let stall = if rng.random_bool(0.3) && vigil_tests::faults::long_run() {
                    ms(&mut rng, 6000..12000)
                } else {
                    ms(&mut rng, 200..2000)
                };
                tokio::time::sleep(stall).await;
                proxy.set(LinkMode::Pass);
                injected[2] += 1;
            }
        }
    }
    assert_eq!(proxy.mode(), LinkMode::Pass);
    assert_eq!(ops_proxy.mode(), LinkMode::Pass);

    let summaries = join_panels(panels).await;
    let last = drained(&gw, "backlog receipted after the link faults").await;
    let m = &gw.metrics.publisher;
    let note = format!(
        "link faults: {} cuts, {} refusal periods, {} blackholes ({on_ops_link} of them on the \
         ops link); proxies accepted {} + {} connections; gateway connected {} times, re-sent {} times",
        injected[0],
        injected[1],
        injected[2],
        proxy.accepted(),
        ops_proxy.accepted(),
        m.connects.load(Ordering::Relaxed),
        m.resends.load(Ordering::Relaxed),
    );
    gw.stop().await;
    let data = ops.stop().await;
    broker.stop().await;

    let store = open_store(&data);
    let mut report = Accounting::new("link faults (gateway and ops links)", seed);
    report.note(note);
    report.add_post(&store, "p-1", &summaries, Some(last));
    report.check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_quota_full_naks_panels_then_receipts_make_room() {
    let (seed, mut rng) = seeded_rng("outbox quota");
    let region = Region::new();
    let broker = region.start_broker("127.0.0.1:0".parse().unwrap()).await;
    // A tiny quota, and no operations center yet: nothing is receipted, so
    // the outbox fills and the gateway must NAK.
    let accounts = ["1234", "1235"];
    let quota = 25;
    let gw = region
        .start_gateway(
            "p-1",
            broker.addr(),
            &format!(
                "{}\n[outbox]\nmax_events = {quota}\n",
                accounts_toml(&accounts)
            ),
        )
        .await;
    // Long enough to span the full period and the recovery (an event the
    // gateway NAKs still waits its interval).
    let count = iterations(250, 2000);
    // NAKs are retried at once; few retries so the full period shows.
    let panels = spawn_fleet(gw.dc09, &accounts, count, 20..30, 0, &mut rng, |_, c| {
        c.retries = 3;
    });

    eventually_within(
        "the outbox full and panels NAKed",
        Duration::from_secs(30),
        || gw.metrics.dc09.nak_storage.load(Ordering::Relaxed) > 0,
    )
    .await;
    let (_, _, depth) = gw.outbox();
    assert!(depth <= quota, "the quota holds: {depth}");
    // Stay full for a while, then the operations center comes and its
    // receipts drain the outbox.
    tokio::time::sleep(ms(&mut rng, 300..1000)).await;
    let naks_while_full = gw.metrics.dc09.nak_storage.load(Ordering::Relaxed);
    let acked_before = gw.metrics.dc09.acked.load(Ordering::Relaxed);
    let ops = region.start_ops(broker.addr()).await;

    let summaries = join_panels(panels).await;
    let last = drained(&gw, "outbox drained by receipts").await;
    let acked_after = gw.metrics.dc09.acked.load(Ordering::Relaxed);
    let note = format!(
        "outbox quota {quota} events; {naks_while_full} NAKs while full, \
         {} in all; {acked_before} frames ACKed before receipts came, {acked_after} in all",
        gw.metrics.dc09.nak_storage.load(Ordering::Relaxed)
    );
    gw.stop().await;
    let data = ops.stop().await;
    broker.stop().await;

    let store = open_store(&data);
    let mut report = Accounting::new("outbox quota full", seed);
    report.note(note);
    report.add_post(&store, "p-1", &summaries, Some(last));
    report.check();
    assert!(report.not_acked > 0, "some alarms were refused while full");
    // More alarms got in than the outbox holds without receipts: flow
    // resumed once receipts made room.
    assert!(
        report.acked > quota,
        "flow resumed after the receipts: {} alarms ACKed, quota {quota}",
        report.acked
    );
    // The gateway reported the episode itself (a fault and its restore).
    assert!(report.other_events >= 2, "storage health events stored");
}

/// Size of the gateway's disk in the disk-full scenario: well above the
/// SQLite WAL's auto-checkpoint size (see docs/testing.md).
const TMPFS_BYTES: usize = 16 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_disk_full_naks_panels_then_recovers() {
    let region = Region::new();
    // The real thing when this machine lets us mount a small tmpfs (root
    // with CAP_SYS_ADMIN); the quota test above covers the rest.
    let data_dir = region.path("p-1-data");
    let tmpfs = match Tmpfs::mount(&data_dir, TMPFS_BYTES) {
        Ok(t) => t,
        Err(why) => {
            eprintln!(
                "SKIPPED gateway_disk_full_naks_panels_then_recovers: cannot mount a tmpfs ({why}); \
                 outbox_quota_full_naks_panels_then_receipts_make_room covers a full outbox"
            );
            return;
        }
    };
    let (seed, mut rng) = seeded_rng("disk full (tmpfs)");
    let broker = region.start_broker("127.0.0.1:0".parse().unwrap()).await;
    let ops = region.start_ops(broker.addr()).await;
    let accounts = ["1234", "1235"];
    let gw = region
        .start_gateway("p-1", broker.addr(), &accounts_toml(&accounts))
        .await;
    let count = iterations(250, 2000);
    let panels = spawn_fleet(gw.dc09, &accounts, count, 20..30, 0, &mut rng, |_, c| {
        c.retries = 3;
    });

    // Full, then freed; several times in long runs.
    let episodes = iterations(1, 5);
    let mut last_when_full = 0;
    for _ in 0..episodes {
        tokio::time::sleep(ms(&mut rng, 300..1000)).await;
        let naks_before = gw.metrics.dc09.nak_storage.load(Ordering::Relaxed);
        let ballast = tmpfs.fill();
        eventually_within(
            "panels NAKed on a full disk",
            Duration::from_secs(30),
            || gw.metrics.dc09.nak_storage.load(Ordering::Relaxed) > naks_before,
        )
        .await;
        tokio::time::sleep(ms(&mut rng, 300..1000)).await;
        last_when_full = gw.outbox().0;
        std::fs::remove_file(&ballast).expect("free the disk");
    }
    let naks_while_full = gw.metrics.dc09.nak_storage.load(Ordering::Relaxed);

    let summaries = join_panels(panels).await;
    let last = drained(&gw, "outbox drained after the disk freed").await;
    assert!(
        last > last_when_full,
        "events stored again once the disk freed ({last_when_full} → {last})"
    );
    let note = format!(
        "tmpfs 16 MiB filled by a ballast file and freed {episodes} times; {naks_while_full} NAKs \
         until the last freeing, {} in all; outbox last seq {last_when_full} when last freed, \
         {last} at the end",
        gw.metrics.dc09.nak_storage.load(Ordering::Relaxed)
    );
    gw.stop().await;
    let data = ops.stop().await;
    broker.stop().await;

    let store = open_store(&data);
    let mut report = Accounting::new("gateway disk full (tmpfs)", seed);
    report.note(note);
    report.add_post(&store, "p-1", &summaries, Some(last));
    report.check();
}

/// The outbox fills a small disk by itself while the link to the broker
/// is stalled: its WAL grows until the disk is full (below SQLite's
/// auto-checkpoint size it is never checkpointed), and panels are NAKed.
/// When the link comes back, applying the receipts needs room the disk no
/// longer has: the outbox gives up its reserve file, applies them,
/// truncates the WAL, writes the reserve again and takes alarms again.
/// With `reserve_bytes = 0` this scenario wedges: the receipts fail like
/// the appends, forever (found by the disk-full scenario above on a 2 MiB
/// tmpfs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_that_filled_its_disk_drains_when_receipts_come() {
    const TMPFS: usize = 3 << 20;
    const RESERVE: u64 = 1 << 20;
    let region = Region::new();
    let data_dir = region.path("p-1-data");
    let _tmpfs = match Tmpfs::mount(&data_dir, TMPFS) {
        Ok(t) => t,
        Err(why) => {
            eprintln!(
                "SKIPPED an_outbox_that_filled_its_disk_drains_when_receipts_come: cannot mount a tmpfs ({why})"
            );
            return;
        }
    };
    let (seed, mut rng) = seeded_rng("outbox fills its disk (tmpfs)");
    let broker = region.start_broker("127.0.0.1:0".parse().unwrap()).await;
    let proxy = FaultProxy::start(broker.addr()).await;
    let ops = region.start_ops(broker.addr()).await;
    let gw = region
        .start_gateway(
            "p-1",
            proxy.addr(),
            &format!("\n[outbox]\nreserve_bytes = {RESERVE}\n"),
        )
        .await;
    let reserve = data_dir.join("outbox.db.reserve");
    eventually_within(
        "the reserve written at start",
        Duration::from_secs(30),
        || reserve.exists(),
    )
    .await;

    // Nothing gets through: the outbox only grows, until the disk is full.
    proxy.set(LinkMode::Blackhole);
    let count = iterations(600, 3000);
    let panel = spawn_panel(fault_panel(
        gw.dc09,
        "1234",
        count,
        ms(&mut rng, 2..5),
        rng.random(),
    ));
    eventually_within("panels NAKed on the full disk", DRAIN, || {
        gw.metrics.dc09.nak_storage.load(Ordering::Relaxed) > 0
    })
    .await;
    let (last_when_full, receipted_when_full, _) = gw.outbox();
    assert_eq!(receipted_when_full, 0, "nothing could be receipted yet");

    // The link is back; the disk is still full.
    proxy.set(LinkMode::Pass);
    proxy.cut();
    eventually_within("receipts applied on the full disk", DRAIN, || {
        gw.outbox().1 >= last_when_full
    })
    .await;

    let summaries = join_panels(vec![panel]).await;
    let last = drained(&gw, "outbox drained").await;
    assert!(reserve.exists(), "the reserve written again");
    assert!(
        last > last_when_full,
        "alarms stored again after the receipts ({last_when_full} → {last})"
    );
    let note = format!(
        "tmpfs 3 MiB, reserve 1 MiB; the outbox filled the disk at seq {last_when_full}; {} NAKs; last seq {last} at the end",
        gw.metrics.dc09.nak_storage.load(Ordering::Relaxed)
    );
    gw.stop().await;
    let data = ops.stop().await;
    broker.stop().await;

    let store = open_store(&data);
    let mut report = Accounting::new("gateway outbox fills its disk (tmpfs)", seed);
    report.note(note);
    report.add_post(&store, "p-1", &summaries, Some(last));
    report.check();
}
