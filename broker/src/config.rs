//! The broker's config file (TOML): `listen`, `[tls]` and `[limits]`.
//!
//! Loading reads the file, makes relative paths relative to the file's
//! folder, checks every limit and loads the TLS material, so that a bad
//! config is reported with one clear message before any socket is bound.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use vigil_pki::{Role, TlsConfig, TlsError, tls::TlsMaterial};

/// Default public listener (DESIGN.md).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8883";

/// Largest remaining length MQTT can encode (256 MiB - 1).
const MQTT_MAX_REMAINING: u64 = 268_435_455;

/// The whole config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Public mTLS MQTT listener.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    pub tls: TlsConfig,
    #[serde(default)]
    pub limits: Limits,
    /// `[metrics]`: the Prometheus endpoint; off when absent.
    #[serde(default)]
    pub metrics: Option<vigil_telemetry::MetricsConfig>,
}

/// `[limits]`: what one peer, or many, may cost the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open client connections, all states included (one file descriptor
    /// each, against the process's open-file limit). At the cap, the oldest
    /// connection that has not yet finished its handshake and CONNECT is
    /// closed to make room; when every one has, the newcomer is closed.
    pub max_connections: usize,
    /// Open connections from one IP address, at most `max_connections`. At
    /// this cap, the address's own oldest unauthenticated connection makes
    /// room; when all of them are authenticated, the newcomer is closed.
    /// Raise it when many posts reach the broker through one NAT.
    pub max_connections_per_source: usize,
    /// TLS handshakes doing their cryptography at once (a handshake takes
    /// a slot once its ClientHello arrived). A socket waiting for a slot
    /// spends its own handshake time waiting.
    pub max_handshakes: usize,
    /// Time from accept to a finished TLS handshake (waiting for a slot
    /// included), in milliseconds.
    pub handshake_timeout_ms: u64,
    /// Time from the finished handshake to a complete CONNECT packet, in
    /// milliseconds.
    pub connect_timeout_ms: u64,
    /// Largest PUBLISH payload accepted, in bytes.
    pub max_payload_bytes: usize,
    /// On SIGTERM/SIGINT, how long open connections get to close, in
    /// milliseconds.
    pub shutdown_grace_ms: u64,
    /// Publishes per second one `post` identity may send, on average; 0
    /// turns the budget off. Over budget, the broker stops reading that
    /// post's connection until the budget refills (nothing is dropped: the
    /// post's own queue waits).
    pub post_publish_rate: u32,
    /// Publishes a post may send at once above its rate.
    pub post_publish_burst: u32,
    /// Bytes per second one post may send in publishes, on average; 0 turns
    /// this budget off.
    pub post_byte_rate: u64,
    /// Bytes a post may send at once above its byte rate.
    pub post_byte_burst: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_connections_per_source: 256,
            max_handshakes: 256,
            handshake_timeout_ms: 10_000,
            connect_timeout_ms: 10_000,
            max_payload_bytes: 256 * 1024,
            shutdown_grace_ms: 5_000,
            post_publish_rate: 500,
            post_publish_burst: 5_000,
            post_byte_rate: 2 * 1024 * 1024,
            post_byte_burst: 8 * 1024 * 1024,
        }
    }
}

impl Limits {
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// The public listener's caps and deadlines for `vigil-net`. Before a
    /// client counts as authenticated it has `handshake_timeout_ms` for its
    /// TLS handshake, then `connect_timeout_ms` for a CONNECT the ACL
    /// accepts; the listener's own pre-authentication deadline is their sum
    /// plus [`PREAUTH_MARGIN`], a backstop the broker's own timeouts (each
    /// counted under its reason) always beat. An authenticated client has
    /// no idle timeout here: MQTT keep-alive is the session's business.
    pub fn listener(&self) -> vigil_net::Limits {
        vigil_net::Limits {
            max_connections: self.max_connections,
            max_per_source: self.max_connections_per_source,
            preauth_deadline: self.handshake_timeout() + self.connect_timeout() + PREAUTH_MARGIN,
            idle_timeout: None,
            grace: self.shutdown_grace(),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &'static str, reason: String| Err(ConfigError::Limit { key, reason });
        if self.max_connections == 0 {
            return bad("max_connections", "must be at least 1".into());
        }
        if !(1..=self.max_connections).contains(&self.max_connections_per_source) {
            return bad(
                "max_connections_per_source",
                format!(
                    "must be between 1 and max_connections ({})",
                    self.max_connections
                ),
            );
        }
        if self.max_handshakes == 0 || self.max_handshakes > self.max_connections {
            return bad(
                "max_handshakes",
                format!(
                    "must be between 1 and max_connections ({})",
                    self.max_connections
                ),
            );
        }
        for (key, ms) in [
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
        ] {
            if !(1..=600_000).contains(&ms) {
                return bad(key, "must be between 1 and 600000 (10 minutes)".into());
            }
        }
        if self.shutdown_grace_ms > 600_000 {
            return bad(
                "shutdown_grace_ms",
                "must be at most 600000 (10 minutes)".into(),
            );
        }
        // Leave room under the MQTT maximum for the topic and properties.
        let max_payload = MQTT_MAX_REMAINING - FRAME_OVERHEAD as u64;
        if self.max_payload_bytes == 0 || self.max_payload_bytes as u64 > max_payload {
            return bad(
                "max_payload_bytes",
                format!("must be between 1 and {max_payload}"),
            );
        }
        if self.post_publish_rate > 0 && self.post_publish_burst == 0 {
            return bad("post_publish_burst", "must be at least 1".into());
        }
        if self.post_byte_rate > 0 && (self.post_byte_burst as usize) < self.frame_cap() {
            return bad(
                "post_byte_burst",
                format!(
                    "must hold the largest packet ({} bytes: max_payload_bytes plus headers)",
                    self.frame_cap()
                ),
            );
        }
        Ok(())
    }

    /// Largest packet the front buffers: a maximal payload plus room for the
    /// longest topic, a packet id and properties. A packet announcing more
    /// is refused from its fixed header alone.
    pub(crate) fn frame_cap(&self) -> usize {
        self.max_payload_bytes + FRAME_OVERHEAD
    }
}

/// Added to the handshake and CONNECT timeouts to make the listener's
/// pre-authentication deadline (see [`Limits::listener`]).
pub const PREAUTH_MARGIN: Duration = Duration::from_secs(1);

/// Room for everything in a PUBLISH but the payload: a topic of up to
/// 65535 bytes with its length, a packet id, and up to 64 KiB of v5
/// properties.
const FRAME_OVERHEAD: usize = 2 + 65_535 + 2 + 65_536;

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN.parse().expect("valid default address")
}

/// Why a config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// One line: the TOML error's own rendering spans several.
    #[error("{path}:{line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("limits.{key}: {reason}")]
    Limit { key: &'static str, reason: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("tls.cert: the broker needs a `broker` certificate, this one is for {0}")]
    NotBroker(String),
}

impl BrokerConfig {
    /// Reads, resolves and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config: Self = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            line: e
                .span()
                .map_or(0, |span| text[..span.start].matches('\n').count() + 1),
            message: e.message().replace('\n', " "),
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        config.tls.resolve_relative_to(base);
        config.validate()?;
        Ok(config)
    }

    /// Checks the limits and loads the TLS material (files readable, key
    /// matches certificate, certificate is a broker's).
    pub fn validate(&self) -> Result<TlsMaterial, ConfigError> {
        self.limits.validate()?;
        let material = self.tls.load()?;
        let own = material.own_peer();
        if own.role != Role::Broker {
            return Err(ConfigError::NotBroker(own.to_string()));
        }
        Ok(material)
    }
}

/// The commented default config printed by `vigil config default broker`.
pub const DEFAULT_CONFIG: &str = r#"# Vigil broker configuration (`vigil broker --config FILE`).
# Relative paths are relative to this file's folder.

# Public mTLS MQTT listener (MQTT 3.1.1 and 5).
listen = "0.0.0.0:8883"

[tls]
# Region CA: every client certificate must be issued by it.
ca = "pki/ca.pem"
# This broker's certificate (role `broker`, with the DNS names / IP
# addresses clients dial as SANs) and its key.
cert = "pki/broker.pem"
key = "pki/broker.key"
# Revocation list; revoked client certificates are refused at the handshake.
# Looked at every 10 s: a new file applies to new connections without a
# restart (replace it atomically: write elsewhere, then mv).
crl = "pki/crl.pem"

[limits]
# Open client connections (one open file each: mind ulimit -n). At the cap
# the oldest connection still in its TLS handshake or before its CONNECT
# makes room for the newcomer; connected clients are never pushed out.
max_connections = 1024
# Open connections from one IP address, at most max_connections; at the cap
# that address's own oldest unauthenticated connection makes room. Raise it
# when many posts come through one NAT.
max_connections_per_source = 256
# TLS handshakes past their ClientHello at once; more wait (within their
# timeout). A socket that has not sent a whole ClientHello takes no slot.
max_handshakes = 256
# From accept to finished TLS handshake, slot wait included (ms).
handshake_timeout_ms = 10000
# From finished handshake to a complete CONNECT packet (ms).
connect_timeout_ms = 10000
# Largest PUBLISH payload (bytes). Larger ones close the connection
# (MQTT 3.1.1) or get DISCONNECT 0x95 "packet too large" (MQTT 5).
max_payload_bytes = 262144
# On SIGTERM/SIGINT, time given to open connections to close (ms).
shutdown_grace_ms = 5000
# What one post may send, on average per second and at once above that.
# Over budget its connection is not read until the budget refills: nothing
# is dropped, the gateway's outbox waits. 0 turns a rate off.
post_publish_rate = 500
post_publish_burst = 5000
post_byte_rate = 2097152
post_byte_burst = 8388608

# Prometheus endpoint (GET /metrics), off unless this table is present.
# Keep it on a management network or loopback: it tells how busy this is.
# [metrics]
# listen = "127.0.0.1:9464"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_parses_to_the_defaults() {
        let config: BrokerConfig = toml::from_str(DEFAULT_CONFIG).unwrap();
        assert_eq!(config.listen, default_listen());
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.tls.crl.as_deref(), Some(Path::new("pki/crl.pem")));
        config.limits.validate().unwrap();
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let config: BrokerConfig =
            toml::from_str("[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n").unwrap();
        assert_eq!(config.listen, default_listen());
        assert_eq!(config.limits, Limits::default());
    }

    #[test]
    fn unknown_keys_are_refused() {
        for text in [
            "lisen = \"1.2.3.4:1\"\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n",
            "[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n[limits]\nmax_conections = 3\n",
        ] {
            let err = toml::from_str::<BrokerConfig>(text).unwrap_err();
            assert!(err.to_string().contains("unknown field"), "{err}");
        }
    }

    #[test]
    fn limits_are_checked() {
        let ok = Limits::default();
        let cases: [(&str, Limits); 10] = [
            (
                "max_connections",
                Limits {
                    max_connections: 0,
                    ..ok.clone()
                },
            ),
            (
                "max_connections_per_source",
                Limits {
                    max_connections_per_source: 0,
                    ..ok.clone()
                },
            ),
            (
                "max_connections_per_source",
                Limits {
                    max_connections: 100,
                    max_handshakes: 100,
                    ..ok.clone()
                },
            ),
            (
                "max_handshakes",
                Limits {
                    max_handshakes: 0,
                    ..ok.clone()
                },
            ),
            (
                "max_handshakes",
                Limits {
                    max_handshakes: ok.max_connections + 1,
                    ..ok.clone()
                },
            ),
            (
                "handshake_timeout_ms",
                Limits {
                    handshake_timeout_ms: 0,
                    ..ok.clone()
                },
            ),
            (
                "max_payload_bytes",
                Limits {
                    max_payload_bytes: 0,
                    ..ok.clone()
                },
            ),
            (
                "max_payload_bytes",
                Limits {
                    max_payload_bytes: 300_000_000,
                    ..ok.clone()
                },
            ),
            (
                "post_publish_burst",
                Limits {
                    post_publish_burst: 0,
                    ..ok.clone()
                },
            ),
            (
                "post_byte_burst",
                Limits {
                    post_byte_burst: 1024,
                    ..ok
                },
            ),
        ];
        for (key, limits) in cases {
            match limits.validate() {
                Err(ConfigError::Limit { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key}: {other:?}"),
            }
        }
    }

    #[test]
    fn listener_limits_come_from_the_config() {
        let limits = Limits {
            max_connections: 64,
            max_connections_per_source: 8,
            max_handshakes: 16,
            handshake_timeout_ms: 2_000,
            connect_timeout_ms: 3_000,
            shutdown_grace_ms: 700,
            ..Limits::default()
        };
        limits.validate().unwrap();
        let net = limits.listener();
        net.validate().unwrap();
        assert_eq!((net.max_connections, net.max_per_source), (64, 8));
        assert_eq!(
            net.preauth_deadline,
            Duration::from_millis(5_000) + PREAUTH_MARGIN
        );
        assert_eq!(net.idle_timeout, None);
        assert_eq!(net.grace, Duration::from_millis(700));
    }

    #[test]
    fn parse_errors_fit_on_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:1\"\nport = 1\n").unwrap();
        let err = BrokerConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("broker.toml:2: unknown field `port`"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    #[test]
    fn missing_file_is_named() {
        let err = BrokerConfig::load(Path::new("no/such/broker.toml")).unwrap_err();
        assert!(
            err.to_string().starts_with("no/such/broker.toml: "),
            "{err}"
        );
    }
}
