//! The Vigil operations center: where every post's events are stored exactly
//! once and become incidents that people act on.
//!
//! ```text
//!  MQTT ──► ingest ──(bounded queue of Jobs)──► writer thread ──► SQLite
//!    ▲        │                                  (store + engine,
//!    │        ◄────────(Committed: acks, receipts)  group commit)
//!    └── PUBACK + Receipt after commit                ▲
//!                               timer ticks, workflow ┘ (API: next release)
//! ```
//!
//! Layout:
//! - [`config`]: the config file (`vigil ops --config FILE`).
//! - [`store`]: the narrow storage interface ([`store::Store`]) and its SQLite
//!   implementation; idempotent events, per-post `durable_through_seq`.
//! - [`engine`]: the incident engine: correlation rules, timers, workflow.
//! - [`writer`]: the thread that owns store and engine; group commit.
//! - [`ingest`]: MQTT: subscribe, check, queue, acknowledge, receipt.
//! - [`metrics`]: counters of ingest and commits.

pub mod config;
pub mod engine;
pub mod ingest;
pub mod metrics;
pub mod store;
pub mod writer;

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use vigil_pki::tls::TlsMaterial;

use crate::{
    config::OpsConfig,
    engine::Engine,
    metrics::Metrics,
    store::{SqliteStore, Store, StoreError},
    writer::Job,
};

/// How often the engine's timers run (escalation, test mode expiry).
const TICK_EVERY: Duration = Duration::from_secs(1);
/// How often the counters are logged.
const METRICS_EVERY: Duration = Duration::from_secs(60);

/// Why the ops-center stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("tls: {0}")]
    Tls(#[from] vigil_pki::TlsError),
    #[error("ingest: {0}")]
    Ingest(#[from] ingest::IngestError),
}

/// Opens the store and rebuilds the engine from it. Separate from [`run`] so
/// a binary can report a store that cannot be opened before it does
/// anything else.
pub fn open(config: &OpsConfig) -> Result<(SqliteStore, Engine), StoreError> {
    let store = SqliteStore::open(&config.data_dir)?;
    let since = SystemTime::now()
        .checked_sub(Duration::from_secs(config.engine.reactivation_window_secs))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let engine = Engine::new(config.engine.clone(), store.engine_snapshot(since)?);
    Ok((store, engine))
}

/// Runs the ops-center until `shutdown` is cancelled: ingest over MQTT, the
/// writer, and the engine's timers. Returns after everything queued was
/// committed (within a grace period) and the writer stopped.
pub async fn run(
    config: OpsConfig,
    store: Box<dyn Store>,
    engine: Engine,
    tls: &TlsMaterial,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), OpsError> {
    let client_config = Arc::new(tls.client_config()?);
    let client_id = tls.own_peer().identity.to_string();
    let (jobs_tx, jobs_rx) = mpsc::channel(writer::QUEUE_CAPACITY);
    let (done_tx, done_rx) = mpsc::channel(writer::DONE_CAPACITY);
    let writer = writer::spawn(store, engine, metrics.clone(), jobs_rx, done_tx);
    tracing::info!(
        identity = %client_id,
        server = %config.mqtt.server,
        data_dir = %config.data_dir.display(),
        "operations center starting"
    );

    let tracker = TaskTracker::new();
    let tasks = shutdown.child_token();
    tracker.spawn(tick(jobs_tx.clone(), tasks.clone()));
    tracker.spawn(log_metrics(metrics.clone(), tasks.clone()));
    tracker.close();

    let ingest_result = ingest::run(
        ingest::IngestConfig {
            mqtt: config.mqtt.clone(),
            client_id,
        },
        client_config,
        jobs_tx,
        done_rx,
        metrics.clone(),
        shutdown.clone(),
    )
    .await;

    // Ingest has returned (shutdown, or the writer died): stop the timers so
    // the last job sender goes away and the writer can finish.
    tasks.cancel();
    tracker.wait().await;
    let writer_result = tokio::task::spawn_blocking(move || writer.join())
        .await
        .unwrap_or_else(|_| Err(StoreError::Corrupt("writer join failed".into())));
    let m = metrics.snapshot();
    tracing::info!(
        events_stored = m.events_stored,
        duplicates = m.duplicates,
        commits = m.commits,
        "operations center stopped"
    );
    writer_result?;
    ingest_result?;
    Ok(())
}

async fn tick(jobs: mpsc::Sender<Job>, cancel: CancellationToken) {
    let mut every = tokio::time::interval(TICK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = every.tick() => {
                // A full queue means the writer is busy; the next tick will do.
                if let Err(mpsc::error::TrySendError::Closed(_)) =
                    jobs.try_send(Job::Tick { at: SystemTime::now() })
                {
                    return;
                }
            }
        }
    }
}

async fn log_metrics(metrics: Arc<Metrics>, cancel: CancellationToken) {
    let mut every = tokio::time::interval(METRICS_EVERY);
    every.tick().await;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = every.tick() => {
                let m = metrics.snapshot();
                tracing::info!(
                    events_in = m.events_in,
                    events_stored = m.events_stored,
                    duplicates = m.duplicates,
                    rejected_malformed = m.rejected_malformed,
                    rejected_oversize = m.rejected_oversize,
                    rejected_post_mismatch = m.rejected_post_mismatch,
                    rejected_topic = m.rejected_topic,
                    commits = m.commits,
                    commit_p50_us = m.commit_p50.as_micros() as u64,
                    commit_p99_us = m.commit_p99.as_micros() as u64,
                    lag_max_ms = m.lag_max_ms,
                    "counters"
                );
            }
        }
    }
}
