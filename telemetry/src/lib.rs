//! Metrics for operators: every daemon keeps plain atomic counters; this
//! crate writes them in the Prometheus text format (version 0.0.4) and
//! serves them on `GET /metrics`.
//!
//! - [`Exposition`]: collects samples, then writes each metric family once,
//!   with its `# HELP` and `# TYPE`, whatever order they were added in (so
//!   `vigil dev` can add every post's gateway under a `post` label).
//! - [`serve`]: the HTTP endpoint, on a listener the caller bound, through
//!   the shared listener plumbing (`vigil-net`).
//! - [`MetricsConfig`]: the `[metrics]` table of every daemon's config. The
//!   endpoint is off unless the table is present: counters say how busy a
//!   post is, so exposing them is the operator's choice.

use std::{
    collections::BTreeMap, convert::Infallible, fmt::Write as _, net::SocketAddr, sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode, body::Incoming, header::CONTENT_TYPE,
    service::service_fn,
};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use vigil_net::{Front, Limits, StatsSnapshot};

/// `[metrics]`: where the Prometheus endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// TCP address of `GET /metrics`, e.g. "127.0.0.1:9464".
    pub listen: SocketAddr,
}

/// Connections open at once (a Prometheus server scrapes over one); past
/// it the oldest connection that has not sent a request yet is dropped
/// for the newcomer (see `vigil_net::table`).
pub const MAX_CONNECTIONS: usize = 16;
/// Connections open at once from one address.
pub const MAX_PER_SOURCE: usize = 8;
/// A request's headers must arrive within this long of the connection.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with no byte either way for this long is closed (a
/// kept-alive one goes sooner: its next headers are due within
/// [`HEADER_TIMEOUT`]).
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// The limits of the endpoint's listener.
pub fn limits() -> Limits {
    Limits {
        max_connections: MAX_CONNECTIONS,
        max_per_source: MAX_PER_SOURCE,
        preauth_deadline: HEADER_TIMEOUT,
        idle_timeout: Some(IDLE_TIMEOUT),
        grace: Duration::from_secs(2),
    }
}

/// What a metric family is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

#[derive(Debug)]
struct Family {
    help: &'static str,
    kind: Kind,
    /// Label pairs already rendered (`post="p-1"`), and the value.
    samples: Vec<(String, f64)>,
}

/// A set of samples, written out as Prometheus text by [`Exposition::render`].
#[derive(Debug, Default)]
pub struct Exposition {
    families: BTreeMap<String, Family>,
    /// Labels added to every sample from now on (see [`Exposition::scoped`]).
    labels: Vec<(String, String)>,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `labels` to every sample added inside `f`.
    pub fn scoped(&mut self, labels: &[(&str, &str)], f: impl FnOnce(&mut Self)) {
        let before = self.labels.len();
        self.labels.extend(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        f(self);
        self.labels.truncate(before);
    }

    /// A monotonically increasing count. `name` should end in `_total`.
    pub fn counter(&mut self, name: &str, help: &'static str, value: u64) {
        self.add(name, help, Kind::Counter, &[], value as f64);
    }

    /// A value that goes up and down.
    pub fn gauge(&mut self, name: &str, help: &'static str, value: f64) {
        self.add(name, help, Kind::Gauge, &[], value);
    }

    /// A counter with labels of its own, e.g. a reason.
    pub fn counter_with(
        &mut self,
        name: &str,
        help: &'static str,
        labels: &[(&str, &str)],
        value: u64,
    ) {
        self.add(name, help, Kind::Counter, labels, value as f64);
    }

    fn add(
        &mut self,
        name: &str,
        help: &'static str,
        kind: Kind,
        own: &[(&str, &str)],
        value: f64,
    ) {
        debug_assert!(valid_name(name), "bad metric name {name}");
        let mut labels = String::new();
        for (k, v) in self
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(own.iter().copied())
        {
            if !labels.is_empty() {
                labels.push(',');
            }
            let _ = write!(labels, "{k}=\"{}\"", escape_label(v));
        }
        self.families
            .entry(name.to_owned())
            .or_insert_with(|| Family {
                help,
                kind,
                samples: Vec::new(),
            })
            .samples
            .push((labels, value));
    }

    /// The counters and gauges of one listener (`vigil_net`), labelled
    /// `listener="NAME"`.
    pub fn listener(&mut self, name: &str, stats: &StatsSnapshot) {
        self.scoped(&[("listener", name)], |out| {
            for (suffix, help, value) in stats.counters() {
                out.counter(&format!("vigil_listener_{suffix}"), help, value);
            }
            out.gauge(
                "vigil_listener_open_connections",
                "Connections open now.",
                stats.open as f64,
            );
            out.gauge(
                "vigil_listener_unauthenticated_connections",
                "Open connections not authenticated yet.",
                stats.unauthenticated as f64,
            );
        });
    }

    /// When this daemon's own certificate expires (its notAfter, seconds
    /// since the Unix epoch), as the daemon sees the file now.
    pub fn own_certificate_expiry(&mut self, not_after: i64) {
        self.gauge(
            "vigil_tls_cert_expiry_timestamp_seconds",
            "notAfter of this daemon's own TLS certificate, in seconds since the Unix epoch.",
            not_after as f64,
        );
    }

    /// The text format: for each family in name order, `# HELP`, `# TYPE`,
    /// then its samples.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, family) in &self.families {
            let kind = match family.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let _ = writeln!(out, "# HELP {name} {}", escape_help(family.help));
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in &family.samples {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {value}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {value}");
                }
            }
        }
        out
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Renders the current metrics; called once per scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves `GET /metrics` on `listener` until `shutdown`. Other paths get
/// 404, other methods 405. The listener is a `vigil_net` front with
/// [`limits`].
pub async fn serve(listener: TcpListener, render: Render, shutdown: CancellationToken) {
    serve_on(&Front::new("metrics", limits()), listener, render, shutdown).await;
}

/// [`serve`] through a front the caller made (to read its counters).
pub async fn serve_on(
    front: &Front,
    listener: TcpListener,
    render: Render,
    shutdown: CancellationToken,
) {
    let service = service_fn(move |req| answer(req, render.clone()));
    vigil_net::http::serve(front, listener, shutdown, service).await;
}

async fn answer(
    req: Request<Incoming>,
    render: Render,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, content_type, body) = if req.uri().path() != "/metrics" {
        (
            StatusCode::NOT_FOUND,
            "text/plain",
            "only /metrics is served here\n".to_owned(),
        )
    } else if req.method() != Method::GET && req.method() != Method::HEAD {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".to_owned(),
        )
    } else {
        (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            render(),
        )
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_grouped_with_one_help_and_type() {
        let mut e = Exposition::new();
        e.scoped(&[("post", "p-1")], |e| {
            e.counter("vigil_events_total", "Events.", 3);
        });
        e.gauge("vigil_depth", "Depth.", 2.5);
        e.scoped(&[("post", "p-\"2\"")], |e| {
            e.counter_with("vigil_events_total", "Events.", &[("kind", "a")], 4);
        });
        assert_eq!(
            e.render(),
            "# HELP vigil_depth Depth.\n# TYPE vigil_depth gauge\nvigil_depth 2.5\n\
             # HELP vigil_events_total Events.\n# TYPE vigil_events_total counter\n\
             vigil_events_total{post=\"p-1\"} 3\n\
             vigil_events_total{post=\"p-\\\"2\\\"\",kind=\"a\"} 4\n"
        );
    }

    #[test]
    fn config_rejects_unknown_keys() {
        let ok: MetricsConfig = toml::from_str("listen = \"127.0.0.1:9464\"").unwrap();
        assert_eq!(ok.listen.port(), 9464);
        assert!(toml::from_str::<MetricsConfig>("listen = \"x\"").is_err());
        assert!(toml::from_str::<MetricsConfig>("listen = \"127.0.0.1:1\"\nport = 2").is_err());
    }
}
