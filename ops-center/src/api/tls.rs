//! The API's mutual TLS: our own rustls acceptor in front of tonic.
//!
//! tonic's built-in TLS has no CRL; the rustls config from `vigil-pki`
//! checks the client certificate against the CA *and* the CRL, so we accept
//! TCP ourselves and hand tonic finished TLS streams. The accept loop only
//! accepts: each handshake runs in its own task under
//! [`HANDSHAKE_TIMEOUT`], so an idle socket delays nobody but itself. The
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
    sync::{Semaphore, mpsc},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::server::Connected;
use tracing::{Instrument, debug, info, info_span};
use vigil_pki::Peer;

/// From accept to finished TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more connections wait for a slot (within
/// their own timeout), so a flood of idle sockets cannot eat the CPU.
pub const MAX_HANDSHAKES: usize = 64;
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
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> mpsc::Receiver<Result<ApiConn, io::Error>> {
    let (tx, rx) = mpsc::channel(ACCEPTED_CAPACITY);
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let inner = tracker.clone();
    tracker.spawn(async move {
        while let Some((tcp, addr)) = vigil_pki::accept::accept(&listener, &shutdown, |_| {}).await
        {
            let span = info_span!("api_conn", peer.addr = %addr);
            let (acceptor, tx, handshakes, cancel) = (
                acceptor.clone(),
                tx.clone(),
                handshakes.clone(),
                shutdown.clone(),
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
