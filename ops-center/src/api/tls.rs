//! The API's mutual TLS: our own rustls acceptor in front of tonic.
//!
//! tonic's built-in TLS has no CRL; the rustls config from `vigil-pki`
//! checks the client certificate against the CA *and* the CRL, so we accept
//! TCP ourselves and hand tonic finished TLS streams. The accept loop only
//! accepts: each handshake runs in its own task under
//! [`HANDSHAKE_TIMEOUT`], so an idle socket delays nobody but itself. At
//! most [`MAX_CONNECTIONS`] connections are open at once (handshaking or
//! established); one more is closed at once, logged, and not queued. The
//! peer's identity (CN) and role (OU) travel with the stream as tonic
//! [`Connected`] info, and the service reads them from every request.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::server::Connected;
use tracing::{Instrument, debug, info, info_span};
use vigil_pki::Peer;

use crate::metrics::{Metrics, Open, OpenKind};

/// From accept to finished TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more connections wait for a slot (within
/// their own timeout), so a flood of idle sockets cannot eat the CPU.
pub const MAX_HANDSHAKES: usize = 64;
/// Connections open at once, from accept until tonic drops them. Past
/// this, a new connection is closed right after accept (its client sees
/// the connection reset and can retry), so a flood of clients cannot exhaust
/// file descriptors or memory.
pub const MAX_CONNECTIONS: usize = 1024;
/// Finished connections waiting for tonic to pick them up. When full, the
/// handshake tasks wait (tonic takes connections as fast as it can).
pub const ACCEPTED_CAPACITY: usize = 32;

/// What the service learns about the caller from its connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub addr: SocketAddr,
    /// An error when the verified certificate carries no valid Vigil identity
    /// (the request is then refused as unauthenticated, with the reason).
    pub peer: Result<Peer, String>,
}

/// A TLS connection handed to tonic.
#[derive(Debug)]
pub struct ApiConn {
    stream: TlsStream<TcpStream>,
    info: ConnInfo,
    /// This connection's place under [`MAX_CONNECTIONS`], given back when
    /// tonic drops the connection.
    _slot: OwnedSemaphorePermit,
    /// Counts it in `vigil_ops_api_connections` while it is open.
    _open: Open,
}

impl Connected for ApiConn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for ApiConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ApiConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepts on `listener` until `shutdown`, handshaking each connection in
/// its own task on `tracker`; finished connections come out of the returned
/// channel (closed once accepting stopped and every handshake finished).
/// At most `max_connections` are open at once ([`MAX_CONNECTIONS`] in
/// service).
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
    max_connections: usize,
    metrics: Arc<Metrics>,
) -> mpsc::Receiver<Result<ApiConn, io::Error>> {
    let (tx, rx) = mpsc::channel(ACCEPTED_CAPACITY);
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let open = Arc::new(Semaphore::new(max_connections));
    let inner = tracker.clone();
    tracker.spawn(async move {
        while let Some((tcp, addr)) = vigil_pki::accept::accept(&listener, &shutdown, |_| {}).await
        {
            let Ok(slot) = open.clone().try_acquire_owned() else {
                info!(peer.addr = %addr, max_connections, "api: connection limit reached; closing");
                drop(tcp);
                continue;
            };
            let span = info_span!("api_conn", peer.addr = %addr);
            let (acceptor, tx, handshakes, cancel, metrics) = (
                acceptor.clone(),
                tx.clone(),
                handshakes.clone(),
                shutdown.clone(),
                metrics.clone(),
            );
            inner.spawn(
                async move {
                    let _ = tcp.set_nodelay(true);
                    let handshake = async {
                        // Never closed, so `acquire` cannot fail.
                        let _slot = handshakes.acquire().await;
                        acceptor.accept(tcp).await
                    };
                    let result = tokio::select! {
                        () = cancel.cancelled() => return,
                        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake) => r,
                    };
                    let stream = match result {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => {
                            info!(%error, "api: TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            info!("api: TLS handshake timed out");
                            return;
                        }
                    };
                    // rustls verified the chain against the CA and the CRL;
                    // identity and role come from that certificate only.
                    let peer = match stream.get_ref().1.peer_certificates() {
                        Some([leaf, ..]) => Peer::from_cert(leaf).map_err(|e| e.to_string()),
                        _ => Err("no client certificate".to_owned()),
                    };
                    match &peer {
                        Ok(p) => {
                            debug!(identity = %p.identity, role = %p.role, "api: authenticated")
                        }
                        Err(e) => info!(error = %e, "api: certificate without a valid identity"),
                    }
                    let conn = ApiConn {
                        stream,
                        info: ConnInfo { addr, peer },
                        _slot: slot,
                        _open: metrics.open(OpenKind::ApiConnection),
                    };
                    let _ = tx.send(Ok(conn)).await;
                }
                .instrument(span),
            );
        }
        debug!("api stopped accepting");
    });
    rx
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::ServerName;
    use tokio::io::AsyncWriteExt;
    use tokio_rustls::TlsConnector;
    use vigil_pki::{Identity, Role, TlsConfig, authority};

    use super::*;

    fn material(pki: &std::path::Path, id: &str) -> vigil_pki::tls::TlsMaterial {
        TlsConfig {
            ca: pki.join("ca.pem"),
            cert: pki.join(format!("{id}.pem")),
            key: pki.join(format!("{id}.key")),
            crl: None,
        }
        .load()
        .unwrap()
    }

    #[tokio::test]
    async fn connections_past_the_cap_are_closed_until_one_ends() {
        vigil_pki::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path();
        authority::init(pki, "test CA").unwrap();
        let sans = ["127.0.0.1".to_string()];
        let id = |s| Identity::new(s).unwrap();
        authority::issue(pki, Role::Ops, &id("ops-1"), &sans, 1, false).unwrap();
        authority::issue(pki, Role::Analyst, &id("alice"), &[], 1, false).unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(material(pki, "ops-1").server_config().unwrap()));
        let connector =
            TlsConnector::from(Arc::new(material(pki, "alice").client_config().unwrap()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, tracker) = (CancellationToken::new(), TaskTracker::new());
        let metrics = Arc::new(Metrics::default());
        let open = |m: &Metrics| m.api_connections.load(std::sync::atomic::Ordering::Relaxed);
        let mut conns = incoming(
            listener,
            acceptor,
            shutdown.clone(),
            &tracker,
            2,
            metrics.clone(),
        );
        let dial = || async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("127.0.0.1").unwrap();
            let mut tls = connector.connect(name, tcp).await?;
            // TLS 1.3: the server's verdict comes with its first reply.
            tls.write_all(b"x").await?;
            tls.flush().await?;
            Ok::<_, io::Error>(tls)
        };
        let wait = Duration::from_secs(20);
        let (_a, _b) = (dial().await.unwrap(), dial().await.unwrap());
        let first = tokio::time::timeout(wait, conns.recv()).await.unwrap();
        let _second = tokio::time::timeout(wait, conns.recv()).await.unwrap();
        // A third is closed before any TLS.
        assert!(dial().await.is_err(), "a third connection is refused");
        assert_eq!(open(&metrics), 2);
        // One ends: there is room again.
        drop(first);
        assert_eq!(open(&metrics), 1);
        let _c = dial().await.unwrap();
        let third = tokio::time::timeout(wait, conns.recv()).await.unwrap();
        assert!(third.unwrap().unwrap().info.peer.is_ok());
        assert_eq!(open(&metrics), 1, "the third was dropped after the check");
        shutdown.cancel();
        tracker.close();
        tracker.wait().await;
    }
}
