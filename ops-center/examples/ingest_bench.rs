//! Benchmark (not a test): how many events per second the ops-center stores
//! durably and receipts, with many posts sending at once.
//!
//! It drives the real writer (SQLite store, WAL, synchronous=FULL, group
//! commit, incident engine; or a PostgreSQL database with `--pg URL`)
//! through its bounded job queue, as ingest does, minus MQTT. Per batch it measures the time from queueing to the receipt
//! that covers it (queue wait + commit), and prints one result line.
//!
//! ```sh
//! cargo run --release -p vigil-ops --example ingest_bench -- \
//!     --posts 2000 --batch 50 --events 2000000 [--dir PATH | --pg URL]
//! ```

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::mpsc;
use vigil_ops::{
    engine::{Engine, EngineConfig},
    metrics::Metrics,
    store::{Backend, PostgresBackend, SqliteBackend},
    writer::{self, Committed, Job},
};
use vigil_proto::v1::{AlarmSignal, Event, EventCategory, Source, SourceKind, event::Body};

struct Args {
    posts: u64,
    batch: u64,
    events: u64,
    dir: Option<std::path::PathBuf>,
    pg: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        posts: 2000,
        batch: 50,
        events: 1_000_000,
        dir: None,
        pg: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--posts" => a.posts = value().parse().expect("--posts N"),
            "--batch" => a.batch = value().parse().expect("--batch N"),
            "--events" => a.events = value().parse().expect("--events N"),
            "--dir" => a.dir = Some(value().into()),
            "--pg" => a.pg = Some(value()),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// One event as a panel would send it: mostly openings/closings and tests
/// (stored, no incident), one in a hundred a burglary alarm.
fn event(post: &str, seq: u64, now: SystemTime) -> Event {
    let category = if seq.is_multiple_of(100) {
        EventCategory::Burglary
    } else if seq.is_multiple_of(2) {
        EventCategory::OpenClose
    } else {
        EventCategory::Test
    };
    Event {
        post_id: post.to_owned(),
        seq,
        received_at: Some(now.into()),
        source: Some(Source {
            device_id: "1234".into(),
            kind: SourceKind::AlarmPanel as i32,
        }),
        category: category as i32,
        description: "Event from zone 7".into(),
        body: Some(Body::Alarm(AlarmSignal {
            account: "1234".into(),
            zone: (seq % 16) as u32 + 1,
            sia_code: "BA".into(),
            raw_data: "#1234|NBA007".into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = args();
    let tmp = tempfile::tempdir().unwrap();
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_owned());
    // Opened off the async threads: the PostgreSQL client blocks.
    let (backend, store, engine) = std::thread::scope(|sc| {
        sc.spawn(|| {
            let backend: Box<dyn Backend> = match &args.pg {
                Some(url) => Box::new(PostgresBackend::open(url).unwrap()),
                None => Box::new(SqliteBackend::open(&dir).unwrap()),
            };
            let store = backend.writer().unwrap();
            let engine = Engine::new(
                EngineConfig::default(),
                store.engine_snapshot(SystemTime::UNIX_EPOCH).unwrap(),
            );
            (backend, store, engine)
        })
        .join()
        .unwrap()
    });
    let metrics = Arc::new(Metrics::default());
    let (jobs_tx, jobs_rx) = mpsc::channel(writer::QUEUE_CAPACITY);
    let (done_tx, mut done_rx) = mpsc::channel::<Committed>(writer::DONE_CAPACITY);
    let handle = writer::spawn(store, engine, metrics.clone(), jobs_rx, done_tx);

    let posts: Vec<String> = (0..args.posts).map(|i| format!("p-{i:05}")).collect();
    let batches = args.events.div_ceil(args.batch);
    let (sent_tx, mut sent_rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    let started = Instant::now();
    let producer = tokio::spawn({
        let posts = posts.clone();
        let batch = args.batch;
        async move {
            let mut next_seq = vec![1u64; posts.len()];
            for token in 1..=batches {
                let p = (token as usize) % posts.len();
                let now = SystemTime::now();
                let first = next_seq[p];
                let events = (first..first + batch)
                    .map(|s| event(&posts[p], s, now).into())
                    .collect();
                next_seq[p] += batch;
                // Bench bookkeeping only: bounded by `batches`.
                sent_tx.send((token, Instant::now())).unwrap();
                jobs_tx
                    .send(Job::Batch {
                        post_id: posts[p].clone(),
                        events,
                        at: now,
                        token,
                    })
                    .await
                    .unwrap();
            }
        }
    });

    let mut sent_at: HashMap<u64, Instant> = HashMap::new();
    let mut latencies = Vec::with_capacity(batches as usize);
    let mut receipted: HashMap<String, u64> = HashMap::new();
    while (latencies.len() as u64) < batches {
        let committed = done_rx.recv().await.expect("writer alive");
        let now = Instant::now();
        while let Ok((token, at)) = sent_rx.try_recv() {
            sent_at.insert(token, at);
        }
        for token in committed.tokens {
            let at = sent_at.remove(&token).expect("sent before committed");
            latencies.push(now - at);
        }
        for r in committed.receipts {
            receipted.insert(r.post_id, r.durable_through_seq);
        }
    }
    let elapsed = started.elapsed();
    producer.await.unwrap();
    handle_join(handle).await;

    let stored: u64 = receipted.values().sum();
    latencies.sort();
    let pct = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q) as usize];
    let m = metrics.snapshot();
    println!(
        "ops ingest ({}): {} posts, {} events/batch, {} events stored and receipted in {:.2} s = {:.0} events/s; \
         {} commits ({:.0} events/commit); batch queue+commit latency p50 {} p99 {} max {}; \
         commit duration p50 < {} p99 < {}",
        backend.name(),
        args.posts,
        args.batch,
        stored,
        elapsed.as_secs_f64(),
        stored as f64 / elapsed.as_secs_f64(),
        m.commits,
        m.events_stored as f64 / m.commits.max(1) as f64,
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(*latencies.last().unwrap()),
        ms(m.commit_p50),
        ms(m.commit_p99),
    );
    assert_eq!(stored, m.events_stored, "every stored event is receipted");
}

async fn handle_join(handle: writer::WriterHandle) {
    tokio::task::spawn_blocking(move || handle.join())
        .await
        .unwrap()
        .unwrap();
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
