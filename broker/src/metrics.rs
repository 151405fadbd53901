//! Counters for connections, refusals by reason, and messages taken and
//! delivered.
//!
//! Plain relaxed atomics: each is a monotonic count read only for reports,
//! so no ordering between them is needed, and an increment on the message
//! path costs one uncontended atomic add. [`Metrics::snapshot`] copies them
//! into a plain struct for logs and tests.
//!
//! The connection counts before TLS (accepted, open, refused or shed at a
//! cap, accept errors) are the public listener's, kept by `vigil-net`
//! ([`Metrics::listener`]); the snapshot reads them from there, so the
//! broker's own names (`accepted`, `active`, `capacity`, `shed`) stay.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering::Relaxed},
};

/// Why a connection, a packet or a subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reject {
    /// `limits.max_connections` or `max_connections_per_source` reached
    /// with every connection there authenticated: the newcomer was closed
    /// at once.
    Capacity,
    /// At a cap, this connection was the oldest one not yet authenticated
    /// (TLS handshake and CONNECT): it was closed to admit a newer one.
    Shed,
    /// TLS handshake not finished within `limits.handshake_timeout`.
    HandshakeTimeout,
    /// The client presented no certificate.
    NoCertificate,
    /// The client certificate is revoked (on the CRL).
    Revoked,
    /// The client certificate did not verify (unknown CA, expired, wrong use…).
    BadCertificate,
    /// Any other TLS failure (protocol error, reset during the handshake).
    Tls,
    /// The verified certificate carries no usable identity or role.
    Identity,
    /// No CONNECT within `limits.connect_timeout`.
    ConnectTimeout,
    /// Role other than `post`/`ops`, or a client id other than the identity.
    NotAuthorized,
    /// A will topic the identity may not publish to.
    Will,
    /// A PUBLISH to a topic the identity may not publish to.
    Publish,
    /// A SUBSCRIBE with a filter the identity may not use.
    Subscribe,
    /// A PUBLISH payload above `limits.max_payload_bytes`, or a packet above
    /// the framing cap.
    PayloadTooLarge,
    /// Not MQTT 3.1.1 or 5, a malformed packet, or a packet a client must
    /// not send.
    Protocol,
    /// The embedded router could not be reached or refused the session.
    Router,
    /// A CONNECT that would have taken over its identity's session too soon
    /// after the last takeover (two clients sharing one certificate).
    Takeover,
    /// A post over its publish budget (`limits.post_publish_rate`): its
    /// connection was not read until the budget refilled.
    Throttled,
}

impl Reject {
    /// Every reason, in the order of [`MetricsSnapshot::rejects`].
    pub const ALL: [Reject; 18] = [
        Reject::Capacity,
        Reject::Shed,
        Reject::HandshakeTimeout,
        Reject::NoCertificate,
        Reject::Revoked,
        Reject::BadCertificate,
        Reject::Tls,
        Reject::Identity,
        Reject::ConnectTimeout,
        Reject::NotAuthorized,
        Reject::Will,
        Reject::Publish,
        Reject::Subscribe,
        Reject::PayloadTooLarge,
        Reject::Protocol,
        Reject::Router,
        Reject::Takeover,
        Reject::Throttled,
    ];

    /// Stable name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::Capacity => "capacity",
            Reject::Shed => "shed",
            Reject::HandshakeTimeout => "handshake_timeout",
            Reject::NoCertificate => "no_certificate",
            Reject::Revoked => "revoked",
            Reject::BadCertificate => "bad_certificate",
            Reject::Tls => "tls",
            Reject::Identity => "identity",
            Reject::ConnectTimeout => "connect_timeout",
            Reject::NotAuthorized => "not_authorized",
            Reject::Will => "will",
            Reject::Publish => "publish",
            Reject::Subscribe => "subscribe",
            Reject::PayloadTooLarge => "payload_too_large",
            Reject::Protocol => "protocol",
            Reject::Router => "router",
            Reject::Takeover => "takeover",
            Reject::Throttled => "throttled",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The broker's live counters.
#[derive(Debug, Default)]
pub struct Metrics {
    listener: Arc<vigil_net::Stats>,
    authenticated: AtomicU64,
    handshakes_in_progress: AtomicU64,
    publishes_in: AtomicU64,
    publishes_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    takeovers: AtomicU64,
    direct_dropped: AtomicU64,
    rejects: [AtomicU64; Reject::ALL.len()],
    /// Certificate expiry of the clients connected now; exported beside
    /// the snapshot (`vigil_tls_peer_*`).
    pub peer_expiry: vigil_telemetry::peer_expiry::PeerExpiry,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// TCP connections accepted (admitted, or closed at once at a cap).
    pub accepted: u64,
    /// Connections whose CONNECT was accepted (CONNACK sent).
    pub authenticated: u64,
    /// Connections open now (accepted and not yet closed).
    pub active: u64,
    /// TLS handshakes running now.
    pub handshakes_in_progress: u64,
    /// Failed `accept` calls (e.g. EMFILE), each followed by a back-off.
    pub accept_errors: u64,
    /// PUBLISH packets taken from clients.
    pub publishes_in: u64,
    /// PUBLISH packets delivered to clients.
    pub publishes_out: u64,
    /// Bytes of PUBLISH packets taken from clients.
    pub bytes_in: u64,
    /// Bytes of PUBLISH packets delivered to clients.
    pub bytes_out: u64,
    /// Sessions replaced by a newer connection with the same identity.
    pub takeovers: u64,
    /// Receipts and commands not delivered: the post was not connected, had
    /// not subscribed, or was not reading.
    pub post_messages_dropped: u64,
    /// Refusals, indexed like [`Reject::ALL`]; see [`MetricsSnapshot::rejected`].
    pub rejects: [u64; Reject::ALL.len()],
    /// The public listener's own counters (`vigil_listener_*{listener="mqtt"}`).
    pub listener: vigil_net::StatsSnapshot,
}

impl MetricsSnapshot {
    /// How many refusals of this kind were counted.
    pub fn rejected(&self, reason: Reject) -> u64 {
        self.rejects[reason.index()]
    }

    /// Refusals of every kind.
    pub fn rejected_total(&self) -> u64 {
        self.rejects.iter().sum()
    }
}

impl MetricsSnapshot {
    /// Adds the counters to a Prometheus exposition (`vigil_broker_*`).
    pub fn export(&self, out: &mut vigil_telemetry::Exposition) {
        out.counter(
            "vigil_broker_connections_accepted_total",
            "TCP connections accepted.",
            self.accepted,
        );
        out.counter(
            "vigil_broker_connections_authenticated_total",
            "Connections whose certificate and CONNECT were accepted.",
            self.authenticated,
        );
        out.gauge(
            "vigil_broker_connections_active",
            "Client connections open now.",
            self.active as f64,
        );
        out.gauge(
            "vigil_broker_handshakes_in_progress",
            "TLS handshakes running now.",
            self.handshakes_in_progress as f64,
        );
        out.counter(
            "vigil_broker_accept_errors_total",
            "Failed accept calls (each followed by a back-off).",
            self.accept_errors,
        );
        out.counter(
            "vigil_broker_publishes_in_total",
            "PUBLISH packets taken from clients and routed.",
            self.publishes_in,
        );
        out.counter(
            "vigil_broker_publishes_out_total",
            "PUBLISH packets delivered to clients.",
            self.publishes_out,
        );
        out.counter(
            "vigil_broker_bytes_in_total",
            "Bytes of PUBLISH packets taken from clients.",
            self.bytes_in,
        );
        out.counter(
            "vigil_broker_bytes_out_total",
            "Bytes of PUBLISH packets delivered to clients.",
            self.bytes_out,
        );
        out.counter(
            "vigil_broker_takeovers_total",
            "Sessions replaced by a newer connection with the same identity.",
            self.takeovers,
        );
        out.counter(
            "vigil_broker_post_messages_dropped_total",
            "Receipts and commands for a post that was not connected, not subscribed, or not reading.",
            self.post_messages_dropped,
        );
        for reason in Reject::ALL {
            out.counter_with(
                "vigil_broker_rejects_total",
                "Refused connections, packets and subscriptions, by reason.",
                &[("reason", reason.as_str())],
                self.rejected(reason),
            );
        }
        out.listener(LISTENER, &self.listener);
    }
}

/// The public listener's name in logs and in `vigil_listener_*` metrics.
pub const LISTENER: &str = "mqtt";

impl Metrics {
    pub fn snapshot(&self) -> MetricsSnapshot {
        let listener = self.listener.snapshot();
        let refused = listener.refused_source + listener.refused_full;
        let mut rejects: [u64; Reject::ALL.len()] =
            std::array::from_fn(|i| self.rejects[i].load(Relaxed));
        rejects[Reject::Capacity.index()] += refused;
        rejects[Reject::Shed.index()] += listener.shed;
        MetricsSnapshot {
            accepted: listener.accepted + refused,
            authenticated: self.authenticated.load(Relaxed),
            active: listener.open,
            handshakes_in_progress: self.handshakes_in_progress.load(Relaxed),
            accept_errors: listener.accept_errors,
            publishes_in: self.publishes_in.load(Relaxed),
            publishes_out: self.publishes_out.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            takeovers: self.takeovers.load(Relaxed),
            post_messages_dropped: self.direct_dropped.load(Relaxed),
            rejects,
            listener,
        }
    }

    /// The counters the public listener (`vigil-net`) keeps.
    pub(crate) fn listener(&self) -> &Arc<vigil_net::Stats> {
        &self.listener
    }

    pub(crate) fn reject(&self, reason: Reject) {
        self.rejects[reason.index()].fetch_add(1, Relaxed);
    }

    pub(crate) fn authenticated(&self) {
        self.authenticated.fetch_add(1, Relaxed);
    }

    pub(crate) fn direct_dropped(&self) {
        self.direct_dropped.fetch_add(1, Relaxed);
    }

    pub(crate) fn takeover(&self) {
        self.takeovers.fetch_add(1, Relaxed);
    }

    pub(crate) fn relayed_in(&self, publishes: u64, bytes: u64) {
        if publishes > 0 {
            self.publishes_in.fetch_add(publishes, Relaxed);
        }
        self.bytes_in.fetch_add(bytes, Relaxed);
    }

    pub(crate) fn relayed_out(&self, publishes: u64, bytes: u64) {
        if publishes > 0 {
            self.publishes_out.fetch_add(publishes, Relaxed);
        }
        self.bytes_out.fetch_add(bytes, Relaxed);
    }

    /// Counts a running handshake until the guard drops.
    pub(crate) fn handshaking(&self) -> Gauge<'_> {
        Gauge::up(&self.handshakes_in_progress)
    }
}

/// Decrements a gauge when dropped, however the task ends.
#[derive(Debug)]
pub(crate) struct Gauge<'a>(&'a AtomicU64);

impl<'a> Gauge<'a> {
    fn up(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Relaxed);
        Self(counter)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_have_distinct_slots_and_names() {
        for (i, reason) in Reject::ALL.into_iter().enumerate() {
            assert_eq!(reason.index(), i);
        }
        let mut names: Vec<_> = Reject::ALL.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Reject::ALL.len());
    }

    #[test]
    fn counts_and_gauges() {
        let m = Metrics::default();
        m.reject(Reject::Publish);
        m.reject(Reject::Publish);
        m.relayed_in(3, 600);
        {
            let _running = m.handshaking();
            assert_eq!(m.snapshot().handshakes_in_progress, 1);
        }
        let s = m.snapshot();
        assert_eq!(s.handshakes_in_progress, 0);
        assert_eq!(s.rejected(Reject::Publish), 2);
        assert_eq!(s.rejected_total(), 2);
        assert_eq!((s.publishes_in, s.bytes_in), (3, 600));
    }
}
