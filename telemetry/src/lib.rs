//! Metrics for operators: every daemon keeps plain atomic counters; this
//! crate writes them in the Prometheus text format (version 0.0.4) and
//! serves them on `GET /metrics`.
//!
//! - [`Exposition`]: collects samples, then writes each metric family once,
//!   with its `# HELP` and `# TYPE`, whatever order they were added in (so
//!   `vigil dev` can add every post's gateway under a `post` label).
//! - [`serve`]: the HTTP endpoint, on a listener the caller bound.
//! - [`MetricsConfig`]: the `[metrics]` table of every daemon's config. The
//!   endpoint is off unless the table is present: counters say how busy a
//!   post is, so exposing them is the operator's choice.
//! - [`log_limit`]: rate-limited logging of repeated peer errors (one line
//!   per interval with a count).

pub mod log_limit;

use std::{
    collections::BTreeMap, convert::Infallible, fmt::Write as _, net::SocketAddr, sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode, body::Incoming, header::CONTENT_TYPE,
    server::conn::http1, service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// `[metrics]`: where the Prometheus endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// TCP address of `GET /metrics`, e.g. "127.0.0.1:9464".
    pub listen: SocketAddr,
}

/// Scrapes served at once; a scraper beyond that waits for a slot. A
/// Prometheus server scrapes one connection at a time, so this only bounds
/// what a misbehaving client can hold.
pub const MAX_CONNECTIONS: usize = 16;
/// A request's headers must arrive within this long.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

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
/// 404, other methods 405. Each connection is its own task; at most
/// [`MAX_CONNECTIONS`] are served at once.
pub async fn serve(listener: TcpListener, render: Render, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tracker = TaskTracker::new();
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics endpoint listening");
    }
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        // The accept policy every Vigil server shares (back off on EMFILE
        // and friends, skip per-connection errors).
        let Some((stream, _)) = vigil_pki::accept::accept(&listener, &shutdown, |_| {}).await
        else {
            break;
        };
        let render = render.clone();
        let stop = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| answer(req, render.clone()));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
                }
            }
        });
    }
    tracker.close();
    tracker.wait().await;
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
