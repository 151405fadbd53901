//! Counters of the operations center: events in, duplicates, rejects by
//! reason, commit latency and ingest lag (histograms), the incident backlog
//! by state and priority, open API connections and feed watchers. Plain
//! atomics, read with [`Metrics::snapshot`], logged periodically and
//! exported on `/metrics`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use vigil_proto::v1::{Incident, IncidentState, Priority};
pub use vigil_telemetry::Histogram;

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
    /// A seq above 2^63-1. (An event time outside years 1-9999 does not
    /// drop its message: the time is cleared, see `event_times_cleared`.)
    OutOfRange,
}

/// Priorities the backlog is counted by, in gauge order (unset counts as P4,
/// as the engine's deadlines do).
const PRIORITIES: [(Priority, &str); 4] = [
    (Priority::P1, "P1"),
    (Priority::P2, "P2"),
    (Priority::P3, "P3"),
    (Priority::P4, "P4"),
];

/// States of the backlog: open is the unacknowledged work.
const STATES: [(IncidentState, &str); 2] = [
    (IncidentState::Open, "open"),
    (IncidentState::Acknowledged, "acknowledged"),
];

/// Incidents not yet resolved, by state and priority, as the engine last
/// counted them after a commit.
#[derive(Debug, Default)]
pub struct Backlog {
    counts: [[AtomicU64; 4]; 2],
}

impl Backlog {
    /// Recounts from the engine's incidents (resolved ones are skipped).
    pub fn set<'a>(&self, incidents: impl Iterator<Item = &'a Incident>) {
        let mut counts = [[0u64; 4]; 2];
        for inc in incidents {
            let Some(s) = STATES.iter().position(|(st, _)| *st as i32 == inc.state) else {
                continue;
            };
            let p = PRIORITIES
                .iter()
                .position(|(p, _)| *p as i32 == inc.priority)
                .unwrap_or(3);
            counts[s][p] += 1;
        }
        for (row, new) in self.counts.iter().zip(counts) {
            for (cell, n) in row.iter().zip(new) {
                cell.store(n, Relaxed);
            }
        }
    }

    /// `(state, priority, count)` for every pair.
    pub fn get(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::new();
        for (s, (_, state)) in STATES.iter().enumerate() {
            for (p, (_, priority)) in PRIORITIES.iter().enumerate() {
                out.push((*state, *priority, self.counts[s][p].load(Relaxed)));
            }
        }
        out
    }
}

/// Which gauge an [`Open`] guard holds up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenKind {
    /// A TLS connection to the gRPC API.
    ApiConnection,
    /// A `WatchIncidents` stream.
    Watcher,
}

/// One open connection or watcher, counted in its gauge while it lives.
#[derive(Debug)]
pub struct Open {
    metrics: Arc<Metrics>,
    kind: OpenKind,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.metrics.gauge(self.kind).fetch_sub(1, Relaxed);
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
    /// Event times (`occurred_at`, `received_at`) outside years 1-9999,
    /// cleared at ingest; their events were stored without them.
    pub event_times_cleared: AtomicU64,
    pub commits: AtomicU64,
    pub receipts_published: AtomicU64,
    /// Posts asked to re-send what is not receipted (after a reconnect).
    pub resend_requests: AtomicU64,
    /// Time from a message's arrival to its commit, last and highest seen.
    pub lag_last_ms: AtomicU64,
    pub lag_max_ms: AtomicU64,
    pub commit_latency: Histogram,
    /// The API listener's counters (`vigil_listener_*{listener="api"}`).
    pub api_listener: std::sync::Arc<vigil_net::Stats>,
    /// The browser console listener's counters
    /// (`vigil_listener_*{listener="console"}`; zeros when it is off).
    pub console_listener: std::sync::Arc<vigil_net::Stats>,
    /// Arrival-to-commit time of each committed group's oldest message.
    pub lag: Histogram,
    pub backlog: Backlog,
    /// Certificate expiry of the API clients connected now
    /// (`vigil_tls_peer_*`).
    pub peer_expiry: vigil_telemetry::peer_expiry::PeerExpiry,
    /// API connections open now, and accepted since start.
    pub api_connections: AtomicU64,
    pub api_connections_total: AtomicU64,
    /// `WatchIncidents` streams open now.
    pub watchers: AtomicU64,
    /// Events over their post's budget: not stored, not receipted (the
    /// gateway re-sends them).
    pub budget_deferred_events: AtomicU64,
    /// Batches with at least one deferred event.
    pub budget_deferred_batches: AtomicU64,
    /// Group commits that failed (and were tried again).
    pub commit_failures: AtomicU64,
    /// Whether this replica runs the incident engine (always, on SQLite;
    /// on PostgreSQL while it holds the leader lease).
    pub leading: std::sync::atomic::AtomicBool,
    /// Actions this replica received while standing by and had the leader
    /// carry out.
    pub actions_forwarded: AtomicU64,
    /// Webhook notifications delivered (a 2xx answer).
    pub notify_delivered: AtomicU64,
    /// Webhook notifications given up (marked failed).
    pub notify_failed: AtomicU64,
    /// Failed attempts that were scheduled again.
    pub notify_retried: AtomicU64,
    /// Notifications waiting to be delivered (as last counted by the
    /// sender, on the leading replica).
    pub notify_pending: AtomicU64,
    /// Whether the store can write (the gRPC health service follows it).
    pub store_health: StoreHealth,
    /// What retention deleted and archived.
    pub retention: Arc<crate::store::retention::RetentionMetrics>,
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

    /// Counts one more open `kind` until the guard drops.
    pub fn open(self: &Arc<Self>, kind: OpenKind) -> Open {
        self.gauge(kind).fetch_add(1, Relaxed);
        if kind == OpenKind::ApiConnection {
            self.api_connections_total.fetch_add(1, Relaxed);
        }
        Open {
            metrics: self.clone(),
            kind,
        }
    }

    fn gauge(&self, kind: OpenKind) -> &AtomicU64 {
        match kind {
            OpenKind::ApiConnection => &self.api_connections,
            OpenKind::Watcher => &self.watchers,
        }
    }

    pub fn record_lag(&self, lag: Duration) {
        self.lag.record(lag);
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
            event_times_cleared: self.event_times_cleared.load(Relaxed),
            commits: self.commits.load(Relaxed),
            receipts_published: self.receipts_published.load(Relaxed),
            resend_requests: self.resend_requests.load(Relaxed),
            lag_last_ms: self.lag_last_ms.load(Relaxed),
            lag_max_ms: self.lag_max_ms.load(Relaxed),
            commit_p50: self.commit_latency.quantile(0.5),
            commit_p99: self.commit_latency.quantile(0.99),
            api_listener: self.api_listener.snapshot(),
            console_listener: self.console_listener.snapshot(),
            budget_deferred_events: self.budget_deferred_events.load(Relaxed),
            budget_deferred_batches: self.budget_deferred_batches.load(Relaxed),
            commit_failures: self.commit_failures.load(Relaxed),
            store_healthy: self.store_health.is_healthy(),
            leading: self.leading.load(Relaxed),
            actions_forwarded: self.actions_forwarded.load(Relaxed),
            notify_delivered: self.notify_delivered.load(Relaxed),
            notify_failed: self.notify_failed.load(Relaxed),
            notify_retried: self.notify_retried.load(Relaxed),
            notify_pending: self.notify_pending.load(Relaxed),
        }
    }

    /// Adds everything to a Prometheus exposition (`vigil_ops_*`): the
    /// snapshot's counters, the latency histograms, the backlog and the API
    /// gauges.
    pub fn export(&self, out: &mut vigil_telemetry::Exposition) {
        self.snapshot().export(out);
        self.peer_expiry.export(out);
        self.retention.export(out);
        out.histogram(
            "vigil_ops_commit_duration_seconds",
            "Time to commit one group of messages and workflow changes.",
            &self.commit_latency,
        );
        out.histogram(
            "vigil_ops_ingest_lag_duration_seconds",
            "Time from a committed group's oldest message arriving to its commit.",
            &self.lag,
        );
        for (state, priority, n) in self.backlog.get() {
            out.gauge_with(
                "vigil_ops_incidents",
                "Incidents not yet resolved, by state (open = not acknowledged) and priority.",
                &[("state", state), ("priority", priority)],
                n as f64,
            );
        }
        out.gauge(
            "vigil_ops_api_connections",
            "gRPC API connections open now.",
            self.api_connections.load(Relaxed) as f64,
        );
        out.counter(
            "vigil_ops_api_connections_total",
            "gRPC API connections accepted (TLS handshake done) since start.",
            self.api_connections_total.load(Relaxed),
        );
        out.gauge(
            "vigil_ops_watchers",
            "Live incident feeds (WatchIncidents streams) open now.",
            self.watchers.load(Relaxed) as f64,
        );
    }
}

impl MetricsSnapshot {
    /// Adds the counters to a Prometheus exposition (`vigil_ops_*`). The
    /// histograms and gauges are added by [`Metrics::export`].
    pub fn export(&self, out: &mut vigil_telemetry::Exposition) {
        out.listener("api", &self.api_listener);
        out.listener("console", &self.console_listener);
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
            "vigil_ops_event_times_cleared_total",
            "Event times outside years 1-9999 cleared at ingest (the events were stored without them).",
            self.event_times_cleared,
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
        out.gauge(
            "vigil_ops_leading",
            "1 while this replica runs the incident engine (holds the leader lease); 0 standing by.",
            if self.leading { 1.0 } else { 0.0 },
        );
        out.counter(
            "vigil_ops_actions_forwarded_total",
            "Actions received while standing by, carried out by the leading replica.",
            self.actions_forwarded,
        );
        out.counter(
            "vigil_ops_notify_sent_total",
            "Webhook notifications delivered (answered 2xx).",
            self.notify_delivered,
        );
        out.counter(
            "vigil_ops_notify_failed_total",
            "Webhook notifications given up and marked failed (see `vigil notify list --failed`).",
            self.notify_failed,
        );
        out.counter(
            "vigil_ops_notify_retried_total",
            "Webhook delivery attempts that failed and were scheduled again.",
            self.notify_retried,
        );
        out.gauge(
            "vigil_ops_notify_queue_depth",
            "Webhook notifications waiting to be delivered (counted by the leading replica).",
            self.notify_pending as f64,
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
    pub event_times_cleared: u64,
    pub commits: u64,
    pub receipts_published: u64,
    pub resend_requests: u64,
    pub lag_last_ms: u64,
    pub lag_max_ms: u64,
    pub commit_p50: Duration,
    pub commit_p99: Duration,
    pub api_listener: vigil_net::StatsSnapshot,
    pub console_listener: vigil_net::StatsSnapshot,
    pub budget_deferred_events: u64,
    pub budget_deferred_batches: u64,
    pub commit_failures: u64,
    pub store_healthy: bool,
    pub leading: bool,
    pub actions_forwarded: u64,
    pub notify_delivered: u64,
    pub notify_failed: u64,
    pub notify_retried: u64,
    pub notify_pending: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_counts_unresolved_incidents_by_state_and_priority() {
        let inc = |state: IncidentState, priority: Priority| Incident {
            state: state as i32,
            priority: priority as i32,
            ..Default::default()
        };
        let all = [
            inc(IncidentState::Open, Priority::P1),
            inc(IncidentState::Open, Priority::P1),
            inc(IncidentState::Acknowledged, Priority::P3),
            inc(IncidentState::Resolved, Priority::P1),
            inc(IncidentState::Open, Priority::Unspecified),
        ];
        let m = Arc::new(Metrics::default());
        m.backlog.set(all.iter());
        let _conn = m.open(OpenKind::ApiConnection);
        {
            let _watch = m.open(OpenKind::Watcher);
            let mut out = vigil_telemetry::Exposition::new();
            m.export(&mut out);
            let text = out.render();
            for line in [
                "vigil_ops_incidents{state=\"open\",priority=\"P1\"} 2\n",
                "vigil_ops_incidents{state=\"open\",priority=\"P4\"} 1\n",
                "vigil_ops_incidents{state=\"acknowledged\",priority=\"P3\"} 1\n",
                "vigil_ops_incidents{state=\"acknowledged\",priority=\"P1\"} 0\n",
                "vigil_ops_api_connections 1\n",
                "vigil_ops_watchers 1\n",
                "# TYPE vigil_ops_commit_duration_seconds histogram\n",
            ] {
                assert!(text.contains(line), "{line} in\n{text}");
            }
        }
        // The watcher left; the connection is still open.
        assert_eq!(m.watchers.load(Relaxed), 0);
        assert_eq!(m.api_connections.load(Relaxed), 1);
        assert_eq!(m.api_connections_total.load(Relaxed), 1);
    }
}
