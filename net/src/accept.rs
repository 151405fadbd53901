//! Accepting TCP connections for every Vigil server (broker front, gateway
//! listeners, operations-center API), with one policy for accept errors.
//!
//! An error that concerns one pending connection (reset or aborted in the
//! backlog) is skipped. Any other (EMFILE, ENFILE, ENOBUFS, ENOMEM…) means
//! resources are short and may come back as connections close: it is
//! logged and the accept loop backs off, doubling from 5 ms to 1 s, instead
//! of spinning or failing. Shutdown interrupts the back-off.

use std::{io, net::SocketAddr, time::Duration};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// First pause after a failed `accept`; doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(5);
/// Longest pause after failed `accept`s.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The next connection on `listener`, or `None` once `shutdown` is
/// cancelled. `on_resource_error` is called for each error that makes the
/// loop back off (for a counter).
pub async fn accept(
    listener: &TcpListener,
    shutdown: &CancellationToken,
    mut on_resource_error: impl FnMut(&io::Error),
) -> Option<(TcpStream, SocketAddr)> {
    let mut backoff = MIN_BACKOFF;
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return None,
            r = listener.accept() => r,
        };
        match accepted {
            Ok(pair) => return Some(pair),
            Err(e) if is_connection_error(&e) => {
                debug!(error = %e, "accept: connection error");
            }
            Err(e) => {
                on_resource_error(&e);
                warn!(error = %e, ?backoff, "accept failed; backing off");
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Errors that concern one pending connection, not the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepts_and_stops_on_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let client = TcpStream::connect(addr).await.unwrap();
        let (_, peer) = accept(&listener, &shutdown, |_| {}).await.unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        shutdown.cancel();
        assert!(accept(&listener, &shutdown, |_| {}).await.is_none());
    }

    #[test]
    fn only_per_connection_errors_are_skipped_silently() {
        assert!(is_connection_error(&io::ErrorKind::ConnectionReset.into()));
        assert!(is_connection_error(
            &io::ErrorKind::ConnectionAborted.into()
        ));
        assert!(!is_connection_error(&io::Error::from_raw_os_error(24))); // EMFILE
    }
}
