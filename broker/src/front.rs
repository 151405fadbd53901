//! The public TLS listener: the broker's handshake, identity and MQTT
//! session, on the shared listener plumbing (`vigil-net`).
//!
//! `vigil-net` accepts (backing off on EMFILE and the like), applies the
//! caps (`limits.max_connections` in all, `max_connections_per_source` per
//! IP address; at a cap the oldest unauthenticated connection is shed for
//! the newcomer) and gives every socket its own task, so an idle or slow
//! socket only ever delays itself (rumqttd's own listener handshakes inside
//! its accept loop, where one idle socket stalls every client behind it).
//!
//! In that task the broker does its own TLS handshake, so that it keeps
//! its failure classes and timeout: each runs under
//! `limits.handshake_timeout_ms`, and a failure is counted under its reason
//! (no certificate, revoked, bad certificate, other TLS error, timeout).
//! At most `limits.max_handshakes` do their cryptography at once: a socket
//! takes a slot once its whole ClientHello arrived, and waits for one
//! within its own handshake timeout. Waiting for the ClientHello costs
//! nothing, so it takes no slot: idle sockets and half-sent ClientHellos
//! cannot hold the slots and make valid clients queue behind them. A connection counts as authenticated once its CONNECT passed
//! the ACL (see `session`): from then on it is never shed. The listener's
//! pre-authentication deadline is only a backstop behind the broker's own
//! handshake and CONNECT timeouts (see [`crate::Limits::listener`]).

use std::{io, sync::Arc};

use tokio::{net::TcpListener, net::TcpStream, sync::Semaphore};
use tokio_rustls::{LazyConfigAcceptor, server::TlsStream};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, field, info, info_span, warn};
use vigil_net::Conn;
use vigil_pki::Peer;
use vigil_telemetry::log_limit::{LogLimiter, PEER_ERROR_INTERVAL};

use crate::{
    metrics::Reject,
    session::{self, Context},
};

/// Failed and timed-out handshakes: anyone can cause them, as fast as they
/// can open sockets. Each is counted; one line per interval is logged, with
/// the count since the last one.
static LOG_TLS_FAILED: LogLimiter = LogLimiter::new(PEER_ERROR_INTERVAL);
static LOG_HANDSHAKE_TIMEOUT: LogLimiter = LogLimiter::new(PEER_ERROR_INTERVAL);

/// Everything a connection task shares with the others.
pub(crate) struct Front {
    pub(crate) tls: Arc<rustls::ServerConfig>,
    pub(crate) session: Context,
    pub(crate) handshakes: Semaphore,
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front")
            .field("session", &self.session)
            .field("handshakes", &self.handshakes)
            .finish_non_exhaustive()
    }
}

impl Front {
    /// Serves `listener` through `net` until `shutdown`; returns once every
    /// connection closed or the grace period (`limits.shutdown_grace_ms`)
    /// ran out. The listener is dropped when accepting stops, so new
    /// clients are refused by the kernel.
    pub(crate) async fn serve(
        self: Arc<Self>,
        net: vigil_net::Front,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) {
        let (shaker, runner) = (self.clone(), self);
        net.serve_with_handshake(
            listener,
            shutdown,
            move |tcp| {
                let front = shaker.clone();
                async move { front.handshake(tcp).await }
            },
            move |conn| {
                let front = runner.clone();
                async move { front.connection(conn).await }
            },
        )
        .await;
    }

    /// The TLS handshake of one admitted socket, under the handshake
    /// timeout, its cryptography under a slot; a failure is counted and
    /// logged under its reason.
    async fn handshake(&self, tcp: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        let metrics = &self.session.metrics;
        let handshake = async {
            let _running = metrics.handshaking();
            let hello = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
            // The semaphore is never closed, so `acquire` cannot fail.
            let _slot = self.handshakes.acquire().await;
            hello.into_stream(self.tls.clone()).await
        };
        match tokio::time::timeout(self.session.limits.handshake_timeout(), handshake).await {
            Ok(Ok(tls)) => Ok(tls),
            Ok(Err(error)) => {
                let reason = classify_tls_error(&error);
                metrics.reject(reason);
                if let Some(count) = LOG_TLS_FAILED.hit() {
                    info!(%error, %reason, count, "refused: TLS handshake failed");
                }
                Err(error)
            }
            Err(_) => {
                metrics.reject(Reject::HandshakeTimeout);
                if let Some(count) = LOG_HANDSHAKE_TIMEOUT.hit() {
                    info!(reason = %Reject::HandshakeTimeout, count, "refused: TLS handshake timed out");
                }
                Err(io::ErrorKind::TimedOut.into())
            }
        }
    }

    /// One connection after its handshake: identity, then the session.
    async fn connection(&self, mut conn: Conn<TlsStream<TcpStream>>) {
        let metrics = &self.session.metrics;
        // rustls has verified the chain against the CA and the CRL; the
        // identity and role come from that certificate only.
        let leaf = conn
            .get_ref()
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first());
        let not_after = leaf.and_then(|cert| vigil_pki::reload::not_after(cert).ok());
        let peer = leaf.map(Peer::from_cert);
        let peer = match peer {
            Some(Ok(peer)) => peer,
            Some(Err(error)) => {
                metrics.reject(Reject::Identity);
                warn!(%error, reason = %Reject::Identity, "refused: certificate carries no valid identity");
                return;
            }
            None => {
                metrics.reject(Reject::NoCertificate);
                warn!(reason = %Reject::NoCertificate, "refused: no client certificate");
                return;
            }
        };
        let span = info_span!(
            "client",
            identity = peer.identity.as_str(),
            role = peer.role.as_str(),
            mqtt = field::Empty,
        );
        // In the expiry figures while the session lasts.
        let _expiry = not_after.map(|t| {
            metrics
                .peer_expiry
                .connected(peer.identity.as_str(), peer.role.as_str(), t)
        });
        let authenticator = conn.authenticator();
        let shutdown = conn.shutdown().clone();
        // The session gets the TLS stream itself: the message path is the
        // same as before the shared plumbing (no wrapper on each read and
        // write). `conn` still holds the connection's place under the caps
        // until the session ends.
        let session = session::run(conn.get_mut(), peer, &self.session, shutdown, move || {
            authenticator.authenticated()
        });
        async {
            debug!("handshake done");
            session.await;
        }
        .instrument(span)
        .await;
    }
}

/// Maps a failed handshake to a counted reason.
fn classify_tls_error(error: &io::Error) -> Reject {
    use rustls::{CertificateError, Error};
    if error.kind() == io::ErrorKind::TimedOut {
        return Reject::HandshakeTimeout;
    }
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Error>())
    {
        Some(Error::NoCertificatesPresented) => Reject::NoCertificate,
        Some(Error::InvalidCertificate(CertificateError::Revoked)) => Reject::Revoked,
        Some(Error::InvalidCertificate(_)) => Reject::BadCertificate,
        _ => Reject::Tls,
    }
}
