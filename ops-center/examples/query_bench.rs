//! Benchmark (not a test): fills a store to N events and times every query
//! shape the API uses (`store::shapes`), as the API's reader connections
//! run them. Prints one line per shape: rows returned, median and slowest
//! of `--reps` runs.
//!
//! ```sh
//! cargo run --release -p vigil-ops --example query_bench -- \
//!     --events 1000000 [--posts 200] [--reps 20] [--dir PATH | --pg URL | --pg-temp]
//! ```
//!
//! The fill goes straight through the store's writer (no engine): events of
//! `--posts` posts, 10 ms apart per post, 60 % alarms (a third of them
//! panel tests), 40 % camera events; health events only for post p-0000
//! (one in a hundred of its events), so "every post's health events" is the
//! rare-match case that used to scan the whole store; one incident per 500
//! events (19 in 20 resolved), each linked to one event with an audit entry.
//! `--pg-temp` starts a throwaway PostgreSQL server (the test harness's),
//! and runs `ANALYZE` after the fill, as autovacuum would in time.
//! `--prune` then times retention with `camera_days = 1` a day after the
//! middle of the fill (half the camera events are over): a dry run, then
//! the real pass with an archive in a temporary folder.

use std::time::{Duration, Instant, SystemTime};

use vigil_ops::store::{
    Backend, Changes, EventLink, IncidentFilter, PostgresBackend, Received, ReceivedFilter,
    ReceivedKey, SeqFilter, SqliteBackend, Store, StoreError, incident_id,
};
use vigil_proto::v1::{
    AlarmSignal, AuditAction, AuditEntry, CameraEvent, Event, EventCategory, EventKind, Incident,
    IncidentState, PostHealth, event::Body,
};

struct Args {
    events: u64,
    posts: u64,
    reps: usize,
    dir: Option<std::path::PathBuf>,
    pg: Option<String>,
    pg_temp: bool,
    prune: bool,
}

fn args() -> Args {
    let mut a = Args {
        events: 1_000_000,
        posts: 200,
        reps: 20,
        dir: None,
        pg: None,
        pg_temp: false,
        prune: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--events" => a.events = value().parse().expect("--events N"),
            "--posts" => a.posts = value().parse().expect("--posts N"),
            "--reps" => a.reps = value().parse().expect("--reps N"),
            "--dir" => a.dir = Some(value().into()),
            "--pg" => a.pg = Some(value()),
            "--pg-temp" => a.pg_temp = true,
            "--prune" => a.prune = true,
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// 2026-01-01T00:00:00Z, where the fill starts.
const START_MS: i64 = 1_767_225_600_000;
/// Events per transaction of the fill.
const FILL_TX: u64 = 20_000;

fn post(n: u64) -> String {
    format!("p-{n:04}")
}

fn at(ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms as u64)
}

/// The `i`-th event of the fill: its post, seq and body.
fn event(i: u64, posts: u64) -> Received {
    let p = i % posts;
    let seq = i / posts + 1;
    let (category, body) = if p == 0 && seq.is_multiple_of(100) {
        (
            EventCategory::Supervisory,
            Body::Health(PostHealth::default()),
        )
    } else if i % 5 < 3 {
        let category = if i.is_multiple_of(15) {
            EventCategory::Test
        } else {
            EventCategory::Burglary
        };
        (
            category,
            Body::Alarm(AlarmSignal {
                account: "1234".into(),
                zone: (i % 32) as u32,
                sia_code: "BA".into(),
                ..Default::default()
            }),
        )
    } else {
        (
            EventCategory::VideoDetection,
            Body::Camera(CameraEvent {
                camera_id: "cam-1".into(),
                ..Default::default()
            }),
        )
    };
    Event {
        post_id: post(p),
        seq,
        // Posts interleave: 10 ms between two events of one post.
        received_at: Some(at(START_MS + (seq as i64) * 10 + (p as i64 % 10)).into()),
        category: category as i32,
        description: "bench".into(),
        body: Some(body),
        ..Default::default()
    }
    .into()
}

fn fill(backend: &dyn Backend, a: &Args) -> Result<(), StoreError> {
    let mut writer = backend.writer()?;
    let mut i = 0;
    let mut incident = 0u64;
    let started = Instant::now();
    while i < a.events {
        let end = (i + FILL_TX).min(a.events);
        let mut by_post: std::collections::BTreeMap<String, Vec<Received>> = Default::default();
        for j in i..end {
            let e = event(j, a.posts);
            by_post.entry(e.event.post_id.clone()).or_default().push(e);
        }
        let mut changes = Changes::default();
        for j in (i..end).filter(|j| j.is_multiple_of(500)) {
            incident += 1;
            let e = event(j, a.posts).event;
            let resolved = !incident.is_multiple_of(20);
            changes.put_incident(
                Incident {
                    id: incident_id(incident),
                    post_id: e.post_id.clone(),
                    state: if resolved {
                        IncidentState::Resolved
                    } else {
                        IncidentState::Open
                    } as i32,
                    version: 1,
                    resolved_at: resolved.then(|| at(START_MS + j as i64).into()),
                    title: "bench".into(),
                    ..Default::default()
                },
                None,
            );
            changes.links.push(EventLink {
                incident_id: incident_id(incident),
                post_id: e.post_id.clone(),
                seq: e.seq,
            });
            changes.audit.push(AuditEntry {
                incident_id: incident_id(incident),
                post_id: e.post_id,
                action: AuditAction::Opened as i32,
                actor: "system".into(),
                to_version: 1,
                ..Default::default()
            });
        }
        let mut tx = writer.begin()?;
        for (p, events) in &by_post {
            tx.insert_events(p, events, at(START_MS))?;
        }
        tx.apply(&changes)?;
        tx.commit()?;
        i = end;
        if i % 200_000 == 0 || i == a.events {
            eprintln!(
                "filled {i} events in {:.1}s",
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

type Run = Box<dyn Fn(&dyn Store) -> Result<usize, StoreError>>;

fn shapes(a: &Args) -> Vec<(&'static str, Run)> {
    let per_post = a.events / a.posts;
    let mid = START_MS + (per_post as i64) * 5; // the middle of the fill
    let last = a.events / a.posts;
    // Two posts with incidents (every 500th event is p-0000 or p-0100), one without.
    let posts3 = vec![post(0), post(100), post(3)];
    let health = vec![EventKind::Health as i32];
    let none = vec![EventKind::Unspecified as i32];
    let open = vec![
        IncidentState::Open as i32,
        IncidentState::Acknowledged as i32,
    ];
    let key = ReceivedKey {
        received_ms: mid,
        post_id: post(7),
        seq: per_post / 2,
    };
    let list = |f: IncidentFilter| -> Run { Box::new(move |s| Ok(s.incidents(&f)?.len())) };
    let recv = |f: ReceivedFilter, after: Option<ReceivedKey>, n: usize| -> Run {
        Box::new(move |s| Ok(s.events_received(&f, after.as_ref(), n)?.len()))
    };
    let seq =
        |f: SeqFilter, n: usize| -> Run { Box::new(move |s| Ok(s.events_by_seq(&f, n)?.len())) };
    vec![
        (
            "replay one post by seq (page of 500)",
            seq(
                SeqFilter {
                    post_id: post(5),
                    from_seq: per_post / 2,
                    ..Default::default()
                },
                500,
            ),
        ),
        (
            "replay one post by seq, health only (1 in 100 of p-0000)",
            seq(
                SeqFilter {
                    post_id: post(0),
                    kinds: health.clone(),
                    from_seq: 1,
                    ..Default::default()
                },
                500,
            ),
        ),
        (
            "replay one post by seq, a kind it never had",
            seq(
                SeqFilter {
                    post_id: post(5),
                    kinds: health.clone(),
                    from_seq: 1,
                    ..Default::default()
                },
                500,
            ),
        ),
        (
            "replay all posts (first page)",
            recv(ReceivedFilter::default(), None, 500),
        ),
        (
            "replay all posts, next page from the middle",
            recv(ReceivedFilter::default(), Some(key), 500),
        ),
        (
            "replay all posts, --kind health --limit 10",
            recv(
                ReceivedFilter {
                    kinds: health,
                    ..Default::default()
                },
                None,
                10,
            ),
        ),
        (
            "replay all posts, a kind never stored",
            recv(
                ReceivedFilter {
                    kinds: none,
                    ..Default::default()
                },
                None,
                500,
            ),
        ),
        (
            "replay all posts, one minute in the middle",
            recv(
                ReceivedFilter {
                    from: Some(at(mid)),
                    to: Some(at(mid + 60_000)),
                    ..Default::default()
                },
                None,
                500,
            ),
        ),
        (
            "replay three posts, camera, time range",
            recv(
                ReceivedFilter {
                    post_ids: posts3.clone(),
                    kinds: vec![EventKind::Camera as i32],
                    from: Some(at(mid)),
                    to: None,
                },
                None,
                500,
            ),
        ),
        (
            "incidents: open and acknowledged (vigil incidents)",
            list(IncidentFilter {
                states: open.clone(),
                limit: 51,
                ..Default::default()
            }),
        ),
        (
            "incidents: every one, newest first",
            list(IncidentFilter {
                limit: 51,
                ..Default::default()
            }),
        ),
        (
            "incidents: three posts, open and acknowledged",
            list(IncidentFilter {
                states: open,
                post_ids: posts3,
                limit: 51,
                ..Default::default()
            }),
        ),
        ("posts (vigil posts)", Box::new(|s| Ok(s.posts()?.len()))),
        (
            "one event",
            Box::new(move |s| Ok(usize::from(s.event(&post(9), last / 2)?.is_some()))),
        ),
        (
            "incident in full: events, audit, notes",
            Box::new(|s| {
                let id = incident_id(2);
                Ok(s.incident_events(&id)?.len() + s.audit(&id)?.len() + s.notes(&id)?.len())
            }),
        ),
        (
            "feed catch-up (500 audit entries)",
            Box::new(|s| Ok(s.audit_after(100, 500)?.len())),
        ),
    ]
}

fn main() {
    let a = args();
    let temp = tempfile::tempdir().unwrap();
    let mut pg_server = None;
    let mut pg_url = a.pg.clone();
    if a.pg_temp {
        let pg = vigil_tests::postgres::Postgres::start().expect("PostgreSQL is installed");
        pg_url = Some(pg.create_db());
        pg_server = Some(pg);
    }
    let backend: Box<dyn Backend> = if let Some(url) = &pg_url {
        Box::new(PostgresBackend::open(url).unwrap())
    } else {
        let dir = a.dir.clone().unwrap_or_else(|| temp.path().to_owned());
        Box::new(SqliteBackend::open(&dir).unwrap())
    };
    let reader = backend.reader().unwrap();
    let existing = reader.event_count().unwrap();
    if existing == 0 {
        fill(&*backend, &a).unwrap();
    } else {
        eprintln!("store already holds {existing} events: timing it as it is");
    }
    if let Some(url) = &pg_url {
        // Statistics, as autovacuum would gather them in time (a URL over
        // TCP with TLS is not supported here: use a socket URL).
        let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
        client.batch_execute("ANALYZE").unwrap();
    }
    let reader = backend.reader().unwrap();
    let events = reader.event_count().unwrap();
    println!(
        "query_bench: {} store, {events} events, {} posts, {} runs per shape",
        backend.name(),
        a.posts,
        a.reps
    );
    for (name, run) in shapes(&a) {
        let mut times = Vec::with_capacity(a.reps);
        let mut rows = 0;
        for _ in 0..a.reps {
            let t = Instant::now();
            rows = run(&*reader).unwrap();
            times.push(t.elapsed());
        }
        times.sort();
        println!(
            "  {name:<58} rows {rows:>5}  p50 {:>8.2} ms  max {:>8.2} ms",
            times[times.len() / 2].as_secs_f64() * 1e3,
            times[times.len() - 1].as_secs_f64() * 1e3
        );
    }
    drop(reader);
    if a.prune {
        prune(&*backend, &a);
    }
    drop(backend);
    drop(pg_server);
}

fn prune(backend: &dyn Backend, a: &Args) {
    use vigil_ops::store::{
        archive::Archive,
        retention::{Pruner, RetentionConfig},
    };
    let per_post = a.events / a.posts;
    let now = at(START_MS + (per_post as i64) * 5 + 86_400_000);
    let config = RetentionConfig {
        camera_days: 1,
        ..Default::default()
    };
    let t = Instant::now();
    let dry = Pruner::open(backend, config.policy(), None)
        .unwrap()
        .run(now, true, 1_000_000)
        .unwrap();
    let dry_secs = t.elapsed().as_secs_f64();
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let done = Pruner::open(
        backend,
        config.policy(),
        Some(Archive::open(dir.path()).unwrap()),
    )
    .unwrap()
    .run(now, false, 1_000_000)
    .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let back = vigil_ops::store::archive::read(dir.path(), &Default::default())
        .unwrap()
        .len();
    let read_secs = t.elapsed().as_secs_f64();
    let bytes: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    println!(
        "  retention dry run: {} examined, {} would go in {dry_secs:.1}s",
        dry.examined,
        dry.events_total()
    );
    println!(
        "  retention with archive: {} deleted in {secs:.1}s ({:.0} events/s, batches of {}), \
         {} archive files, {:.1} MB",
        done.events_total(),
        done.events_total() as f64 / secs,
        config.batch,
        done.archive_files.len(),
        bytes as f64 / 1e6
    );
    println!("  archive read back (SHA-256 checked): {back} events in {read_secs:.1}s");
}
