//! [`Front`]: accept, admit, spawn, (TLS), deadlines, then the handler.
//!
//! `serve` is plain TCP, `serve_tls` a rustls handshake, and
//! `serve_with_handshake` a handshake the server writes itself (the broker
//! keeps its own handshake slots, timeout and failure reasons that way).
//!
//! One task per connection, in its own span (`listener`, `peer.addr`). The
//! accept loop only accepts and admits (see [`crate::table`]); the TLS
//! handshake runs inside the connection's task, under the
//! pre-authentication deadline, so an idle socket or a stalled handshake
//! delays nobody but itself.
//!
//! Each connection's task races its handler against three ends:
//! - shed: a newer connection took its place (it was unauthenticated);
//! - the pre-authentication deadline, [`Limits::preauth_deadline`] after
//!   accept, unless the handler called [`Conn::authenticated`] by then;
//! - once authenticated, [`Limits::idle_timeout`] without a byte either way.
//!
//! On shutdown the loop stops accepting and the handlers see
//! [`Conn::shutdown`]; those still running after [`Limits::grace`] are
//! dropped.

use std::{future::Future, io, sync::Arc};

use tokio::{
    net::{TcpListener, TcpStream},
    time::Instant,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, debug, info, info_span};

use crate::{
    accept,
    conn::{Conn, Shared},
    stats::{Stats, bump},
    table::{Limits, Refused, Table},
};

/// One listener's plumbing: its name (for logs and metrics), its limits,
/// its table of open connections and its counters. Cheap to clone; clones
/// share the table.
#[derive(Debug, Clone)]
pub struct Front {
    name: &'static str,
    table: Arc<Table>,
}

/// Why a connection's task ended before its handler did.
enum Expired {
    Preauth,
    Idle,
}

impl Front {
    /// A front named `name` (`api`, `dc09`, `camera_push`, `metrics`…).
    pub fn new(name: &'static str, limits: Limits) -> Self {
        Self::with_stats(name, limits, Arc::default())
    }

    /// A front counting into `stats`, which the daemon's metrics hold from
    /// before the listener starts.
    pub fn with_stats(name: &'static str, limits: Limits, stats: Arc<Stats>) -> Self {
        Self {
            name,
            table: Table::new(limits, stats),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn limits(&self) -> &Limits {
        self.table.limits()
    }

    /// The counters, live.
    pub fn stats(&self) -> Arc<Stats> {
        self.table.stats().clone()
    }

    /// Serves plain TCP connections on `listener` until `shutdown`, each
    /// with `handler`; returns once every handler finished (or the grace
    /// period ran out).
    pub async fn serve<H, F>(&self, listener: TcpListener, shutdown: CancellationToken, handler: H)
    where
        H: Fn(Conn<TcpStream>) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        self.run(listener, shutdown, |tcp| async move { Ok(tcp) }, handler)
            .await;
    }

    /// Like [`Front::serve`], with a TLS handshake (inside the connection's
    /// task, under the pre-authentication deadline) before the handler.
    /// The acceptor's config is shared by every connection; give it a
    /// certificate resolver that follows its files (`vigil-pki` does) so a
    /// renewed certificate is used without a restart.
    pub async fn serve_tls<H, F>(
        &self,
        listener: TcpListener,
        acceptor: TlsAcceptor,
        shutdown: CancellationToken,
        handler: H,
    ) where
        H: Fn(Conn<TlsStream<TcpStream>>) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let handshake = move |tcp: TcpStream| {
            let accepting = acceptor.accept(tcp);
            async move {
                let tls = accepting.await;
                if let Err(error) = &tls {
                    debug!(%error, "TLS handshake failed");
                }
                tls
            }
        };
        self.run(listener, shutdown, handshake, handler).await;
    }

    /// Like [`Front::serve_tls`], with the handshake in the server's hands:
    /// `handshake` turns each admitted TCP stream into the handler's stream
    /// (a TLS handshake under the server's own timeout, concurrency bound
    /// and failure classes, say). It runs inside the connection's task,
    /// under the pre-authentication deadline, and may be shed like the rest
    /// of an unauthenticated connection. An error closes the connection and
    /// counts as a failed handshake (`tls_failures`); report its details
    /// from inside `handshake`.
    pub async fn serve_with_handshake<S, HS, HF, H, F>(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
        handshake: HS,
        handler: H,
    ) where
        S: Send + 'static,
        HS: Fn(TcpStream) -> HF + Send + Sync + 'static,
        HF: Future<Output = io::Result<S>> + Send + 'static,
        H: Fn(Conn<S>) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        self.run(listener, shutdown, handshake, handler).await;
    }

    async fn run<S, U, UF, H, F>(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
        upgrade: U,
        handler: H,
    ) where
        S: Send + 'static,
        U: Fn(TcpStream) -> UF + Send + Sync + 'static,
        UF: Future<Output = io::Result<S>> + Send + 'static,
        H: Fn(Conn<S>) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let (name, limits) = (self.name, *self.limits());
        let stats = self.stats();
        if let Ok(addr) = listener.local_addr() {
            info!(listener = name, %addr, "listening");
        }
        let tracker = TaskTracker::new();
        // Cancelled once the grace period after shutdown ran out.
        let hard_stop = CancellationToken::new();
        let upgrade = Arc::new(upgrade);
        let handler = Arc::new(handler);
        while let Some((tcp, addr)) =
            accept::accept(&listener, &shutdown, |_| bump(&stats.accept_errors)).await
        {
            let slot = match self.table.admit(addr.ip()) {
                Ok(slot) => slot,
                Err(why) => {
                    // Counted; logged at debug only: a flood must not
                    // become a flood of log lines.
                    let why = match why {
                        Refused::Source => "per-source cap, all authenticated",
                        Refused::Full => "connection cap, all authenticated",
                    };
                    debug!(listener = name, peer.addr = %addr, why, "connection refused");
                    drop(tcp);
                    continue;
                }
            };
            let (upgrade, handler) = (upgrade.clone(), handler.clone());
            let (shutdown, hard_stop, stats) = (shutdown.clone(), hard_stop.clone(), stats.clone());
            let task = async move {
                let _ = tcp.set_nodelay(true);
                let shared = Shared::new();
                let killed = slot.killed().clone();
                let work = async {
                    let stream = tokio::select! {
                        () = shutdown.cancelled() => return,
                        s = upgrade(tcp) => match s {
                            Ok(s) => s,
                            Err(_) => {
                                // Plain TCP never fails here: this is a
                                // handshake that did.
                                bump(&stats.tls_failures);
                                return;
                            }
                        },
                    };
                    let conn = Conn::new(stream, addr, shared.clone(), slot, shutdown.clone());
                    handler(conn).await;
                };
                tokio::select! {
                    () = work => {}
                    () = killed.cancelled() => debug!("shed for a newer connection"),
                    expired = watchdog(&shared, &limits) => match expired {
                        Expired::Preauth => {
                            bump(&stats.preauth_timeouts);
                            debug!("not authenticated in time: closing");
                        }
                        Expired::Idle => {
                            bump(&stats.idle_timeouts);
                            debug!("idle: closing");
                        }
                    },
                    () = hard_stop.cancelled() => debug!("still busy after the grace period: dropped"),
                }
            };
            tracker.spawn(task.instrument(info_span!("conn", listener = name, peer.addr = %addr)));
        }
        drop(listener);
        tracker.close();
        if tokio::time::timeout(limits.grace, tracker.wait())
            .await
            .is_err()
        {
            hard_stop.cancel();
            tracker.wait().await;
        }
        debug!(listener = name, "stopped");
    }
}

/// Fires at the pre-authentication deadline if the connection is still
/// unauthenticated, later when an authenticated one falls silent.
async fn watchdog(shared: &Shared, limits: &Limits) -> Expired {
    tokio::time::sleep_until(shared.origin() + limits.preauth_deadline).await;
    if !shared.is_authenticated() {
        return Expired::Preauth;
    }
    let Some(idle) = limits.idle_timeout else {
        return std::future::pending().await;
    };
    loop {
        let due = shared.last_io().max(shared.origin()) + idle;
        if Instant::now() >= due {
            return Expired::Idle;
        }
        tokio::time::sleep_until(due).await;
    }
}
