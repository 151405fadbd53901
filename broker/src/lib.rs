//! Vigil's MQTT broker: an mTLS front that owns the MQTT protocol and
//! enforces who may say what, over an embedded rumqttd router that does the
//! routing (subscriptions, persistent sessions, QoS 1 delivery windows,
//! retained messages, shared subscriptions).
//!
//! ```text
//! client ──mTLS MQTT 3.1.1/5──► front (TLS, identity, ACL, limits, codec)
//!                                  │ typed operations, in process
//!                                  ▼
//!                               rumqttd router (its own thread)
//! ```
//!
//! Clients authenticate with a certificate from the region CA (checked
//! against the CRL); the front takes identity and role from it, requires the
//! MQTT client id to be that identity, applies the topic ACL of DESIGN.md to
//! every CONNECT (will), PUBLISH and SUBSCRIBE, and hands the router only
//! sanitised operations through an in-process link: no MQTT 5 property and
//! no packet a client wrote ever reaches another client.
//!
//! Layout:
//! - [`config`]: the TOML config (`listen`, `[tls]`, `[limits]`), validated
//!   before anything binds.
//! - [`acl`]: the topic ACL as pure functions.
//! - `front`: the public listener on `vigil-net` (accept, caps, shedding,
//!   one task per connection), with the broker's own TLS handshake (slots,
//!   timeout, failure reasons) and identity.
//! - `session`: one client's MQTT session: checks, answers, deliveries.
//! - `registry`: connected identities, takeovers and fights over one.
//! - `mqtt`: framing, decoding and encoding per protocol version.
//! - `router`: the in-process rumqttd router and its links.
//! - [`metrics`][]: counters.
//!
//! Start a broker with [`Broker::start`] on a bound listener (tests use
//! `127.0.0.1:0`), or [`run`] it until a shutdown token fires.

pub mod acl;
pub mod config;
mod front;
pub mod metrics;
mod mqtt;
mod registry;
mod router;
mod session;

use std::{net::SocketAddr, sync::Arc};

use tokio::{net::TcpListener, sync::Semaphore, task::JoinHandle};
use tokio_util::sync::CancellationToken;

pub use config::{BrokerConfig, ConfigError, DEFAULT_CONFIG, Limits};
pub use metrics::{Metrics, MetricsSnapshot, Reject};
pub use router::RouterError;

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("tls: {0}")]
    Tls(#[from] vigil_pki::TlsError),
    #[error("listener: {0}")]
    Listener(#[source] std::io::Error),
    #[error("embedded router: {0}")]
    Router(#[from] router::RouterError),
}

/// A running broker.
#[derive(Debug)]
pub struct Broker {
    local_addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Broker {
    /// Validates `config`, starts the embedded router, and serves MQTT on
    /// `listener` until `shutdown` is cancelled. `config.listen` is not used:
    /// the caller bound `listener` (from it, or `127.0.0.1:0` in tests).
    pub async fn start(
        config: &BrokerConfig,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<Self, BrokerError> {
        let material = config.validate()?;
        let tls = material.server_config()?;
        let local_addr = listener.local_addr().map_err(BrokerError::Listener)?;
        let limits = config.limits.clone();
        let router = router::Router::start(&limits).await?;
        let metrics = Arc::new(Metrics::default());
        let net = vigil_net::Front::with_stats(
            metrics::LISTENER,
            limits.listener(),
            metrics.listener().clone(),
        );
        let front = Arc::new(front::Front {
            tls: Arc::new(tls),
            handshakes: Semaphore::new(limits.max_handshakes),
            session: session::Context {
                limits: limits.clone(),
                router,
                registry: Default::default(),
                metrics: metrics.clone(),
                next_id: Default::default(),
            },
        });
        let grace = limits.shutdown_grace();
        let token = shutdown.clone();
        let task_metrics = metrics.clone();
        let task = tokio::spawn(async move {
            // Returns once accepting stopped and every connection, having
            // seen the same token (v5 clients get DISCONNECT "server
            // shutting down"), closed, or the grace period ran out (the
            // stragglers are dropped then).
            let serving = front.serve(net, listener, token.clone());
            tokio::pin!(serving);
            tokio::select! {
                () = &mut serving => {}
                () = token.cancelled() => {
                    let open = task_metrics.snapshot().active;
                    let stopping = tokio::time::Instant::now();
                    serving.await;
                    if stopping.elapsed() >= grace {
                        tracing::warn!(
                            open,
                            ?grace,
                            "connections still open after the grace period were dropped"
                        );
                    } else {
                        tracing::info!(closed = open, "all connections closed");
                    }
                }
            }
            let m = task_metrics.snapshot();
            tracing::info!(
                accepted = m.accepted,
                authenticated = m.authenticated,
                publishes_in = m.publishes_in,
                publishes_out = m.publishes_out,
                takeovers = m.takeovers,
                rejected = m.rejected_total(),
                "broker stopped"
            );
        });
        tracing::info!(listen = %local_addr, "broker listening");
        Ok(Self {
            local_addr,
            metrics,
            shutdown,
            task,
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A copy of the counters now.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }

    /// The live counters, for an exporter that outlives this handle.
    pub fn counters(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Cancels the shutdown token given to [`Broker::start`].
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until the broker has stopped accepting and its connections have
    /// closed (or the grace period has passed). The embedded router's threads
    /// keep running until the process exits; they hold no client state
    /// worth saving.
    pub async fn wait(self) {
        if let Err(error) = self.task.await {
            tracing::error!(%error, "broker task failed");
        }
    }
}

/// Runs a broker on `listener` until `shutdown` is cancelled and its
/// connections have drained.
pub async fn run(
    config: &BrokerConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), BrokerError> {
    Broker::start(config, listener, shutdown)
        .await?
        .wait()
        .await;
    Ok(())
}
