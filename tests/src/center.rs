//! An operations center without MQTT, in process, for the API's own tests
//! (ops-center/tests/api.rs) and the command line's (cli/tests): a real
//! PKI, the real writer (SQLite store and incident engine) and the real
//! gRPC API over mutual TLS on 127.0.0.1. Incidents are made by submitting
//! events to the writer, exactly as ingest does; the API can be stopped and
//! started again on the same port while the writer keeps running.
//!
//! ```no_run
//! # async fn demo() {
//! use vigil_pki::Role;
//! use vigil_tests::center::{Center, alarm, now_secs};
//! let center = Center::builder().revoked("mallory").start().await;
//! center.submit(vec![alarm("p-1", 1, 7, now_secs())]).await;
//! let mut client = center.client(Role::Analyst, "alice").await;
//! # let _ = &mut client;
//! center.stop().await;
//! # }
//! ```

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use tokio::{
    net::TcpListener,
    sync::{Notify, mpsc},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity as TlsIdentity};
use vigil_ops::{
    api,
    api::feed::Feed,
    engine::{Engine, EngineConfig},
    metrics::Metrics,
    store::{Readers, SqliteBackend, SqliteStore, Store},
    writer::{self, Job, WriterHandle},
};
use vigil_pki::{Identity, Role, TlsConfig, authority};
use vigil_proto::v1::{
    AlarmSignal, Event, EventCategory, event::Body, ops_center_client::OpsCenterClient,
};

pub use crate::WAIT;

/// A generated API client over one channel.
pub type Client = OpsCenterClient<Channel>;

/// How to start a [`Center`]: [`Center::builder`], adjust, then
/// [`CenterBuilder::start`].
#[derive(Debug, Default)]
pub struct CenterBuilder {
    engine: EngineConfig,
    revoked: Vec<String>,
    data: Option<PathBuf>,
    replay: api::replay::Limits,
    notify: Option<Arc<vigil_ops::notify::Routes>>,
}

impl CenterBuilder {
    /// Webhooks: the writer enqueues what they select and a sender
    /// delivers it (as on a leading replica).
    pub fn notify(mut self, routes: Arc<vigil_ops::notify::Routes>) -> Self {
        self.notify = Some(routes);
        self
    }

    /// The incident engine's settings (default: `EngineConfig::default()`).
    pub fn engine(mut self, engine: EngineConfig) -> Self {
        self.engine = engine;
        self
    }

    /// An analyst certificate for `id`, issued and revoked before the API
    /// starts (so its CRL already lists it).
    pub fn revoked(mut self, id: &str) -> Self {
        self.revoked.push(id.to_owned());
        self
    }

    /// The store's folder (default: `data` in the center's own temporary
    /// folder), e.g. on a small tmpfs to fill.
    pub fn data_dir(mut self, data: PathBuf) -> Self {
        self.data = Some(data);
        self
    }

    /// What bounds one replay (default: the server's defaults).
    pub fn replay_limits(mut self, limits: api::replay::Limits) -> Self {
        self.replay = limits;
        self
    }

    pub async fn start(self) -> Center {
        Center::start_with(self).await
    }
}

/// What the writer reported committed, as ingest would hear it.
#[derive(Debug, Default)]
struct Committed {
    tokens: BTreeSet<u64>,
    /// The latest receipt of each post.
    receipts: std::collections::HashMap<String, u64>,
    /// Commit reports heard.
    reports: u64,
}

/// The running writer and API. See the module docs.
pub struct Center {
    dir: tempfile::TempDir,
    pub pki: PathBuf,
    pub data: PathBuf,
    pub port: u16,
    jobs: mpsc::Sender<Job>,
    committed: Arc<(Mutex<Committed>, Notify)>,
    next_token: std::sync::atomic::AtomicU64,
    feed: Feed,
    readers: Arc<Readers>,
    pub metrics: Arc<Metrics>,
    api: Option<(
        CancellationToken,
        JoinHandle<Result<(), tonic::transport::Error>>,
    )>,
    drain: JoinHandle<()>,
    writer: WriterHandle,
    /// The browser console, once [`Center::start_console`] started it.
    console: Option<(CancellationToken, JoinHandle<()>)>,
    replay: api::replay::Limits,
    /// The notification sender, if webhooks were given.
    sender: Option<(CancellationToken, JoinHandle<()>)>,
}

fn issue(pki: &Path, role: Role, id: &str) {
    let sans = if role.is_server() {
        vec!["localhost".to_string(), "127.0.0.1".to_string()]
    } else {
        Vec::new()
    };
    authority::issue(pki, role, &Identity::new(id).unwrap(), &sans, 30, false).unwrap();
}

impl std::fmt::Debug for Center {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Center")
            .field("pki", &self.pki)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Center {
    /// A center with the default engine and nothing revoked.
    pub async fn start() -> Center {
        Self::builder().start().await
    }

    pub fn builder() -> CenterBuilder {
        CenterBuilder::default()
    }

    async fn start_with(options: CenterBuilder) -> Center {
        vigil_pki::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        authority::init(&pki, "test CA").unwrap();
        issue(&pki, Role::Ops, "ops-1");
        for id in &options.revoked {
            issue(&pki, Role::Analyst, id);
            authority::revoke(&pki, &Identity::new(id).unwrap()).unwrap();
        }
        let data = options.data.unwrap_or_else(|| dir.path().join("data"));
        let store = SqliteStore::open(&data).unwrap();
        let engine = Engine::new(
            options.engine,
            store.engine_snapshot(SystemTime::UNIX_EPOCH).unwrap(),
        );
        let feed = Feed::new();
        let readers = Readers::new(Arc::new(SqliteBackend::open(&data).unwrap()), 4);
        let metrics = Arc::new(Metrics::default());
        let (jobs, jobs_rx) = mpsc::channel(writer::QUEUE_CAPACITY);
        let (done_tx, mut done) = mpsc::channel(writer::DONE_CAPACITY);
        let routes = options
            .notify
            .clone()
            .unwrap_or_else(vigil_ops::notify::Routes::none);
        let writer = writer::spawn_notifying(
            Box::new(store),
            engine,
            metrics.clone(),
            jobs_rx,
            done_tx,
            feed.publisher(),
            routes.clone(),
        );
        let sender = options.notify.is_some().then(|| {
            let stop = CancellationToken::new();
            let task = tokio::spawn(vigil_ops::notify::run(
                routes,
                readers.clone(),
                jobs.clone(),
                metrics.clone(),
                || true,
                stop.clone(),
            ));
            (stop, task)
        });
        // Ingest's part: take every commit report, so the writer never
        // waits on a full channel, and remember which batches committed.
        let committed = Arc::new((Mutex::new(Committed::default()), Notify::new()));
        let drain = tokio::spawn({
            let committed = committed.clone();
            async move {
                while let Some(c) = done.recv().await {
                    let mut seen = committed.0.lock().unwrap();
                    seen.tokens.extend(c.tokens);
                    for r in c.receipts {
                        seen.receipts.insert(r.post_id, r.durable_through_seq);
                    }
                    seen.reports += 1;
                    drop(seen);
                    committed.1.notify_waiters();
                }
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut center = Center {
            dir,
            pki,
            data,
            port,
            jobs,
            committed,
            next_token: 1.into(),
            feed,
            readers,
            metrics,
            api: None,
            drain,
            writer,
            console: None,
            replay: options.replay,
            sender,
        };
        center.serve(listener);
        center
    }

    fn serve(&mut self, listener: TcpListener) {
        let tls = TlsConfig {
            ca: self.pki.join("ca.pem"),
            cert: self.pki.join("ops-1.pem"),
            key: self.pki.join("ops-1.key"),
            crl: Some(self.pki.join("crl.pem")),
        }
        .load()
        .unwrap();
        let shutdown = CancellationToken::new();
        // Health follows the store, as in the running operations center.
        let task = tokio::spawn(api::serve_with_health(
            api::ApiContext {
                jobs: self.jobs.clone(),
                readers: self.readers.clone(),
                feed: self.feed.clone(),
                metrics: self.metrics.clone(),
                replay: self.replay,
            },
            self.metrics.store_health.subscribe(),
            vigil_net::Front::new("api", vigil_ops::config::ApiConfig::default().limits()),
            listener,
            tls.server_config().unwrap(),
            shutdown.clone(),
        ));
        self.api = Some((shutdown, task));
    }

    /// Starts the browser console (`vigil_ops::console`) on 127.0.0.1 on
    /// a port of the system's choosing, over the same writer, feed and
    /// certificates as the API; returns its port.
    pub async fn start_console(&mut self) -> u16 {
        assert!(self.console.is_none(), "console already running");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let tls = self.tls();
        let config = vigil_ops::console::ConsoleConfig::on(listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(vigil_ops::console::serve(
            api::ApiContext {
                jobs: self.jobs.clone(),
                readers: self.readers.clone(),
                feed: self.feed.clone(),
                metrics: self.metrics.clone(),
                replay: self.replay,
            },
            self.metrics.store_health.subscribe(),
            vigil_net::Front::with_stats(
                "console",
                config.limits(),
                self.metrics.console_listener.clone(),
            ),
            listener,
            tls.server_config().unwrap(),
            shutdown.clone(),
        ));
        self.console = Some((shutdown, task));
        port
    }

    fn tls(&self) -> vigil_pki::tls::TlsMaterial {
        TlsConfig {
            ca: self.pki.join("ca.pem"),
            cert: self.pki.join("ops-1.pem"),
            key: self.pki.join("ops-1.key"),
            crl: Some(self.pki.join("crl.pem")),
        }
        .load()
        .unwrap()
    }

    /// Stops the API (open feeds end); the writer keeps running.
    pub async fn stop_api(&mut self) {
        let (shutdown, task) = self.api.take().expect("API running");
        shutdown.cancel();
        tokio::time::timeout(WAIT, task)
            .await
            .expect("API stops in time")
            .unwrap()
            .unwrap();
    }

    /// Starts the API again on the same port.
    pub async fn restart_api(&mut self) {
        let addr = format!("127.0.0.1:{}", self.port);
        let deadline = tokio::time::Instant::now() + WAIT;
        let listener = loop {
            match TcpListener::bind(&addr).await {
                Ok(l) => break l,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    eprintln!("bind {addr}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("bind {addr}: {e}"),
            }
        };
        self.serve(listener);
    }

    /// Issues a certificate of `role` named `id` (once).
    pub fn issue(&self, role: Role, id: &str) {
        if !self.pki.join(format!("{id}.pem")).exists() {
            issue(&self.pki, role, id);
        }
    }

    pub fn server(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A file of the PKI folder, as a string for flags.
    pub fn file(&self, name: &str) -> String {
        self.pki.join(name).display().to_string()
    }

    /// `--server --ca --cert --key` for identity `id` (issued as `role`).
    pub fn flags(&self, role: Role, id: &str) -> Vec<String> {
        self.issue(role, id);
        vec![
            "--server".into(),
            self.server(),
            "--ca".into(),
            self.file("ca.pem"),
            "--cert".into(),
            self.file(&format!("{id}.pem")),
            "--key".into(),
            self.file(&format!("{id}.key")),
        ]
    }

    /// The same as `VIGIL_*` environment variables.
    pub fn env(&self, role: Role, id: &str) -> Vec<(String, String)> {
        self.issue(role, id);
        vec![
            ("VIGIL_SERVER".into(), self.server()),
            ("VIGIL_CA".into(), self.file("ca.pem")),
            ("VIGIL_CERT".into(), self.file(&format!("{id}.pem"))),
            ("VIGIL_KEY".into(), self.file(&format!("{id}.key"))),
        ]
    }

    /// A gRPC client with a certificate of `role` named `id` (issued once).
    pub async fn client(&self, role: Role, id: &str) -> Client {
        self.try_client(role, id).await.unwrap()
    }

    /// Like [`Center::client`], but a refused connection is an error.
    pub async fn try_client(
        &self,
        role: Role,
        id: &str,
    ) -> Result<Client, tonic::transport::Error> {
        Ok(OpsCenterClient::new(self.channel(role, id, None).await?))
    }

    /// A channel with a certificate of `role` named `id`; `window` sets the
    /// HTTP/2 receive windows (how much the server may send unread).
    pub async fn channel(
        &self,
        role: Role,
        id: &str,
        window: Option<u32>,
    ) -> Result<Channel, tonic::transport::Error> {
        self.issue(role, id);
        let read = |name: String| std::fs::read(self.pki.join(name)).unwrap();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("ca.pem".into())))
            .identity(TlsIdentity::from_pem(
                read(format!("{id}.pem")),
                read(format!("{id}.key")),
            ))
            .domain_name("localhost");
        Channel::from_shared(format!("https://127.0.0.1:{}", self.port))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .initial_stream_window_size(window)
            .initial_connection_window_size(window)
            .connect()
            .await
    }

    /// Submits events to the writer and waits until they are committed.
    pub async fn submit(&self, events: Vec<Event>) {
        let token = self.send(events).await;
        self.wait_committed(token).await;
    }

    /// Queues events for the writer (one job, as ingest queues one MQTT
    /// message) without waiting; returns the job's token.
    pub async fn send(&self, events: Vec<Event>) -> u64 {
        let token = self
            .next_token
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let post_id = events[0].post_id.clone();
        self.jobs
            .send(Job::Batch {
                post_id,
                events: events.into_iter().map(Into::into).collect(),
                at: SystemTime::now(),
                token,
            })
            .await
            .unwrap();
        token
    }

    /// Waits until the job `token` is committed.
    pub async fn wait_committed(&self, token: u64) {
        let (seen, notify) = &*self.committed;
        tokio::time::timeout(WAIT, async {
            loop {
                let wake = notify.notified();
                if seen.lock().unwrap().tokens.contains(&token) {
                    return;
                }
                wake.await;
            }
        })
        .await
        .expect("batch committed in time");
    }

    /// The latest receipt of `post` (0: none yet).
    pub fn receipt(&self, post: &str) -> u64 {
        let seen = self.committed.0.lock().unwrap();
        seen.receipts.get(post).copied().unwrap_or(0)
    }

    /// Commit reports the writer has sent so far (each carries acks and
    /// receipts).
    pub fn commit_reports(&self) -> u64 {
        self.committed.0.lock().unwrap().reports
    }

    /// Submits many batches (one job each) at once and waits until every
    /// one is committed.
    pub async fn submit_all(&self, batches: Vec<Vec<Event>>) {
        let n = batches.len() as u64;
        let first = self
            .next_token
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        for (token, events) in (first..).zip(batches) {
            let post_id = events[0].post_id.clone();
            let job = Job::Batch {
                post_id,
                events: events.into_iter().map(Into::into).collect(),
                at: SystemTime::now(),
                token,
            };
            self.jobs.send(job).await.unwrap();
        }
        let (set, notify) = &*self.committed;
        tokio::time::timeout(WAIT * 4, async {
            loop {
                let wake = notify.notified();
                if set.lock().unwrap().tokens.range(first..first + n).count() as u64 == n {
                    return;
                }
                wake.await;
            }
        })
        .await
        .expect("batches committed in time");
    }

    /// Runs the engine's timers now (escalation by the acknowledgment
    /// deadline, test mode expiry), as the ops center's ticker does each
    /// second.
    pub async fn tick(&self) {
        self.jobs
            .send(Job::Tick {
                at: SystemTime::now(),
            })
            .await
            .unwrap();
    }

    /// A reader of the store, as the test's own connection.
    pub fn store(&self) -> SqliteStore {
        SqliteStore::open_reader(&self.data).unwrap()
    }

    pub async fn stop(mut self) {
        if let Some((shutdown, task)) = self.console.take() {
            shutdown.cancel();
            tokio::time::timeout(WAIT, task)
                .await
                .expect("console stops in time")
                .unwrap();
        }
        if self.api.is_some() {
            self.stop_api().await;
        }
        if let Some((stop, task)) = self.sender.take() {
            stop.cancel();
            tokio::time::timeout(WAIT, task)
                .await
                .expect("the notification sender stops in time")
                .unwrap();
        }
        drop(self.jobs);
        let writer = self.writer;
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .unwrap()
            .unwrap();
        self.drain.await.unwrap();
        drop(self.dir);
    }
}

/// A burglary alarm of panel 1234 in `zone`, received `received_secs` after
/// the epoch.
pub fn alarm(post: &str, seq: u64, zone: u32, received_secs: u64) -> Event {
    Event {
        post_id: post.into(),
        seq,
        category: EventCategory::Burglary as i32,
        received_at: Some((SystemTime::UNIX_EPOCH + Duration::from_secs(received_secs)).into()),
        body: Some(Body::Alarm(AlarmSignal {
            account: "1234".into(),
            zone,
            sia_code: "BA".into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Seconds since the epoch, now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
