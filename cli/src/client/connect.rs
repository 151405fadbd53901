//! The channel to the API: TCP, then TLS with our own rustls client config
//! (`vigil_pki`'s: the server must chain to the region CA and, with a CRL,
//! not be revoked; we present our certificate), then HTTP/2 for tonic.
//!
//! tonic's own TLS cannot take a rustls config, so the TLS handshake happens
//! in a connector of ours and tonic speaks plain HTTP/2 over its stream.

use std::{pin::Pin, sync::Arc, time::Duration};

use anyhow::{Result, anyhow};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
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

/// A connected client and who it is.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) client: OpsCenterClient<Channel>,
    /// Identity and role of our certificate.
    pub(crate) me: Peer,
    /// `HOST:PORT` as given, for messages.
    pub(crate) server: String,
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

/// Loads the certificates and connects. Bad flags or files are [`Usage`]
/// errors; a server that cannot be reached or refuses the handshake is a
/// plain error naming it.
pub(crate) async fn connect(conn: &Connection) -> Result<Session> {
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
    let connector = Connector {
        host: server.host.clone(),
        port: server.port,
        name,
        tls: TlsConnector::from(Arc::new(config)),
    };
    // The URI only fills in :authority; the connector decides where to go.
    let endpoint = Endpoint::from_shared(format!("http://{}", conn.server))
        .map_err(|e| Usage(format!("--server {:?}: {e}", conn.server)))?
        .connect_timeout(CONNECT_TIMEOUT)
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
    })
}

/// Dials the server and runs the TLS handshake (tonic adds HTTP/2).
#[derive(Clone)]
struct Connector {
    host: String,
    port: u16,
    name: ServerName<'static>,
    tls: TlsConnector,
}

type Connecting =
    Pin<Box<dyn Future<Output = std::io::Result<TokioIo<TlsStream<TcpStream>>>> + Send>>;

impl Service<Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect((this.host.as_str(), this.port)).await?;
            tcp.set_nodelay(true)?;
            let tls = this.tls.connect(this.name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
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
