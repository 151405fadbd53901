//! The Vigil operations center: where every post's events are stored exactly
//! once and become incidents that people act on.
//!
//! ```text
//!  MQTT ──► ingest ──(bounded queue of Jobs)──► writer thread ──► store
//!    ▲        │                                  (store + engine,
//!    │        ◄────────(Committed: acks, receipts)  group commit)
//!    └── PUBACK + Receipt after commit                ▲  │ publishes
//!                     timer ticks, workflow (gRPC API) ┘  ▼ incident feed
//!                     reads (reader pool) ◄── API
//! ```
//!
//! Layout:
//! - [`api`]: the gRPC API over mTLS: feed, queries, workflow, replay.
//! - [`config`]: the config file (`vigil ops --config FILE`).
//! - [`store`]: the storage port ([`store::Backend`]: one writer, a pool of
//!   readers) and its SQLite backend; idempotent events, per-post
//!   `durable_through_seq`.
//! - [`engine`]: the incident engine: correlation rules, timers, workflow.
//! - [`writer`]: the thread that owns store and engine; group commit.
//! - [`ingest`]: MQTT: subscribe, check, queue, acknowledge, receipt.
//! - [`budget`]: per-post budgets of what may be stored (token buckets).
//! - [`metrics`]: counters of ingest and commits.

pub mod api;
pub mod budget;
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
    store::{Backend, Readers, SqliteBackend, StoreError, StoreWriter},
    writer::Job,
};

/// The store as the ops center opened it: its backend (for readers) and
/// the one writer's connection.
pub struct Storage {
    pub backend: Arc<dyn Backend>,
    pub writer: Box<dyn StoreWriter>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// Opens the backend `[store]` names (SQLite in `data_dir` by default).
pub fn open_backend(config: &OpsConfig) -> Result<Arc<dyn Backend>, StoreError> {
    match &config.store.url {
        None => Ok(Arc::new(SqliteBackend::open(&config.data_dir)?)),
        Some(url) => Ok(Arc::new(store::PostgresBackend::open(url)?)),
    }
}

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
    #[error("api: cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("api: {0}")]
    Api(#[from] tonic::transport::Error),
}

/// Opens the store and rebuilds the engine from it. Separate from [`run`] so
/// a binary can report a store that cannot be opened before it does
/// anything else.
pub fn open(config: &OpsConfig) -> Result<(Storage, Engine), StoreError> {
    // Blocking work (connecting, reading the snapshot): off any async
    // runtime the caller may be on.
    store::postgres::off_runtime(|| {
        let backend = open_backend(config)?;
        let writer = backend.writer()?;
        let since = SystemTime::now()
            .checked_sub(Duration::from_secs(config.engine.reactivation_window_secs))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let engine = Engine::new(config.engine.clone(), writer.engine_snapshot(since)?);
        Ok((Storage { backend, writer }, engine))
    })
}

/// Runs the ops-center until `shutdown` is cancelled: ingest over MQTT, the
/// writer, the engine's timers, and the gRPC API on `[api] listen`. Returns
/// after everything queued was committed (within a grace period) and the
/// writer stopped.
pub async fn run(
    config: OpsConfig,
    store: Storage,
    engine: Engine,
    tls: &TlsMaterial,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), OpsError> {
    let addr = config.api.listen;
    let api = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| OpsError::Bind { addr, source })?;
    run_with_api(config, store, engine, tls, metrics, api, shutdown).await
}

/// [`run`] with the API on a listener the caller bound (tests bind
/// `127.0.0.1:0`).
pub async fn run_with_api(
    config: OpsConfig,
    store: Storage,
    engine: Engine,
    tls: &TlsMaterial,
    metrics: Arc<Metrics>,
    api_listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> Result<(), OpsError> {
    let client_config = Arc::new(tls.client_config()?);
    let server_config = tls.server_config()?;
    let client_id = tls.own_peer().identity.to_string();
    let store_location = format!("{} {}", store.backend.name(), store.backend.location());
    // The API reads through connections of its own; the writer's is busy
    // writing.
    let readers = Readers::new(store.backend.clone(), config.store.readers);
    let feed = api::feed::Feed::new();
    let (jobs_tx, jobs_rx) = mpsc::channel(writer::QUEUE_CAPACITY);
    let (done_tx, done_rx) = mpsc::channel(writer::DONE_CAPACITY);
    let writer = writer::spawn_publishing(
        store.writer,
        engine,
        metrics.clone(),
        jobs_rx,
        done_tx,
        feed.publisher(),
    );
    tracing::info!(
        addr = %api_listener.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()),
        "api listening"
    );
    let api_stop = shutdown.child_token();
    let front =
        vigil_net::Front::with_stats("api", config.api.limits(), metrics.api_listener.clone());
    let api = tokio::spawn(api::serve_with_health(
        api::ApiContext {
            jobs: jobs_tx.clone(),
            readers,
            feed,
            metrics: metrics.clone(),
        },
        metrics.store_health.subscribe(),
        front,
        api_listener,
        server_config,
        api_stop.clone(),
    ));
    tracing::info!(
        identity = %client_id,
        brokers = ?config.mqtt.addresses(),
        store = %store_location,
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
            budget: config.budget.clone(),
            client_id,
        },
        client_config,
        jobs_tx,
        done_rx,
        metrics.clone(),
        shutdown.clone(),
    )
    .await;

    // Ingest has returned (shutdown, or the writer died): stop the API and
    // the timers so the last job sender goes away and the writer can finish.
    tasks.cancel();
    api_stop.cancel();
    let api_result = api.await.unwrap_or(Ok(()));
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
    api_result?;
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
                    rejected_out_of_range = m.rejected_out_of_range,
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
