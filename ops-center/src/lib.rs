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
//! - [`console`]: the browser console (HTTPS, same identities and roles).
//! - [`config`]: the config file (`vigil ops --config FILE`).
//! - [`store`]: the storage port ([`store::Backend`]: one writer, a pool of
//!   readers) and its SQLite backend; idempotent events, per-post
//!   `durable_through_seq`.
//! - [`engine`]: the incident engine: correlation rules, timers, workflow.
//! - [`writer`]: the thread that owns store and engine; group commit.
//! - [`ingest`]: MQTT: subscribe, check, queue, acknowledge, receipt.
//! - [`budget`]: per-post budgets of what may be stored (token buckets).
//! - [`metrics`]: counters of ingest and commits.
//! - [`site`]: post records and action plans: the site file, checks, which
//!   plan applies.

pub mod api;
pub mod budget;
pub mod config;
pub mod console;
pub mod engine;
pub mod forward;
pub mod ingest;
pub mod metrics;
pub mod notify;
pub mod report;
pub mod schedule;
pub mod site;
pub mod store;
pub mod writer;

use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
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
    /// The writer's connection (SQLite). `None` on PostgreSQL, where a
    /// replica opens a fenced one each time it takes the leader lease.
    pub writer: Option<Box<dyn StoreWriter>>,
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
        Some(url) => Ok(Arc::new(store::PostgresBackend::open_with_ca(
            url,
            config.store.ca.as_deref(),
        )?)),
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
    #[error("{key}: {reason}")]
    Notify { key: String, reason: String },
    #[error("console: cannot listen on {addr}: {source}")]
    ConsoleBind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Opens the store and rebuilds the engine from it. Separate from [`run`] so
/// a binary can report a store that cannot be opened before it does
/// anything else.
pub fn open(config: &OpsConfig) -> Result<(Storage, Engine), StoreError> {
    // Blocking work (connecting, reading the snapshot): off any async
    // runtime the caller may be on.
    store::postgres::off_runtime(|| {
        let backend = open_backend(config)?;
        if backend.as_postgres().is_some() {
            // The engine is rebuilt whenever this replica takes the lease.
            let engine = Engine::new(config.engine.clone(), Default::default());
            return Ok((
                Storage {
                    backend,
                    writer: None,
                },
                engine,
            ));
        }
        let writer = backend.writer()?;
        let engine = Engine::new(
            config.engine.clone(),
            writer.engine_snapshot(resolved_since(config))?,
        );
        Ok((
            Storage {
                backend,
                writer: Some(writer),
            },
            engine,
        ))
    })
}

/// Incidents resolved since then may still reactivate: the engine keeps
/// them.
fn resolved_since(config: &OpsConfig) -> SystemTime {
    SystemTime::now()
        .checked_sub(Duration::from_secs(config.engine.reactivation_window_secs))
        .unwrap_or(SystemTime::UNIX_EPOCH)
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
    // Secrets and CA files of the webhooks: a bad one stops the start.
    let routes = notify::Routes::load(&config.notify)
        .map_err(|(key, reason)| OpsError::Notify { key, reason })?;
    let client_id = tls.own_peer().identity.to_string();
    let store_location = format!("{} {}", store.backend.name(), store.backend.location());
    // The API reads through connections of its own; the writer's is busy
    // writing.
    let readers = Readers::new(store.backend.clone(), config.store.readers);
    let feed = api::feed::Feed::new();
    let publisher = feed.publisher();
    let (jobs_tx, jobs_rx) = mpsc::channel(writer::QUEUE_CAPACITY);
    metrics.leading.store(store.writer.is_some(), Relaxed);
    tracing::info!(
        addr = %api_listener.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()),
        "api listening"
    );
    let api_stop = shutdown.child_token();
    // Dropped (this future dropped without a shutdown): the API stops too.
    let _api_guard = api_stop.clone().drop_guard();
    let front =
        vigil_net::Front::with_stats("api", config.api.limits(), metrics.api_listener.clone());
    let api_ctx = api::ApiContext {
        jobs: jobs_tx.clone(),
        readers: readers.clone(),
        feed,
        metrics: metrics.clone(),
        replay: config.api.replay_limits(),
    };
    let console = console::start(
        config.console.as_ref(),
        api_ctx.clone(),
        metrics.store_health.subscribe(),
        tls,
        api_stop.clone(),
    )
    .await?;
    let api = tokio::spawn(api::serve_with_health(
        api_ctx,
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
    tracker.spawn(log_metrics(metrics.clone(), tasks.clone()));
    tracker.spawn(store::retention::run_periodically(
        store.backend.clone(),
        config.retention.clone(),
        {
            let metrics = metrics.clone();
            move || metrics.leading.load(Relaxed)
        },
        metrics.retention.clone(),
        tasks.clone(),
    ));
    tracker.spawn(notify::run(
        routes.clone(),
        readers.clone(),
        jobs_tx.clone(),
        metrics.clone(),
        {
            let metrics = metrics.clone();
            move || metrics.leading.load(Relaxed)
        },
        tasks.clone(),
    ));
    tracker.close();
    let ingest_config = ingest::IngestConfig {
        mqtt: config.mqtt.clone(),
        budget: config.budget.clone(),
        client_id: client_id.clone(),
    };

    let (ingest_result, writer_result) = match store.writer {
        Some(store_writer) => {
            let (done_tx, done_rx) = mpsc::channel(writer::DONE_CAPACITY);
            let writer = writer::spawn_notifying(
                store_writer,
                engine,
                metrics.clone(),
                jobs_rx,
                done_tx,
                publisher,
                routes,
            );
            tracker.reopen();
            tracker.spawn(tick(jobs_tx.clone(), tasks.clone()));
            tracker.close();
            let ingest_result = ingest::run(
                ingest_config,
                client_config,
                jobs_tx,
                done_rx,
                metrics.clone(),
                shutdown.clone(),
            )
            .await;
            // Ingest has returned (shutdown, or the writer died): stop the
            // API and the timers so the last job sender goes away and the
            // writer can finish.
            tasks.cancel();
            api_stop.cancel();
            let writer_result = tokio::task::spawn_blocking(move || writer.join())
                .await
                .unwrap_or_else(|_| Err(StoreError::Corrupt("writer join failed".into())));
            (ingest_result, writer_result)
        }
        None => {
            drop(jobs_tx);
            let replica = Replica {
                backend: store
                    .backend
                    .as_postgres()
                    .expect("only PostgreSQL opens without a writer")
                    .clone(),
                holder: format!("{client_id}/{}/{:08x}", std::process::id(), rand_u32()),
                lease: Duration::from_secs(config.store.lease_secs),
                config: config.clone(),
                ingest_config,
                client_config,
                metrics: metrics.clone(),
                readers,
                publisher,
                routes,
            };
            let result = replica.run(jobs_rx, shutdown.clone()).await;
            tasks.cancel();
            api_stop.cancel();
            (Ok(()), result)
        }
    };
    let api_result = api.await.unwrap_or(Ok(()));
    if let Some(console) = console {
        let _ = console.await;
    }
    tracker.wait().await;
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

/// A few random bits, to tell two processes with one certificate apart.
fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish() as u32
}

/// One operations center among several on one PostgreSQL database. It
/// serves the API all along; it runs the incident engine, and listens to
/// the brokers, only while it holds the leader lease. Standing by, it
/// follows the leader's commits into its own incident feed.
struct Replica {
    backend: store::PostgresBackend,
    holder: String,
    lease: Duration,
    config: OpsConfig,
    ingest_config: ingest::IngestConfig,
    client_config: Arc<rustls::ClientConfig>,
    metrics: Arc<Metrics>,
    readers: Arc<Readers>,
    publisher: api::feed::FeedPublisher,
    routes: Arc<notify::Routes>,
}

impl Replica {
    async fn run(
        &self,
        mut jobs: mpsc::Receiver<Job>,
        shutdown: CancellationToken,
    ) -> Result<(), StoreError> {
        // Announcements of the leader's commits wake the follower at once;
        // it also reads every second without them.
        let wake = Arc::new(tokio::sync::Notify::new());
        let listening = shutdown.child_token();
        let _listening_guard = listening.clone().drop_guard();
        let listener = {
            let (backend, wake, stop) = (self.backend.clone(), wake.clone(), listening.clone());
            std::thread::Builder::new()
                .name("vigil-ops-feed-listen".into())
                .spawn(move || listen(&backend, &wake, &stop))
                .expect("spawn the feed listener")
        };
        let result = self.terms(&mut jobs, &wake, &shutdown).await;
        listening.cancel();
        let _ = tokio::task::spawn_blocking(move || listener.join()).await;
        result
    }

    /// Stands by until it takes the lease, leads until it loses it, again,
    /// until `shutdown`.
    async fn terms(
        &self,
        jobs: &mut mpsc::Receiver<Job>,
        wake: &Arc<tokio::sync::Notify>,
        shutdown: &CancellationToken,
    ) -> Result<(), StoreError> {
        let in_flight = Arc::new(tokio::sync::Semaphore::new(forward::MAX_IN_FLIGHT));
        loop {
            self.metrics.leading.store(false, Relaxed);
            // A standby's store is fine: it only does not write.
            self.metrics.store_health.set(true);
            // Following the leader's commits while trying for the lease;
            // dropping this future (a replica stopped) stops both.
            let following =
                self.publisher
                    .follow(self.readers.clone(), wake.clone(), CancellationToken::new());
            let acquiring = async {
                loop {
                    let (backend, holder, lease) =
                        (self.backend.clone(), self.holder.clone(), self.lease);
                    let tried =
                        tokio::task::spawn_blocking(move || backend.try_lead(&holder, lease)).await;
                    match tried {
                        Ok(Ok(Some(fence))) => break Some(fence),
                        Ok(Ok(None)) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "leader lease: cannot reach the store")
                        }
                        Err(_) => tracing::error!("leader lease: the attempt panicked"),
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => break None,
                        () = tokio::time::sleep(self.lease / 3) => {}
                        // Actions on a standby: the leader carries them out.
                        Some(job) = jobs.recv() => {
                            match in_flight.clone().try_acquire_owned() {
                                Ok(slot) => {
                                    self.metrics.actions_forwarded.fetch_add(1, Relaxed);
                                    let forwarding = forward::forward(
                                        self.backend.clone(),
                                        job,
                                        forward::patience(self.lease),
                                    );
                                    tokio::spawn(async move {
                                        forwarding.await;
                                        drop(slot);
                                    });
                                }
                                Err(_) => forward::refuse_busy(job),
                            }
                        }
                    }
                }
            };
            let fence = tokio::select! {
                fence = acquiring => fence,
                () = following => None,
            };
            let Some(fence) = fence else { return Ok(()) };
            // One more read of the audit trail: with the lease taken,
            // nobody else can commit, so the feed misses nothing between
            // the leader's last commit and this replica's first.
            if let Err(e) = self.publisher.catch_up(&self.readers).await {
                tracing::warn!(error = %e, "feed: the last read before leading failed");
            }
            tracing::info!(holder = %fence.holder, epoch = fence.epoch, "leading: the incident engine runs here");
            match self.lead(fence, jobs, shutdown).await {
                Ok(()) => return Ok(()),
                Err(StoreError::NotLeader(why)) => {
                    tracing::warn!(%why, "standing by: another replica leads");
                }
                Err(e) => {
                    tracing::error!(error = %e, "the writer stopped; standing by");
                }
            }
            if shutdown.is_cancelled() {
                return Ok(());
            }
        }
    }

    /// One term as leader: a fenced writer, the engine rebuilt from the
    /// store, ingest from the brokers. Returns `Ok` on shutdown, the
    /// writer's error when it stopped (a lost lease: `NotLeader`).
    async fn lead(
        &self,
        fence: store::postgres::Fence,
        jobs: &mut mpsc::Receiver<Job>,
        shutdown: &CancellationToken,
    ) -> Result<(), StoreError> {
        let (backend, config) = (self.backend.clone(), self.config.clone());
        let opened = tokio::task::spawn_blocking(move || {
            let writer = backend.fenced_writer(fence)?;
            let snapshot = writer.engine_snapshot(resolved_since(&config))?;
            Ok::<_, StoreError>((writer, Engine::new(config.engine.clone(), snapshot)))
        })
        .await
        .unwrap_or_else(|_| Err(StoreError::Corrupt("opening the writer panicked".into())));
        let (store_writer, engine) = opened?;
        let (term_tx, term_rx) = mpsc::channel(writer::QUEUE_CAPACITY);
        let (done_tx, done_rx) = mpsc::channel(writer::DONE_CAPACITY);
        let writer = writer::spawn_notifying(
            store_writer,
            engine,
            self.metrics.clone(),
            term_rx,
            done_tx,
            self.publisher.clone(),
            self.routes.clone(),
        );
        self.metrics.leading.store(true, Relaxed);
        let term = shutdown.child_token();
        // Dropped (the replica stopped mid-term): the mailbox thread stops
        // too, and with it the last sender that could keep the writer on.
        let _term_guard = term.clone().drop_guard();
        let ticking = tick(term_tx.clone(), term.clone());
        let ingest = ingest::run(
            self.ingest_config.clone(),
            self.client_config.clone(),
            term_tx.clone(),
            done_rx,
            self.metrics.clone(),
            term.clone(),
        );
        // Actions standbys forwarded, from the mailbox, on a thread of its
        // own; it stops with the term (or when the writer's queue closes).
        let mailbox = {
            let (backend, jobs, stop) = (self.backend.clone(), term_tx.clone(), term.clone());
            std::thread::Builder::new()
                .name("vigil-ops-mailbox".into())
                .spawn(move || forward::serve(&backend, &jobs, &stop))
                .expect("spawn the mailbox reader")
        };
        // Actions from the API go to this term's writer.
        let forward = async {
            while let Some(job) = jobs.recv().await {
                if term_tx.send(job).await.is_err() {
                    break;
                }
            }
            std::future::pending::<()>().await;
        };
        // Everything of the term in this one future: dropped, it leaves
        // nothing behind that could keep the writer (and the lease) alive.
        let ingest_result = tokio::select! {
            r = ingest => r,
            () = forward => Ok(()),
            () = ticking => Ok(()),
        };
        self.metrics.leading.store(false, Relaxed);
        term.cancel();
        drop(term_tx);
        let _ = tokio::task::spawn_blocking(move || mailbox.join()).await;
        let writer_result = tokio::task::spawn_blocking(move || writer.join())
            .await
            .unwrap_or_else(|_| Err(StoreError::Corrupt("writer join failed".into())));
        if let Err(e) = ingest_result {
            tracing::warn!(error = %e, "ingest stopped");
        }
        writer_result
    }
}

/// Follows the leader's announcements on a connection of its own until
/// `stop`, waking the feed's follower for each; connects again after a
/// failure.
fn listen(backend: &store::PostgresBackend, wake: &tokio::sync::Notify, stop: &CancellationToken) {
    while !stop.is_cancelled() {
        match backend.listen_feed() {
            Ok(mut listener) => {
                while !stop.is_cancelled() {
                    match listener.wait(Duration::from_millis(500)) {
                        Ok(true) => wake.notify_one(),
                        Ok(false) => {}
                        Err(e) => {
                            tracing::debug!(error = %e, "feed announcements lost; listening again");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot listen for feed announcements");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
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
