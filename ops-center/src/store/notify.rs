//! The outbound notification queue in the store (issue #17): one row per
//! notification a webhook is to receive, written in the same transaction
//! as the incident change that caused it ([`super::Changes::notifications`])
//! so that a crash neither loses nor invents one, and updated by the
//! sender's outcomes ([`super::Changes::notify_updates`]) through the same
//! writer (on PostgreSQL, the fenced leader's).
//!
//! Rows stay in the table while they wait, so a dead endpoint costs disk,
//! not memory; delivered rows are pruned after `[notify] keep_delivered_hours`.
//! The statements are here; `sqlite.rs` and `postgres.rs` hold only the hooks
//! that run them (SQLite schema version 4, PostgreSQL migration 7). The
//! reads are query shapes ([`super::shapes`]) served by an index each.

use std::time::SystemTime;

use vigil_proto::v1::Incident;

/// Where a notification stands. Stored as its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotifyState {
    /// Waiting for its first or next attempt (`next_at`).
    Pending = 0,
    /// A 2xx answer was received.
    Delivered = 1,
    /// Given up: a refusal that will not change (4xx other than 408/429),
    /// or the attempts or age limit reached. `last_error` says why.
    Failed = 2,
}

impl NotifyState {
    pub fn from_i64(n: i64) -> Option<Self> {
        match n {
            0 => Some(Self::Pending),
            1 => Some(Self::Delivered),
            2 => Some(Self::Failed),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }
}

/// A notification to enqueue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewNotification {
    /// Unique id of this delivery (the receivers' idempotency key).
    pub delivery: String,
    /// The `[[notify.webhook]]` it goes to, by name.
    pub webhook: String,
    /// `escalated`, `opened` or `resolved`.
    pub event: String,
    /// The incident as the change left it.
    pub incident: Incident,
    /// When the change happened.
    pub at: SystemTime,
}

/// A stored notification.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub id: u64,
    pub delivery: String,
    pub webhook: String,
    pub event: String,
    pub incident: Incident,
    pub at: SystemTime,
    pub state: NotifyState,
    /// Attempts made so far.
    pub attempts: u32,
    /// Pending: when the next attempt is due. Delivered or failed: when it
    /// was.
    pub next_at: SystemTime,
    /// The last attempt's error (empty if none failed).
    pub last_error: String,
}

/// A change to a stored notification: the sender's outcome of an attempt,
/// or a failed one put back in the queue (`vigil notify retry`). Applied
/// only if the row is still in state `only_if`, so an outcome that crosses
/// a retry (or a second sender) changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyUpdate {
    pub id: u64,
    pub only_if: NotifyState,
    pub state: NotifyState,
    pub attempts: u32,
    pub next_at: SystemTime,
    pub last_error: String,
}

/// SQLite schema version 4.
pub(crate) const SQLITE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS notifications (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery   TEXT NOT NULL,
    webhook    TEXT NOT NULL,
    event      TEXT NOT NULL,
    incident   BLOB NOT NULL,
    at         INTEGER NOT NULL,
    state      INTEGER NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    next_at    INTEGER NOT NULL,
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS notifications_due ON notifications (state, webhook, next_at);
CREATE INDEX IF NOT EXISTS notifications_state ON notifications (state, id);
CREATE INDEX IF NOT EXISTS notifications_done ON notifications (state, next_at);
";

/// PostgreSQL migration 7.
pub(crate) const POSTGRES_MIGRATION: &str = "
CREATE TABLE notifications (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery   TEXT NOT NULL,
    webhook    TEXT NOT NULL,
    event      TEXT NOT NULL,
    incident   BYTEA NOT NULL,
    at         BIGINT NOT NULL,
    state      BIGINT NOT NULL,
    attempts   BIGINT NOT NULL DEFAULT 0,
    next_at    BIGINT NOT NULL,
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX notifications_due ON notifications (state, webhook, next_at);
CREATE INDEX notifications_state ON notifications (state, id);
CREATE INDEX notifications_done ON notifications (state, next_at);
";

/// The columns every read returns, in [`Notification`] order.
#[cfg(test)]
const COLUMNS: &str =
    "id, delivery, webhook, event, incident, at, state, attempts, next_at, last_error";

/// Pending notifications of one webhook due by a time, oldest due first
/// (`notifications_due`): state, webhook, time, limit.
pub const DUE: &str =
    "SELECT id, delivery, webhook, event, incident, at, state, attempts, next_at, last_error
     FROM notifications WHERE state = CAST($1 AS BIGINT) AND webhook = $2
     AND next_at <= CAST($3 AS BIGINT) ORDER BY next_at LIMIT CAST($4 AS BIGINT)";
/// Notifications in one state below an id, newest first
/// (`notifications_state`): state, id, limit.
pub const BY_STATE: &str =
    "SELECT id, delivery, webhook, event, incident, at, state, attempts, next_at, last_error
     FROM notifications WHERE state = CAST($1 AS BIGINT) AND id < CAST($2 AS BIGINT)
     ORDER BY id DESC LIMIT CAST($3 AS BIGINT)";
/// One notification (primary key).
pub const ONE: &str =
    "SELECT id, delivery, webhook, event, incident, at, state, attempts, next_at, last_error
     FROM notifications WHERE id = CAST($1 AS BIGINT)";
/// How many are in one state (`notifications_state`).
pub const COUNT: &str = "SELECT count(*) FROM notifications WHERE state = CAST($1 AS BIGINT)";
/// Delivered notifications older than a time, to prune
/// (`notifications_done`): state, time, limit.
pub const PRUNABLE: &str = "SELECT id FROM notifications WHERE state = CAST($1 AS BIGINT)
     AND next_at < CAST($2 AS BIGINT) ORDER BY next_at LIMIT CAST($3 AS BIGINT)";
pub const DELETE: &str = "DELETE FROM notifications WHERE id = CAST($1 AS BIGINT)";
pub const INSERT: &str = "INSERT INTO notifications (delivery, webhook, event, incident, at, state, attempts, next_at, last_error)
     VALUES ($1, $2, $3, $4, CAST($5 AS BIGINT), 0, 0, CAST($6 AS BIGINT), '')";
/// Placeholders are numbered in order of appearance (SQLite binds them
/// so): state, attempts, next_at, last_error, id, expected state.
pub const UPDATE: &str = "UPDATE notifications SET state = CAST($1 AS BIGINT), attempts = CAST($2 AS BIGINT),
     next_at = CAST($3 AS BIGINT), last_error = $4 WHERE id = CAST($5 AS BIGINT) AND state = CAST($6 AS BIGINT)";

/// Delivered rows pruned per commit at most.
pub const PRUNE_BATCH: i64 = 1000;

/// A row as read, before decoding the incident.
pub(crate) struct Row {
    pub(crate) id: i64,
    pub(crate) delivery: String,
    pub(crate) webhook: String,
    pub(crate) event: String,
    pub(crate) incident: Vec<u8>,
    pub(crate) at: i64,
    pub(crate) state: i64,
    pub(crate) attempts: i64,
    pub(crate) next_at: i64,
    pub(crate) last_error: String,
}

impl Row {
    pub(crate) fn decode(self) -> Result<Notification, super::StoreError> {
        use prost::Message;
        let incident = Incident::decode(self.incident.as_slice())
            .map_err(|e| super::StoreError::Corrupt(format!("notification {}: {e}", self.id)))?;
        let state = NotifyState::from_i64(self.state).ok_or_else(|| {
            super::StoreError::Corrupt(format!(
                "notification {}: unknown state {}",
                self.id, self.state
            ))
        })?;
        Ok(Notification {
            id: self.id as u64,
            delivery: self.delivery,
            webhook: self.webhook,
            event: self.event,
            incident,
            at: super::sqlite::from_millis(self.at),
            state,
            attempts: self.attempts.clamp(0, u32::MAX as i64) as u32,
            next_at: super::sqlite::from_millis(self.next_at),
            last_error: self.last_error,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_reads_name_every_column() {
        for q in [super::DUE, super::BY_STATE, super::ONE] {
            assert!(q.contains(super::COLUMNS), "{q}");
        }
    }
}
