//! Metrics for operators: every daemon keeps plain atomic counters; this
//! crate writes them in the Prometheus text format (version 0.0.4) and
//! serves them on `GET /metrics`.
//!
//! - [`Exposition`]: collects samples, then writes each metric family once,
//!   with its `# HELP` and `# TYPE`, whatever order they were added in (so
//!   `vigil dev` can add every post's gateway under a `post` label).
//! - [`Histogram`]: a lock-free latency histogram with power-of-two
//!   buckets, exported as a Prometheus histogram by
//!   [`Exposition::histogram`].
//! - [`Exposition::build_info`]: the `vigil_build_info` gauge.
//! - [`serve`]: the HTTP endpoint, on a listener the caller bound, through
//!   the shared listener plumbing (`vigil-net`).
//! - [`MetricsConfig`]: the `[metrics]` table of every daemon's config. The
//!   endpoint is off unless the table is present: counters say how busy a
//!   post is, so exposing them is the operator's choice.
//! - [`log_limit`]: rate-limited logging of repeated peer errors (one line
//!   per interval with a count).
//! - [`peer_expiry`]: the certificate expiry of connected peers (earliest,
//!   how many expire soon), logged when soon.

pub mod log_limit;
pub mod peer_expiry;

use std::{
    collections::BTreeMap,
    convert::Infallible,
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
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
    Histogram,
}

#[derive(Debug)]
struct Family {
    help: &'static str,
    kind: Kind,
    /// Suffix of the sample's name (`_bucket`, `_sum`, `_count` for a
    /// histogram, else empty), label pairs already rendered (`post="p-1"`),
    /// and the value.
    samples: Vec<(&'static str, String, f64)>,
}

/// Number of buckets of a [`Histogram`]: bucket `i` counts samples of at
/// least 2^(i-1) µs and below 2^i µs; the last also takes everything longer.
const BUCKETS: usize = 32;

/// The bucket bounds [`Exposition::histogram`] writes out: 2^6 µs (64 µs)
/// to 2^26 µs (67 s). Finer or coarser buckets exist inside; a dashboard
/// needs no more than these 21 (each bound is cumulative, so nothing is
/// lost below the first, and `+Inf` holds the rest).
const EXPORTED: std::ops::RangeInclusive<usize> = 6..=26;

/// A latency histogram: power-of-two buckets of microseconds, plain atomics,
/// so recording never blocks. Coarse (a factor of two) by design: it is for
/// dashboards and alerts; the benchmark measures exactly.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = (u64::BITS - us.leading_zeros()) as usize;
        self.buckets[i.min(BUCKETS - 1)].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    /// Upper bound of the bucket holding quantile `q` (0..=1), or zero when
    /// empty.
    pub fn quantile(&self, q: f64) -> Duration {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return Duration::ZERO;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Duration::from_micros(1u64 << i);
            }
        }
        Duration::from_micros(1u64 << (BUCKETS - 1))
    }
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

    /// A value that goes up and down, with labels of its own.
    pub fn gauge_with(
        &mut self,
        name: &str,
        help: &'static str,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        self.add(name, help, Kind::Gauge, labels, value);
    }

    /// A histogram of durations in seconds: `name_bucket{le=...}` for the
    /// bounds 64 µs to 67 s and `+Inf`, `name_sum` and `name_count`.
    /// `name` should end in `_seconds`.
    pub fn histogram(&mut self, name: &str, help: &'static str, h: &Histogram) {
        let counts: Vec<u64> = h.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let mut cumulative = 0;
        for (i, c) in counts.iter().enumerate() {
            cumulative += c;
            if EXPORTED.contains(&i) {
                // Bucket i holds samples below 2^i µs: at most that bound.
                let le = ((1u64 << i) as f64 / 1e6).to_string();
                self.add_sample(
                    name,
                    help,
                    Kind::Histogram,
                    "_bucket",
                    &[("le", &le)],
                    cumulative as f64,
                );
            }
        }
        let total: u64 = counts.iter().sum();
        self.add_sample(
            name,
            help,
            Kind::Histogram,
            "_bucket",
            &[("le", "+Inf")],
            total as f64,
        );
        let sum = h.sum_us.load(Relaxed) as f64 / 1e6;
        self.add_sample(name, help, Kind::Histogram, "_sum", &[], sum);
        self.add_sample(name, help, Kind::Histogram, "_count", &[], total as f64);
    }

    /// `vigil_build_info{part, version} 1`: which build of which part is
    /// answering, to graph upgrades and to join on.
    pub fn build_info(&mut self, part: &str, version: &str) {
        self.gauge_with(
            "vigil_build_info",
            "Build of the running part; always 1.",
            &[("part", part), ("version", version)],
            1.0,
        );
    }

    fn add(
        &mut self,
        name: &str,
        help: &'static str,
        kind: Kind,
        own: &[(&str, &str)],
        value: f64,
    ) {
        self.add_sample(name, help, kind, "", own, value);
    }

    fn add_sample(
        &mut self,
        name: &str,
        help: &'static str,
        kind: Kind,
        suffix: &'static str,
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
            .push((suffix, labels, value));
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
                Kind::Histogram => "histogram",
            };
            let _ = writeln!(out, "# HELP {name} {}", escape_help(family.help));
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (suffix, labels, value) in &family.samples {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name}{suffix} {value}");
                } else {
                    let _ = writeln!(out, "{name}{suffix}{{{labels}}} {value}");
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
    fn histograms_are_cumulative_with_sum_and_count() {
        let h = Histogram::default();
        assert_eq!(h.quantile(0.5), Duration::ZERO);
        for _ in 0..90 {
            h.record(Duration::from_micros(100)); // below 128 µs
        }
        for _ in 0..10 {
            h.record(Duration::from_millis(5)); // below 8192 µs
        }
        h.record(Duration::from_secs(3600)); // beyond every exported bound
        assert_eq!(h.count(), 101);
        assert_eq!(h.quantile(0.5), Duration::from_micros(128));
        assert_eq!(h.quantile(0.99), Duration::from_micros(8192));

        let mut e = Exposition::new();
        e.scoped(&[("post", "p-1")], |e| {
            e.histogram("vigil_x_seconds", "X.", &h);
        });
        let text = e.render();
        assert!(
            text.starts_with("# HELP vigil_x_seconds X.\n# TYPE vigil_x_seconds histogram\n"),
            "{text}"
        );
        for line in [
            "vigil_x_seconds_bucket{post=\"p-1\",le=\"0.000064\"} 0\n",
            "vigil_x_seconds_bucket{post=\"p-1\",le=\"0.000128\"} 90\n",
            "vigil_x_seconds_bucket{post=\"p-1\",le=\"0.004096\"} 90\n",
            "vigil_x_seconds_bucket{post=\"p-1\",le=\"0.008192\"} 100\n",
            "vigil_x_seconds_bucket{post=\"p-1\",le=\"67.108864\"} 100\n",
            "vigil_x_seconds_bucket{post=\"p-1\",le=\"+Inf\"} 101\n",
            "vigil_x_seconds_sum{post=\"p-1\"} 3600.059\n",
            "vigil_x_seconds_count{post=\"p-1\"} 101\n",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        // 21 bounds and +Inf.
        assert_eq!(text.matches("_bucket{").count(), 22);
    }

    #[test]
    fn build_info_is_one_labelled_gauge() {
        let mut e = Exposition::new();
        e.build_info("ops", "1.2.3");
        assert!(
            e.render()
                .contains("vigil_build_info{part=\"ops\",version=\"1.2.3\"} 1\n")
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
