//! Counters of the operations center: events in, duplicates, rejects by
//! reason, commit latency and ingest lag. Plain atomics, read with
//! [`Metrics::snapshot`] and logged periodically; an exporter can read the
//! same snapshot later.

use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

/// Why an MQTT message was dropped (and acknowledged, so the broker does not
/// send it again: it would never become valid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Not a `vigil/v1/posts/{post}/events|status` topic.
    Topic,
    /// Not a valid protobuf message, an empty batch, seq 0 or seqs not
    /// increasing.
    Malformed,
    /// Larger than `max_batch_bytes`.
    Oversize,
    /// A `post_id` in the message differs from the topic's post.
    PostMismatch,
    /// A seq above 2^63-1, or an event time outside years 1-9999.
    OutOfRange,
}

/// Number of latency buckets: bucket `i` counts samples below 2^i µs.
const BUCKETS: usize = 32;

/// A log2 histogram of durations (µs resolution).
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = (u64::BITS - us.leading_zeros()) as usize;
        self.buckets[i.min(BUCKETS - 1)].fetch_add(1, Relaxed);
    }

    /// Upper bound of the bucket holding quantile `q` (0..=1), or zero when
    /// empty. Coarse (a factor of two) by design: it is for dashboards; the
    /// benchmark measures exactly.
    pub fn quantile(&self, q: f64) -> Duration {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return Duration::ZERO;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Duration::from_micros(1u64 << i);
            }
        }
        Duration::from_micros(1u64 << (BUCKETS - 1))
    }
}

/// The counters. Shared as `Arc<Metrics>`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Events in accepted batches (before deduplication).
    pub events_in: AtomicU64,
    /// Events newly stored.
    pub events_stored: AtomicU64,
    /// Re-sent events that were already stored.
    pub duplicates: AtomicU64,
    pub batches: AtomicU64,
    pub statuses: AtomicU64,
    pub rejected_topic: AtomicU64,
    pub rejected_malformed: AtomicU64,
    pub rejected_oversize: AtomicU64,
    pub rejected_post_mismatch: AtomicU64,
    pub rejected_out_of_range: AtomicU64,
    pub commits: AtomicU64,
    pub receipts_published: AtomicU64,
    /// Posts asked to re-send what is not receipted (after a reconnect).
    pub resend_requests: AtomicU64,
    /// Time from a message's arrival to its commit, last and highest seen.
    pub lag_last_ms: AtomicU64,
    pub lag_max_ms: AtomicU64,
    pub commit_latency: Histogram,
    /// Events over their post's budget: not stored, not receipted (the
    /// gateway re-sends them).
    pub budget_deferred_events: AtomicU64,
    /// Batches with at least one deferred event.
    pub budget_deferred_batches: AtomicU64,
    /// Group commits that failed (and were tried again).
    pub commit_failures: AtomicU64,
    /// Whether the store can write (the gRPC health service follows it).
    pub store_health: StoreHealth,
}

/// Whether the store can write: set by the writer, watched by the gRPC
/// health service. Healthy until a commit fails.
#[derive(Debug)]
pub struct StoreHealth(tokio::sync::watch::Sender<bool>);

impl Default for StoreHealth {
    fn default() -> Self {
        Self(tokio::sync::watch::Sender::new(true))
    }
}

impl StoreHealth {
    pub fn is_healthy(&self) -> bool {
        *self.0.borrow()
    }

    pub fn set(&self, healthy: bool) {
        self.0.send_replace(healthy);
    }

    /// A receiver that sees every change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<bool> {
        self.0.subscribe()
    }
}

impl Metrics {
    pub fn reject(&self, why: Reject) {
        let counter = match why {
            Reject::Topic => &self.rejected_topic,
            Reject::Malformed => &self.rejected_malformed,
            Reject::Oversize => &self.rejected_oversize,
            Reject::PostMismatch => &self.rejected_post_mismatch,
            Reject::OutOfRange => &self.rejected_out_of_range,
        };
        counter.fetch_add(1, Relaxed);
    }

    pub fn record_lag(&self, lag: Duration) {
        let ms = u64::try_from(lag.as_millis()).unwrap_or(u64::MAX);
        self.lag_last_ms.store(ms, Relaxed);
        self.lag_max_ms.fetch_max(ms, Relaxed);
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            events_in: self.events_in.load(Relaxed),
            events_stored: self.events_stored.load(Relaxed),
            duplicates: self.duplicates.load(Relaxed),
            batches: self.batches.load(Relaxed),
            statuses: self.statuses.load(Relaxed),
            rejected_topic: self.rejected_topic.load(Relaxed),
            rejected_malformed: self.rejected_malformed.load(Relaxed),
            rejected_oversize: self.rejected_oversize.load(Relaxed),
            rejected_post_mismatch: self.rejected_post_mismatch.load(Relaxed),
            rejected_out_of_range: self.rejected_out_of_range.load(Relaxed),
            commits: self.commits.load(Relaxed),
            receipts_published: self.receipts_published.load(Relaxed),
            resend_requests: self.resend_requests.load(Relaxed),
            lag_last_ms: self.lag_last_ms.load(Relaxed),
            lag_max_ms: self.lag_max_ms.load(Relaxed),
            commit_p50: self.commit_latency.quantile(0.5),
            commit_p99: self.commit_latency.quantile(0.99),
            budget_deferred_events: self.budget_deferred_events.load(Relaxed),
            budget_deferred_batches: self.budget_deferred_batches.load(Relaxed),
            commit_failures: self.commit_failures.load(Relaxed),
            store_healthy: self.store_health.is_healthy(),
        }
    }
}

impl MetricsSnapshot {
    /// Adds the counters to a Prometheus exposition (`vigil_ops_*`).
    pub fn export(&self, out: &mut vigil_telemetry::Exposition) {
        out.counter(
            "vigil_ops_events_in_total",
            "Events in accepted batches, before deduplication.",
            self.events_in,
        );
        out.counter(
            "vigil_ops_events_stored_total",
            "Events newly stored.",
            self.events_stored,
        );
        out.counter(
            "vigil_ops_events_duplicate_total",
            "Re-sent events that were already stored.",
            self.duplicates,
        );
        out.counter(
            "vigil_ops_batches_total",
            "Event batches accepted.",
            self.batches,
        );
        out.counter(
            "vigil_ops_statuses_total",
            "Post status messages accepted.",
            self.statuses,
        );
        for (reason, value) in [
            ("topic", self.rejected_topic),
            ("malformed", self.rejected_malformed),
            ("oversize", self.rejected_oversize),
            ("post_mismatch", self.rejected_post_mismatch),
            ("out_of_range", self.rejected_out_of_range),
        ] {
            out.counter_with(
                "vigil_ops_messages_rejected_total",
                "MQTT messages dropped, by reason.",
                &[("reason", reason)],
                value,
            );
        }
        out.counter("vigil_ops_commits_total", "Store commits.", self.commits);
        out.counter(
            "vigil_ops_receipts_published_total",
            "Receipts published to gateways.",
            self.receipts_published,
        );
        out.counter(
            "vigil_ops_resend_requests_total",
            "Posts asked to re-send what is not receipted, after (re)subscribing.",
            self.resend_requests,
        );
        out.counter(
            "vigil_ops_commit_failures_total",
            "Group commits that failed (e.g. a full disk); each is tried again.",
            self.commit_failures,
        );
        out.gauge(
            "vigil_ops_store_healthy",
            "1 while the store can write; 0 after a failed commit, until one succeeds.",
            if self.store_healthy { 1.0 } else { 0.0 },
        );
        out.counter(
            "vigil_ops_budget_deferred_events_total",
            "Events over their post's budget: neither stored nor receipted; the gateway re-sends them.",
            self.budget_deferred_events,
        );
        out.counter(
            "vigil_ops_budget_deferred_batches_total",
            "Event batches with at least one event over their post's budget.",
            self.budget_deferred_batches,
        );
        out.gauge(
            "vigil_ops_ingest_lag_seconds",
            "Time from the last message's arrival to its commit.",
            self.lag_last_ms as f64 / 1e3,
        );
        out.gauge(
            "vigil_ops_ingest_lag_max_seconds",
            "Highest arrival-to-commit time since start.",
            self.lag_max_ms as f64 / 1e3,
        );
        out.gauge(
            "vigil_ops_commit_p50_seconds",
            "Median commit time (upper bound of its power-of-two bucket).",
            self.commit_p50.as_secs_f64(),
        );
        out.gauge(
            "vigil_ops_commit_p99_seconds",
            "99th percentile commit time (upper bound of its bucket).",
            self.commit_p99.as_secs_f64(),
        );
    }
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    pub events_in: u64,
    pub events_stored: u64,
    pub duplicates: u64,
    pub batches: u64,
    pub statuses: u64,
    pub rejected_topic: u64,
    pub rejected_malformed: u64,
    pub rejected_oversize: u64,
    pub rejected_post_mismatch: u64,
    pub rejected_out_of_range: u64,
    pub commits: u64,
    pub receipts_published: u64,
    pub resend_requests: u64,
    pub lag_last_ms: u64,
    pub lag_max_ms: u64,
    pub commit_p50: Duration,
    pub commit_p99: Duration,
    pub budget_deferred_events: u64,
    pub budget_deferred_batches: u64,
    pub commit_failures: u64,
    pub store_healthy: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_bucket_bounds() {
        let h = Histogram::default();
        assert_eq!(h.quantile(0.5), Duration::ZERO);
        for _ in 0..90 {
            h.record(Duration::from_micros(100)); // bucket < 128 µs
        }
        for _ in 0..10 {
            h.record(Duration::from_millis(5)); // bucket < 8192 µs
        }
        assert_eq!(h.quantile(0.5), Duration::from_micros(128));
        assert_eq!(h.quantile(0.99), Duration::from_micros(8192));
    }
}
