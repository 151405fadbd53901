//! The public TLS listener: accept, cap, handshake, identify, then the
//! MQTT session.
//!
//! The accept loop does nothing but accept: every socket is handed at once
//! to its own task, which does the TLS handshake under
//! `limits.handshake_timeout`, so an idle or slow socket only ever delays
//! itself (rumqttd's own listener handshakes inside its accept loop, where
//! one idle socket stalls every client behind it).
//!
//! Two semaphores bound the cost: one permit per open connection
//! (`max_connections`; over the cap a socket is closed at once, since
//! leaving it in the kernel backlog would only make the client wait for
//! nothing), and one per handshake in progress (`max_handshakes`; a socket
//! waits for a slot within its own handshake timeout). Accept errors such as
//! EMFILE are logged, counted and backed off, never fatal.

use std::{io, sync::Arc};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_rustls::TlsAcceptor;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, debug, field, info, info_span, warn};
use vigil_pki::Peer;

use crate::{
    metrics::Reject,
    session::{self, Context},
};

/// Everything a connection task shares with the others.
pub(crate) struct Front {
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) session: Context,
    pub(crate) connections: Arc<Semaphore>,
    pub(crate) handshakes: Semaphore,
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front")
            .field("session", &self.session)
            .field("connections", &self.connections)
            .field("handshakes", &self.handshakes)
            .finish_non_exhaustive()
    }
}

impl Front {
    /// Accepts until `shutdown`, spawning one task per connection on
    /// `tracker`. Returns when it has stopped accepting (the listener is
    /// dropped then, so new clients are refused by the kernel).
    pub(crate) async fn accept_loop(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) {
        let metrics = &self.session.metrics;
        while let Some((tcp, addr)) =
            vigil_pki::accept::accept(&listener, &shutdown, |_| metrics.accept_error()).await
        {
            metrics.accepted();
            let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                metrics.reject(Reject::Capacity);
                debug!(peer.addr = %addr, "refused: max_connections reached");
                drop(tcp);
                continue;
            };
            let span = info_span!(
                "conn",
                peer.addr = %addr,
                identity = field::Empty,
                role = field::Empty,
                mqtt = field::Empty,
            );
            let front = self.clone();
            let token = shutdown.child_token();
            tracker
                .spawn(async move { front.connection(tcp, token, permit).await }.instrument(span));
        }
        debug!("stopped accepting");
    }

    /// One connection, from the TCP socket to its end.
    async fn connection(
        &self,
        tcp: TcpStream,
        shutdown: CancellationToken,
        _permit: OwnedSemaphorePermit,
    ) {
        let metrics = &self.session.metrics;
        let _open = metrics.open_connection();
        let _ = tcp.set_nodelay(true);
        let handshake = async {
            // The semaphore is never closed, so `acquire` cannot fail.
            let _slot = self.handshakes.acquire().await;
            let _running = metrics.handshaking();
            self.acceptor.accept(tcp).await
        };
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            r = tokio::time::timeout(self.session.limits.handshake_timeout(), handshake) => r,
        };
        let tls = match result {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => {
                let reason = classify_tls_error(&error);
                metrics.reject(reason);
                info!(%error, %reason, "refused: TLS handshake failed");
                return;
            }
            Err(_) => {
                metrics.reject(Reject::HandshakeTimeout);
                info!(reason = %Reject::HandshakeTimeout, "refused: TLS handshake timed out");
                return;
            }
        };
        // rustls has verified the chain against the CA and the CRL; the
        // identity and role come from that certificate only.
        let leaf = tls
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
        let span = tracing::Span::current();
        span.record("identity", peer.identity.as_str());
        span.record("role", peer.role.as_str());
        debug!("authenticated");
        // In the expiry figures while the session lasts.
        let _expiry = not_after.map(|t| {
            metrics
                .peer_expiry
                .connected(peer.identity.as_str(), peer.role.as_str(), t)
        });
        session::run(tls, peer, &self.session, shutdown).await;
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
