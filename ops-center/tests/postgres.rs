//! The PostgreSQL backend against a real server the test starts itself:
//! the same behaviour suite as SQLite's, each case on a fresh database,
//! plus what only a server can do (a restarted server, a bad URL).

use std::sync::Arc;

use vigil_ops::store::{Backend, PostgresBackend, Readers, StoreError, suite};
use vigil_tests::postgres::Postgres;

#[test]
fn the_store_suite_passes_on_postgresql() {
    let Some(pg) = Postgres::start() else { return };
    for (name, case) in suite::CASES {
        let backend = PostgresBackend::open(&pg.create_db()).unwrap();
        eprintln!("store suite on postgresql: {name}");
        case(&backend);
    }
}

/// Every query shape of the API (`store::shapes`, the list SQLite's plan
/// test runs too) is answered from an index range: `EXPLAIN` with
/// sequential scans priced out shows no `Seq Scan`, and every index scan
/// has an `Index Cond` (a bound), with the kind in it when the shape filters
/// kinds. Only "every incident, newest first" may read an index from one
/// end (it stops at its limit).
#[test]
fn every_query_shape_is_served_by_an_index() {
    use vigil_ops::store::shapes::{self, Dialect, Param};
    let Some(pg) = Postgres::start() else { return };
    let url = pg.create_db();
    PostgresBackend::open(&url).unwrap();
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    client.batch_execute("SET enable_seqscan = off").unwrap();
    let mut failures = Vec::new();
    for (name, shape) in shapes::shapes() {
        let q = shape.query(Dialect::Postgres).unwrap();
        let params: Vec<&(dyn postgres::types::ToSql + Sync)> = q
            .params
            .iter()
            .map(|p| match p {
                Param::Int(i) => i as &(dyn postgres::types::ToSql + Sync),
                Param::Text(t) => t as &(dyn postgres::types::ToSql + Sync),
            })
            .collect();
        let plan: Vec<String> = client
            .query(&format!("EXPLAIN {}", q.sql), &params)
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        eprintln!("{name}:\n  {}", plan.join("\n  "));
        let mut bad = plan.iter().any(|l| l.contains("Seq Scan"));
        for (i, line) in plan.iter().enumerate() {
            if !line.contains("Index Scan") && !line.contains("Index Only Scan") {
                continue;
            }
            // The node's own detail lines, up to the next node.
            let details: Vec<&String> = plan[i + 1..]
                .iter()
                .take_while(|l| !l.contains("->"))
                .collect();
            let cond = details.iter().find(|l| l.contains("Index Cond:"));
            match cond {
                None if !shape.ordered_scan_allowed() => bad = true,
                Some(c) if shape.filters_kind() && line.contains(" on events") => {
                    bad |= !c.contains("kind");
                }
                _ => {}
            }
        }
        if bad {
            failures.push(format!("{name}:\n  {}", plan.join("\n  ")));
        }
    }
    assert!(failures.is_empty(), "full scans:\n{}", failures.join("\n"));
}

/// The list of posts reads every post's events above its watermark in one
/// statement, as a primary-key range per post, never a scan of events.
#[test]
fn the_list_of_posts_reads_events_by_index() {
    use vigil_ops::store::postgres::POSTS_EVENTS_ABOVE;
    let Some(pg) = Postgres::start() else { return };
    let url = pg.create_db();
    PostgresBackend::open(&url).unwrap();
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    client.batch_execute("SET enable_seqscan = off").unwrap();
    let ids = vec!["p-1".to_owned(), "p-2".to_owned()];
    let durables = vec![10i64, 20];
    let plan: Vec<String> = client
        .query(&format!("EXPLAIN {POSTS_EVENTS_ABOVE}"), &[&ids, &durables])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let text = plan.join("\n");
    assert!(!text.contains("Seq Scan"), "{text}");
    assert!(
        plan.iter()
            .any(|l| l.contains("Index") && l.contains(" on events")),
        "{text}"
    );
    assert!(text.contains("Index Cond"), "{text}");
}

#[test]
fn migrations_run_once_and_a_newer_schema_is_refused() {
    let Some(pg) = Postgres::start() else { return };
    let url = pg.create_db();
    PostgresBackend::open(&url).unwrap();
    // Opening again finds the schema current.
    PostgresBackend::open(&url).unwrap();
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    admin
        .batch_execute("UPDATE vigil_schema SET version = version + 1")
        .unwrap();
    let err = PostgresBackend::open(&url).unwrap_err();
    assert!(matches!(err, StoreError::SchemaTooNew { .. }), "{err}");
}

/// A store from before migrations 4 and 5 (no `kind`, no `at`, the old
/// indexes) with events in it: opening it fills both columns from what is
/// stored, and a kind filter finds its events.
#[test]
fn migration_4_fills_event_kinds_of_a_store_that_had_none() {
    use prost::Message;
    use vigil_ops::store::{ReceivedFilter, SeqFilter};
    use vigil_proto::v1::{AlarmSignal, Event, EventKind, PostHealth, event::Body};
    let Some(pg) = Postgres::start() else { return };
    let url = pg.create_db();
    PostgresBackend::open(&url).unwrap();
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    // Back to the schema as version 3 left it.
    admin
        .batch_execute(
            "DROP INDEX events_post_kind, events_kind_at, events_post_kind_at, incidents_post;
             ALTER TABLE events DROP COLUMN kind, DROP COLUMN at;
             CREATE INDEX events_received ON events (received_at);
             CREATE INDEX incidents_post ON incidents (post_id, state);
             DROP TABLE site_posts, site_plans, post_timers, emergency;
             DROP INDEX incidents_post_opened, incidents_opened;
             ALTER TABLE incidents DROP COLUMN opened_at;
             DROP TABLE notifications;
             UPDATE vigil_schema SET version = 3;",
        )
        .unwrap();
    for seq in 1..=7i64 {
        let body = match seq % 2 {
            0 => Body::Health(PostHealth::default()),
            _ => Body::Alarm(AlarmSignal::default()),
        };
        let event = Event {
            post_id: "p-1".into(),
            seq: seq as u64,
            body: Some(body),
            ..Default::default()
        };
        admin
            .execute(
                "INSERT INTO events (post_id, seq, received_at, stored_at, body)
                 VALUES ('p-1', $1, NULL, $2, $3)",
                &[&seq, &(1000 * seq), &event.encode_to_vec()],
            )
            .unwrap();
    }
    let backend = PostgresBackend::open(&url).unwrap();
    let version: i32 = admin
        .query_one("SELECT version FROM vigil_schema", &[])
        .unwrap()
        .get(0);
    assert_eq!(version, 9);
    let reader = backend.reader().unwrap();
    let health = SeqFilter {
        post_id: "p-1".into(),
        kinds: vec![EventKind::Health as i32],
        from_seq: 1,
        to_seq: None,
    };
    let seqs: Vec<u64> = reader
        .events_by_seq(&health, 100)
        .unwrap()
        .iter()
        .map(|e| e.event.as_ref().unwrap().seq)
        .collect();
    assert_eq!(seqs, [2, 4, 6]);
    // No gateway time: received order falls back to when it was stored.
    let alarms = ReceivedFilter {
        kinds: vec![EventKind::Alarm as i32],
        ..Default::default()
    };
    let keys: Vec<(i64, u64)> = reader
        .events_received(&alarms, None, 100)
        .unwrap()
        .iter()
        .map(|(k, _)| (k.received_ms, k.seq))
        .collect();
    assert_eq!(keys, [(1000, 1), (3000, 3), (5000, 5), (7000, 7)]);
}

/// A store from before migration 7 (no `incidents.opened_at`) with
/// incidents in it: opening it fills the column from the stored bodies, and
/// a post's history and a period find them by when they opened.
#[test]
fn migration_7_fills_when_incidents_opened() {
    use prost::Message;
    use std::time::{Duration, UNIX_EPOCH};
    use vigil_ops::store::{HistoryFilter, OpenedFilter, TimeKey, incident_id};
    use vigil_proto::v1::Incident;
    let Some(pg) = Postgres::start() else { return };
    let url = pg.create_db();
    PostgresBackend::open(&url).unwrap();
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    admin
        .batch_execute(
            "DROP INDEX incidents_post_opened, incidents_opened;
             ALTER TABLE incidents DROP COLUMN opened_at;
             DROP TABLE post_timers, emergency, notifications;
             UPDATE vigil_schema SET version = 6;",
        )
        .unwrap();
    let t = |s: u64| UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s);
    // Numbers and opening times in different orders.
    for (n, secs) in [(1i64, 30u64), (2, 10), (3, 20)] {
        let inc = Incident {
            id: incident_id(n as u64),
            post_id: "p-1".into(),
            version: 1,
            opened_at: Some(t(secs).into()),
            ..Default::default()
        };
        admin
            .execute(
                "INSERT INTO incidents (number, post_id, state, version, body)
                 VALUES ($1, 'p-1', 1, 1, $2)",
                &[&n, &inc.encode_to_vec()],
            )
            .unwrap();
    }
    let backend = PostgresBackend::open(&url).unwrap();
    let reader = backend.reader().unwrap();
    let history = HistoryFilter {
        post_id: "p-1".into(),
        ..Default::default()
    };
    let newest_first: Vec<TimeKey> = reader
        .history_incidents(&history, 10)
        .unwrap()
        .iter()
        .map(|(k, _)| *k)
        .collect();
    let ms = |s: u64| 1_700_000_000_000 + 1000 * s as i64;
    assert_eq!(
        newest_first,
        [
            TimeKey { ms: ms(30), key: 1 },
            TimeKey { ms: ms(20), key: 3 },
            TimeKey { ms: ms(10), key: 2 }
        ]
    );
    let period = OpenedFilter {
        post_ids: vec![],
        from: Some(t(15)),
        to: Some(t(30)),
    };
    let found = reader.incidents_opened(&period, None, 10).unwrap();
    assert_eq!(found.iter().map(|(k, _)| k.key).collect::<Vec<_>>(), [3]);
}

#[test]
fn bad_urls_and_unreachable_servers_are_clear_errors() {
    for (url, want) in [
        ("postgresql://u@host:5432/db", "sslmode=disable"),
        (
            "postgresql://u@/db?host=/nonexistent-dir&port=1",
            "unavailable",
        ),
        ("postgresql://u@/db?port=notaport", "store url"),
    ] {
        let err = PostgresBackend::open(url).unwrap_err().to_string();
        assert!(err.contains(want), "{url}: {err} should mention {want}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_recover_after_the_server_restarts() {
    let Some(mut pg) = Postgres::start() else {
        return;
    };
    let url = pg.create_db();
    let backend: Arc<dyn Backend> = Arc::new(PostgresBackend::open(&url).unwrap());
    let readers = Readers::new(backend.clone(), 2);
    assert_eq!(readers.read(|s| s.event_count()).await.unwrap(), 0);

    let pg = tokio::task::spawn_blocking(move || {
        pg.restart();
        pg
    })
    .await
    .unwrap();
    // The pooled connection died with the old server: the read says
    // UNAVAILABLE (and the pool drops it), the next opens a fresh one.
    let first = readers.read(|s| s.event_count()).await;
    assert!(
        matches!(first, Err(StoreError::Unavailable(_))),
        "{first:?}"
    );
    assert_eq!(readers.read(|s| s.event_count()).await.unwrap(), 0);
    drop(pg);
}

#[test]
fn the_leader_lease_fences_a_deposed_writer() {
    use std::time::Duration;
    let Some(pg) = Postgres::start() else { return };
    let backend = PostgresBackend::open(&pg.create_db()).unwrap();
    let ttl = Duration::from_secs(2);
    let a = backend.try_lead("a", ttl).unwrap().expect("a free lease");
    assert_eq!(a.epoch, 1);
    assert_eq!(backend.try_lead("b", ttl).unwrap(), None, "a holds it");
    let mut writer_a = backend.fenced_writer(a).unwrap();
    let tx = writer_a.begin().unwrap();
    tx.commit().unwrap();
    // A live leader renews in every transaction; one that stops lets it
    // expire, and then another takes it with a new epoch.
    std::thread::sleep(ttl + Duration::from_millis(500));
    let b = backend.try_lead("b", ttl).unwrap().expect("expired lease");
    assert_eq!(b.epoch, 2);
    let (holder, epoch, live) = backend.leader().unwrap().unwrap();
    assert_eq!((holder.as_str(), epoch, live), ("b", 2, true));
    // The deposed writer cannot commit anything any more.
    let err = writer_a.begin().err().expect("a is fenced off");
    assert!(matches!(err, StoreError::NotLeader(_)), "{err}");
    let mut writer_b = backend.fenced_writer(b).unwrap();
    writer_b.begin().unwrap().commit().unwrap();
}

/// The request mailbox: a request is answered with the transaction that
/// claims it, or given up by its sender, never both. A sender giving up
/// while the leader holds the claim waits for the leader's commit and gets
/// its answer; a claim after a give-up finds nothing to do.
#[test]
fn a_forwarded_request_is_answered_or_given_up_never_both() {
    use std::time::Duration;
    let Some(pg) = Postgres::start() else { return };
    let backend = PostgresBackend::open(&pg.create_db()).unwrap();
    let mut writer = backend.writer().unwrap();
    let mut sender = backend.mailbox().unwrap();
    let mut leader = backend.mailbox().unwrap();

    // Answered: claimed and answered in one transaction.
    let id = sender.post(b"first", Duration::from_secs(30)).unwrap();
    assert_eq!(leader.waiting(10).unwrap(), vec![(id, b"first".to_vec())]);
    let mut tx = writer.begin().unwrap();
    assert!(tx.claim_request(id).unwrap());
    tx.answer_request(id, b"done").unwrap();
    // Uncommitted: the sender sees no answer yet, and a give-up waits for
    // the claim's transaction to end.
    assert_eq!(sender.answer(id).unwrap(), None);
    let giving_up = std::thread::spawn({
        let backend = backend.clone();
        move || backend.mailbox().unwrap().give_up(id).unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(!giving_up.is_finished(), "the give-up waits for the claim");
    tx.commit().unwrap();
    assert_eq!(giving_up.join().unwrap(), Some(b"done".to_vec()));
    assert_eq!(sender.answer(id).unwrap(), Some(b"done".to_vec()));
    assert!(leader.waiting(10).unwrap().is_empty());

    // Given up before any claim: the leader's claim finds nothing.
    let id = sender.post(b"second", Duration::from_secs(30)).unwrap();
    assert_eq!(sender.give_up(id).unwrap(), None);
    let mut tx = writer.begin().unwrap();
    assert!(!tx.claim_request(id).unwrap());
    tx.commit().unwrap();
    assert_eq!(sender.answer(id).unwrap(), None);

    // A claim rolled back leaves the request to be given up (or claimed
    // again).
    let id = sender.post(b"third", Duration::from_secs(30)).unwrap();
    let tx = {
        let mut tx = writer.begin().unwrap();
        assert!(tx.claim_request(id).unwrap());
        tx
    };
    drop(tx);
    assert_eq!(leader.waiting(10).unwrap().len(), 1);
    assert_eq!(sender.give_up(id).unwrap(), None);

    // Past its deadline a request is no longer offered nor claimable.
    let id = sender.post(b"late", Duration::from_millis(100)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(leader.waiting(10).unwrap().is_empty());
    let mut tx = writer.begin().unwrap();
    assert!(!tx.claim_request(id).unwrap());
    tx.commit().unwrap();
    sender.forget(id).unwrap();
}

/// A site document for the import test: records out of id order.
const SITE: &str = r#"
[[post]]
id = "p-2"
name = "Consulate"
timezone = "Europe/Vienna"
passcodes = ["4711"]
[[post.contact]]
role = "guard"
name = "Gate"
phone = "+43 1 555 0100"

[[post]]
id = "p-1"
name = "Embassy"
timezone = "UTC"

[[plan]]
category = "burglary"
steps = ["Check the cameras"]

[[plan]]
category = "burglary"
post = "p-2"
steps = [{ kind = "call_contact", role = "guard", text = "Patrol" }]
"#;

/// A SQLite store copied into PostgreSQL reads the same through the port:
/// events (their bytes too), watermarks with their gaps, incidents, audit
/// positions, notes, links, post status, test mode and the site document;
/// and the imported store carries on (new positions after the old ones).
#[test]
fn a_sqlite_store_imports_into_postgresql_unchanged() {
    use std::time::{Duration, UNIX_EPOCH};
    use vigil_ops::store::{Changes, EventLink, SqliteBackend, TestModeWrite, incident_id};
    use vigil_proto::v1::{
        AuditAction, AuditEntry, Event, Incident, IncidentState, Note, PostState, PostStatus,
    };
    let Some(pg) = Postgres::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteBackend::open(dir.path()).unwrap();
    let t = |s: u64| UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s);
    let ev = |post: &str, seq: u64| -> vigil_ops::store::Received {
        Event {
            post_id: post.into(),
            seq,
            received_at: Some(t(seq).into()),
            description: format!("{post} {seq}"),
            ..Default::default()
        }
        .into()
    };
    let inc = Incident {
        id: incident_id(3),
        post_id: "p-1".into(),
        state: IncidentState::Open as i32,
        version: 1,
        opened_at: Some(t(4).into()),
        ..Default::default()
    };
    {
        let mut w = sqlite.writer().unwrap();
        let mut tx = w.begin().unwrap();
        tx.insert_events(
            "p-1",
            &(1..=5).map(|s| ev("p-1", s)).collect::<Vec<_>>(),
            t(9),
        )
        .unwrap();
        tx.insert_events("p-2", &[ev("p-2", 1), ev("p-2", 2), ev("p-2", 4)], t(9))
            .unwrap();
        let mut c = Changes::default();
        c.put_incident(inc.clone(), None);
        c.audit.push(AuditEntry {
            incident_id: inc.id.clone(),
            post_id: "p-1".into(),
            action: AuditAction::Opened as i32,
            to_version: 1,
            ..Default::default()
        });
        c.audit.push(AuditEntry {
            post_id: "p-2".into(),
            action: AuditAction::TestModeStarted as i32,
            ..Default::default()
        });
        c.notes.push(Note {
            incident_id: inc.id.clone(),
            text: "called the post".into(),
            ..Default::default()
        });
        c.links.push(EventLink {
            incident_id: inc.id.clone(),
            post_id: "p-1".into(),
            seq: 2,
        });
        c.statuses.push((
            PostStatus {
                post_id: "p-1".into(),
                state: PostState::Online as i32,
                ..Default::default()
            },
            t(20),
        ));
        c.test_modes.push(TestModeWrite {
            post_id: "p-2".into(),
            until: Some(t(3600)),
        });
        c.site = Some(vigil_ops::site::parse(SITE).unwrap());
        c.notifications.push(vigil_ops::store::NewNotification {
            delivery: "0123456789abcdef0123456789abcdef".into(),
            webhook: "pager".into(),
            event: "opened".into(),
            incident: inc.clone(),
            at: t(10),
        });
        tx.apply(&c).unwrap();
        tx.commit().unwrap();
    }
    let url = pg.create_db();
    let postgres = PostgresBackend::open(&url).unwrap();
    let n = postgres.import_sqlite(dir.path()).unwrap();
    assert_eq!(
        (n.posts, n.events, n.incidents, n.links, n.audit, n.notes),
        (2, 8, 1, 1, 2, 1),
        "{n}"
    );
    // Two post records, two plans.
    assert_eq!(n.site_records, 4, "{n}");
    assert_eq!(n.notifications, 1, "{n}");
    // Once is enough: a second import into a store that holds data is
    // refused, and so is a folder without a SQLite store.
    let again = postgres.import_sqlite(dir.path()).unwrap_err().to_string();
    assert!(again.contains("not empty"), "{again}");
    assert!(postgres.import_sqlite(&dir.path().join("nope")).is_err());

    let (a, b) = (sqlite.reader().unwrap(), postgres.reader().unwrap());
    let same = |what: &str, x: String, y: String| assert_eq!(x, y, "{what}");
    same(
        "posts",
        format!("{:?}", a.posts().unwrap()),
        format!("{:?}", b.posts().unwrap()),
    );
    for post in ["p-1", "p-2"] {
        same(
            "events",
            format!("{:?}", a.events(post, 1, 100).unwrap()),
            format!("{:?}", b.events(post, 1, 100).unwrap()),
        );
        for seq in 1..=5 {
            assert_eq!(
                a.event_bytes(post, seq).unwrap(),
                b.event_bytes(post, seq).unwrap()
            );
        }
    }
    same(
        "audit",
        format!("{:?}", a.audit_after(0, 100).unwrap()),
        format!("{:?}", b.audit_after(0, 100).unwrap()),
    );
    same(
        "snapshot",
        format!("{:?}", a.engine_snapshot(t(0)).unwrap()),
        format!("{:?}", b.engine_snapshot(t(0)).unwrap()),
    );
    assert_eq!(a.site().unwrap(), b.site().unwrap());
    assert_eq!(b.site().unwrap().posts[1].post_id, "p-1");
    {
        use vigil_ops::store::NotifyState::Pending;
        assert_eq!(
            a.notifications(Pending, None, 10).unwrap(),
            b.notifications(Pending, None, 10).unwrap()
        );
        assert_eq!(b.notifications_due("pager", t(10), 10).unwrap().len(), 1);
    }
    same(
        "notes",
        format!("{:?}", a.notes(&inc.id).unwrap()),
        format!("{:?}", b.notes(&inc.id).unwrap()),
    );
    same(
        "incident events",
        format!("{:?}", a.incident_events(&inc.id).unwrap()),
        format!("{:?}", b.incident_events(&inc.id).unwrap()),
    );
    // When the incident opened came along: a period finds it.
    let period = vigil_ops::store::OpenedFilter {
        post_ids: vec!["p-1".into()],
        from: Some(t(4)),
        to: Some(t(5)),
    };
    same(
        "incidents opened in a period",
        format!("{:?}", a.incidents_opened(&period, None, 10).unwrap()),
        format!("{:?}", b.incidents_opened(&period, None, 10).unwrap()),
    );
    assert_eq!(b.incidents_opened(&period, None, 10).unwrap().len(), 1);
    // The imported store goes on: the gap fills, positions continue.
    let last = b.last_audit_position().unwrap();
    let mut w = postgres.writer().unwrap();
    let mut tx = w.begin().unwrap();
    tx.insert_events("p-2", &[ev("p-2", 3)], t(30)).unwrap();
    let mut c = Changes::default();
    c.audit.push(AuditEntry {
        post_id: "p-2".into(),
        action: AuditAction::TestModeEnded as i32,
        ..Default::default()
    });
    let positions = tx.apply(&c).unwrap();
    let result = tx.commit().unwrap();
    assert_eq!(result.durable, [("p-2".to_string(), 4)]);
    assert!(positions[0] > last, "{positions:?} after {last}");
}

/// A writer whose watermarks are out of date (here: a second writer,
/// which the lease would normally fence off) cannot store an event twice:
/// its transaction fails as UNAVAILABLE, and after `reconnect` it knows
/// the event is stored.
#[test]
fn stale_watermarks_fail_the_transaction_and_reconnect_repairs_them() {
    use vigil_ops::store::Received;
    use vigil_proto::v1::Event;
    let Some(pg) = Postgres::start() else { return };
    let backend = PostgresBackend::open(&pg.create_db()).unwrap();
    let ev = |seq| -> Received {
        Event {
            post_id: "p-1".into(),
            seq,
            ..Default::default()
        }
        .into()
    };
    let now = std::time::SystemTime::now();
    let mut first = backend.writer().unwrap();
    let mut stale = backend.writer().unwrap();
    let mut tx = first.begin().unwrap();
    assert_eq!(tx.insert_events("p-1", &[ev(1)], now).unwrap(), [true]);
    tx.commit().unwrap();

    let mut tx = stale.begin().unwrap();
    assert_eq!(tx.insert_events("p-1", &[ev(1)], now).unwrap(), [true]);
    let err = tx.commit().unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    stale.reconnect().unwrap();
    let mut tx = stale.begin().unwrap();
    assert_eq!(
        tx.insert_events("p-1", &[ev(1), ev(2)], now).unwrap(),
        [false, true]
    );
    assert_eq!(tx.commit().unwrap().durable, [("p-1".to_string(), 2)]);
}

/// Over TCP the store speaks TLS (rustls on ring) and checks the server's
/// certificate against `[store] ca`: without a CA it is refused at once
/// (never plain text by chance), with another CA the connection fails, and
/// with the right one the store works.
#[test]
fn tls_to_postgresql_checks_the_server_certificate() {
    let Some(pg) = Postgres::start_tls() else {
        return;
    };
    let url = pg.tls_url(&pg.create_db(), pg.tcp_addr());

    let err = PostgresBackend::open(&url).unwrap_err().to_string();
    assert!(err.contains("[store] ca"), "{err}");

    let other = tempfile::tempdir().unwrap();
    vigil_pki::authority::init(other.path(), "another CA").unwrap();
    let err = PostgresBackend::open_with_ca(&url, Some(&other.path().join("ca.pem"))).unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");

    let backend = PostgresBackend::open_with_ca(&url, Some(pg.ca())).unwrap();
    let (name, case) = suite::CASES[0];
    eprintln!("over TLS: {name}");
    case(&backend);
    // Plain TCP only when asked for by name.
    let plain = url.replace("sslmode=require", "sslmode=disable");
    let backend = PostgresBackend::open(&plain).unwrap();
    assert!(backend.reader().unwrap().event_count().unwrap() > 0);
}

/// Replicas that start together on an empty database migrate it once,
/// without tripping over each other.
#[test]
fn replicas_starting_together_migrate_an_empty_database_once() {
    let Some(pg) = Postgres::start() else { return };
    let url = pg.create_db();
    let opened: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || PostgresBackend::open(&url).map(|_| ()))
        })
        .collect();
    for o in opened {
        o.join().unwrap().expect("every replica opens the store");
    }
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let rows: i64 = admin
        .query_one("SELECT count(*) FROM vigil_schema", &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, 1, "one version row");
}
