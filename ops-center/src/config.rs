//! The ops-center config file (TOML): stable keys from DESIGN.md
//! (`data_dir`, `[mqtt] servers` or `server`, `[api] listen`, `[tls]`) plus
//! `[engine]`.
//!
//! Unknown keys are rejected; relative paths are relative to the config
//! file's folder; [`OpsConfig::load`] checks everything that can be checked
//! without binding a socket.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use vigil_pki::TlsConfig;

use crate::{budget::BudgetConfig, engine::EngineConfig};

/// A commented default config, printed by `vigil config default ops`.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// Largest `max_batch_bytes` accepted.
pub const MAX_BATCH_BYTES_LIMIT: usize = 16 * 1024 * 1024;

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsConfig {
    /// Where the store (`ops.db`) lives.
    pub data_dir: PathBuf,
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub api: ApiConfig,
    pub tls: TlsConfig,
    #[serde(default)]
    pub engine: EngineConfig,
    /// `[store]`: which database; SQLite in `data_dir` when absent.
    #[serde(default)]
    pub store: StoreConfig,
    /// `[budget]`: what one post may make the operations center store.
    #[serde(default)]
    pub budget: BudgetConfig,
    /// `[retention]`: how long events and incidents are kept.
    #[serde(default)]
    pub retention: crate::store::retention::RetentionConfig,
    /// `[metrics]`: the Prometheus endpoint; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<vigil_telemetry::MetricsConfig>,
    /// `[console]`: the browser console; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<crate::console::ConsoleConfig>,
    /// `[notify]` and its `[[notify.webhook]]`s: outbound notifications;
    /// none when absent.
    #[serde(default)]
    pub notify: crate::notify::NotifyConfig,
}

/// The `[mqtt]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// One broker, `HOST:PORT`. HOST is also the name checked against the
    /// broker's certificate. Give this or `servers`, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Several brokers, each `HOST:PORT`: the operations center holds one
    /// session with every one of them at once (posts may be connected to
    /// any). Give this or `server`, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub servers: Option<Vec<String>>,
    /// Shared-subscription group: replicas with the same group share the
    /// posts' messages. `None` (the default) subscribes plainly; see the
    /// default config for why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_group: Option<String>,
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u64,
    /// Larger event batches are dropped and counted (`oversize`).
    #[serde(default = "default_max_batch_bytes")]
    pub max_batch_bytes: usize,
}

/// The `[store]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `postgresql://USER@/DB?host=SOCKET_DIR&port=PORT` (or
    /// `postgresql://USER:PASSWORD@HOST:PORT/DB`); absent: SQLite,
    /// `ops.db` in `data_dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Reader connections for the API (queries, the feed's catch-up,
    /// replays); at most this many reads run at once.
    #[serde(default = "default_readers")]
    pub readers: usize,
    /// PostgreSQL: how long the leader lease lasts without renewal. A
    /// standby takes over within about this long after the leader dies.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
    /// PostgreSQL over TCP: the CA (PEM) the server's certificate must
    /// chain to. TLS is then required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: None,
            readers: default_readers(),
            lease_secs: default_lease_secs(),
            ca: None,
        }
    }
}

fn default_lease_secs() -> u64 {
    5
}

fn default_readers() -> usize {
    crate::store::DEFAULT_READERS
}

/// The `[api]` table: where the gRPC API listens, and its listener's caps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    /// Connections open at once; at the cap the oldest one still in its TLS
    /// handshake is dropped for the newcomer.
    #[serde(default = "default_api_max_connections")]
    pub max_connections: usize,
    /// Connections open at once from one IP address.
    #[serde(default = "default_api_max_per_source")]
    pub max_connections_per_source: usize,
    /// From accept to a finished mutual TLS handshake.
    #[serde(default = "default_api_preauth_timeout")]
    pub preauth_timeout_secs: u64,
    /// Stored events one replay may read, sent or not (its scan cost);
    /// beyond it the replay ends with RESOURCE_EXHAUSTED.
    #[serde(default = "default_replay_max_scan_rows")]
    pub replay_max_scan_rows: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 50051)),
            max_connections: default_api_max_connections(),
            max_connections_per_source: default_api_max_per_source(),
            preauth_timeout_secs: default_api_preauth_timeout(),
            replay_max_scan_rows: default_replay_max_scan_rows(),
        }
    }
}

impl ApiConfig {
    /// What bounds one replay.
    pub fn replay_limits(&self) -> crate::api::replay::Limits {
        crate::api::replay::Limits {
            max_scan_rows: self.replay_max_scan_rows,
            ..Default::default()
        }
    }

    /// The API listener's limits. Established connections keep tonic's
    /// HTTP/2 keep-alive rather than an idle timeout: a live feed may be
    /// quiet for hours.
    pub fn limits(&self) -> vigil_net::Limits {
        vigil_net::Limits {
            max_connections: self.max_connections,
            max_per_source: self.max_connections_per_source,
            preauth_deadline: std::time::Duration::from_secs(self.preauth_timeout_secs),
            idle_timeout: None,
            grace: crate::api::GRACE,
        }
    }
}

fn default_api_max_connections() -> usize {
    1024
}
fn default_api_max_per_source() -> usize {
    256
}
fn default_api_preauth_timeout() -> u64 {
    10
}

fn default_replay_max_scan_rows() -> u64 {
    crate::api::replay::DEFAULT_MAX_SCAN_ROWS
}

fn default_keep_alive() -> u64 {
    30
}
fn default_max_batch_bytes() -> usize {
    1024 * 1024
}

/// Why a config was refused. The message names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {key}: {reason}")]
    Invalid {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

impl OpsConfig {
    /// Reads, parses, resolves relative paths and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut cfg: Self = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.resolve_relative_to(base);
        cfg.validate()
            .map_err(|(key, reason)| ConfigError::Invalid {
                path: path.to_owned(),
                key,
                reason,
            })?;
        Ok(cfg)
    }

    /// Makes relative paths relative to `base` (the config file's folder).
    pub fn resolve_relative_to(&mut self, base: &Path) {
        if self.data_dir.is_relative() {
            self.data_dir = base.join(&self.data_dir);
        }
        self.tls.resolve_relative_to(base);
        if let Some(ca) = &mut self.store.ca
            && ca.is_relative()
        {
            *ca = base.join(&*ca);
        }
        if let Some(dir) = &mut self.retention.archive_dir
            && dir.is_relative()
        {
            *dir = base.join(&*dir);
        }
        self.notify.resolve_relative_to(base);
    }

    /// Checks values; returns the offending key and why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.mqtt.brokers()?;
        self.retention.validate()?;
        self.notify.validate()?;
        if let Some(g) = &self.mqtt.share_group
            && (g.is_empty() || g.contains(['/', '+', '#']))
        {
            return Err((
                "mqtt.share_group".into(),
                "must be non-empty, without '/', '+' or '#'".into(),
            ));
        }
        if !(5..=3600).contains(&self.mqtt.keep_alive_secs) {
            return Err((
                "mqtt.keep_alive_secs".into(),
                "must be between 5 and 3600".into(),
            ));
        }
        if !(1024..=MAX_BATCH_BYTES_LIMIT).contains(&self.mqtt.max_batch_bytes) {
            return Err((
                "mqtt.max_batch_bytes".into(),
                format!("must be between 1024 and {MAX_BATCH_BYTES_LIMIT}"),
            ));
        }
        if self.api.max_connections == 0 {
            return Err(("api.max_connections".into(), "must be at least 1".into()));
        }
        if !(1..=self.api.max_connections).contains(&self.api.max_connections_per_source) {
            return Err((
                "api.max_connections_per_source".into(),
                "must be between 1 and api.max_connections".into(),
            ));
        }
        if self.api.preauth_timeout_secs == 0 {
            return Err((
                "api.preauth_timeout_secs".into(),
                "must be at least 1".into(),
            ));
        }
        if self.api.replay_max_scan_rows < crate::api::replay::MIN_MAX_SCAN_ROWS {
            return Err((
                "api.replay_max_scan_rows".into(),
                format!(
                    "must be at least {} (one page of a replay)",
                    crate::api::replay::MIN_MAX_SCAN_ROWS
                ),
            ));
        }
        if self.mqtt.share_group.is_some() {
            // Replicas sharing the posts' messages must share one store
            // (with SQLite each would receipt events the others never
            // see), and only one may run the incident engine: that needs
            // the leader lease, which is not built yet.
            let why = if self.store.url.is_none() {
                "needs a shared store ([store] url): with SQLite each replica would receipt events the others never see"
            } else {
                "several replicas on one database need a leader lease, which this version does not have yet: run one operations center"
            };
            return Err(("mqtt.share_group".into(), why.into()));
        }
        if !(2..=300).contains(&self.store.lease_secs) {
            return Err((
                "store.lease_secs".into(),
                "must be between 2 and 300".into(),
            ));
        }
        if !(1..=64).contains(&self.store.readers) {
            return Err(("store.readers".into(), "must be between 1 and 64".into()));
        }
        if let Some(url) = &self.store.url
            && !(url.starts_with("postgresql://") || url.starts_with("postgres://"))
        {
            return Err((
                "store.url".into(),
                "must be a postgresql:// URL (leave it out for SQLite in data_dir)".into(),
            ));
        }
        if let Some(console) = &self.console {
            console.validate()?;
        }
        self.budget.validate()?;
        // A batch of the largest accepted size must fit a full budget, or it
        // would be deferred for ever.
        if self.budget.burst_bytes < self.mqtt.max_batch_bytes as u64 {
            return Err((
                "budget.burst_bytes".into(),
                format!(
                    "must be at least mqtt.max_batch_bytes ({})",
                    self.mqtt.max_batch_bytes
                ),
            ));
        }
        self.engine
            .validate()
            .map_err(|e| (format!("engine.{}", e.field), e.reason))
    }
}

/// Most brokers in `[mqtt] servers`.
pub const MAX_BROKERS: usize = 16;

impl MqttConfig {
    /// One broker at `server` (`HOST:PORT`), the form most tests and
    /// single-broker regions use.
    pub fn single(server: impl Into<String>) -> Self {
        Self {
            server: Some(server.into()),
            servers: None,
            share_group: None,
            keep_alive_secs: default_keep_alive(),
            max_batch_bytes: default_max_batch_bytes(),
        }
    }

    /// The brokers to hear posts on, in the order given, each split into
    /// host and port; or the offending key and why.
    pub fn brokers(&self) -> Result<Vec<(String, u16)>, (String, String)> {
        let list = match (&self.server, &self.servers) {
            (Some(_), Some(_)) => {
                return Err((
                    "mqtt.servers".into(),
                    "give either mqtt.server or mqtt.servers, not both".into(),
                ));
            }
            (None, None) => {
                return Err((
                    "mqtt.servers".into(),
                    "missing: list the brokers (servers = [\"HOST:PORT\", ...]) or give one as server = \"HOST:PORT\"".into(),
                ));
            }
            (Some(one), None) => {
                return host_port(one)
                    .map(|b| vec![b])
                    .map_err(|reason| ("mqtt.server".into(), reason));
            }
            (None, Some(list)) => list,
        };
        if list.is_empty() {
            return Err((
                "mqtt.servers".into(),
                "must list at least one broker".into(),
            ));
        }
        if list.len() > MAX_BROKERS {
            return Err((
                "mqtt.servers".into(),
                format!("at most {MAX_BROKERS} brokers"),
            ));
        }
        let mut out: Vec<(String, u16)> = Vec::with_capacity(list.len());
        for (i, entry) in list.iter().enumerate() {
            let key = format!("mqtt.servers[{i}]");
            let broker = host_port(entry).map_err(|reason| (key.clone(), reason))?;
            if out.contains(&broker) {
                return Err((key, format!("{entry:?} is listed twice")));
            }
            out.push(broker);
        }
        Ok(out)
    }

    /// The brokers as written (`HOST:PORT`), for logs.
    pub fn addresses(&self) -> Vec<String> {
        match (&self.server, &self.servers) {
            (_, Some(list)) => list.clone(),
            (Some(one), None) => vec![one.clone()],
            (None, None) => Vec::new(),
        }
    }
}

/// `HOST:PORT` split into host and port.
fn host_port(server: &str) -> Result<(String, u16), String> {
    let (host, port) = server
        .rsplit_once(':')
        .ok_or_else(|| format!("{server:?} is not HOST:PORT"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{server:?} has no host"));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("{server:?} has no valid port"))?;
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_config_parses_and_matches_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ops.toml");
        std::fs::write(&path, DEFAULT_TOML).unwrap();
        let cfg = OpsConfig::load(&path).unwrap();
        assert_eq!(cfg.data_dir, dir.path().join("ops-data"));
        assert_eq!(cfg.tls.ca, dir.path().join("pki/ca.pem"));
        assert_eq!(
            cfg.mqtt.brokers().unwrap(),
            vec![("localhost".into(), 8883)]
        );
        assert_eq!(cfg.api, ApiConfig::default());
        assert_eq!(cfg.budget, BudgetConfig::default());
        let mut engine = cfg.engine.clone();
        engine.procedures.clear();
        engine.zone_cameras.clear();
        assert_eq!(engine, EngineConfig::default());
        assert!(cfg.engine.procedures.contains_key("fire"));
    }

    #[test]
    fn one_server_or_a_list_of_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ops.toml");
        let base = "data_dir = \"d\"\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n";
        std::fs::write(&path, format!("{base}[mqtt]\nserver = \"b1:8883\"\n")).unwrap();
        let one = OpsConfig::load(&path).unwrap();
        assert_eq!(one.mqtt, MqttConfig::single("b1:8883"));
        assert_eq!(one.mqtt.addresses(), ["b1:8883"]);
        std::fs::write(
            &path,
            format!("{base}[mqtt]\nservers = [\"b2:8883\", \"[::1]:1883\", \"b1:8883\"]\n"),
        )
        .unwrap();
        let three = OpsConfig::load(&path).unwrap();
        assert_eq!(
            three.mqtt.brokers().unwrap(),
            vec![
                ("b2".to_owned(), 8883),
                ("::1".to_owned(), 1883),
                ("b1".to_owned(), 8883)
            ],
            "in the order given"
        );
    }

    #[test]
    fn bad_configs_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ops.toml");
        let base = "data_dir = \"d\"\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n";
        for (extra, want) in [
            ("[mqtt]\nserver = \"nohost\"\n", "mqtt.server"),
            ("[mqtt]\nserver = \"h:0\"\n", "mqtt.server"),
            ("[mqtt]\nkeep_alive_secs = 30\n", "mqtt.servers: missing"),
            ("[mqtt]\nservers = []\n", "mqtt.servers: must list"),
            (
                "[mqtt]\nserver = \"h:1\"\nservers = [\"h:2\"]\n",
                "mqtt.servers: give either",
            ),
            ("[mqtt]\nservers = [\"h:1\", \"h\"]\n", "mqtt.servers[1]"),
            ("[mqtt]\nservers = [\"h:1\", \":2\"]\n", "mqtt.servers[1]"),
            (
                "[mqtt]\nservers = [\"h:1\", \"h:1\"]\n",
                "mqtt.servers[1]: \"h:1\" is listed twice",
            ),
            ("[mqtt]\nservers = \"h:1\"\n", "servers"),
            (
                "[mqtt]\nserver = \"h:1\"\nshare_group = \"a/b\"\n",
                "mqtt.share_group",
            ),
            (
                "[mqtt]\nserver = \"h:1\"\nserverr = 1\n",
                "unknown field `serverr`",
            ),
            (
                "[mqtt]\nserver = \"h:1\"\n[engine]\nflood_limit = 0\n",
                "engine.flood_limit",
            ),
            (
                "[mqtt]\nserver = \"h:1\"\n[engine.procedures]\nfires = \"x\"\n",
                "engine.procedures.fires",
            ),
            (
                "[mqtt]\nserver = \"h:1\"\n[api]\nlisten = \"127.0.0.1:1\"\nmax_connections = 8\nmax_connections_per_source = 9\n",
                "api.max_connections_per_source",
            ),
            (
                "[mqtt]\nserver = \"h:1\"\n[api]\nlisten = \"127.0.0.1:1\"\npreauth_timeout_secs = 0\n",
                "api.preauth_timeout_secs",
            ),
            (
                "[mqtt]\nserver = \"h:1\"\n[api]\nlisten = \"127.0.0.1:1\"\nreplay_max_scan_rows = 10\n",
                "api.replay_max_scan_rows",
            ),
            (
                "[mqtt]\nserver = \"h:1\"\nshare_group = \"ops\"\n",
                "mqtt.share_group",
            ),
            (
                "[mqtt]\nserver = \"h:1\"\n[store]\nreaders = 0\n",
                "store.readers",
            ),
            (
                "[mqtt]\nserver = \"h:1\"\n[store]\nurl = \"mysql://x\"\n",
                "store.url",
            ),
            (
                "[mqtt]\nserver = \"h:1\"\n[budget]\nevents_per_sec = 0\n",
                "budget.events_per_sec",
            ),
            (
                "[mqtt]\nserver = \"h:1\"\n[budget]\nburst_bytes = 2048\n",
                "budget.burst_bytes",
            ),
        ] {
            std::fs::write(&path, format!("{base}{extra}")).unwrap();
            let err = OpsConfig::load(&path).unwrap_err().to_string();
            assert!(err.contains(want), "{err} should mention {want}");
        }
    }
}
