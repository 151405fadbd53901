//! The connection a protocol handler gets.
//!
//! A [`Conn`] is the (TLS or plain) stream, the peer's address, and the
//! handle through which the handler says the peer is authenticated. It
//! records when a byte last moved, for the idle timeout, and holds the
//! connection's place under the listener's caps until it is dropped, so a
//! handler that passes it on (to tonic, say) keeps the count right.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use crate::table::{Slot, Table};

/// What the connection's task and its [`Conn`] share.
#[derive(Debug)]
pub(crate) struct Shared {
    origin: Instant,
    /// Milliseconds from `origin` to the last byte read or written.
    last_io_ms: AtomicU64,
    authenticated: AtomicBool,
}

impl Shared {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            origin: Instant::now(),
            last_io_ms: AtomicU64::new(0),
            authenticated: AtomicBool::new(false),
        })
    }

    fn touch(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_io_ms.store(ms, Ordering::Relaxed);
    }

    pub(crate) fn origin(&self) -> Instant {
        self.origin
    }

    pub(crate) fn last_io(&self) -> Instant {
        self.origin + std::time::Duration::from_millis(self.last_io_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn is_authenticated(&self) -> bool {
        self.authenticated.load(Ordering::Acquire)
    }
}

/// Marks one connection authenticated; cloned out of its [`Conn`] for
/// handlers that hand the stream to a library (hyper) and learn of the
/// first valid message inside a callback.
#[derive(Debug, Clone)]
pub struct Authenticator {
    table: Arc<Table>,
    id: u64,
    shared: Arc<Shared>,
    peer: SocketAddr,
}

impl Authenticator {
    /// See [`Conn::authenticated`].
    pub fn authenticated(&self) {
        if self.table.authenticate(self.id) {
            self.shared.authenticated.store(true, Ordering::Release);
            tracing::trace!(peer.addr = %self.peer, "authenticated");
        }
    }

    /// Whether the connection was marked authenticated.
    pub fn is_authenticated(&self) -> bool {
        self.shared.is_authenticated()
    }
}

/// A connection admitted by a [`crate::Front`]; see the module docs.
#[derive(Debug)]
pub struct Conn<S> {
    stream: S,
    peer: SocketAddr,
    shared: Arc<Shared>,
    slot: Slot,
    shutdown: CancellationToken,
}

impl<S> Conn<S> {
    pub(crate) fn new(
        stream: S,
        peer: SocketAddr,
        shared: Arc<Shared>,
        slot: Slot,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            stream,
            peer,
            shared,
            slot,
            shutdown,
        }
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The underlying stream (e.g. to read the peer's TLS certificate).
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// The underlying stream, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// The peer proved itself (mutual TLS done, first valid frame or
    /// request): from now on the connection is never shed, and the idle
    /// timeout replaces the pre-authentication deadline. Calling it again
    /// does nothing.
    pub fn authenticated(&self) {
        self.authenticator().authenticated();
    }

    /// A handle to mark this connection authenticated from elsewhere.
    pub fn authenticator(&self) -> Authenticator {
        Authenticator {
            table: self.slot.table().clone(),
            id: self.slot.id(),
            shared: self.shared.clone(),
            peer: self.peer,
        }
    }

    /// Whether [`Conn::authenticated`] was called.
    pub fn is_authenticated(&self) -> bool {
        self.shared.is_authenticated()
    }

    /// Cancelled when the server stops: finish the message in hand, answer
    /// it, and return. Handlers still running after the listener's grace
    /// period are dropped.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Conn<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.shared.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Conn<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.shared.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.shared.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
