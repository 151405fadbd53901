//! The API's connections: mutual TLS through `vigil-net`, handed to tonic.
//!
//! tonic's built-in TLS has no CRL, so the shared listener plumbing
//! (`vigil_net::Front::serve_tls`) accepts and handshakes with the rustls
//! config from `vigil-pki`, which checks the client certificate against the
//! CA *and* the CRL and follows our own certificate files. A finished
//! mutual handshake is this protocol's authentication: the connection is
//! marked authenticated and goes to tonic, holding its place under the
//! caps until tonic drops it. Until then it is under the pre-authentication
//! deadline and the first to be shed when the listener is full. The peer's
//! identity (CN) and role (OU) travel with the stream as tonic
//! [`Connected`] info, and the service reads them from every request.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::server::Connected;
use tracing::{debug, info};
use vigil_net::{Conn, Front};
use vigil_pki::Peer;

use crate::metrics::{Metrics, Open, OpenKind};

/// Finished connections waiting for tonic to pick them up. When full, the
/// connection tasks wait (tonic takes connections as fast as it can).
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
    conn: Conn<TlsStream<TcpStream>>,
    info: ConnInfo,
    /// Counts it in `vigil_ops_api_connections` while it is open.
    _open: Open,
    /// Its certificate in the peer expiry figures while it is open.
    _expiry: Option<vigil_telemetry::peer_expiry::PeerCert>,
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
        Pin::new(&mut self.conn).poll_read(cx, buf)
    }
}

impl AsyncWrite for ApiConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.conn).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.conn).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.conn).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.conn).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.conn.is_write_vectored()
    }
}

/// Accepts on `listener` through `front` until `shutdown`, in a task on
/// `tracker`; finished connections come out of the returned channel
/// (closed once the front stopped).
pub fn incoming(
    front: Front,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
    metrics: std::sync::Arc<Metrics>,
) -> mpsc::Receiver<Result<ApiConn, io::Error>> {
    let (tx, rx) = mpsc::channel(ACCEPTED_CAPACITY);
    tracker.spawn(async move {
        front
            .serve_tls(listener, acceptor, shutdown, move |conn| {
                let tx = tx.clone();
                let metrics = metrics.clone();
                async move {
                    // rustls verified the chain against the CA and the
                    // CRL; identity and role come from that certificate.
                    let (peer, not_after) = match conn.get_ref().get_ref().1.peer_certificates() {
                        Some([leaf, ..]) => (
                            Peer::from_cert(leaf).map_err(|e| e.to_string()),
                            vigil_pki::reload::not_after(leaf).ok(),
                        ),
                        _ => (Err("no client certificate".to_owned()), None),
                    };
                    let expiry = match (&peer, not_after) {
                        (Ok(p), Some(t)) => Some(metrics.peer_expiry.connected(
                            p.identity.as_str(),
                            p.role.as_str(),
                            t,
                        )),
                        _ => None,
                    };
                    match &peer {
                        Ok(p) => {
                            debug!(identity = %p.identity, role = %p.role, "api: authenticated")
                        }
                        Err(e) => info!(error = %e, "api: certificate without a valid identity"),
                    }
                    conn.authenticated();
                    let info = ConnInfo {
                        addr: conn.peer_addr(),
                        peer,
                    };
                    let conn = ApiConn {
                        conn,
                        info,
                        _open: metrics.open(OpenKind::ApiConnection),
                        _expiry: expiry,
                    };
                    let _ = tx.send(Ok(conn)).await;
                }
            })
            .await;
        debug!("api stopped accepting");
    });
    rx
}
