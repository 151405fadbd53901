//! A harness that runs a whole Vigil region in one test process, on
//! loopback: a fresh PKI, the broker, the operations center, and gateways.
//! Every part is configured through its real config file and started
//! through its library entry point, exactly as the `vigil` binary does.
//!
//! Every wait is bounded ([`WAIT`]); a test that would hang fails instead.
//!
//! Layout:
//! - this file: [`Region`], the whole region with MQTT (broker, ops center,
//!   gateways), for the end-to-end tests.
//! - [`center`]: an operations center without MQTT (writer and gRPC API),
//!   built with [`center::Center::builder`], for the API's tests and the
//!   command line's.
//! - [`faults`]: the fault-injection scenarios and their accounting.

pub mod abuse;
pub mod broker;
pub mod center;
pub mod faults;
pub mod gateway;
pub mod postgres;
pub mod webhook;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tempfile::TempDir;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use vigil_pki::{Identity, Role, authority};

/// Validity of the harness's certificates: far from the 30 days at which
/// gateways report their certificate's expiry (a test that wants that
/// issues a short one itself).
pub const CERT_DAYS: u32 = 365;

/// Longest any single expectation waits.
pub const WAIT: Duration = Duration::from_secs(30);

/// A region: its PKI and working folders.
#[derive(Debug)]
pub struct Region {
    pub dir: TempDir,
}

impl Region {
    /// A fresh CA with a broker (`broker-1`), an ops center (`ops-1`) and
    /// posts `p-1` and `p-2`.
    pub fn new() -> Self {
        vigil_pki::install_crypto_provider();
        if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = dir.path().join("pki");
        authority::init(&pki, "test region CA").expect("CA");
        let issue = |role, id: &str, sans: &[&str]| {
            let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
            authority::issue(
                &pki,
                role,
                &Identity::new(id).expect("id"),
                &sans,
                CERT_DAYS,
                false,
            )
            .expect("issue");
        };
        issue(Role::Broker, "broker-1", &["localhost", "127.0.0.1"]);
        issue(Role::Ops, "ops-1", &["localhost", "127.0.0.1"]);
        issue(Role::Post, "p-1", &[]);
        issue(Role::Post, "p-2", &[]);
        Self { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn tls_table(id: &str) -> String {
        format!(
            "[tls]\nca = \"pki/ca.pem\"\ncert = \"pki/{id}.pem\"\nkey = \"pki/{id}.key\"\ncrl = \"pki/crl.pem\"\n"
        )
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// Starts the broker on `addr` (`127.0.0.1:0` for a fresh port).
    pub async fn start_broker(&self, addr: SocketAddr) -> RunningBroker {
        self.start_broker_with(addr, "").await
    }

    /// Starts the broker with `limits_toml` (lines of its `[limits]` table,
    /// e.g. `max_connections = 64`) added to its config.
    pub async fn start_broker_with(&self, addr: SocketAddr, limits_toml: &str) -> RunningBroker {
        let path = self.write_broker_config("127.0.0.1:0".parse().expect("addr"));
        if !limits_toml.is_empty() {
            let text = std::fs::read_to_string(&path).expect("broker config") + limits_toml + "\n";
            std::fs::write(&path, text).expect("write broker config");
        }
        let config = vigil_broker::BrokerConfig::load(&path).expect("broker config");
        let listener = bind_retrying(addr).await;
        let shutdown = CancellationToken::new();
        let broker = vigil_broker::Broker::start(&config, listener, shutdown.clone())
            .await
            .expect("broker start");
        RunningBroker { broker, shutdown }
    }

    /// Starts the operations center against the broker at `broker`.
    pub async fn start_ops(&self, broker: SocketAddr) -> RunningOps {
        self.start_ops_with(broker, "").await
    }

    /// Starts the operations center with `extra_toml` appended to its
    /// config (e.g. `[[engine.zone_cameras]]` tables); its API listens on a
    /// fresh loopback port ([`RunningOps::api`]).
    pub async fn start_ops_with(&self, broker: SocketAddr, extra_toml: &str) -> RunningOps {
        self.start_ops_on(&[broker], extra_toml).await
    }

    /// [`Region::start_ops_with`] hearing posts on every broker of
    /// `brokers` (`[mqtt] servers`, or `server` for one).
    pub async fn start_ops_on(&self, brokers: &[SocketAddr], extra_toml: &str) -> RunningOps {
        let path = self.write_ops_config_on(brokers);
        if !extra_toml.is_empty() {
            let text = merge_toml(
                &std::fs::read_to_string(&path).expect("ops config"),
                extra_toml,
            );
            std::fs::write(&path, text).expect("write ops config");
        }
        let config = vigil_ops::config::OpsConfig::load(&path).expect("ops config");
        let tls = config.tls.load().expect("ops tls");
        let (store, engine) = vigil_ops::open(&config).expect("ops store");
        let api_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind api");
        let api = api_listener.local_addr().expect("api addr");
        let shutdown = CancellationToken::new();
        let metrics = Arc::new(vigil_ops::metrics::Metrics::default());
        let task = tokio::spawn({
            let shutdown = shutdown.clone();
            let metrics = metrics.clone();
            async move {
                vigil_ops::run_with_api(
                    config,
                    store,
                    engine,
                    &tls,
                    metrics,
                    api_listener,
                    shutdown,
                )
                .await
                .map_err(|e| e.to_string())
            }
        });
        RunningOps {
            task,
            shutdown,
            metrics,
            data_dir: self.path("ops-data"),
            api,
        }
    }

    /// Issues a client certificate (`pki/ID.pem`) for `role`, unless it
    /// exists.
    pub fn issue(&self, role: Role, id: &str) {
        let pki = self.path("pki");
        if pki.join(format!("{id}.pem")).exists() {
            return;
        }
        authority::issue(
            &pki,
            role,
            &Identity::new(id).expect("id"),
            &[],
            CERT_DAYS,
            false,
        )
        .expect("issue");
    }

    /// A gRPC client of the API at `api`, authenticated as `id` (issued
    /// with `role` if needed).
    pub async fn api_client(
        &self,
        role: Role,
        id: &str,
        api: SocketAddr,
    ) -> vigil_proto::v1::ops_center_client::OpsCenterClient<tonic::transport::Channel> {
        use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity as TlsIdentity};
        self.issue(role, id);
        let read = |name: String| std::fs::read(self.path("pki").join(name)).expect("read pki");
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("ca.pem".into())))
            .identity(TlsIdentity::from_pem(
                read(format!("{id}.pem")),
                read(format!("{id}.key")),
            ))
            .domain_name("localhost");
        let channel = Channel::from_shared(format!("https://{api}"))
            .expect("uri")
            .tls_config(tls)
            .expect("tls")
            .connect()
            .await
            .expect("connect to the API");
        vigil_proto::v1::ops_center_client::OpsCenterClient::new(channel)
    }

    /// Starts the gateway of `post` with panel account `1234` (and
    /// `extra_toml` appended to its config).
    pub async fn start_gateway(
        &self,
        post: &str,
        broker: SocketAddr,
        extra_toml: &str,
    ) -> RunningGateway {
        self.start_gateway_resending(post, broker, 5, extra_toml)
            .await
    }

    /// [`Region::start_gateway`] with its own `resend_after_secs` (a long
    /// one shows what arrives without the gateway's re-send timer).
    pub async fn start_gateway_resending(
        &self,
        post: &str,
        broker: SocketAddr,
        resend_after_secs: u64,
        extra_toml: &str,
    ) -> RunningGateway {
        self.start_gateway_on(post, &[broker], resend_after_secs, extra_toml)
            .await
    }

    /// Starts the gateway of `post` with its brokers in the order of
    /// `brokers` (`[mqtt] servers`, or `server` for one).
    pub async fn start_gateway_on(
        &self,
        post: &str,
        brokers: &[SocketAddr],
        resend_after_secs: u64,
        extra_toml: &str,
    ) -> RunningGateway {
        let text = format!(
            "data_dir = \"{post}-data\"\n{}\n[mqtt]\n{}keep_alive_secs = 5\nresend_after_secs = {resend_after_secs}\n\n[dc09]\nlisten = \"127.0.0.1:0\"\n\n[[dc09.accounts]]\naccount = \"1234\"\n{extra_toml}",
            Self::tls_table(post),
            servers_lines(brokers),
        );
        let path = self.write(&format!("{post}.toml"), &text);
        let config = vigil_gateway::GatewayConfig::load(&path).expect("gateway config");
        let tls = config.tls.load().expect("gateway tls");
        let listeners = vigil_gateway::Listeners::bind(&config)
            .await
            .expect("bind dc09");
        let dc09 = listeners.dc09_tcp.local_addr().expect("dc09 addr");
        let push = listeners
            .camera_http
            .as_ref()
            .map(|l| l.local_addr().expect("push addr"));
        let metrics = Arc::new(vigil_gateway::Metrics::default());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let metrics = metrics.clone();
            let shutdown = shutdown.clone();
            async move {
                vigil_gateway::run(config, tls, listeners, metrics, shutdown)
                    .await
                    .map_err(|e| e.to_string())
            }
        });
        RunningGateway {
            task,
            shutdown,
            metrics,
            dc09,
            push,
        }
    }
}

impl Region {
    /// Writes the broker's config (listening on `listen`) and returns its
    /// path.
    pub fn write_broker_config(&self, listen: SocketAddr) -> PathBuf {
        let text = format!(
            "listen = \"{listen}\"\n{}\n[limits]\nshutdown_grace_ms = 1000\n",
            Self::tls_table("broker-1")
        );
        self.write("broker.toml", &text)
    }

    /// Writes the operations center's config (data in `ops-data`) and
    /// returns its path.
    pub fn write_ops_config(&self, broker: SocketAddr) -> PathBuf {
        self.write_ops_config_on(&[broker])
    }

    /// [`Region::write_ops_config`] with every broker of `brokers`.
    pub fn write_ops_config_on(&self, brokers: &[SocketAddr]) -> PathBuf {
        let text = format!(
            "data_dir = \"ops-data\"\n[mqtt]\n{}keep_alive_secs = 5\n[api]\nlisten = \"127.0.0.1:0\"\n{}",
            servers_lines(brokers),
            Self::tls_table("ops-1")
        );
        self.write("ops.toml", &text)
    }

    /// Writes the config of `post`'s gateway (panel account `1234`, DC-09 on
    /// `dc09`, data in `{post}-data`) and returns its path.
    pub fn write_gateway_config(
        &self,
        post: &str,
        broker: SocketAddr,
        dc09: SocketAddr,
        extra_toml: &str,
    ) -> PathBuf {
        let text = format!(
            "data_dir = \"{post}-data\"\n{}\n[mqtt]\nserver = \"127.0.0.1:{}\"\nkeep_alive_secs = 5\nresend_after_secs = 5\n\n[dc09]\nlisten = \"{dc09}\"\n\n[[dc09.accounts]]\naccount = \"1234\"\n{extra_toml}",
            Self::tls_table(post),
            broker.port()
        );
        self.write(&format!("{post}.toml"), &text)
    }
}

impl Default for Region {
    fn default() -> Self {
        Self::new()
    }
}

/// The `[mqtt]` line naming `brokers` on loopback: `server = …` for one (the
/// form of single-broker regions), `servers = […]` for several.
fn servers_lines(brokers: &[SocketAddr]) -> String {
    let quoted: Vec<String> = brokers
        .iter()
        .map(|b| format!("\"127.0.0.1:{}\"", b.port()))
        .collect();
    match quoted.as_slice() {
        [one] => format!("server = {one}\n"),
        _ => format!("servers = [{}]\n", quoted.join(", ")),
    }
}

/// Binds `addr`, retrying for a while if the port is still held (a broker
/// restarted on the port it had).
async fn bind_retrying(addr: SocketAddr) -> TcpListener {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing_log(&format!("bind {addr}: {e}; retrying"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("bind {addr}: {e}"),
        }
    }
}

fn tracing_log(msg: &str) {
    eprintln!("harness: {msg}");
}

#[derive(Debug)]
pub struct RunningBroker {
    pub broker: vigil_broker::Broker,
    pub shutdown: CancellationToken,
}

impl RunningBroker {
    pub fn addr(&self) -> SocketAddr {
        self.broker.local_addr()
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.broker.wait().await;
    }
}

#[derive(Debug)]
pub struct RunningOps {
    pub task: JoinHandle<Result<(), String>>,
    pub shutdown: CancellationToken,
    pub metrics: Arc<vigil_ops::metrics::Metrics>,
    pub data_dir: PathBuf,
    /// Where its gRPC API listens.
    pub api: SocketAddr,
}

impl RunningOps {
    /// Stops the operations center and returns its data folder, for reading
    /// the store.
    pub async fn stop(self) -> PathBuf {
        self.shutdown.cancel();
        let result = tokio::time::timeout(WAIT, self.task)
            .await
            .expect("ops stops in time")
            .expect("ops task");
        result.expect("ops ran without error");
        self.data_dir
    }
}

#[derive(Debug)]
pub struct RunningGateway {
    pub task: JoinHandle<Result<(), String>>,
    pub shutdown: CancellationToken,
    pub metrics: Arc<vigil_gateway::Metrics>,
    /// The DC-09 address panels dial (TCP and UDP).
    pub dc09: SocketAddr,
    /// The camera push endpoint, when `[http]` is configured.
    pub push: Option<SocketAddr>,
}

impl RunningGateway {
    /// `(last_seq, receipted_through, depth)` of the outbox.
    pub fn outbox(&self) -> (u64, u64, u64) {
        self.metrics.outbox.get()
    }

    /// Whether the outbox holds events and every one is receipted (it is
    /// empty again).
    pub fn all_receipted(&self) -> bool {
        let (last, receipted, depth) = self.outbox();
        last > 0 && receipted == last && depth == 0
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("gateway stops in time")
            .expect("gateway task")
            .expect("gateway ran without error");
    }
}

/// Polls `check` every 50 ms until it is true or [`WAIT`] passes.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `base` with `extra` laid over it, table by table: `extra` may add keys
/// to a table `base` already has (`[api]`) as well as new tables.
pub fn merge_toml(base: &str, extra: &str) -> String {
    fn merge(into: &mut toml::Table, from: toml::Table) {
        for (key, value) in from {
            match (into.get_mut(&key), value) {
                (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
                (_, value) => {
                    into.insert(key, value);
                }
            }
        }
    }
    let mut table: toml::Table = base.parse().expect("base TOML");
    merge(&mut table, extra.parse().expect("extra TOML"));
    toml::to_string(&table).expect("TOML")
}

/// Reads a stopped operations center's store.
pub fn open_store(data_dir: &Path) -> vigil_ops::store::SqliteStore {
    vigil_ops::store::SqliteStore::open(data_dir).expect("open ops store")
}
