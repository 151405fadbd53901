//! The gateway's config file (TOML), checked completely before anything
//! binds: unknown keys, bad addresses, bad account numbers and keys are all
//! reported with the key they concern.

use std::{
    collections::HashSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use vigil_dc09::Key;
use vigil_pki::TlsConfig;

use crate::{
    camera::{
        onvif::{OnvifSettings, soap::Credentials},
        push::{PushCamera, PushConfig},
    },
    outbox::OutboxLimits,
};

/// Why a config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// `vigil gateway --config FILE`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Folder for the outbox database (created if missing).
    pub data_dir: PathBuf,
    pub tls: TlsConfig,
    pub mqtt: MqttConfig,
    pub dc09: Dc09Config,
    #[serde(default)]
    pub outbox: OutboxConfig,
    /// The camera push endpoint; off unless configured.
    #[serde(default)]
    pub http: Option<HttpConfig>,
    /// Settings shared by every camera source.
    #[serde(default)]
    pub camera: CameraConfig,
    /// `[metrics]`: the Prometheus endpoint; off when absent.
    #[serde(default)]
    pub metrics: Option<vigil_telemetry::MetricsConfig>,
    /// ONVIF cameras the gateway subscribes to for events.
    #[serde(default)]
    pub onvif: Vec<OnvifConfig>,
}

/// `[[onvif]]`: a camera whose events the gateway pulls over ONVIF (see
/// [`crate::camera::onvif`]).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnvifConfig {
    /// Camera id, unique within the post, e.g. "cam-1".
    pub camera: String,
    /// Device service URL, `http://HOST:PORT/onvif/device_service`.
    pub url: String,
    pub username: String,
    pub password: String,
    /// Lease asked for each subscription; renewed at half of it.
    #[serde(default = "defaults::subscription")]
    pub subscription_secs: u64,
    /// How long one PullMessages waits on the camera for events.
    #[serde(default = "defaults::pull_timeout")]
    pub pull_timeout_secs: u64,
    /// Most messages one pull returns.
    #[serde(default = "defaults::message_limit")]
    pub message_limit: u32,
    /// No working subscription for this long raises CAMERA_UNREACHABLE.
    #[serde(default = "defaults::unreachable_after")]
    pub unreachable_after_secs: u64,
    /// Longest wait between re-subscription attempts (the wait doubles
    /// from 1 s up to this).
    #[serde(default = "defaults::backoff_max")]
    pub backoff_max_secs: u64,
    /// Longest a request may take (beyond the pull timeout for pulls).
    #[serde(default = "defaults::request_timeout")]
    pub request_timeout_secs: u64,
}

impl std::fmt::Debug for OnvifConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnvifConfig")
            .field("camera", &self.camera)
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish_non_exhaustive()
    }
}

/// `[http]`: the endpoint cameras push events to (see
/// [`crate::camera::push`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// TCP address of the push endpoint.
    pub listen: SocketAddr,
    /// Larger request bodies are refused with 413.
    #[serde(default = "defaults::max_body")]
    pub max_body_bytes: usize,
    /// Most HTTP connections at once. At the cap, the oldest connection
    /// that has not sent a request yet is closed for the newcomer.
    #[serde(default = "defaults::http_connections")]
    pub max_connections: usize,
    /// Most HTTP connections at once from one IP address.
    #[serde(default = "defaults::http_connections_per_source")]
    pub max_connections_per_source: usize,
    /// Headers and body must arrive within this many seconds.
    #[serde(default = "defaults::request_timeout")]
    pub request_timeout_secs: u64,
    /// Cameras allowed to push, each with its own bearer token.
    #[serde(default)]
    pub cameras: Vec<HttpCameraConfig>,
}

/// `[[http.cameras]]`: a camera that pushes events over HTTP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCameraConfig {
    /// Camera id, unique within the post, e.g. "cam-2".
    pub camera: String,
    /// Bearer token the camera sends (at least 16 characters).
    pub token: String,
}

/// `[camera]`: settings for every camera.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// A stateful detection (motion, intrusion, tamper, ...) that started
    /// and got no stop for this long is closed with a stale STOP.
    #[serde(default = "defaults::stale")]
    pub stale_secs: u64,
}

impl Default for CameraConfig {
    fn default() -> Self {
        Self {
            stale_secs: defaults::stale(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// One broker, `HOST:PORT`. Give this or `servers`, not both.
    #[serde(default)]
    pub server: Option<String>,
    /// Brokers in order of preference, `HOST:PORT` each: the publisher
    /// connects to one at a time and fails over along the list (see
    /// `publisher`). Give this or `server`, not both.
    #[serde(default)]
    pub servers: Option<Vec<String>>,
    /// MQTT keep-alive in seconds.
    #[serde(default = "defaults::keep_alive")]
    pub keep_alive_secs: u64,
    /// Most events in one published `EventBatch`.
    #[serde(default = "defaults::batch_events")]
    pub batch_max_events: usize,
    /// Re-send what is not receipted when no receipt arrived for this long
    /// while events were outstanding.
    #[serde(default = "defaults::resend_after")]
    pub resend_after_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dc09Config {
    /// TCP and UDP address panels report to.
    #[serde(default = "defaults::dc09_listen")]
    pub listen: SocketAddr,
    /// Most TCP connections from panels at once. At the cap, the oldest
    /// connection that has not sent a valid frame yet is closed for the
    /// newcomer.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// Most TCP connections at once from one IP address.
    #[serde(default = "defaults::max_connections_per_source")]
    pub max_connections_per_source: usize,
    /// A TCP connection that sends no valid frame within this many seconds
    /// is closed.
    #[serde(default = "defaults::dc09_preauth_timeout")]
    pub preauth_timeout_secs: u64,
    /// A TCP connection with nothing received for this long is closed.
    #[serde(default = "defaults::idle_timeout")]
    pub idle_timeout_secs: u64,
    /// Longest frame accepted (the DC-09 length field allows 4105 bytes).
    #[serde(default = "defaults::max_frame")]
    pub max_frame_bytes: usize,
    #[serde(default)]
    pub accounts: Vec<AccountConfig>,
}

/// A panel, by its DC-09 account number.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    /// Account number: 3 to 16 hex digits, as the panel sends it.
    pub account: String,
    /// AES key in hex (16, 24 or 32 bytes) for an encrypting panel.
    #[serde(default)]
    pub key: Option<String>,
    /// How far a message's timestamp may lag the gateway clock.
    #[serde(default = "defaults::window_behind")]
    pub window_behind_secs: u64,
    /// How far a message's timestamp may lead the gateway clock.
    #[serde(default = "defaults::window_ahead")]
    pub window_ahead_secs: u64,
    /// Raise a supervision fault when the panel is silent (no message, NULL
    /// included) for this long; 0 = not supervised.
    #[serde(default)]
    pub supervision_secs: u64,
    /// NAK clear-text frames without a timestamp, so the replay window
    /// always applies to this account.
    #[serde(default)]
    pub require_timestamp: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// Most unreceipted events kept before new frames are NAKed.
    #[serde(default = "defaults::max_events")]
    pub max_events: u64,
    /// Most bytes of unreceipted events kept before new frames are NAKed.
    #[serde(default = "defaults::max_bytes")]
    pub max_bytes: u64,
    /// Largest the outbox database may grow (0 = no limit but the disk).
    #[serde(default)]
    pub max_db_bytes: u64,
    /// Disk space held back so receipts can be applied on a full disk
    /// (0 = none); see `outbox::Reserve`.
    #[serde(default = "defaults::reserve_bytes")]
    pub reserve_bytes: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            max_events: defaults::max_events(),
            max_bytes: defaults::max_bytes(),
            max_db_bytes: 0,
            reserve_bytes: defaults::reserve_bytes(),
        }
    }
}

mod defaults {
    pub(super) fn reserve_bytes() -> u64 {
        crate::outbox::DEFAULT_RESERVE_BYTES
    }

    use std::net::SocketAddr;
    pub(super) fn keep_alive() -> u64 {
        15
    }
    pub(super) fn batch_events() -> usize {
        256
    }
    pub(super) fn resend_after() -> u64 {
        30
    }
    pub(super) fn dc09_listen() -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], 7000))
    }
    pub(super) fn max_connections() -> usize {
        256
    }
    pub(super) fn max_connections_per_source() -> usize {
        16
    }
    pub(super) fn dc09_preauth_timeout() -> u64 {
        5
    }
    pub(super) fn http_connections_per_source() -> usize {
        16
    }
    pub(super) fn idle_timeout() -> u64 {
        120
    }
    pub(super) fn max_frame() -> usize {
        vigil_dc09::DEFAULT_MAX_FRAME
    }
    pub(super) fn window_behind() -> u64 {
        40
    }
    pub(super) fn window_ahead() -> u64 {
        20
    }
    pub(super) fn max_body() -> usize {
        16 * 1024
    }
    pub(super) fn http_connections() -> usize {
        64
    }
    pub(super) fn request_timeout() -> u64 {
        10
    }
    pub(super) fn stale() -> u64 {
        300
    }
    pub(super) fn subscription() -> u64 {
        300
    }
    pub(super) fn pull_timeout() -> u64 {
        10
    }
    pub(super) fn message_limit() -> u32 {
        32
    }
    pub(super) fn unreachable_after() -> u64 {
        60
    }
    pub(super) fn backoff_max() -> u64 {
        60
    }
    pub(super) fn max_events() -> u64 {
        1_000_000
    }
    pub(super) fn max_bytes() -> u64 {
        1 << 30
    }
}

/// A panel account, checked and ready for the receiver.
#[derive(Debug, Clone)]
pub struct Account {
    pub account: String,
    pub key: Option<Key>,
    pub window_behind: Duration,
    pub window_ahead: Duration,
    pub supervision: Option<Duration>,
    /// NAK untimed clear-text frames.
    pub require_timestamp: bool,
}

impl GatewayConfig {
    /// Reads, parses and validates `path`; relative paths in it become
    /// relative to its folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let mut config: Self = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            reason: e.message().to_owned() + &location(&text, e.span()),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_relative_to(base);
        config.validate()?;
        Ok(config)
    }

    pub fn resolve_relative_to(&mut self, base: &Path) {
        self.tls.resolve_relative_to(base);
        if self.data_dir.is_relative() {
            self.data_dir = base.join(&self.data_dir);
        }
    }

    /// Checks everything that can be checked without binding.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.mqtt_brokers()?;
        if self.mqtt.keep_alive_secs < 5 {
            return Err(invalid("mqtt.keep_alive_secs", "must be at least 5"));
        }
        if self.mqtt.batch_max_events == 0 {
            return Err(invalid("mqtt.batch_max_events", "must be at least 1"));
        }
        if self.dc09.max_connections == 0 {
            return Err(invalid("dc09.max_connections", "must be at least 1"));
        }
        if self.dc09.max_frame_bytes < 64 {
            return Err(invalid("dc09.max_frame_bytes", "must be at least 64"));
        }
        if !(1..=self.dc09.max_connections).contains(&self.dc09.max_connections_per_source) {
            return Err(invalid(
                "dc09.max_connections_per_source",
                "must be between 1 and dc09.max_connections",
            ));
        }
        if self.dc09.preauth_timeout_secs == 0 {
            return Err(invalid("dc09.preauth_timeout_secs", "must be at least 1"));
        }
        if self.dc09.idle_timeout_secs == 0 {
            return Err(invalid("dc09.idle_timeout_secs", "must be at least 1"));
        }
        self.accounts()?;
        self.push_cameras()?;
        self.onvif_cameras()?;
        if self.camera.stale_secs == 0 {
            return Err(invalid("camera.stale_secs", "must be at least 1"));
        }
        Ok(())
    }

    /// The cameras allowed to push, checked; empty when `[http]` is off.
    pub fn push_cameras(&self) -> Result<Vec<PushCamera>, ConfigError> {
        let Some(http) = &self.http else {
            return Ok(Vec::new());
        };
        if http.max_connections == 0 {
            return Err(invalid("http.max_connections", "must be at least 1"));
        }
        if http.max_body_bytes < 256 {
            return Err(invalid("http.max_body_bytes", "must be at least 256"));
        }
        if http.request_timeout_secs == 0 {
            return Err(invalid("http.request_timeout_secs", "must be at least 1"));
        }
        if !(1..=http.max_connections).contains(&http.max_connections_per_source) {
            return Err(invalid(
                "http.max_connections_per_source",
                "must be between 1 and http.max_connections",
            ));
        }
        let mut cameras = HashSet::new();
        let mut tokens = HashSet::new();
        http.cameras
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let key_name = |field: &str| format!("http.cameras[{i}].{field}");
                check_camera_id(&c.camera).map_err(|r| invalid(key_name("camera"), r))?;
                if !cameras.insert(c.camera.as_str()) {
                    return Err(invalid(
                        key_name("camera"),
                        format!("{} is configured twice", c.camera),
                    ));
                }
                if c.token.chars().count() < 16 || c.token.trim() != c.token {
                    return Err(invalid(
                        key_name("token"),
                        "must be at least 16 characters, without surrounding spaces",
                    ));
                }
                if !tokens.insert(c.token.as_str()) {
                    return Err(invalid(key_name("token"), "is the token of another camera"));
                }
                Ok(PushCamera {
                    camera: c.camera.clone(),
                    token: c.token.clone(),
                })
            })
            .collect()
    }

    /// The ONVIF cameras, checked.
    pub fn onvif_cameras(&self) -> Result<Vec<OnvifSettings>, ConfigError> {
        let mut cameras = HashSet::new();
        self.onvif
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let key_name = |field: &str| format!("onvif[{i}].{field}");
                check_camera_id(&c.camera).map_err(|r| invalid(key_name("camera"), r))?;
                if !cameras.insert(c.camera.as_str()) {
                    return Err(invalid(
                        key_name("camera"),
                        format!("{} is configured twice", c.camera),
                    ));
                }
                let url: hyper::Uri = c.url.parse().map_err(|e| {
                    invalid(key_name("url"), format!("{:?} is not a URL: {e}", c.url))
                })?;
                if url.scheme_str() != Some("http") || url.host().is_none_or(str::is_empty) {
                    return Err(invalid(
                        key_name("url"),
                        format!(
                            "{:?} must be http://HOST[:PORT]/PATH (https is not supported)",
                            c.url
                        ),
                    ));
                }
                // hyper takes `host:38001x` as a host without a port (and
                // would dial port 80); the port, when given, must be a
                // number from 1 to 65535.
                if let Some(authority) = url.authority() {
                    check_url_port(authority.as_str()).map_err(|reason| {
                        invalid(key_name("url"), format!("{:?}: {reason}", c.url))
                    })?;
                }
                if c.username.is_empty() {
                    return Err(invalid(key_name("username"), "must not be empty"));
                }
                if c.password.is_empty() {
                    return Err(invalid(key_name("password"), "must not be empty"));
                }
                if !(1..=600).contains(&c.pull_timeout_secs) {
                    return Err(invalid(key_name("pull_timeout_secs"), "must be 1 to 600"));
                }
                if c.subscription_secs < 4 * c.pull_timeout_secs || c.subscription_secs > 86_400 {
                    return Err(invalid(
                        key_name("subscription_secs"),
                        "must be at least 4 times pull_timeout_secs (renewal happens at half \
                         the lease, between pulls) and at most 86400",
                    ));
                }
                if !(1..=1024).contains(&c.message_limit) {
                    return Err(invalid(key_name("message_limit"), "must be 1 to 1024"));
                }
                for (field, value) in [
                    ("unreachable_after_secs", c.unreachable_after_secs),
                    ("backoff_max_secs", c.backoff_max_secs),
                    ("request_timeout_secs", c.request_timeout_secs),
                ] {
                    if value == 0 {
                        return Err(invalid(key_name(field), "must be at least 1"));
                    }
                }
                Ok(OnvifSettings {
                    camera: c.camera.clone(),
                    url,
                    credentials: Credentials {
                        username: c.username.clone(),
                        password: c.password.clone(),
                    },
                    subscription: Duration::from_secs(c.subscription_secs),
                    pull_timeout: Duration::from_secs(c.pull_timeout_secs),
                    message_limit: c.message_limit,
                    backoff_max: Duration::from_secs(c.backoff_max_secs),
                    unreachable_after: Duration::from_secs(c.unreachable_after_secs),
                    request_timeout: Duration::from_secs(c.request_timeout_secs),
                })
            })
            .collect()
    }

    /// The push endpoint's settings, when `[http]` is configured.
    pub fn push_config(&self) -> Result<Option<PushConfig>, ConfigError> {
        let cameras = self.push_cameras()?;
        Ok(self.http.as_ref().map(|http| PushConfig {
            cameras,
            max_body_bytes: http.max_body_bytes,
            max_connections: http.max_connections,
            max_connections_per_source: http.max_connections_per_source,
            request_timeout: Duration::from_secs(http.request_timeout_secs),
        }))
    }

    /// The DC-09 listeners' limits.
    pub fn receiver_limits(&self) -> crate::receiver::ReceiverLimits {
        crate::receiver::ReceiverLimits {
            max_connections: self.dc09.max_connections,
            max_connections_per_source: self.dc09.max_connections_per_source,
            preauth_timeout: Duration::from_secs(self.dc09.preauth_timeout_secs),
            idle_timeout: Duration::from_secs(self.dc09.idle_timeout_secs),
            max_frame_bytes: self.dc09.max_frame_bytes,
        }
    }

    /// `(host, port)` of each broker, in the order of `mqtt.servers` (or
    /// the one `mqtt.server`). Each host is also the name checked against
    /// that broker's certificate.
    pub fn mqtt_brokers(&self) -> Result<Vec<(String, u16)>, ConfigError> {
        let list = match (&self.mqtt.server, &self.mqtt.servers) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "mqtt.servers",
                    "give either mqtt.server or mqtt.servers, not both",
                ));
            }
            (None, None) => {
                return Err(invalid(
                    "mqtt.servers",
                    "missing: list the brokers (servers = [\"HOST:PORT\", ...]) or give one as server = \"HOST:PORT\"",
                ));
            }
            (Some(one), None) => return Ok(vec![broker_address("mqtt.server", one)?]),
            (None, Some(list)) => list,
        };
        if list.is_empty() {
            return Err(invalid("mqtt.servers", "must list at least one broker"));
        }
        let mut out: Vec<(String, u16)> = Vec::with_capacity(list.len());
        for (i, entry) in list.iter().enumerate() {
            let key = format!("mqtt.servers[{i}]");
            let broker = broker_address(&key, entry)?;
            if out.contains(&broker) {
                return Err(invalid(key, format!("{entry:?} is listed twice")));
            }
            out.push(broker);
        }
        Ok(out)
    }

    /// The configured panel accounts, keys parsed.
    pub fn accounts(&self) -> Result<Vec<Account>, ConfigError> {
        let mut seen = HashSet::new();
        self.dc09
            .accounts
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let key_name = |field: &str| format!("dc09.accounts[{i}].{field}");
                let valid = (3..=16).contains(&a.account.len())
                    && a.account.bytes().all(|b| b.is_ascii_hexdigit());
                if !valid {
                    return Err(invalid(
                        key_name("account"),
                        format!("{:?} must be 3 to 16 hex digits", a.account),
                    ));
                }
                if !seen.insert(a.account.to_ascii_uppercase()) {
                    return Err(invalid(
                        key_name("account"),
                        format!("{} is configured twice", a.account),
                    ));
                }
                let key = a
                    .key
                    .as_deref()
                    .map(Key::from_hex)
                    .transpose()
                    .map_err(|e| invalid(key_name("key"), e.to_string()))?;
                Ok(Account {
                    account: a.account.clone(),
                    key,
                    window_behind: Duration::from_secs(a.window_behind_secs),
                    window_ahead: Duration::from_secs(a.window_ahead_secs),
                    supervision: (a.supervision_secs > 0)
                        .then(|| Duration::from_secs(a.supervision_secs)),
                    require_timestamp: a.require_timestamp,
                })
            })
            .collect()
    }

    pub fn outbox_limits(&self) -> OutboxLimits {
        OutboxLimits {
            max_events: self.outbox.max_events,
            max_bytes: self.outbox.max_bytes,
            max_db_bytes: (self.outbox.max_db_bytes > 0).then_some(self.outbox.max_db_bytes),
            reserve_bytes: self.outbox.reserve_bytes,
            ..OutboxLimits::default()
        }
    }
}

/// `HOST:PORT` (or `[V6]:PORT`) split into host and port; errors name `key`.
fn broker_address(key: &str, server: &str) -> Result<(String, u16), ConfigError> {
    let (host, port) = server
        .rsplit_once(':')
        .ok_or_else(|| invalid(key, format!("{server:?} is not HOST:PORT")))?;
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| invalid(key, format!("{server:?}: bad port")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(invalid(key, format!("{server:?}: missing host")));
    }
    Ok((host.to_owned(), port))
}

/// Camera ids follow the identity rule: `[a-z0-9][a-z0-9-]{0,62}`.
fn check_camera_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && !id.starts_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{id:?} must be 1 to 63 of a-z, 0-9 and '-', not starting with '-'"
        ))
    }
}

/// " at line L: <that line>" for a TOML error span, so the message names
/// the key even when the parser's own message does not.
fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return String::new();
    };
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
    format!(" at line {line_no}: {line}")
}

/// The commented default config printed by `vigil config default gateway`.
pub const DEFAULT_CONFIG: &str = r#"# Vigil gateway: one per post.
# Relative paths are relative to this file's folder.

# Where the durable outbox lives (SQLite). Back it up like any database;
# it only holds events the operations center has not receipted yet.
data_dir = "data"

[tls]
ca = "pki/ca.pem"
# The post's certificate: its CN is the post id (e.g. p-017), its OU "post".
cert = "pki/p-017.pem"
key = "pki/p-017.key"
# crl = "pki/crl.pem"

[mqtt]
# The region's brokers, in order of preference. The gateway connects to
# one at a time: the first that answers. When its connection fails it
# moves to the next (after the reconnect backoff); after the last it starts
# again from the first, so it comes back to the first broker once that one
# answers again. Each broker's certificate must name its host (DNS or IP
# SAN). With one broker, `server = "HOST:PORT"` also works (give one of
# the two keys, not both).
servers = ["broker-1.example:8883", "broker-2.example:8883"]
keep_alive_secs = 15
# Most events in one published batch.
batch_max_events = 256
# Re-send unreceipted events when no receipt came for this long.
resend_after_secs = 30

[dc09]
# Panels report here, over TCP and UDP on the same port.
listen = "0.0.0.0:7000"
# TCP connections at once. At the cap, the oldest connection that has not
# sent a valid frame yet is closed for the newcomer.
max_connections = 256
# TCP connections at once from one IP address (same rule within it).
max_connections_per_source = 16
# A TCP connection that sends no valid frame (good CRC, configured account)
# within this many seconds is closed.
preauth_timeout_secs = 5
# Then, a connection with nothing received for this long is closed.
idle_timeout_secs = 120
max_frame_bytes = 4105

# One table per panel. `key` (hex, 16/24/32 bytes) only for encrypting panels.
[[dc09.accounts]]
account = "1234"
# key = "000102030405060708090a0b0c0d0e0f"
# Accepted clock difference between panel and gateway.
window_behind_secs = 40
window_ahead_secs = 20
# Raise a supervision fault after this much silence (0 = off).
supervision_secs = 0
# NAK clear-text frames without a timestamp, so the window above always
# applies (a replayed frame cannot be ACKed as new). Encrypted frames always
# carry one. Turn on for every panel that sends timestamps.
require_timestamp = false

[outbox]
# Beyond these, new frames are NAKed (the panel keeps its alarm and retries).
max_events = 1000000
max_bytes = 1073741824
# Largest the database file may grow (0 = no limit but the disk).
max_db_bytes = 0
# Disk space kept in outbox.db.reserve and given up when the disk is full,
# so that receipts can still be applied and the outbox drains (0 = none).
# While it is given up, new events are refused until it can be written again.
reserve_bytes = 8388608

[camera]
# A camera detection that started (motion, intrusion, tamper, video loss,
# scene change) and got no stop for this long is closed with a stale stop.
stale_secs = 300

# Prometheus endpoint (GET /metrics), off unless this table is present.
# Keep it on a management network or loopback: it tells how busy this is.
# [metrics]
# listen = "127.0.0.1:9465"

# Camera HTTP push endpoint, off unless this table is present. Cameras
# POST JSON events to http://HOST:PORT/v1/camera-events with
# "Authorization: Bearer <token>" (see docs/cameras.md).
# [http]
# listen = "0.0.0.0:8080"
# max_body_bytes = 16384
# max_connections = 64
# max_connections_per_source = 16
# request_timeout_secs = 10
#
# One table per pushing camera; each has its own token (16+ characters).
# [[http.cameras]]
# camera = "cam-2"
# token = "change-me-to-a-long-random-token"

# ONVIF cameras: the gateway subscribes to each one's events (PullPoint,
# WS-Security digest login). One table per camera.
# [[onvif]]
# camera = "cam-1"
# url = "http://192.0.2.10:80/onvif/device_service"
# username = "vigil"
# password = "change-me"
# subscription_secs = 300        # lease asked for; renewed at half of it
# pull_timeout_secs = 10         # how long one pull waits on the camera
# message_limit = 32
# unreachable_after_secs = 60    # then a CAMERA_UNREACHABLE health event
# backoff_max_secs = 60
# request_timeout_secs = 10
"#;

/// Checks the port part of a URL's authority (`HOST`, `HOST:PORT`,
/// `[V6]:PORT`, possibly with `USER@` in front): absent, or 1 to 65535.
fn check_url_port(authority: &str) -> Result<(), String> {
    if authority.contains('@') {
        return Err("credentials go in username and password, not in the URL".into());
    }
    // After an IPv6 literal's closing bracket, or anywhere in a name.
    let after_host = authority
        .rfind(']')
        .map_or(authority, |i| &authority[i + 1..]);
    let Some((_, port)) = after_host.rsplit_once(':') else {
        return Ok(());
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
        _ => Err(format!("port {port:?} is not a number from 1 to 65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<GatewayConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, text).unwrap();
        GatewayConfig::load(&path)
    }

    #[test]
    fn default_config_is_valid() {
        let config = parse(DEFAULT_CONFIG).unwrap();
        assert_eq!(config.dc09.listen.port(), 7000);
        assert_eq!(config.accounts().unwrap()[0].account, "1234");
        assert!(config.data_dir.ends_with("data") && config.data_dir.is_absolute());
        assert!(config.http.is_none(), "the push endpoint is off by default");
        assert_eq!(config.camera.stale_secs, 300);
        assert_eq!(
            config.mqtt_brokers().unwrap(),
            [
                ("broker-1.example".to_owned(), 8883),
                ("broker-2.example".to_owned(), 8883)
            ]
        );
        let one = DEFAULT_CONFIG.replacen(
            "servers = [\"broker-1.example:8883\", \"broker-2.example:8883\"]",
            "server = \"[::1]:1883\"",
            1,
        );
        let config = parse(&one).unwrap();
        assert_eq!(config.mqtt_brokers().unwrap(), [("::1".to_owned(), 1883)]);
    }

    /// The default config with its commented camera sections switched on.
    fn with_cameras() -> String {
        DEFAULT_CONFIG
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if rest.starts_with('[')
                        || [
                            "listen",
                            "max_",
                            "request_",
                            "camera",
                            "token",
                            "url",
                            "username",
                            "password",
                            "subscription_",
                            "pull_",
                            "message_",
                            "unreachable_",
                            "backoff_",
                        ]
                        .iter()
                        .any(|k| rest.starts_with(k)) =>
                {
                    rest
                }
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn default_camera_sections_are_valid_when_enabled() {
        let config = parse(&with_cameras()).unwrap();
        let push = config.push_config().unwrap().unwrap();
        assert_eq!(config.http.as_ref().unwrap().listen.port(), 8080);
        assert_eq!(push.cameras.len(), 1);
        assert_eq!(push.cameras[0].camera, "cam-2");
        assert_eq!(push.max_body_bytes, 16384);
        let onvif = config.onvif_cameras().unwrap();
        assert_eq!(onvif.len(), 1);
        assert_eq!(onvif[0].camera, "cam-1");
        assert_eq!(onvif[0].url.path(), "/onvif/device_service");
        assert_eq!(onvif[0].subscription, Duration::from_secs(300));
        assert_eq!(onvif[0].message_limit, 32);
    }

    #[test]
    fn url_ports_are_checked_whole() {
        for ok in ["host", "host:80", "192.0.2.1:65535", "[::1]", "[::1]:8080"] {
            assert_eq!(check_url_port(ok), Ok(()), "{ok}");
        }
        for bad in [
            "host:38001x",
            "host:",
            "host:0",
            "host:65536",
            "[::1]:x",
            "host:+80",
            "a@host",
        ] {
            assert!(check_url_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn onvif_mistakes_name_their_key() {
        let with = |from: &str, to: &str| with_cameras().replacen(from, to, 1);
        let cases = [
            (
                with("http://192.0.2.10:80", "https://192.0.2.10"),
                "onvif[0].url",
            ),
            (with("http://192.0.2.10:80", "not a url"), "onvif[0].url"),
            (
                with("http://192.0.2.10:80", "http://host:38001x"),
                "onvif[0].url",
            ),
            (
                with("http://192.0.2.10:80", "http://host:99999"),
                "onvif[0].url",
            ),
            (
                with("http://192.0.2.10:80", "http://host:0"),
                "onvif[0].url",
            ),
            (
                with("http://192.0.2.10:80", "http://[::1]:8o"),
                "onvif[0].url",
            ),
            (
                with("http://192.0.2.10:80", "http://u:p@host:80"),
                "onvif[0].url",
            ),
            (
                with("password = \"change-me\"", "password = \"\""),
                "onvif[0].password",
            ),
            (
                with("subscription_secs = 300", "subscription_secs = 20"),
                "onvif[0].subscription_secs",
            ),
            (
                with("pull_timeout_secs = 10", "pull_timeout_secs = 0"),
                "onvif[0].pull_timeout_secs",
            ),
            (
                with("message_limit = 32", "message_limit = 0"),
                "onvif[0].message_limit",
            ),
            (
                with("backoff_max_secs = 60", "backoff_max_secs = 0"),
                "onvif[0].backoff_max_secs",
            ),
            (
                with("backoff_max_secs = 60", "backoff_max = 60"),
                "unknown field `backoff_max`",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(expected), "{expected}: {err}");
        }
        let twice = with_cameras()
            + "\n[[onvif]]\ncamera = \"cam-1\"\nurl = \"http://h/x\"\nusername = \"a\"\npassword = \"b\"\n";
        let err = parse(&twice).unwrap_err().to_string();
        assert!(
            err.contains("onvif[1].camera") && err.contains("twice"),
            "{err}"
        );
        // The password is not printed in debug output.
        let config = parse(&with_cameras()).unwrap();
        assert!(!format!("{:?}", config.onvif).contains("change-me"));
    }

    #[test]
    fn camera_mistakes_name_their_key() {
        let with = |from: &str, to: &str| with_cameras().replacen(from, to, 1);
        let cases = [
            (
                with("camera = \"cam-2\"", "camera = \"Cam 2\""),
                "http.cameras[0].camera",
            ),
            (
                with("change-me-to-a-long-random-token", "short"),
                "http.cameras[0].token",
            ),
            (
                with("max_body_bytes = 16384", "max_body_bytes = 10"),
                "http.max_body_bytes",
            ),
            (
                with("stale_secs = 300", "stale_secs = 0"),
                "camera.stale_secs",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(expected), "{expected}: {err}");
        }
        let twice = with_cameras()
            + "\n[[http.cameras]]\ncamera = \"cam-2\"\ntoken = \"another-long-token-value\"\n";
        let err = parse(&twice).unwrap_err().to_string();
        assert!(err.contains("configured twice"), "{err}");
    }

    #[test]
    fn mistakes_name_their_key() {
        let with = |from: &str, to: &str| DEFAULT_CONFIG.replacen(from, to, 1);
        let cases = [
            (
                with("max_frame_bytes", "max_frame_byte"),
                "unknown field `max_frame_byte`",
            ),
            (
                with("account = \"1234\"", "account = \"12\""),
                "dc09.accounts[0].account",
            ),
            (
                with(
                    "# key = \"000102030405060708090a0b0c0d0e0f\"",
                    "key = \"0011\"",
                ),
                "dc09.accounts[0].key",
            ),
            (
                with("broker-2.example:8883", "broker-2.example"),
                "mqtt.servers[1]",
            ),
            (
                with("broker-2.example:8883", "broker-2.example:0"),
                "mqtt.servers[1]",
            ),
            (
                with("broker-2.example:8883", "broker-1.example:8883"),
                "mqtt.servers[1]: \"broker-1.example:8883\" is listed twice",
            ),
            (
                with(
                    "servers = [\"broker-1.example:8883\", \"broker-2.example:8883\"]",
                    "servers = []",
                ),
                "mqtt.servers: must list",
            ),
            (
                with(
                    "servers = [\"broker-1.example:8883\", \"broker-2.example:8883\"]",
                    "keep_alive = 1",
                )
                .replace("keep_alive = 1", ""),
                "mqtt.servers: missing",
            ),
            (
                with(
                    "servers = [\"broker-1.example:8883\", \"broker-2.example:8883\"]",
                    "servers = [\"b:1\"]\nserver = \"b:1\"",
                ),
                "mqtt.servers: give either",
            ),
            (
                with(
                    "servers = [\"broker-1.example:8883\", \"broker-2.example:8883\"]",
                    "server = \"broker.example\"",
                ),
                "mqtt.server:",
            ),
            (with("0.0.0.0:7000", "nowhere"), "listen"),
        ];
        for (text, expected) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(expected), "{expected}: {err}");
        }
        let twice = DEFAULT_CONFIG.to_owned() + "\n[[dc09.accounts]]\naccount = \"1234\"\n";
        let err = parse(&twice).unwrap_err().to_string();
        assert!(err.contains("configured twice"), "{err}");
    }

    #[test]
    fn listener_limits_and_timestamp_requirement_are_read_and_checked() {
        let config = parse(DEFAULT_CONFIG).unwrap();
        let limits = config.receiver_limits();
        assert_eq!(limits.max_connections_per_source, 16);
        assert_eq!(limits.preauth_timeout, Duration::from_secs(5));
        assert!(!config.accounts().unwrap()[0].require_timestamp);

        let with = |from: &str, to: &str| DEFAULT_CONFIG.replacen(from, to, 1);
        let strict = parse(&with(
            "require_timestamp = false",
            "require_timestamp = true",
        ))
        .unwrap();
        assert!(strict.accounts().unwrap()[0].require_timestamp);
        let cases = [
            (
                with(
                    "max_connections_per_source = 16",
                    "max_connections_per_source = 999",
                ),
                "dc09.max_connections_per_source",
            ),
            (
                with("preauth_timeout_secs = 5", "preauth_timeout_secs = 0"),
                "dc09.preauth_timeout_secs",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(expected), "{expected}: {err}");
        }
    }
}
