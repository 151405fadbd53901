//! Counters of one [`crate::Front`], read by the daemons' `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters; every field only goes up except `open` and
/// `unauthenticated`.
#[derive(Debug, Default)]
pub struct Stats {
    pub(crate) accepted: AtomicU64,
    pub(crate) open: AtomicU64,
    pub(crate) unauthenticated: AtomicU64,
    pub(crate) authenticated: AtomicU64,
    pub(crate) refused_source: AtomicU64,
    pub(crate) refused_full: AtomicU64,
    pub(crate) shed: AtomicU64,
    pub(crate) preauth_timeouts: AtomicU64,
    pub(crate) idle_timeouts: AtomicU64,
    pub(crate) tls_failures: AtomicU64,
    pub(crate) accept_errors: AtomicU64,
}

/// A copy of [`Stats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Connections accepted and admitted.
    pub accepted: u64,
    /// Connections open now.
    pub open: u64,
    /// Of those, not yet authenticated.
    pub unauthenticated: u64,
    /// Connections that authenticated.
    pub authenticated: u64,
    /// Closed at accept: their source had its cap of connections, none of
    /// them unauthenticated.
    pub refused_source: u64,
    /// Closed at accept: the total cap was reached, every connection
    /// authenticated.
    pub refused_full: u64,
    /// Unauthenticated connections closed to make room for a newcomer.
    pub shed: u64,
    /// Closed for not authenticating within the pre-authentication deadline.
    pub preauth_timeouts: u64,
    /// Authenticated connections closed for silence.
    pub idle_timeouts: u64,
    /// Failed TLS handshakes.
    pub tls_failures: u64,
    /// Failed `accept` calls that made the loop back off (EMFILE…).
    pub accept_errors: u64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Stats {
    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            accepted: get(&self.accepted),
            open: get(&self.open),
            unauthenticated: get(&self.unauthenticated),
            authenticated: get(&self.authenticated),
            refused_source: get(&self.refused_source),
            refused_full: get(&self.refused_full),
            shed: get(&self.shed),
            preauth_timeouts: get(&self.preauth_timeouts),
            idle_timeouts: get(&self.idle_timeouts),
            tls_failures: get(&self.tls_failures),
            accept_errors: get(&self.accept_errors),
        }
    }
}

impl StatsSnapshot {
    /// Each counter with a metric-name suffix and a help text, for
    /// exposition (`vigil_listener_{suffix}` with a `listener` label).
    pub fn counters(&self) -> [(&'static str, &'static str, u64); 9] {
        [
            ("connections_total", "Connections admitted.", self.accepted),
            (
                "authenticated_total",
                "Connections that authenticated.",
                self.authenticated,
            ),
            (
                "refused_source_total",
                "Connections closed at accept: per-source cap, none of that source unauthenticated.",
                self.refused_source,
            ),
            (
                "refused_full_total",
                "Connections closed at accept: total cap, every connection authenticated.",
                self.refused_full,
            ),
            (
                "shed_total",
                "Unauthenticated connections closed to admit a newer one.",
                self.shed,
            ),
            (
                "preauth_timeouts_total",
                "Connections closed for not authenticating in time.",
                self.preauth_timeouts,
            ),
            (
                "idle_timeouts_total",
                "Authenticated connections closed for silence.",
                self.idle_timeouts,
            ),
            (
                "tls_failures_total",
                "Failed TLS handshakes.",
                self.tls_failures,
            ),
            (
                "accept_errors_total",
                "Failed accepts that made the listener back off.",
                self.accept_errors,
            ),
        ]
    }
}
