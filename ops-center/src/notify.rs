//! Outbound webhook notifications (issue #17): escalations and chosen
//! incident changes go out as signed JSON over HTTP(S), retried with
//! backoff from a durable queue in the store.
//!
//! - [`NotifyConfig`]: the `[notify]` table and its `[[notify.webhook]]`
//!   entries; [`Routes::load`] reads the secrets and CA files at start.
//! - [`Routes::enqueue`]: the writer calls it with each group's
//!   [`Changes`]; the notifications it adds are committed in the same
//!   transaction as the changes that caused them.
//! - [`run`]: the sender, on the leading replica only. Per webhook it reads
//!   what is due (at most `concurrency` at once), POSTs each with a
//!   timeout, and hands the outcome to the writer as a [`Job::Notify`];
//!   only after that commit does it consider the row again. A slow or dead
//!   endpoint holds only its own slots; what waits stays in the table.
//!
//! Delivery is at least once: a crash between a receiver's 2xx and the
//! commit of "delivered" sends it again, with the same delivery id
//! (`X-Vigil-Delivery`, and `delivery` in the body), which receivers use
//! to deduplicate.
//!
//! Signing: `X-Vigil-Signature: sha256=HEX`, the HMAC-SHA256 with the
//! webhook's secret of `TIMESTAMP.BODY`, where TIMESTAMP is the
//! `X-Vigil-Timestamp` header (Unix seconds at the attempt) and BODY the
//! exact bytes of the request body.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, atomic::Ordering::Relaxed},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use vigil_proto::v1::{AuditAction, Incident, PostRecord, Priority};

use crate::{
    engine::WorkflowError,
    metrics::Metrics,
    store::{Changes, NewNotification, Notification, NotifyState, NotifyUpdate, Readers},
    writer::Job,
};

/// The `[notify]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Delivered notifications are deleted this long after delivery.
    #[serde(default = "default_keep_delivered_hours")]
    pub keep_delivered_hours: u64,
    /// `[[notify.webhook]]`: where notifications go. None: nothing is sent
    /// (and nothing is queued).
    #[serde(default, rename = "webhook", skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<WebhookConfig>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            keep_delivered_hours: default_keep_delivered_hours(),
            webhooks: Vec::new(),
        }
    }
}

fn default_keep_delivered_hours() -> u64 {
    168
}

/// Body formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Vigil's own JSON (see [`vigil_body`]).
    #[default]
    Vigil,
    /// A PagerDuty Events API v2 event (see [`pagerduty_body`]).
    Pagerduty,
}

/// One `[[notify.webhook]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Names the webhook in the queue, the logs and `vigil notify list`.
    pub name: String,
    /// `http://` or `https://` URL the notifications are POSTed to.
    pub url: String,
    /// File holding the HMAC secret (surrounding whitespace ignored).
    pub secret_file: PathBuf,
    /// HTTPS: the CA certificates (PEM) the server's must chain to;
    /// absent: the system's trusted roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    #[serde(default)]
    pub format: Format,
    /// `pagerduty`: file holding the integration's routing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_key_file: Option<PathBuf>,
    /// Which changes go out: `escalated` (by a person), `auto_escalated`
    /// (the acknowledgment deadline passed), `opened`, `resolved`.
    #[serde(default = "default_events")]
    pub events: Vec<String>,
    /// `opened`: only incidents of these priorities (1-4); empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub priorities: Vec<u32>,
    /// `opened`: only incidents of these categories (the engine's names,
    /// e.g. `burglary`); empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    /// One attempt (connect, TLS, request, answer) at most this long.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Attempts in flight at once for this webhook.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Given up after this many attempts...
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// ...or once the notification is this old.
    #[serde(default = "default_max_age_secs")]
    pub max_age_secs: u64,
    /// First wait before trying again, doubling (with jitter) up to
    /// `retry_max_secs`.
    #[serde(default = "default_retry_initial_ms")]
    pub retry_initial_ms: u64,
    #[serde(default = "default_retry_max_secs")]
    pub retry_max_secs: u64,
}

fn default_events() -> Vec<String> {
    vec!["escalated".into(), "auto_escalated".into()]
}
fn default_timeout_secs() -> u64 {
    10
}
fn default_concurrency() -> usize {
    4
}
fn default_max_attempts() -> u32 {
    20
}
fn default_max_age_secs() -> u64 {
    24 * 3600
}
fn default_retry_initial_ms() -> u64 {
    1000
}
fn default_retry_max_secs() -> u64 {
    600
}

/// Every event name a webhook may select.
pub const EVENTS: [&str; 4] = ["escalated", "auto_escalated", "opened", "resolved"];

impl NotifyConfig {
    /// Makes relative paths relative to `base`.
    pub fn resolve_relative_to(&mut self, base: &Path) {
        for w in &mut self.webhooks {
            for p in [
                Some(&mut w.secret_file),
                w.ca.as_mut(),
                w.routing_key_file.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
    }

    /// Checks values; returns the offending key and why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !(1..=24 * 365).contains(&self.keep_delivered_hours) {
            return Err((
                "notify.keep_delivered_hours".into(),
                "must be between 1 and 8760".into(),
            ));
        }
        let mut names = HashSet::new();
        for (i, w) in self.webhooks.iter().enumerate() {
            let key = |k: &str| format!("notify.webhook[{i}].{k}");
            let bad = |k: &str, why: &str| Err((key(k), why.to_owned()));
            if w.name.is_empty()
                || w.name.len() > 64
                || !w
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return bad("name", "must be 1-64 letters, digits, '-', '_' or '.'");
            }
            if !names.insert(&w.name) {
                return bad("name", "two webhooks have this name");
            }
            if let Err(why) = Target::parse(&w.url) {
                return Err((key("url"), why));
            }
            if w.ca.is_some() && !w.url.starts_with("https://") {
                return bad("ca", "only for an https:// url");
            }
            match (w.format, &w.routing_key_file) {
                (Format::Pagerduty, None) => {
                    return bad("routing_key_file", "required by format = \"pagerduty\"");
                }
                (Format::Vigil, Some(_)) => {
                    return bad("routing_key_file", "only for format = \"pagerduty\"");
                }
                _ => {}
            }
            if w.events.is_empty() {
                return bad("events", "must name at least one change");
            }
            for e in &w.events {
                if !EVENTS.contains(&e.as_str()) {
                    return Err((
                        key("events"),
                        format!("unknown change {e:?}; one of {}", EVENTS.join(", ")),
                    ));
                }
            }
            if let Some(p) = w.priorities.iter().find(|p| !(1..=4).contains(*p)) {
                return Err((key("priorities"), format!("{p}: priorities are 1 to 4")));
            }
            for c in &w.categories {
                if crate::engine::category_from_name(c).is_none() {
                    return Err((key("categories"), format!("unknown category {c:?}")));
                }
            }
            if !(1..=300).contains(&w.timeout_secs) {
                return bad("timeout_secs", "must be between 1 and 300");
            }
            if !(1..=64).contains(&w.concurrency) {
                return bad("concurrency", "must be between 1 and 64");
            }
            if !(1..=1000).contains(&w.max_attempts) {
                return bad("max_attempts", "must be between 1 and 1000");
            }
            if !(60..=30 * 24 * 3600).contains(&w.max_age_secs) {
                return bad("max_age_secs", "must be between 60 and 2592000 (30 days)");
            }
            if !(10..=3_600_000).contains(&w.retry_initial_ms) {
                return bad("retry_initial_ms", "must be between 10 and 3600000");
            }
            if !(1..=24 * 3600).contains(&w.retry_max_secs)
                || w.retry_max_secs * 1000 < w.retry_initial_ms
            {
                return bad(
                    "retry_max_secs",
                    "must be between 1 and 86400, and not below retry_initial_ms",
                );
            }
        }
        Ok(())
    }
}

/// Where one webhook's requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    https: bool,
    host: String,
    port: u16,
    /// Path and query, at least `/`.
    path: String,
    /// The `Host` header.
    authority: String,
}

impl Target {
    fn parse(url: &str) -> Result<Self, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("not a URL ({e})"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("must start with http:// or https://".into()),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| "has no host".to_owned())?
            .clone();
        if authority.as_str().contains('@') {
            return Err("must not carry a user name or password".into());
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err("has no host".into());
        }
        Ok(Self {
            https,
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            path: uri
                .path_and_query()
                .map_or("/".to_owned(), |p| p.as_str().to_owned()),
            authority: authority.as_str().to_owned(),
        })
    }
}

/// One webhook, ready to send: its configuration with the secrets read.
pub struct Webhook {
    pub config: WebhookConfig,
    target: Target,
    secret: ring::hmac::Key,
    routing_key: Option<String>,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl std::fmt::Debug for Webhook {
    // Never the secret or the routing key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("name", &self.config.name)
            .field("url", &self.config.url)
            .finish_non_exhaustive()
    }
}

/// Every configured webhook, and which changes each takes.
#[derive(Debug, Default)]
pub struct Routes {
    pub webhooks: Vec<Arc<Webhook>>,
    /// `[notify] keep_delivered_hours`.
    pub keep_delivered: Duration,
}

impl Routes {
    /// No webhooks: nothing is queued (delivered rows of earlier ones are
    /// still pruned after the default time).
    pub fn none() -> Arc<Self> {
        Arc::new(Self {
            webhooks: Vec::new(),
            keep_delivered: Duration::from_secs(default_keep_delivered_hours() * 3600),
        })
    }

    /// Reads each webhook's secret, routing key and CA. Errors name the key
    /// and the file, never a secret.
    pub fn load(config: &NotifyConfig) -> Result<Arc<Self>, (String, String)> {
        let mut webhooks = Vec::new();
        for (i, w) in config.webhooks.iter().enumerate() {
            let key = |k: &str| format!("notify.webhook[{i}].{k}");
            let target = Target::parse(&w.url).map_err(|e| (key("url"), e))?;
            let secret = read_secret(&w.secret_file).map_err(|e| (key("secret_file"), e))?;
            let routing_key = match &w.routing_key_file {
                Some(path) => Some(
                    String::from_utf8(read_secret(path).map_err(|e| (key("routing_key_file"), e))?)
                        .map_err(|_| {
                            (
                                key("routing_key_file"),
                                format!("{}: not UTF-8 text", path.display()),
                            )
                        })?,
                ),
                None => None,
            };
            let tls = if target.https {
                Some(tls_connector(w.ca.as_deref()).map_err(|e| (key("ca"), e))?)
            } else {
                None
            };
            webhooks.push(Arc::new(Webhook {
                config: w.clone(),
                target,
                secret: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
                routing_key,
                tls,
            }));
        }
        Ok(Arc::new(Self {
            webhooks,
            keep_delivered: Duration::from_secs(config.keep_delivered_hours * 3600),
        }))
    }

    pub fn is_empty(&self) -> bool {
        self.webhooks.is_empty()
    }

    fn webhook(&self, name: &str) -> Option<&Arc<Webhook>> {
        self.webhooks.iter().find(|w| w.config.name == name)
    }

    /// Adds to `changes` one notification per webhook that takes each
    /// incident change in it (from its audit entries): committed with them.
    pub fn enqueue(&self, changes: &mut Changes) {
        if self.webhooks.is_empty() {
            return;
        }
        let mut out = Vec::new();
        for entry in &changes.audit {
            let event = match AuditAction::try_from(entry.action) {
                Ok(AuditAction::Escalated) => "escalated",
                Ok(AuditAction::AutoEscalated) => "auto_escalated",
                Ok(AuditAction::Opened) => "opened",
                Ok(AuditAction::Resolved) => "resolved",
                _ => continue,
            };
            let Some(incident) = changes.incident(&entry.incident_id) else {
                continue;
            };
            let at = entry
                .at
                .and_then(|t| SystemTime::try_from(t).ok())
                .unwrap_or_else(SystemTime::now);
            for w in &self.webhooks {
                if w.takes(event, incident) {
                    out.push(NewNotification {
                        delivery: delivery_id(),
                        webhook: w.config.name.clone(),
                        event: event.to_owned(),
                        incident: incident.clone(),
                        at,
                    });
                }
            }
        }
        changes.notifications.extend(out);
    }
}

impl Webhook {
    /// Whether this webhook takes change `event` of `incident`.
    fn takes(&self, event: &str, incident: &Incident) -> bool {
        let c = &self.config;
        if !c.events.iter().any(|e| e == event) {
            return false;
        }
        if event != "opened" {
            return true;
        }
        (c.priorities.is_empty() || c.priorities.contains(&(incident.priority as u32)))
            && (c.categories.is_empty()
                || c.categories.iter().any(|n| {
                    crate::engine::category_from_name(n).map(|c| c as i32)
                        == Some(incident.category)
                }))
    }
}

/// A secret file's bytes, without surrounding whitespace; refused empty.
fn read_secret(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let trimmed = bytes.trim_ascii();
    if trimmed.is_empty() {
        return Err(format!("{}: is empty", path.display()));
    }
    Ok(trimmed.to_vec())
}

/// A TLS connector trusting `ca` (PEM), or the system's roots.
fn tls_connector(ca: Option<&Path>) -> Result<tokio_rustls::TlsConnector, String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(ca) => {
            let certs =
                CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("{}: no certificate in it", ca.display()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(
                    "no system root certificates found; give `ca` for an https:// url".into(),
                );
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// 128 random bits as hex: a delivery id.
fn delivery_id() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random source works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A number in `0..n` (jitter).
fn random_below(n: u64) -> u64 {
    use ring::rand::SecureRandom;
    if n == 0 {
        return 0;
    }
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    u64::from_le_bytes(bytes) % n
}

fn rfc3339(t: SystemTime) -> String {
    let ts = prost_types::Timestamp::from(t);
    vigil_proto::json::to_json(&ts_holder(ts), "AuditEntry")["at"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_default()
}

/// An audit entry carrying only a time: the one proto3 JSON writer then
/// formats it as the rest of the body's times.
fn ts_holder(ts: prost_types::Timestamp) -> vigil_proto::v1::AuditEntry {
    vigil_proto::v1::AuditEntry {
        at: Some(ts),
        ..Default::default()
    }
}

/// The `vigil` body: the change, the incident as proto3 JSON, the post's
/// name if its record says, when, and the delivery id.
pub fn vigil_body(n: &Notification, post: Option<&PostRecord>) -> serde_json::Value {
    serde_json::json!({
        "type": format!("incident.{}", n.event),
        "delivery": n.delivery,
        "time": rfc3339(n.at),
        "incident": vigil_proto::json::to_json(&n.incident, "Incident"),
        "post_id": n.incident.post_id,
        "post_name": post.map(|p| p.name.as_str()).filter(|s| !s.is_empty()),
    })
}

/// A PagerDuty Events API v2 event: `trigger` (opened, escalated) or
/// `resolve`, deduplicated by incident id.
pub fn pagerduty_body(
    n: &Notification,
    post: Option<&PostRecord>,
    routing_key: &str,
) -> serde_json::Value {
    let inc = &n.incident;
    if n.event == "resolved" {
        return serde_json::json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": inc.id,
        });
    }
    let severity = match inc.priority() {
        Priority::P1 => "critical",
        Priority::P2 => "error",
        Priority::P3 => "warning",
        _ => "info",
    };
    let place = post
        .map(|p| p.name.as_str())
        .filter(|s| !s.is_empty())
        .unwrap_or(&inc.post_id);
    let mut summary = format!("{} P{} {} at {}", inc.id, inc.priority, inc.title, place);
    if inc.escalation_level > 0 {
        summary.push_str(&format!(" (escalation level {})", inc.escalation_level));
    }
    if summary.len() > 1024 {
        let mut end = 1024;
        while !summary.is_char_boundary(end) {
            end -= 1;
        }
        summary.truncate(end);
    }
    serde_json::json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": inc.id,
        "payload": {
            "summary": summary,
            "source": inc.post_id,
            "severity": severity,
            "timestamp": rfc3339(n.at),
            "component": inc.subject,
            "group": inc.post_id,
            "class": crate::engine::category_name(inc.category()),
            "custom_details": {
                "event": n.event,
                "delivery": n.delivery,
                "escalation_level": inc.escalation_level,
                "state": vigil_proto::json::to_json(inc, "Incident")["state"],
                "post_name": post.map(|p| p.name.as_str()),
            },
        },
        "client": "vigil",
    })
}

/// `sha256=HEX` of `timestamp.body` with `key`.
pub fn signature(key: &ring::hmac::Key, timestamp: &str, body: &[u8]) -> String {
    let mut ctx = ring::hmac::Context::with_key(key);
    ctx.update(timestamp.as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Delivered,
    /// Worth trying again: a 5xx, 408, 429, timeout or connection error.
    Retry(String),
    /// A refusal that will not change: any other 4xx (or a 3xx: redirects
    /// are not followed).
    Refused(String),
}

/// POSTs `body` to `w` once, within its timeout.
async fn attempt(w: &Webhook, n: &Notification, body: Bytes) -> Outcome {
    let timeout = Duration::from_secs(w.config.timeout_secs);
    match tokio::time::timeout(timeout, post(w, n, body)).await {
        Err(_) => Outcome::Retry(format!("no answer within {} s", w.config.timeout_secs)),
        Ok(Err(e)) => Outcome::Retry(e),
        Ok(Ok(status)) => {
            let line = format!(
                "HTTP {} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            )
            .trim_end()
            .to_owned();
            if status.is_success() {
                Outcome::Delivered
            } else if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
                Outcome::Retry(line)
            } else {
                Outcome::Refused(line)
            }
        }
    }
}

async fn post(w: &Webhook, n: &Notification, body: Bytes) -> Result<hyper::StatusCode, String> {
    use http_body_util::{BodyExt, Full};
    let t = &w.target;
    let tcp = tokio::net::TcpStream::connect((t.host.as_str(), t.port))
        .await
        .map_err(|e| format!("connect {}:{}: {e}", t.host, t.port))?;
    let _ = tcp.set_nodelay(true);
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        .to_string();
    let request = hyper::Request::post(&t.path)
        .header(hyper::header::HOST, &t.authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, "vigil-ops")
        .header("X-Vigil-Event", format!("incident.{}", n.event))
        .header("X-Vigil-Delivery", &n.delivery)
        .header("X-Vigil-Timestamp", &timestamp)
        .header("X-Vigil-Signature", signature(&w.secret, &timestamp, &body))
        .body(Full::new(body))
        .map_err(|e| format!("request: {e}"))?;
    async fn exchange<S>(
        io: S,
        request: hyper::Request<Full<Bytes>>,
    ) -> Result<hyper::StatusCode, String>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
                .await
                .map_err(|e| format!("http: {e}"))?;
        let driver = tokio::spawn(conn);
        let result = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("http: {e}"))?;
            let status = response.status();
            // Read (and drop) a bounded answer, so the exchange is whole.
            let _ = http_body_util::Limited::new(response.into_body(), 64 * 1024)
                .collect()
                .await;
            Ok(status)
        }
        .await;
        driver.abort();
        result
    }
    match &w.tls {
        Some(tls) => {
            let name = rustls::pki_types::ServerName::try_from(t.host.clone())
                .map_err(|e| format!("tls: {e}"))?;
            let stream = tls
                .connect(name, tcp)
                .await
                .map_err(|e| format!("tls: {e}"))?;
            exchange(stream, request).await
        }
        None => exchange(tcp, request).await,
    }
}

/// Wait before attempt `attempts + 1`: doubling from `retry_initial_ms` up
/// to `retry_max_secs`, then a random point in its upper half.
fn backoff(c: &WebhookConfig, attempts: u32) -> Duration {
    let max = c.retry_max_secs * 1000;
    let shift = attempts.saturating_sub(1).min(40);
    let full = c.retry_initial_ms.saturating_mul(1u64 << shift).min(max);
    Duration::from_millis(full / 2 + random_below(full / 2 + 1))
}

/// The row update for `outcome` of attempt number `n.attempts + 1`.
fn update_for(
    c: &WebhookConfig,
    n: &Notification,
    outcome: &Outcome,
    now: SystemTime,
) -> NotifyUpdate {
    let attempts = n.attempts.saturating_add(1);
    let (state, next_at, last_error) = match outcome {
        Outcome::Delivered => (NotifyState::Delivered, now, String::new()),
        Outcome::Refused(e) => (NotifyState::Failed, now, e.clone()),
        Outcome::Retry(e) => {
            let next = now + backoff(c, attempts);
            let age_limit = n.at + Duration::from_secs(c.max_age_secs);
            if attempts >= c.max_attempts {
                (
                    NotifyState::Failed,
                    now,
                    format!("{e} (gave up after {attempts} attempts)"),
                )
            } else if next > age_limit {
                (
                    NotifyState::Failed,
                    now,
                    format!("{e} (gave up: older than {} s)", c.max_age_secs),
                )
            } else {
                (NotifyState::Pending, next, e.clone())
            }
        }
    };
    NotifyUpdate {
        id: n.id,
        only_if: NotifyState::Pending,
        state,
        attempts,
        next_at,
        last_error,
    }
}

/// How often the sender looks for due notifications.
const POLL_EVERY: Duration = Duration::from_millis(250);

/// The sender: while `leading()`, delivers what is due, per webhook at most
/// `concurrency` at once, until `cancel`. Outcomes go to the writer through
/// `jobs`.
pub async fn run(
    routes: Arc<Routes>,
    readers: Arc<Readers>,
    jobs: mpsc::Sender<Job>,
    metrics: Arc<Metrics>,
    leading: impl Fn() -> bool + Send + 'static,
    cancel: CancellationToken,
) {
    if routes.is_empty() {
        return;
    }
    // Ids being attempted (or whose outcome is not committed yet).
    let in_flight: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let slots: HashMap<String, Arc<tokio::sync::Semaphore>> = routes
        .webhooks
        .iter()
        .map(|w| {
            (
                w.config.name.clone(),
                Arc::new(tokio::sync::Semaphore::new(w.config.concurrency)),
            )
        })
        .collect();
    let tasks = tokio_util::task::TaskTracker::new();
    let mut every = tokio::time::interval(POLL_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = every.tick() => {}
        }
        if !leading() {
            continue;
        }
        if let Ok(n) = readers
            .read(|s| s.notification_count(NotifyState::Pending))
            .await
        {
            metrics.notify_pending.store(n, Relaxed);
        }
        for w in &routes.webhooks {
            let slots = &slots[&w.config.name];
            let free = slots.available_permits();
            if free == 0 {
                continue;
            }
            let name = w.config.name.clone();
            let busy = in_flight.lock().unwrap_or_else(|p| p.into_inner()).len();
            let due = match readers
                .read(move |s| s.notifications_due(&name, SystemTime::now(), free + busy))
                .await
            {
                Ok(due) => due,
                Err(e) => {
                    tracing::warn!(webhook = %w.config.name, error = %e, "notify: cannot read the queue");
                    continue;
                }
            };
            for n in due {
                if !in_flight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(n.id)
                {
                    continue;
                }
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    in_flight
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&n.id);
                    break;
                };
                let (w, readers, jobs, metrics, in_flight, cancel) = (
                    w.clone(),
                    readers.clone(),
                    jobs.clone(),
                    metrics.clone(),
                    in_flight.clone(),
                    cancel.clone(),
                );
                tasks.spawn(async move {
                    let id = n.id;
                    // Stopping mid-attempt leaves the row pending: it is
                    // sent again after the restart (at least once).
                    tokio::select! {
                        () = deliver(&w, n, &readers, &jobs, &metrics) => {}
                        () = cancel.cancelled() => {}
                    }
                    in_flight
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                    drop(slot);
                });
            }
        }
    }
    tasks.close();
    tasks.wait().await;
}

/// One attempt of `n` and its outcome committed.
async fn deliver(
    w: &Webhook,
    n: Notification,
    readers: &Arc<Readers>,
    jobs: &mpsc::Sender<Job>,
    metrics: &Metrics,
) {
    let post_id = n.incident.post_id.clone();
    let post = readers
        .read(move |s| s.post_record(&post_id))
        .await
        .ok()
        .flatten();
    let body = match w.config.format {
        Format::Vigil => vigil_body(&n, post.as_ref()),
        Format::Pagerduty => {
            pagerduty_body(&n, post.as_ref(), w.routing_key.as_deref().unwrap_or(""))
        }
    };
    let body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
    let outcome = attempt(w, &n, body).await;
    let update = update_for(&w.config, &n, &outcome, SystemTime::now());
    let (reply, answer) = oneshot::channel();
    let job = Job::Notify {
        updates: vec![update.clone()],
        reply,
    };
    if jobs.send(job).await.is_err() {
        return;
    }
    match answer.await {
        Ok(Ok(())) => match update.state {
            NotifyState::Delivered => {
                metrics.notify_delivered.fetch_add(1, Relaxed);
                tracing::debug!(webhook = %w.config.name, id = n.id, "notification delivered");
            }
            NotifyState::Failed => {
                metrics.notify_failed.fetch_add(1, Relaxed);
                tracing::warn!(
                    webhook = %w.config.name,
                    id = n.id,
                    incident = %n.incident.id,
                    error = %update.last_error,
                    "notification failed; `vigil notify retry` sends it again"
                );
            }
            NotifyState::Pending => {
                metrics.notify_retried.fetch_add(1, Relaxed);
                tracing::debug!(webhook = %w.config.name, id = n.id, error = %update.last_error, "notification will be tried again");
            }
        },
        Ok(Err(e)) => {
            tracing::warn!(id = n.id, error = %e, "notify: the outcome was not stored; the attempt will be made again")
        }
        Err(_) => {}
    }
}

/// The writer's job that puts failed notification `n` back in the queue,
/// due now, with its attempts counted from zero again (only if it is still
/// failed when the writer gets to it).
pub fn retry_job(n: &Notification, reply: oneshot::Sender<Result<(), WorkflowError>>) -> Job {
    Job::Notify {
        updates: vec![NotifyUpdate {
            id: n.id,
            only_if: NotifyState::Failed,
            state: NotifyState::Pending,
            attempts: 0,
            next_at: SystemTime::now(),
            last_error: n.last_error.clone(),
        }],
        reply,
    }
}

/// Whether a webhook of this name is configured (listing shows rows of
/// webhooks since removed too).
pub fn configured(routes: &Routes, name: &str) -> bool {
    routes.webhook(name).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook(format: Format) -> WebhookConfig {
        WebhookConfig {
            name: "pager".into(),
            url: "https://hooks.example.net/v1/in?x=1".into(),
            secret_file: "secret".into(),
            ca: None,
            format,
            routing_key_file: None,
            events: default_events(),
            priorities: vec![],
            categories: vec![],
            timeout_secs: 10,
            concurrency: 4,
            max_attempts: 20,
            max_age_secs: 86400,
            retry_initial_ms: 1000,
            retry_max_secs: 600,
        }
    }

    #[test]
    fn urls_are_checked_and_split() {
        let t = Target::parse("https://hooks.example.net/v1/in?x=1").unwrap();
        assert_eq!(
            (t.https, t.host.as_str(), t.port, t.path.as_str()),
            (true, "hooks.example.net", 443, "/v1/in?x=1")
        );
        let t = Target::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!((t.https, t.port, t.path.as_str()), (false, 8080, "/"));
        let t = Target::parse("http://[::1]:9/x").unwrap();
        assert_eq!(t.host, "::1");
        for bad in [
            "ftp://x/",
            "hooks.example.net/x",
            "http://user:pw@x/",
            "",
            "https://",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_webhooks_name_the_key() {
        let check = |w: WebhookConfig| {
            NotifyConfig {
                webhooks: vec![w],
                ..Default::default()
            }
            .validate()
            .unwrap_err()
            .0
        };
        let mut w = webhook(Format::Vigil);
        w.url = "ftp://x".into();
        assert_eq!(check(w), "notify.webhook[0].url");
        let w = webhook(Format::Pagerduty);
        assert_eq!(check(w), "notify.webhook[0].routing_key_file");
        let mut w = webhook(Format::Vigil);
        w.events = vec!["escalated".into(), "acknowledged".into()];
        assert_eq!(check(w), "notify.webhook[0].events");
        let mut w = webhook(Format::Vigil);
        w.priorities = vec![5];
        assert_eq!(check(w), "notify.webhook[0].priorities");
        let mut w = webhook(Format::Vigil);
        w.categories = vec!["burglery".into()];
        assert_eq!(check(w), "notify.webhook[0].categories");
        let mut w = webhook(Format::Vigil);
        w.name = "a b".into();
        assert_eq!(check(w), "notify.webhook[0].name");
        let mut w = webhook(Format::Vigil);
        w.concurrency = 0;
        assert_eq!(check(w), "notify.webhook[0].concurrency");
        let two = NotifyConfig {
            webhooks: vec![webhook(Format::Vigil), webhook(Format::Vigil)],
            ..Default::default()
        };
        assert_eq!(two.validate().unwrap_err().0, "notify.webhook[1].name");
        assert!(
            NotifyConfig {
                webhooks: vec![webhook(Format::Vigil)],
                ..Default::default()
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn unreadable_or_empty_secrets_stop_the_start_naming_the_key_not_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = webhook(Format::Pagerduty);
        w.url = "http://127.0.0.1:9/in".into();
        w.secret_file = dir.path().join("missing.key");
        w.routing_key_file = Some(dir.path().join("pd.key"));
        let config = |w: &WebhookConfig| NotifyConfig {
            webhooks: vec![w.clone()],
            ..Default::default()
        };
        let (key, why) = Routes::load(&config(&w)).unwrap_err();
        assert_eq!(key, "notify.webhook[0].secret_file");
        assert!(why.contains("missing.key"), "{why}");
        std::fs::write(&w.secret_file, " \n").unwrap();
        let (key, why) = Routes::load(&config(&w)).unwrap_err();
        assert_eq!(key, "notify.webhook[0].secret_file");
        assert!(why.ends_with("is empty"), "{why}");
        std::fs::write(&w.secret_file, "hunter2-secret\n").unwrap();
        let (key, _) = Routes::load(&config(&w)).unwrap_err();
        assert_eq!(key, "notify.webhook[0].routing_key_file");
        std::fs::write(dir.path().join("pd.key"), "R0UTE").unwrap();
        let routes = Routes::load(&config(&w)).unwrap();
        // Neither secret shows in its debug form (what logs would print).
        let shown = format!("{routes:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("R0UTE"),
            "{shown}"
        );
        // An https url with a CA file that is not one.
        let mut w = webhook(Format::Vigil);
        w.secret_file = dir.path().join("missing.key");
        std::fs::write(&w.secret_file, "s").unwrap();
        w.ca = Some(dir.path().join("missing.key"));
        let (key, why) = Routes::load(&config(&w)).unwrap_err();
        assert_eq!(key, "notify.webhook[0].ca");
        assert!(why.contains("no certificate"), "{why}");
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let c = webhook(Format::Vigil);
        for attempts in 1..30 {
            let full = (1000u64 << (attempts - 1).min(40)).min(600_000);
            let d = backoff(&c, attempts).as_millis() as u64;
            assert!((full / 2..=full).contains(&d), "{attempts}: {d} of {full}");
        }
    }

    #[test]
    fn outcomes_become_row_updates() {
        let c = webhook(Format::Vigil);
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let n = Notification {
            id: 7,
            delivery: "d".into(),
            webhook: "pager".into(),
            event: "escalated".into(),
            incident: Incident::default(),
            at: now,
            state: NotifyState::Pending,
            attempts: 0,
            next_at: now,
            last_error: String::new(),
        };
        let u = update_for(&c, &n, &Outcome::Delivered, now);
        assert_eq!(
            (u.state, u.attempts, u.only_if),
            (NotifyState::Delivered, 1, NotifyState::Pending)
        );
        let u = update_for(&c, &n, &Outcome::Retry("HTTP 500".into()), now);
        assert_eq!(u.state, NotifyState::Pending);
        assert!(u.next_at > now && u.next_at <= now + Duration::from_secs(1));
        let u = update_for(&c, &n, &Outcome::Refused("HTTP 400".into()), now);
        assert_eq!(
            (u.state, u.last_error.as_str()),
            (NotifyState::Failed, "HTTP 400")
        );
        // The last attempt allowed fails for good.
        let last = Notification {
            attempts: 19,
            ..n.clone()
        };
        let u = update_for(&c, &last, &Outcome::Retry("HTTP 503".into()), now);
        assert_eq!(u.state, NotifyState::Failed);
        assert!(
            u.last_error.contains("after 20 attempts"),
            "{}",
            u.last_error
        );
        // Too old to wait for another attempt.
        let u = update_for(
            &c,
            &n,
            &Outcome::Retry("HTTP 503".into()),
            now + Duration::from_secs(86_400),
        );
        assert_eq!(u.state, NotifyState::Failed);
    }

    #[test]
    fn signatures_are_hmac_sha256_of_timestamp_dot_body() {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"s3cret");
        let sig = signature(&key, "1800000000", b"{\"a\":1}");
        let hex = sig.strip_prefix("sha256=").unwrap();
        assert_eq!(hex.len(), 64);
        let tag = ring::hmac::sign(&key, b"1800000000.{\"a\":1}");
        let expected: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, expected);
        // Another timestamp, same body: another signature (replays with a
        // fresh timestamp do not verify).
        assert_ne!(signature(&key, "1800000001", b"{\"a\":1}"), sig);
    }
}
