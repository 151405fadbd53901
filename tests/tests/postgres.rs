//! The whole path with the operations center on PostgreSQL (a real server
//! the test starts): panels → gateway → broker → ops center → PostgreSQL →
//! receipts; and PostgreSQL killed with SIGKILL mid-ingest, then started
//! again, without losing or duplicating anything.

use std::{collections::BTreeSet, sync::atomic::Ordering::Relaxed};

use tokio_util::sync::CancellationToken;
use vigil_sim::panel::{self as simulator, PanelConfig, Protocol};
use vigil_tests::{
    Region, eventually,
    postgres::{Postgres, most_incidents_per_event, stored_seqs},
};

/// Sends `count` messages from panel account 1234 to `dc09`, one every
/// `every`, and returns how many the gateway ACKed.
async fn panel(
    dc09: std::net::SocketAddr,
    count: u64,
    first_seq: u16,
    every: std::time::Duration,
) -> u64 {
    let mut config = PanelConfig::new(dc09.to_string(), "1234");
    config.count = Some(count);
    config.interval = every;
    config.first_seq = first_seq;
    config.protocol = Protocol::Sia;
    config.seed = Some(u64::from(first_seq));
    let summary = simulator::run(config, CancellationToken::new())
        .await
        .expect("panel runs");
    assert_eq!(summary.counts.failed, 0, "{summary}");
    summary.acked_events().count() as u64
}

fn ops_on(url: &str) -> String {
    format!("[store]\nurl = \"{url}\"\n")
}

/// Two replicas on one fresh database (a 2 s lease), the first leading,
/// the second standing by, and post p-1's gateway: what the replica tests
/// start from.
struct Replicas {
    pg: Postgres,
    url: String,
    region: Region,
    broker: vigil_tests::RunningBroker,
    first: vigil_tests::RunningOps,
    second: vigil_tests::RunningOps,
    gw: vigil_tests::RunningGateway,
}

async fn replicas() -> Option<Replicas> {
    replicas_with("", |_| {}).await
}

/// [`replicas`], both with `more` in their ops config, after `prepare` had
/// the region (e.g. to write files the config names).
async fn replicas_with(more: &str, prepare: impl FnOnce(&Region)) -> Option<Replicas> {
    let pg = Postgres::start()?;
    let url = pg.create_db();
    let extra = format!("[store]\nurl = \"{url}\"\nlease_secs = 2\n{more}");
    let region = Region::new();
    prepare(&region);
    let broker = region.start_broker("127.0.0.1:0".parse().unwrap()).await;
    let first = region.start_ops_with(broker.addr(), &extra).await;
    // The first to start leads; the second stands by.
    eventually("the first replica leads", || {
        first.metrics.leading.load(Relaxed)
    })
    .await;
    let second = region.start_ops_with(broker.addr(), &extra).await;
    let gw = region.start_gateway("p-1", broker.addr(), "").await;
    Some(Replicas {
        pg,
        url,
        region,
        broker,
        first,
        second,
        gw,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panel_alarms_reach_postgresql_exactly_once_and_become_incidents() {
    let Some(pg) = Postgres::start() else { return };
    let url = pg.create_db();
    let region = Region::new();
    let broker = region.start_broker("127.0.0.1:0".parse().unwrap()).await;
    let ops = region.start_ops_with(broker.addr(), &ops_on(&url)).await;
    let gw = region.start_gateway("p-1", broker.addr(), "").await;

    let acked = panel(gw.dc09, 30, 1, std::time::Duration::from_millis(5)).await;
    assert!(acked > 0);
    eventually("every event receipted", || gw.all_receipted()).await;
    let (last, ..) = gw.outbox();

    // The API reads from PostgreSQL too: the post and its incidents.
    let mut client = region
        .api_client(vigil_pki::Role::Analyst, "analyst-1", ops.api)
        .await;
    let posts = client
        .list_posts(vigil_proto::v1::ListPostsRequest::default())
        .await
        .expect("list posts")
        .into_inner()
        .posts;
    let p1 = posts
        .iter()
        .find(|p| p.post_id == "p-1")
        .expect("p-1 known");
    assert_eq!(p1.durable_through_seq, last);
    let incidents = client
        .list_incidents(vigil_proto::v1::ListIncidentsRequest::default())
        .await
        .expect("list incidents")
        .into_inner()
        .incidents;
    assert!(!incidents.is_empty(), "alarms opened incidents");

    gw.stop().await;
    ops.stop().await;
    broker.stop().await;
    let url2 = url.clone();
    let seqs = tokio::task::spawn_blocking(move || stored_seqs(&url2, "p-1"))
        .await
        .unwrap();
    assert_eq!(seqs, (1..=last).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_killed_mid_ingest_loses_and_duplicates_nothing() {
    let Some(mut pg) = Postgres::start() else {
        return;
    };
    let url = pg.create_db();
    let region = Region::new();
    let broker = region.start_broker("127.0.0.1:0".parse().unwrap()).await;
    let ops = region.start_ops_with(broker.addr(), &ops_on(&url)).await;
    let gw = region.start_gateway("p-1", broker.addr(), "").await;

    // A panel keeps sending while the database is killed and restarted.
    let sending = tokio::spawn(panel(gw.dc09, 120, 1, std::time::Duration::from_millis(25)));
    eventually("some events receipted", || gw.outbox().1 >= 10).await;
    let pg = tokio::task::spawn_blocking(move || {
        pg.kill9();
        // Down long enough for commits to fail.
        std::thread::sleep(std::time::Duration::from_millis(1500));
        pg.restart();
        pg
    })
    .await
    .unwrap();
    let acked = sending.await.unwrap();
    assert!(acked >= 120, "every panel message was ACKed: {acked}");
    eventually("everything receipted after the restart", || {
        gw.all_receipted()
    })
    .await;
    let (last, ..) = gw.outbox();
    assert!(
        ops.metrics.commit_failures.load(Relaxed) > 0,
        "commits failed while the database was down"
    );
    assert!(ops.metrics.store_health.is_healthy(), "healthy again");

    gw.stop().await;
    ops.stop().await;
    broker.stop().await;
    let url2 = url.clone();
    let seqs = tokio::task::spawn_blocking(move || stored_seqs(&url2, "p-1"))
        .await
        .unwrap();
    // Lost = 0 and duplicated = 0: every seq once (the primary key makes a
    // second copy impossible; the count checks nothing is missing).
    let unique: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(unique.len(), seqs.len());
    assert_eq!(seqs, (1..=last).collect::<Vec<_>>());
    drop(pg);
}

/// Two operations centers on one database: one leads (stores, runs the
/// engine, receipts), the other stands by and serves the API, its feed
/// following the leader's commits. The leader dies (its task is dropped
/// mid-ingest; its lease is not given back): the standby takes over
/// within the lease, and every event is stored once, every event joins at
/// most one incident, and a watcher on the standby sees one unbroken
/// sequence of cursors across the failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_from_a_dead_leader_without_loss() {
    use vigil_proto::v1::{WatchIncidentsRequest, feed_item::Item};

    let Some(Replicas {
        pg,
        url,
        region,
        broker,
        first,
        second,
        gw,
    }) = replicas().await
    else {
        return;
    };

    // A watcher on the standby.
    let mut client = region
        .api_client(vigil_pki::Role::Analyst, "analyst-1", second.api)
        .await;
    let mut feed = client
        .watch_incidents(WatchIncidentsRequest::default())
        .await
        .expect("watch on the standby")
        .into_inner();
    let cursors = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let watcher = tokio::spawn({
        let cursors = cursors.clone();
        async move {
            while let Ok(Some(item)) = feed.message().await {
                if matches!(item.item, Some(Item::Update(ref u)) if !u.snapshot) {
                    cursors.lock().unwrap().push(item.cursor.parse().unwrap());
                }
            }
        }
    });

    let sent = panel(gw.dc09, 20, 1, std::time::Duration::from_millis(10)).await;
    assert!(sent >= 20);
    eventually("the leader receipts the first events", || {
        let (last, receipted, _) = gw.outbox();
        last > 0 && receipted == last
    })
    .await;
    eventually("the standby's feed follows the leader", || {
        !cursors.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(
        second.metrics.commits.load(Relaxed),
        0,
        "a standby writes nothing"
    );

    // The leader dies while the panel keeps sending.
    let sending = tokio::spawn(panel(
        gw.dc09,
        40,
        100,
        std::time::Duration::from_millis(25),
    ));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    first.task.abort();
    let _ = first.task.await;
    let failed_over = std::time::Instant::now();
    eventually("the standby leads", || {
        second.metrics.commits.load(Relaxed) > 0
    })
    .await;
    eprintln!(
        "standby committing {:?} after the leader died",
        failed_over.elapsed()
    );
    sending.await.unwrap();
    eventually("everything receipted by the new leader", || {
        gw.all_receipted()
    })
    .await;
    let (last, ..) = gw.outbox();

    gw.stop().await;
    second.stop().await;
    broker.stop().await;
    watcher.abort();
    let cursors = cursors.lock().unwrap().clone();
    assert!(
        cursors.windows(2).all(|w| w[0] < w[1]),
        "cursors only grow: {cursors:?}"
    );
    let url2 = url.clone();
    let (seqs, max_links) = tokio::task::spawn_blocking(move || {
        (stored_seqs(&url2, "p-1"), most_incidents_per_event(&url2))
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

/// The leading replica is cut off from the database (through a fault
/// proxy; its brokers still reach it): it can commit nothing, so it
/// receipts nothing; the standby, which still reaches the database, takes
/// the lease and carries on. When the link comes back, the old leader's
/// next transaction finds the lease gone and it stands by: it never
/// commits again, and every event is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_from_the_database_is_fenced_off() {
    use vigil_tests::faults::{FaultProxy, LinkMode};

    let Some(pg) = Postgres::start_tcp() else {
        return;
    };
    let url = pg.create_db();
    let proxy = FaultProxy::start(pg.tcp_addr()).await;
    let via_proxy = pg.tcp_url(&url, proxy.addr());
    let region = Region::new();
    let broker = region.start_broker("127.0.0.1:0".parse().unwrap()).await;
    let lease = "lease_secs = 2\n";
    let first = region
        .start_ops_with(
            broker.addr(),
            &format!("[store]\nurl = \"{via_proxy}\"\n{lease}"),
        )
        .await;
    eventually("the first replica leads", || {
        first.metrics.commits.load(Relaxed) > 0
    })
    .await;
    let second = region
        .start_ops_with(broker.addr(), &format!("[store]\nurl = \"{url}\"\n{lease}"))
        .await;
    let gw = region.start_gateway("p-1", broker.addr(), "").await;
    panel(gw.dc09, 20, 1, std::time::Duration::from_millis(10)).await;
    eventually("the leader receipts", || {
        let (last, receipted, _) = gw.outbox();
        last > 0 && receipted == last
    })
    .await;

    // The link to the database goes; new connections are refused too.
    proxy.set(LinkMode::Refuse);
    proxy.cut();
    panel(gw.dc09, 30, 100, std::time::Duration::from_millis(10)).await;
    eventually("the standby takes over and receipts everything", || {
        let (last, receipted, depth) = gw.outbox();
        second.metrics.commits.load(Relaxed) > 0 && receipted == last && depth == 0
    })
    .await;
    assert!(
        !first.metrics.store_health.is_healthy(),
        "the cut-off leader reports it cannot write"
    );

    // The link comes back: the old leader finds itself deposed. (It has
    // committed nothing since the cut, and must commit nothing after.)
    let commits = first.metrics.commits.load(Relaxed);
    proxy.set(LinkMode::Pass);
    eventually("the old leader stands by, healthy again", || {
        first.metrics.store_health.is_healthy()
    })
    .await;
    panel(gw.dc09, 10, 200, std::time::Duration::from_millis(10)).await;
    eventually("the new leader receipts the rest", || {
        let (last, receipted, depth) = gw.outbox();
        receipted == last && depth == 0
    })
    .await;
    assert_eq!(
        first.metrics.commits.load(Relaxed),
        commits,
        "a deposed leader commits nothing"
    );
    let (last, ..) = gw.outbox();

    gw.stop().await;
    first.stop().await;
    second.stop().await;
    broker.stop().await;
    let url2 = url.clone();
    let seqs = tokio::task::spawn_blocking(move || stored_seqs(&url2, "p-1"))
        .await
        .unwrap();
    assert_eq!(
        seqs,
        (1..=last).collect::<Vec<_>>(),
        "lost = 0, duplicated = 0"
    );
    drop(pg);
}

/// Every replica takes analysts' actions: on a standby they are carried
/// out by the leader (through the request mailbox), with the same answers
/// as on the leader (the changed incident, a version conflict with the
/// current incident, a refusal in the engine's words), and an action sent
/// while the leader dies is taken by the replica that leads next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_actions_through_the_leader() {
    use tonic::Code;
    use vigil_pki::Role;
    use vigil_proto::v1::{
        AcknowledgeRequest, AddNoteRequest, Disposition, IncidentState, ListIncidentsRequest,
        ResolveRequest, SetTestModeRequest,
    };

    let Some(Replicas {
        pg,
        url: _,
        region,
        broker,
        first,
        second,
        gw,
    }) = replicas().await
    else {
        return;
    };
    panel(gw.dc09, 6, 1, std::time::Duration::from_millis(5)).await;
    eventually("everything receipted", || gw.all_receipted()).await;

    let mut leader = region.api_client(Role::Analyst, "alice", first.api).await;
    let mut standby = region.api_client(Role::Analyst, "bob", second.api).await;
    let open = |c: &mut vigil_proto::v1::ops_center_client::OpsCenterClient<_>| {
        let mut c = c.clone();
        async move {
            c.list_incidents(ListIncidentsRequest {
                states: vec![IncidentState::Open as i32],
                ..Default::default()
            })
            .await
            .expect("list incidents")
            .into_inner()
            .incidents
        }
    };
    let incidents = open(&mut standby).await;
    assert!(
        incidents.len() >= 2,
        "alarms opened incidents: {incidents:?}"
    );
    let (a, b) = (&incidents[0], &incidents[1]);

    // Acknowledged on the standby: the leader applied it.
    let acked = standby
        .acknowledge(AcknowledgeRequest {
            incident_id: a.id.clone(),
            expected_version: a.version,
            note: "on it".into(),
        })
        .await
        .expect("acknowledge on a standby")
        .into_inner();
    assert_eq!(acked.state, IncidentState::Acknowledged as i32);
    assert_eq!(acked.acknowledged_by, "bob");
    assert!(acked.version > a.version);
    let seen = leader
        .get_incident(vigil_proto::v1::GetIncidentRequest {
            incident_id: a.id.clone(),
        })
        .await
        .expect("get on the leader")
        .into_inner();
    assert_eq!(
        seen.incident.as_ref().map(|i| i.version),
        Some(acked.version)
    );

    // The same version again: a conflict that carries the current incident.
    let conflict = standby
        .add_note(AddNoteRequest {
            incident_id: a.id.clone(),
            expected_version: a.version,
            text: "stale".into(),
        })
        .await
        .expect_err("a stale version is refused");
    assert_eq!(conflict.code(), Code::FailedPrecondition, "{conflict:?}");
    let current = vigil_ops::api::current_incident(&conflict).expect("current incident");
    assert_eq!(current.version, acked.version);

    // A refusal of the engine's, in its words.
    let refused = standby
        .resolve(ResolveRequest {
            incident_id: b.id.clone(),
            expected_version: b.version,
            disposition: Disposition::Genuine as i32,
            note: "done".into(),
        })
        .await
        .expect_err("an open incident cannot be resolved");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("acknowledge it first"),
        "{refused:?}"
    );
    let missing = standby
        .add_note(AddNoteRequest {
            incident_id: "inc-999999".into(),
            expected_version: 1,
            text: "x".into(),
        })
        .await
        .expect_err("no such incident");
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");

    // Test mode set by a supervisor on the standby.
    let mut supervisor = region.api_client(Role::Supervisor, "sam", second.api).await;
    let post = supervisor
        .set_test_mode(SetTestModeRequest {
            post_id: "p-1".into(),
            duration_seconds: 600,
            reason: "drill".into(),
        })
        .await
        .expect("test mode on a standby")
        .into_inner();
    assert!(post.test_mode_until.is_some(), "{post:?}");

    // A site import on the standby: checked there, stored by the leader,
    // its changes answered; the same document again changes nothing.
    let site = vigil_proto::v1::SiteDocument {
        posts: vec![vigil_proto::v1::PostRecord {
            post_id: "p-1".into(),
            name: "Embassy".into(),
            timezone: "Europe/Vienna".into(),
            duress_words: vec!["bluebird".into()],
            ..Default::default()
        }],
        ..Default::default()
    };
    let import = |c: &mut vigil_proto::v1::ops_center_client::OpsCenterClient<_>| {
        let mut c = c.clone();
        let site = site.clone();
        async move {
            c.import_site(vigil_proto::v1::ImportSiteRequest { site: Some(site) })
                .await
                .map(|r| r.into_inner().changes)
        }
    };
    let changes = import(&mut supervisor).await.expect("import on a standby");
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert!(changes[0].contains("p-1"), "{changes:?}");
    let mut leader_supervisor = region.api_client(Role::Supervisor, "sue", first.api).await;
    let stored = leader_supervisor
        .export_site(vigil_proto::v1::ExportSiteRequest {})
        .await
        .expect("export on the leader")
        .into_inner();
    assert_eq!(stored, site);
    let again = import(&mut supervisor)
        .await
        .expect("the same import again");
    assert!(again.is_empty(), "{again:?}");
    let bad = import(&mut standby)
        .await
        .expect_err("an analyst may not import");
    assert_eq!(bad.code(), Code::PermissionDenied, "{bad:?}");

    // Emergency mode started on the standby: the leader holds it (and says
    // so), and a refusal of the leader's (no reason) comes back as such.
    let started = supervisor
        .set_emergency(vigil_proto::v1::SetEmergencyRequest {
            duration_seconds: 3600,
            post_ids: vec!["p-1".into()],
            reason: "storm".into(),
        })
        .await
        .expect("emergency mode on a standby")
        .into_inner()
        .emergency
        .expect("on");
    assert_eq!(
        (started.post_ids.as_slice(), started.reason.as_str()),
        (&["p-1".to_owned()][..], "storm")
    );
    assert_eq!(started.started_by, "sam");
    let on_leader = leader_supervisor
        .get_emergency(vigil_proto::v1::GetEmergencyRequest {})
        .await
        .expect("get on the leader")
        .into_inner()
        .emergency;
    assert_eq!(on_leader, Some(started));
    let refused = supervisor
        .set_emergency(vigil_proto::v1::SetEmergencyRequest {
            duration_seconds: 3600,
            post_ids: vec![],
            reason: " ".into(),
        })
        .await
        .expect_err("a reason is required");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");

    assert!(second.metrics.actions_forwarded.load(Relaxed) >= 9);
    assert_eq!(
        second.metrics.commits.load(Relaxed),
        0,
        "a standby writes nothing"
    );

    // The leader dies; an action sent right after waits for the next
    // leader (the standby itself) and is carried out once.
    first.task.abort();
    let _ = first.task.await;
    let noted = standby
        .add_note(AddNoteRequest {
            incident_id: b.id.clone(),
            expected_version: b.version,
            text: "during the failover".into(),
        })
        .await
        .expect("an action across a failover")
        .into_inner();
    assert_eq!(noted.version, b.version + 1);
    assert!(second.metrics.leading.load(Relaxed));

    gw.stop().await;
    second.stop().await;
    broker.stop().await;
    drop(pg);
}

/// A watcher on a standby sees every incident the leader opens, each at
/// its latest version: the standby's feed, which follows the leader's
/// commits, has no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_feed_misses_no_incident() {
    use std::collections::BTreeMap;
    use vigil_proto::v1::{ListIncidentsRequest, WatchIncidentsRequest, feed_item::Item};

    let Some(Replicas {
        pg: _pg,
        url: _,
        region,
        broker,
        first,
        second,
        gw,
    }) = replicas().await
    else {
        return;
    };

    let mut client = region
        .api_client(vigil_pki::Role::Analyst, "analyst-1", second.api)
        .await;
    let mut feed = client
        .watch_incidents(WatchIncidentsRequest::default())
        .await
        .expect("watch on the standby")
        .into_inner();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::<String, u64>::new()));
    let watcher = tokio::spawn({
        let seen = seen.clone();
        async move {
            while let Ok(Some(item)) = feed.message().await {
                if let Some(Item::Update(u)) = item.item
                    && let Some(inc) = u.incident
                {
                    let mut seen = seen.lock().unwrap();
                    let v = seen.entry(inc.id).or_default();
                    *v = (*v).max(inc.version);
                }
            }
        }
    });
    panel(gw.dc09, 60, 1, std::time::Duration::from_millis(5)).await;
    eventually("everything receipted", || gw.all_receipted()).await;
    let incidents = client
        .list_incidents(ListIncidentsRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .incidents;
    assert!(incidents.len() > 1);
    let want: BTreeMap<String, u64> = incidents.into_iter().map(|i| (i.id, i.version)).collect();
    eventually(
        "the standby's watcher saw every incident at its version",
        || *seen.lock().unwrap() == want,
    )
    .await;
    watcher.abort();
    gw.stop().await;
    second.stop().await;
    first.stop().await;
    broker.stop().await;
}

/// Webhook notifications with two replicas: only the leader sends (the
/// standby's counters stay at zero while it stands by); when the leader
/// dies with notifications still failing at the receiver, the next leader
/// takes them from the shared queue and delivers each, and the queue ends
/// with one delivered row per delivery id and nothing pending. (The dead
/// leader here is a task aborted in this process, whose sender may still
/// get a request out before it notices: delivery is at least once, which
/// the receiver's delivery ids make safe, so that is what is asserted.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_survive_a_failover() {
    use vigil_ops::store::{Backend, NotifyState, PostgresBackend};
    use vigil_tests::webhook::Receiver;

    let hook = Receiver::start(&[], false, None).await;
    hook.answer(503);
    let notify = format!(
        "[[notify.webhook]]\nname = \"pager\"\nurl = \"{}\"\nsecret_file = \"hook.secret\"\n\
         events = [\"opened\"]\nretry_initial_ms = 50\nretry_max_secs = 1\n",
        hook.url
    );
    // The secret file is read when a replica starts, beside its config.
    let Some(Replicas {
        pg,
        url,
        region,
        broker,
        first,
        second,
        gw,
    }) = replicas_with(&notify, |region| {
        std::fs::write(region.path("hook.secret"), "failover-secret").unwrap();
    })
    .await
    else {
        return;
    };
    panel(gw.dc09, 4, 1, std::time::Duration::from_millis(5)).await;
    eventually("everything receipted", || gw.all_receipted()).await;
    eventually("notifications tried and refused", || {
        hook.got().iter().any(|g| g.status == 503)
    })
    .await;
    assert_eq!(
        second.metrics.notify_retried.load(Relaxed) + second.metrics.notify_delivered.load(Relaxed),
        0,
        "a standby sends nothing"
    );
    let tried: BTreeSet<String> = hook.got().into_iter().map(|g| g.delivery).collect();

    // The leader dies; the receiver takes them from now on.
    first.task.abort();
    let _ = first.task.await;
    hook.answer(200);
    eventually("the standby leads", || second.metrics.leading.load(Relaxed)).await;
    eventually("each one tried before delivered", || {
        let ok: BTreeSet<String> = hook
            .got()
            .into_iter()
            .filter(|g| g.status == 200)
            .map(|g| g.delivery)
            .collect();
        tried.is_subset(&ok)
    })
    .await;
    // The queue as the database has it (the blocking client, off the
    // runtime), once nothing is pending any more (bounded: 30 s).
    let (pending, delivered) = tokio::task::spawn_blocking(move || {
        let backend = PostgresBackend::open(&url).unwrap();
        let reader = backend.reader().unwrap();
        let mut pending = u64::MAX;
        for _ in 0..600 {
            pending = reader.notification_count(NotifyState::Pending).unwrap();
            if pending == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let delivered = reader
            .notifications(NotifyState::Delivered, None, 1000)
            .unwrap();
        (pending, delivered)
    })
    .await
    .unwrap();
    assert_eq!(pending, 0, "nothing left pending");
    let ids: BTreeSet<String> = delivered.iter().map(|n| n.delivery.clone()).collect();
    assert_eq!(ids.len(), delivered.len(), "one row per delivery id");
    assert!(tried.is_subset(&ids), "{tried:?} {ids:?}");
    assert!(second.metrics.notify_delivered.load(Relaxed) >= 1);

    drop(region);
    gw.stop().await;
    second.stop().await;
    broker.stop().await;
    drop(pg);
}
