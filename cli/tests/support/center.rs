//! An operations center for client tests, in process: a real PKI, the real
//! writer (SQLite store and incident engine) and the real gRPC API over
//! mutual TLS on 127.0.0.1, without MQTT. Incidents are made by submitting
//! events to the writer, exactly as ingest does; the API can be stopped and
//! started again on the same port while the writer keeps running.

#![allow(dead_code, unreachable_pub)]

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use tokio::{
    net::TcpListener,
    sync::{Notify, mpsc},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;
use vigil_ops::{
    api,
    engine::{Engine, EngineConfig},
    metrics::Metrics,
    store::{SqliteStore, Store},
    writer::{self, Job, WriterHandle},
};
use vigil_pki::{Identity, Role, TlsConfig, authority};
use vigil_proto::v1::{AlarmSignal, Event, EventCategory, event::Body};

/// Longest any single expectation waits.
pub const WAIT: Duration = Duration::from_secs(30);

pub struct Center {
    dir: tempfile::TempDir,
    pub pki: PathBuf,
    pub data: PathBuf,
    pub port: u16,
    jobs: mpsc::Sender<Job>,
    committed: Arc<(Mutex<BTreeSet<u64>>, Notify)>,
    next_token: std::sync::atomic::AtomicU64,
    changed: Arc<Notify>,
    pub metrics: Arc<Metrics>,
    api: Option<(
        CancellationToken,
        JoinHandle<Result<(), tonic::transport::Error>>,
    )>,
    drain: JoinHandle<()>,
    writer: WriterHandle,
}

fn issue(pki: &Path, role: Role, id: &str) {
    let sans = if role.is_server() {
        vec!["localhost".to_string(), "127.0.0.1".to_string()]
    } else {
        Vec::new()
    };
    authority::issue(pki, role, &Identity::new(id).unwrap(), &sans, 30, false).unwrap();
}

impl Center {
    pub async fn start() -> Center {
        vigil_pki::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        authority::init(&pki, "client test CA").unwrap();
        issue(&pki, Role::Ops, "ops-1");
        let data = dir.path().join("data");
        let store = SqliteStore::open(&data).unwrap();
        let engine = Engine::new(
            EngineConfig::default(),
            store.engine_snapshot(SystemTime::UNIX_EPOCH).unwrap(),
        );
        let changed = Arc::new(Notify::new());
        let metrics = Arc::new(Metrics::default());
        let (jobs, jobs_rx) = mpsc::channel(writer::QUEUE_CAPACITY);
        let (done_tx, mut done) = mpsc::channel(writer::DONE_CAPACITY);
        let writer = writer::spawn_notifying(
            Box::new(store),
            engine,
            metrics.clone(),
            jobs_rx,
            done_tx,
            changed.clone(),
        );
        // Ingest's part: take every commit report, so the writer never
        // waits on a full channel, and remember which batches committed.
        let committed = Arc::new((Mutex::new(BTreeSet::new()), Notify::new()));
        let drain = tokio::spawn({
            let committed = committed.clone();
            async move {
                while let Some(c) = done.recv().await {
                    committed.0.lock().unwrap().extend(c.tokens);
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
            changed,
            metrics,
            api: None,
            drain,
            writer,
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
        let task = tokio::spawn(api::serve(
            api::ApiContext {
                jobs: self.jobs.clone(),
                reader: Arc::new(std::sync::Mutex::new(Box::new(
                    SqliteStore::open(&self.data).unwrap(),
                ))),
                changed: self.changed.clone(),
                metrics: self.metrics.clone(),
            },
            listener,
            tls.server_config().unwrap(),
            shutdown.clone(),
        ));
        self.api = Some((shutdown, task));
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

    fn file(&self, name: &str) -> String {
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

    /// Submits events to the writer and waits until they are committed.
    pub async fn submit(&self, events: Vec<Event>) {
        let token = self
            .next_token
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let post_id = events[0].post_id.clone();
        self.jobs
            .send(Job::Batch {
                post_id,
                events,
                at: SystemTime::now(),
                token,
            })
            .await
            .unwrap();
        let (set, notify) = &*self.committed;
        tokio::time::timeout(WAIT, async {
            loop {
                let wake = notify.notified();
                if set.lock().unwrap().contains(&token) {
                    return;
                }
                wake.await;
            }
        })
        .await
        .expect("batch committed in time");
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
                events,
                at: SystemTime::now(),
                token,
            };
            self.jobs.send(job).await.unwrap();
        }
        let (set, notify) = &*self.committed;
        tokio::time::timeout(WAIT * 4, async {
            loop {
                let wake = notify.notified();
                if set.lock().unwrap().range(first..first + n).count() as u64 == n {
                    return;
                }
                wake.await;
            }
        })
        .await
        .expect("batches committed in time");
    }

    /// A reader of the store, as the test's own connection.
    pub fn store(&self) -> SqliteStore {
        SqliteStore::open(&self.data).unwrap()
    }

    pub async fn stop(mut self) {
        if self.api.is_some() {
            self.stop_api().await;
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

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `vigil ARGS` with `env` set and no `VIGIL_*` inherited from the test's
/// own environment.
pub fn command<S: AsRef<std::ffi::OsStr>>(args: &[S], env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vigil"));
    for var in [
        "VIGIL_SERVER",
        "VIGIL_CA",
        "VIGIL_CERT",
        "VIGIL_KEY",
        "VIGIL_CRL",
    ] {
        cmd.env_remove(var);
    }
    cmd.args(args).envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

/// Runs `vigil ARGS` to completion off the async runtime (the ops center
/// in this process keeps serving meanwhile).
pub async fn run_vigil(args: Vec<String>, env: Vec<(String, String)>) -> Output {
    let out = tokio::time::timeout(
        WAIT,
        tokio::task::spawn_blocking(move || command(&args, &env).output().expect("run vigil")),
    )
    .await
    .expect("vigil finishes in time")
    .unwrap();
    eprintln!(
        "vigil exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
