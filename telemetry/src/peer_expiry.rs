//! When the certificates of connected peers expire.
//!
//! A server (the broker for its MQTT clients, the ops center for its API
//! clients) registers every authenticated connection with the notAfter of
//! the client's certificate and holds the returned [`PeerCert`] for as long
//! as the connection lasts. `/metrics` then shows the earliest expiry among
//! the peers connected now and how many of them expire within
//! [`SOON_DAYS`]; a connection whose certificate expires that soon is
//! counted and logged, one line per [`LOG_INTERVAL`] at most (with the
//! count of those held back), since a region set up in one day sees all
//! its posts come due together.
//!
//! The table holds one entry per distinct notAfter (with a count), bounded
//! by the server's connection cap.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::{Exposition, log_limit::LogLimiter};

/// A peer certificate expiring within this many days is "soon": logged,
/// counted, and in `vigil_tls_peer_certs_expiring_soon`. The same figure
/// as `vigil pki list`'s default `--within`.
pub const SOON_DAYS: i64 = 30;

/// At most one "expires soon" log line per this long.
pub const LOG_INTERVAL: Duration = Duration::from_secs(60);

const DAY: i64 = 86_400;

#[derive(Debug)]
struct Inner {
    /// notAfter (Unix seconds) → connections open with it.
    open: Mutex<BTreeMap<i64, u64>>,
    soon_total: AtomicU64,
    log: LogLimiter,
}

/// See the module documentation. Cheap to clone: clones share one table.
#[derive(Debug, Clone)]
pub struct PeerExpiry {
    inner: Arc<Inner>,
}

impl Default for PeerExpiry {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                open: Mutex::new(BTreeMap::new()),
                soon_total: AtomicU64::new(0),
                log: LogLimiter::new(LOG_INTERVAL),
            }),
        }
    }
}

/// Registration of one connected peer; dropping it (the connection ended)
/// takes the peer out of the figures.
#[derive(Debug)]
pub struct PeerCert {
    inner: Arc<Inner>,
    not_after: i64,
}

impl Drop for PeerCert {
    fn drop(&mut self) {
        let mut open = lock(&self.inner.open);
        if let Some(n) = open.get_mut(&self.not_after) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.not_after);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is one map update: the map stays consistent
    // even if a holder panicked.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl PeerExpiry {
    /// A peer `identity` (of `role`) authenticated with a certificate valid
    /// until `not_after` (Unix seconds). Hold the result while it is
    /// connected.
    pub fn connected(&self, identity: &str, role: &str, not_after: i64) -> PeerCert {
        self.connected_at(identity, role, not_after, unix_now())
    }

    /// [`connected`](Self::connected) at a given time (Unix seconds).
    pub fn connected_at(&self, identity: &str, role: &str, not_after: i64, now: i64) -> PeerCert {
        *lock(&self.inner.open).entry(not_after).or_insert(0) += 1;
        if not_after - now <= SOON_DAYS * DAY {
            self.inner.soon_total.fetch_add(1, Relaxed);
            if let Some(count) = self.inner.log.hit() {
                tracing::warn!(
                    identity,
                    role,
                    not_after,
                    days_left = (not_after - now).div_euclid(DAY),
                    count,
                    "peer certificate expires within {SOON_DAYS} days: renew it (vigil pki renew)"
                );
            }
        }
        PeerCert {
            inner: self.inner.clone(),
            not_after,
        }
    }

    /// The earliest notAfter among connected peers, if any.
    pub fn earliest(&self) -> Option<i64> {
        lock(&self.inner.open).keys().next().copied()
    }

    /// Connected peers whose certificate expires within [`SOON_DAYS`] of
    /// `now` (or has expired).
    pub fn soon_at(&self, now: i64) -> u64 {
        lock(&self.inner.open)
            .range(..=now + SOON_DAYS * DAY)
            .map(|(_, n)| n)
            .sum()
    }

    /// Connections accepted with a certificate that expired within
    /// [`SOON_DAYS`], since start.
    pub fn soon_total(&self) -> u64 {
        self.inner.soon_total.load(Relaxed)
    }

    /// Writes the gauges and the counter. The earliest-expiry gauge is left
    /// out while no peer is connected (there is no such time).
    pub fn export(&self, out: &mut Exposition) {
        if let Some(earliest) = self.earliest() {
            out.gauge(
                "vigil_tls_peer_cert_earliest_expiry_timestamp_seconds",
                "Earliest notAfter among the certificates of the peers connected now, in seconds since the Unix epoch.",
                earliest as f64,
            );
        }
        out.gauge(
            "vigil_tls_peer_certs_expiring_soon",
            "Peers connected now whose certificate expires within 30 days (or has expired).",
            self.soon_at(unix_now()) as f64,
        );
        out.counter(
            "vigil_tls_peer_cert_expiring_soon_total",
            "Connections authenticated with a certificate expiring within 30 days.",
            self.soon_total(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_and_soon_follow_the_connections() {
        let expiry = PeerExpiry::default();
        let now = 1_800_000_000;
        assert_eq!(expiry.earliest(), None);
        let far = expiry.connected_at("p-1", "post", now + 300 * DAY, now);
        let near = expiry.connected_at("p-2", "post", now + 10 * DAY, now);
        let near_too = expiry.connected_at("p-3", "post", now + 10 * DAY, now);
        let edge = expiry.connected_at("p-4", "post", now + SOON_DAYS * DAY + 1, now);
        assert_eq!(expiry.earliest(), Some(now + 10 * DAY));
        assert_eq!(expiry.soon_at(now), 2);
        assert_eq!(expiry.soon_total(), 2);
        // A day later the fourth is due as well.
        assert_eq!(expiry.soon_at(now + DAY), 3);
        drop(near);
        assert_eq!(expiry.earliest(), Some(now + 10 * DAY));
        drop(near_too);
        assert_eq!(expiry.earliest(), Some(now + SOON_DAYS * DAY + 1));
        assert_eq!(expiry.soon_at(now), 0);
        // The counter counts connections, not what is open.
        assert_eq!(expiry.soon_total(), 2);
        drop((far, edge));
        assert_eq!(expiry.earliest(), None);

        let mut out = Exposition::new();
        expiry.export(&mut out);
        let text = out.render();
        assert!(!text.contains("earliest_expiry"), "{text}");
        assert!(
            text.contains("vigil_tls_peer_cert_expiring_soon_total 2"),
            "{text}"
        );
        let _held = expiry.connected_at("p-5", "post", now, now);
        let mut out = Exposition::new();
        expiry.export(&mut out);
        assert!(
            out.render()
                .contains("vigil_tls_peer_cert_earliest_expiry_timestamp_seconds 1800000000"),
            "{}",
            out.render()
        );
    }
}
