//! HTTP/1 on a [`Front`], for hyper services (axum routers are hyper
//! services too).
//!
//! A connection counts as authenticated once its first request's headers
//! arrived: until then it is an idle or slow socket, under the front's
//! pre-authentication deadline and first to be shed. Services that check
//! a token or a certificate still answer 401 themselves; what this layer
//! guards is the listener, not the resource. Headers of every request must
//! arrive within the pre-authentication deadline (hyper's header timeout,
//! which starts as soon as hyper waits for a request: a kept-alive
//! connection with no new request is closed after it too); the front's idle
//! timeout bounds a request whose body or answer stalls. On shutdown each
//! connection finishes the request in hand and closes.

use std::{error::Error as StdError, future::Future};

use hyper::{
    Request, Response,
    body::{Body, Incoming},
    server::conn::http1,
    service::Service,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::{Conn, Front};

type BoxError = Box<dyn StdError + Send + Sync>;

/// Serves `service` over HTTP/1 on `listener` through `front` until
/// `shutdown`. `service` is cloned for each connection.
pub async fn serve<Svc, B>(
    front: &Front,
    listener: TcpListener,
    shutdown: CancellationToken,
    service: Svc,
) where
    Svc: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
    Svc::Future: Send + 'static,
    Svc::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let header_timeout = front.limits().preauth_deadline;
    front
        .serve(listener, shutdown, move |conn| {
            serve_connection(conn, service.clone(), header_timeout)
        })
        .await;
}

/// Serves one connection (plain or TLS) over HTTP/1: the building block of
/// [`serve`], for fronts that terminate TLS first.
pub fn serve_connection<S, Svc, B>(
    conn: Conn<S>,
    service: Svc,
    header_timeout: std::time::Duration,
) -> impl Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    Svc: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    Svc::Future: Send + 'static,
    Svc::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let auth = conn.authenticator();
    let shutdown = conn.shutdown().clone();
    let peer = conn.peer_addr();
    let service = Authenticating {
        auth,
        inner: service,
    };
    async move {
        let http = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(TokioIo::new(conn), service);
        let mut http = std::pin::pin!(http);
        let result = tokio::select! {
            r = http.as_mut() => r,
            () = shutdown.cancelled() => {
                http.as_mut().graceful_shutdown();
                http.await
            }
        };
        if let Err(error) = result {
            debug!(peer.addr = %peer, %error, "HTTP connection ended");
        }
    }
}

/// Marks the connection authenticated when a request arrives.
#[derive(Debug)]
struct Authenticating<Svc> {
    auth: crate::Authenticator,
    inner: Svc,
}

impl<Svc, B> Service<Request<Incoming>> for Authenticating<Svc>
where
    Svc: Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<B>;
    type Error = Svc::Error;
    type Future = Svc::Future;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.auth.authenticated();
        self.inner.call(req)
    }
}
