//! The channel to the API: TCP, then TLS with our own rustls client config
//! (`vigil_pki`'s: the server must chain to the region CA and, with a CRL,
//! not be revoked; we present our certificate), then HTTP/2 for tonic.
//!
//! tonic's own TLS cannot take a rustls config, so the TLS handshake happens
//! in a connector of ours and tonic speaks plain HTTP/2 over its stream.

use std::{
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use anyhow::{Result, anyhow};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};
use tonic::{
    codegen::{Service, http::Uri},
    transport::{Channel, Endpoint},
};
use vigil_pki::{Peer, TlsConfig};
use vigil_proto::v1::ops_center_client::OpsCenterClient;

use super::{Connection, root_cause};
use crate::Usage;

/// From the first SYN to a finished TLS handshake.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings this often, even on an idle connection: a connection that
/// died without a FIN (a cable, a NAT timeout) is then closed and the next
/// call reconnects, instead of the call waiting on it.
pub(crate) const KEEPALIVE_EVERY: Duration = Duration::from_secs(20);
/// A ping unanswered this long closes the connection.
pub(crate) const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected client and who it is.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) client: OpsCenterClient<Channel>,
    /// Identity and role of our certificate.
    pub(crate) me: Peer,
    /// `HOST:PORT` as given, for messages.
    pub(crate) server: String,
    /// The last I/O error on the connection, for messages.
    pub(crate) io_error: LastIoError,
}

/// What went wrong under HTTP/2, for messages: hyper reports a connection
/// the server closed on us only as "connection closed". With TLS 1.3 a
/// server that refuses our certificate (revoked, expired, another CA) does
/// so after our side of the handshake finished: its alert is usually lost
/// to the TCP reset that follows, and all we see is a connection that
/// closed before the server said anything.
#[derive(Debug, Clone, Default)]
pub(crate) struct LastIoError(Arc<Mutex<IoState>>);

#[derive(Debug, Default)]
struct IoState {
    /// A read error wins over a write error: what the server said explains
    /// more than the broken pipe that followed.
    read: Option<String>,
    write: Option<String>,
    /// The server sent us something over TLS (its HTTP/2 settings, at
    /// least): it accepted the connection.
    answered: bool,
}

impl LastIoError {
    /// The error, and whether the server had answered before it.
    pub(crate) fn get(&self) -> Option<(String, bool)> {
        let state = self.0.lock().ok()?;
        let e = state.read.clone().or_else(|| state.write.clone())?;
        Some((e, state.answered))
    }

    fn set(&self, e: &io::Error, read: bool) {
        if let Ok(mut state) = self.0.lock() {
            let slot = if read {
                &mut state.read
            } else {
                &mut state.write
            };
            *slot = Some(e.to_string());
        }
    }

    fn reset(&self) {
        if let Ok(mut state) = self.0.lock() {
            *state = IoState::default();
        }
    }

    fn answered(&self) {
        if let Ok(mut state) = self.0.lock() {
            state.answered = true;
        }
    }
}

/// `HOST:PORT` split, with HOST as the name checked against the server's
/// certificate. IPv6 literals come in brackets: `[::1]:50051`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Server {
    pub(crate) host: String,
    pub(crate) port: u16,
}

pub(crate) fn parse_server(s: &str) -> Result<Server, Usage> {
    let bad = |why: &str| Usage(format!("--server {s:?}: {why} (expected HOST:PORT)"));
    let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| bad("bad port"))?;
    Ok(Server {
        host: host.to_owned(),
        port,
    })
}

impl Connection {
    /// The TLS files, each required (from a flag or the environment).
    fn tls_config(&self) -> Result<TlsConfig, Usage> {
        let need = |v: &Option<std::path::PathBuf>, flag: &str, env: &str| {
            v.clone()
                .ok_or_else(|| Usage(format!("{flag} FILE is required (or set {env})")))
        };
        Ok(TlsConfig {
            ca: need(&self.ca, "--ca", "VIGIL_CA")?,
            cert: need(&self.cert, "--cert", "VIGIL_CERT")?,
            key: need(&self.key, "--key", "VIGIL_KEY")?,
            crl: self.crl.clone(),
        })
    }
}

/// The addresses of `--server`: one `HOST:PORT`, or several separated by
/// commas (replicas of one operations center), in the order given.
pub(crate) fn servers(conn: &Connection) -> Result<Vec<String>, Usage> {
    let list: Vec<String> = conn
        .server
        .split(',')
        .map(|s| s.trim().to_owned())
        .collect();
    if list.iter().any(String::is_empty) {
        return Err(Usage(format!(
            "--server {:?}: an empty address in the list (expected HOST:PORT[,HOST:PORT...])",
            conn.server
        )));
    }
    for s in &list {
        parse_server(s)?;
    }
    Ok(list)
}

/// Loads the certificates and connects to the first server of `--server`
/// that answers. Bad flags or files are [`Usage`] errors; when no server
/// can be reached or every one refuses the handshake, a plain error names
/// each.
pub(crate) async fn connect(conn: &Connection) -> Result<Session> {
    connect_after(conn, None).await
}

/// [`connect`], trying the servers after `current` first (then the others,
/// `current` last): where a watcher goes when its replica went away.
pub(crate) async fn connect_after(conn: &Connection, current: Option<&str>) -> Result<Session> {
    let mut list = servers(conn)?;
    if let Some(at) = current.and_then(|c| list.iter().position(|s| s == c)) {
        list.rotate_left(at + 1);
    }
    let mut failures = Vec::new();
    for server in &list {
        match connect_one(conn, server).await {
            Ok(session) => return Ok(session),
            Err(e) if e.is::<Usage>() => return Err(e),
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    Err(anyhow!(failures.join("; ")))
}

async fn connect_one(conn: &Connection, address: &str) -> Result<Session> {
    let conn = &Connection {
        server: address.to_owned(),
        ..conn.clone()
    };
    let server = parse_server(&conn.server)?;
    let material = conn
        .tls_config()?
        .load()
        .map_err(|e| Usage(e.to_string()))?;
    let me = material.own_peer().clone();
    let mut config = material.client_config().map_err(|e| Usage(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = ServerName::try_from(server.host.clone()).map_err(|_| {
        Usage(format!(
            "--server {:?}: {:?} is not a valid host name",
            conn.server, server.host
        ))
    })?;
    let io_error = LastIoError::default();
    let connector = Connector {
        host: server.host.clone(),
        port: server.port,
        name,
        tls: TlsConnector::from(Arc::new(config)),
        io_error: io_error.clone(),
    };
    // The URI only fills in :authority; the connector decides where to go.
    let endpoint = Endpoint::from_shared(format!("http://{}", conn.server))
        .map_err(|e| Usage(format!("--server {:?}: {e}", conn.server)))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_EVERY)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    let channel = endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| {
            anyhow!(
                "cannot connect to the operations center at {}: {}",
                conn.server,
                root_cause(&e).unwrap_or_else(|| e.to_string())
            )
        })?;
    Ok(Session {
        client: OpsCenterClient::new(channel),
        me,
        server: conn.server.clone(),
        io_error,
    })
}

/// Dials the server and runs the TLS handshake (tonic adds HTTP/2).
#[derive(Clone)]
struct Connector {
    host: String,
    port: u16,
    name: ServerName<'static>,
    tls: TlsConnector,
    io_error: LastIoError,
}

type Conn = TokioIo<Watched<TlsStream<TcpStream>>>;
type Connecting = Pin<Box<dyn Future<Output = io::Result<Conn>> + Send>>;

impl Service<Uri> for Connector {
    type Response = Conn;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let this = self.clone();
        // A new connection: what went wrong on the last one no longer
        // explains anything.
        this.io_error.reset();
        Box::pin(async move {
            let tcp = TcpStream::connect((this.host.as_str(), this.port)).await?;
            tcp.set_nodelay(true)?;
            let tls = this.tls.connect(this.name, tcp).await?;
            Ok(TokioIo::new(Watched {
                inner: tls,
                last: this.io_error,
            }))
        })
    }
}

/// A stream that remembers its last error in a [`LastIoError`].
struct Watched<T> {
    inner: T,
    last: LastIoError,
}

impl<T> Watched<T> {
    fn note<R>(&self, r: Poll<io::Result<R>>, read: bool) -> Poll<io::Result<R>> {
        if let Poll::Ready(Err(e)) = &r {
            self.last.set(e, read);
        }
        r
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.last.answered();
        }
        self.note(r, true)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note(r, false)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.note(r, false)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.note(r, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_parse_with_names_ips_and_bracketed_ipv6() {
        let s = |h: &str, p| Server {
            host: h.into(),
            port: p,
        };
        assert_eq!(
            parse_server("ops.example:50051").unwrap(),
            s("ops.example", 50051)
        );
        assert_eq!(parse_server("127.0.0.1:1").unwrap(), s("127.0.0.1", 1));
        assert_eq!(parse_server("[::1]:50051").unwrap(), s("::1", 50051));
        for bad in ["localhost", ":50051", "h:0", "h:x", "h:70000"] {
            assert!(parse_server(bad).is_err(), "{bad}");
        }
    }
}
