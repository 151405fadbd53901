//! The operations center's storage, behind one narrow interface.
//!
//! Everything the ops-center keeps goes through [`Store`]: events keyed by
//! `(post_id, seq)`, incidents with their audit trail and notes, and post
//! status. Writes happen in group commits: the writer opens one
//! [`StoreTx`], inserts the events of every batch it has queued, applies the
//! incident [`Changes`] the engine derived from the events that were new, and
//! commits once. Only after `commit` returns are receipts published.
//!
//! A [`Backend`] opens connections: exactly one writer ([`StoreWriter`],
//! owned by the writer thread) and any number of readers ([`Store`]), which
//! the API borrows from a bounded pool ([`Readers`]) so that one long read
//! never holds up another, and no read holds up the writer. Errors are
//! backend-neutral ([`StoreError`]).
//!
//! The SQLite backend ([`sqlite::SqliteBackend`]) is the embedded default.

pub mod archive;
mod history;
mod migrations;
pub mod notify;
pub mod postgres;
pub mod retention;
pub mod shapes;
mod sites;
pub mod sqlite;
#[doc(hidden)]
pub mod suite;
mod timers;
pub mod watermark;

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use bytes::Bytes;
use prost::Message;
use vigil_proto::v1::{
    ActionPlan, AuditEntry, EmergencyMode, Event, Incident, Note, PostInfo, PostRecord, PostStatus,
    SiteDocument, StoredEvent,
};

pub use notify::{NewNotification, Notification, NotifyState, NotifyUpdate};
pub use postgres::PostgresBackend;
pub use shapes::{HistoryFilter, OpenedFilter, SeqFilter, TimeKey};
pub use sqlite::{SqliteBackend, SqliteStore};
pub use timers::PostTimers;

/// Why a store operation failed. Any error inside a transaction aborts it;
/// nothing of it is stored.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed an operation (a full disk, a
    /// constraint, an I/O error): `backend` names it, `message` is its own.
    #[error("{backend}: {message}")]
    Backend {
        backend: &'static str,
        message: String,
    },
    /// The database cannot be reached (connection refused or lost). The
    /// connection that said so is not reused.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A fenced writer no longer holds the leader lease: another replica
    /// runs the incident engine now. Nothing of the transaction is stored.
    #[error("not the leader: {0}")]
    NotLeader(String),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("stored record cannot be decoded: {0}")]
    Corrupt(String),
    /// An incident write expected a version the store does not have: another
    /// writer changed it. The engine is the only writer, so this is a bug or
    /// a second ops-center on the same store.
    #[error("incident {id}: expected version {expected}, store has {found:?}")]
    VersionConflict {
        id: String,
        expected: u64,
        found: Option<u64>,
    },
    #[error("database schema version {found} is newer than this program's ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },
}

/// One incident as it must be after a transaction; `prev_version` is what
/// the store must hold before (compare-and-set), `None` for a new incident.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentWrite {
    pub incident: Incident,
    pub prev_version: Option<u64>,
}

/// An event that joined an incident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLink {
    pub incident_id: String,
    pub post_id: String,
    pub seq: u64,
}

/// A post's test mode changed: `until = None` ends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestModeWrite {
    pub post_id: String,
    pub until: Option<SystemTime>,
}

/// Everything besides events that one group commit writes. Built by the
/// engine; applied by [`StoreTx::apply`].
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Changes {
    incidents: Vec<IncidentWrite>,
    index: HashMap<String, usize>,
    pub audit: Vec<AuditEntry>,
    pub notes: Vec<Note>,
    pub links: Vec<EventLink>,
    pub statuses: Vec<(PostStatus, SystemTime)>,
    pub test_modes: Vec<TestModeWrite>,
    /// A new site document (post records and action plans) that replaces
    /// the stored one whole; its audit entries are in `audit`.
    pub site: Option<SiteDocument>,
    /// New timer state of posts (see [`PostTimers`]), the last per post.
    pub timers: BTreeMap<String, PostTimers>,
    /// Emergency mode changed: `Some(None)` ends it.
    pub emergency: Option<Option<EmergencyMode>>,
    /// Notifications to enqueue, caused by the changes above (see
    /// [`notify`]).
    pub notifications: Vec<NewNotification>,
    /// Outcomes of delivery attempts, and failed notifications put back.
    pub notify_updates: Vec<NotifyUpdate>,
    /// Delivered notifications older than this are deleted (a bounded
    /// number per commit).
    pub notify_prune_before: Option<SystemTime>,
}

impl Changes {
    /// Records the new state of an incident. Several changes to one incident
    /// within a group collapse into one write that keeps the first
    /// `prev_version`, so a busy incident costs one row update per commit.
    pub fn put_incident(&mut self, incident: Incident, prev_version: Option<u64>) {
        match self.index.get(&incident.id) {
            Some(&i) => self.incidents[i].incident = incident,
            None => {
                self.index.insert(incident.id.clone(), self.incidents.len());
                self.incidents.push(IncidentWrite {
                    incident,
                    prev_version,
                });
            }
        }
    }

    /// Incident writes, one per incident, in first-change order.
    pub fn incidents(&self) -> &[IncidentWrite] {
        &self.incidents
    }

    /// The state an incident has after these changes, if they touch it.
    pub fn incident(&self, id: &str) -> Option<&Incident> {
        self.index.get(id).map(|&i| &self.incidents[i].incident)
    }

    pub fn is_empty(&self) -> bool {
        self.incidents.is_empty()
            && self.audit.is_empty()
            && self.notes.is_empty()
            && self.links.is_empty()
            && self.statuses.is_empty()
            && self.test_modes.is_empty()
            && self.site.is_none()
            && self.timers.is_empty()
            && self.emergency.is_none()
            && self.notifications.is_empty()
            && self.notify_updates.is_empty()
            && self.notify_prune_before.is_none()
    }
}

/// What a commit achieved.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CommitResult {
    /// Every post whose events were offered in the transaction (new or
    /// duplicate) with its `durable_through_seq` after the commit, in post
    /// order. These are the receipts to publish.
    pub durable: Vec<(String, u64)>,
    /// Events newly stored.
    pub inserted: u64,
    /// Events that were already stored (re-sent): no-ops.
    pub duplicates: u64,
}

/// What the incident engine needs at start to resume where it stopped.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct EngineSnapshot {
    /// Incidents not resolved, and those resolved at or after the `since`
    /// asked for (they may still reactivate).
    pub incidents: Vec<Incident>,
    /// Posts in test mode and until when.
    pub test_modes: Vec<(String, SystemTime)>,
    /// Highest incident number ever allocated.
    pub last_incident_number: u64,
    /// The last status each post published.
    pub statuses: Vec<PostStatus>,
    /// The stored post records (schedules, test intervals, time zones).
    pub site_posts: Vec<PostRecord>,
    /// Timer state per post, in post order.
    pub timers: Vec<(String, PostTimers)>,
    /// Emergency mode as last set (it may have expired since).
    pub emergency: Option<EmergencyMode>,
}

/// Which incidents to list.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IncidentFilter {
    /// Only these states (`IncidentState` values); empty = all.
    pub states: Vec<i32>,
    /// Only these posts; empty = all.
    pub post_ids: Vec<String>,
    /// Only incidents numbered below this (pagination, newest first).
    pub before_number: Option<u64>,
    /// At most this many.
    pub limit: usize,
}

/// Which events [`Store::events_received`] returns.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReceivedFilter {
    /// Only these posts; empty = all (at most
    /// [`shapes::MAX_POSTS_PER_QUERY`]).
    pub post_ids: Vec<String>,
    /// Only these kinds (`EventKind` values); empty = all.
    pub kinds: Vec<i32>,
    /// `received_at` from (inclusive) and to (exclusive), if bounded.
    pub from: Option<SystemTime>,
    pub to: Option<SystemTime>,
}

/// Position of an event in received order (keyset pagination).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReceivedKey {
    pub received_ms: i64,
    pub post_id: String,
    pub seq: u64,
}

/// One event as a post sent it: decoded, and the exact bytes it arrived
/// as, which are what the store keeps (fields this version does not know
/// are kept too).
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub event: Event,
    pub raw: Bytes,
}

impl From<Event> for Received {
    /// Encodes an event made here (tests, tools).
    fn from(event: Event) -> Self {
        let raw = Bytes::from(event.encode_to_vec());
        Self { event, raw }
    }
}

/// Opens connections to one database.
pub trait Backend: Send + Sync + fmt::Debug {
    /// `sqlite` or `postgresql`.
    fn name(&self) -> &'static str;
    /// Where the data is, for logs (never a password).
    fn location(&self) -> String;
    /// The writer's connection. Only one may be open at a time.
    fn writer(&self) -> Result<Box<dyn StoreWriter>, StoreError>;
    /// A reader's connection.
    fn reader(&self) -> Result<Box<dyn Store>, StoreError>;
    /// The PostgreSQL backend, for what only it can do (the leader lease,
    /// the feed's announcements).
    fn as_postgres(&self) -> Option<&PostgresBackend> {
        None
    }
    /// A connection of its own for retention ([`retention::Pruner`]).
    fn pruner(&self) -> Result<Box<dyn retention::PruneConn>, StoreError>;
}

/// A bounded pool of reader connections, opened as needed. Each read runs on
/// the blocking pool with a connection of its own; at most `size` run at
/// once, the others wait their turn.
pub struct Readers {
    backend: Arc<dyn Backend>,
    idle: Mutex<Vec<Box<dyn Store>>>,
    permits: Arc<tokio::sync::Semaphore>,
}

impl fmt::Debug for Readers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Readers")
            .field("backend", &self.backend)
            .field("available", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

/// Reader connections per ops center unless configured.
pub const DEFAULT_READERS: usize = 4;

impl Readers {
    pub fn new(backend: Arc<dyn Backend>, size: usize) -> Arc<Self> {
        Arc::new(Self {
            backend,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(tokio::sync::Semaphore::new(size.max(1))),
        })
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Runs `f` with a reader connection. A connection that reported the
    /// database unavailable is dropped, the next read opens a fresh one.
    pub async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unavailable("reader pool closed".into()))?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let idle = this.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let conn = match idle {
                Some(conn) => conn,
                None => this.backend.reader()?,
            };
            let result = f(&*conn);
            if !matches!(result, Err(StoreError::Unavailable(_))) {
                this.idle
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(conn);
            }
            result
        })
        .await
        .unwrap_or_else(|_| Err(StoreError::Corrupt("store read panicked".into())))
    }
}

/// Reads. Every connection answers them from what is committed.
pub trait Store: Send {
    /// Highest seq up to which every event of `post_id` is stored (0 = none).
    fn durable_through(&self, post_id: &str) -> Result<u64, StoreError>;
    /// One stored event.
    fn event(&self, post_id: &str, seq: u64) -> Result<Option<StoredEvent>, StoreError>;
    /// Events of one post with `seq >= from_seq`, in seq order.
    fn events(
        &self,
        post_id: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError>;
    /// Events of one post in seq order, filtered as `filter` says, at most
    /// `limit`; each read is an index range (see [`shapes`]).
    fn events_by_seq(
        &self,
        filter: &SeqFilter,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError>;
    /// One stored event exactly as it was received (its protobuf encoding,
    /// with any field this version does not know).
    fn event_bytes(&self, post_id: &str, seq: u64) -> Result<Option<Vec<u8>>, StoreError>;
    /// Number of events stored (all posts).
    fn event_count(&self) -> Result<u64, StoreError>;

    fn incident(&self, id: &str) -> Result<Option<Incident>, StoreError>;
    /// Incidents matching `filter`, newest first.
    fn incidents(&self, filter: &IncidentFilter) -> Result<Vec<Incident>, StoreError>;
    /// Events that joined an incident, in (post, seq) order.
    fn incident_events(&self, id: &str) -> Result<Vec<StoredEvent>, StoreError>;
    /// Audit trail of an incident, oldest first.
    fn audit(&self, incident_id: &str) -> Result<Vec<AuditEntry>, StoreError>;
    /// Post-level audit entries (test mode), oldest first.
    fn post_audit(&self, post_id: &str) -> Result<Vec<AuditEntry>, StoreError>;
    /// Notes of an incident, oldest first.
    fn notes(&self, incident_id: &str) -> Result<Vec<Note>, StoreError>;

    /// Status and counters of one post.
    fn post(&self, post_id: &str) -> Result<Option<PostInfo>, StoreError>;
    /// Every known post, by id.
    fn posts(&self) -> Result<Vec<PostInfo>, StoreError>;

    /// The site document: every post record and action plan, in the order
    /// they were imported (empty before the first import).
    fn site(&self) -> Result<SiteDocument, StoreError>;
    /// The site document's action plans alone (what an incident's plan is
    /// chosen from), without reading every post record.
    fn plans(&self) -> Result<Vec<ActionPlan>, StoreError>;
    /// Emergency mode as last set (it may have expired since).
    fn emergency(&self) -> Result<Option<EmergencyMode>, StoreError>;
    /// One post's record, if the site document has one.
    fn post_record(&self, post_id: &str) -> Result<Option<PostRecord>, StoreError>;

    /// Pending notifications of `webhook` due at `now`, oldest due first,
    /// at most `limit`.
    fn notifications_due(
        &self,
        webhook: &str,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<Notification>, StoreError>;
    /// Notifications in `state` with an id below `before` (all when
    /// `None`), newest first, at most `limit`.
    fn notifications(
        &self,
        state: NotifyState,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Notification>, StoreError>;
    /// One notification.
    fn notification(&self, id: u64) -> Result<Option<Notification>, StoreError>;
    /// How many notifications are in `state`.
    fn notification_count(&self, state: NotifyState) -> Result<u64, StoreError>;

    /// Position of the newest audit entry (0 = none). Audit positions only
    /// grow; the API's incident feed uses them as cursors.
    fn last_audit_position(&self) -> Result<u64, StoreError>;
    /// Audit entries after position `after`, oldest first, with their
    /// positions.
    fn audit_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, AuditEntry)>, StoreError>;
    /// Events of the posts and kinds in `filter` (all when empty) in
    /// received order (`received_at`, then post, then seq), strictly after
    /// `after`; each read is an index range (see [`shapes`]).
    fn events_received(
        &self,
        filter: &ReceivedFilter,
        after: Option<&ReceivedKey>,
        limit: usize,
    ) -> Result<Vec<(ReceivedKey, StoredEvent)>, StoreError>;

    /// One post's events newest first (by `at`, then seq) as `filter`
    /// says, at most `limit`, each with its position; each read is an
    /// index range (see [`shapes::history_events`]).
    fn history_events(
        &self,
        filter: &HistoryFilter,
        limit: usize,
    ) -> Result<Vec<(TimeKey, StoredEvent)>, StoreError>;
    /// One post's incidents newest first by when they opened (then
    /// number), at most `limit`, each with its position (an index range).
    fn history_incidents(
        &self,
        filter: &HistoryFilter,
        limit: usize,
    ) -> Result<Vec<(TimeKey, Incident)>, StoreError>;
    /// Incidents opened in a period, oldest first (by when they opened,
    /// then number), strictly after `after`, at most `limit` (index ranges).
    fn incidents_opened(
        &self,
        filter: &OpenedFilter,
        after: Option<TimeKey>,
        limit: usize,
    ) -> Result<Vec<(TimeKey, Incident)>, StoreError>;

    /// State the engine resumes from; `resolved_since` bounds which resolved
    /// incidents are still worth keeping in memory.
    fn engine_snapshot(&self, resolved_since: SystemTime) -> Result<EngineSnapshot, StoreError>;
}

/// The writer's connection: reads, and [`StoreWriter::begin`].
pub trait StoreWriter: Store {
    /// Starts a group-commit transaction.
    fn begin(&mut self) -> Result<Box<dyn StoreTx + '_>, StoreError>;

    /// Opens the connection again after the database said it was
    /// [`StoreError::Unavailable`] (an embedded file has nothing to redo).
    /// Whatever the writer keeps in memory is read again: a commit whose
    /// answer was lost may have happened.
    fn reconnect(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// One group commit. Dropping it without `commit` rolls everything back.
pub trait StoreTx {
    /// Stores events of one post idempotently by `(post_id, seq)`. Returns,
    /// per event, whether it was new (false = already stored: a no-op).
    fn insert_events(
        &mut self,
        post_id: &str,
        events: &[Received],
        stored_at: SystemTime,
    ) -> Result<Vec<bool>, StoreError>;
    /// Writes incidents (compare-and-set on their version), audit entries,
    /// notes, event links, post statuses, test modes and the site document. Returns the
    /// position given to each audit entry, in order (the feed's cursors).
    fn apply(&mut self, changes: &Changes) -> Result<Vec<u64>, StoreError>;
    /// Takes request `id` of the mailbox through which standby replicas
    /// forward actions to the leader (PostgreSQL only): true if it was
    /// still waiting; the row stays locked until this transaction ends, so
    /// the standby that sent it cannot give up on it half-way. False: the
    /// request was answered or given up already; leave it alone.
    fn claim_request(&mut self, id: u64) -> Result<bool, StoreError> {
        let _ = id;
        Err(StoreError::Backend {
            backend: "store",
            message: "this backend has no request mailbox".into(),
        })
    }
    /// Stores the answer to a claimed request, committed with the change it
    /// describes.
    fn answer_request(&mut self, id: u64, reply: &[u8]) -> Result<(), StoreError> {
        let _ = (id, reply);
        Err(StoreError::Backend {
            backend: "store",
            message: "this backend has no request mailbox".into(),
        })
    }
    /// Makes everything durable (fsync) and returns each touched post's
    /// `durable_through_seq`.
    fn commit(self: Box<Self>) -> Result<CommitResult, StoreError>;
}

/// Incident ids are `inc-` and a zero-padded number.
pub fn incident_id(number: u64) -> String {
    format!("inc-{number:06}")
}

/// The number in an incident id, if it is one.
pub fn incident_number(id: &str) -> Option<u64> {
    let digits = id.strip_prefix("inc-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incident_ids_round_trip() {
        assert_eq!(incident_id(123), "inc-000123");
        assert_eq!(incident_number("inc-000123"), Some(123));
        assert_eq!(incident_number(&incident_id(12_345_678)), Some(12_345_678));
        for bad in ["inc-", "inc-x1", "123", "inc--1", "inc-+1"] {
            assert_eq!(incident_number(bad), None, "{bad}");
        }
    }

    #[test]
    fn changes_collapse_writes_to_one_incident() {
        let mut c = Changes::default();
        let mut inc = Incident {
            id: incident_id(1),
            version: 1,
            ..Default::default()
        };
        c.put_incident(inc.clone(), None);
        inc.version = 2;
        c.put_incident(inc, Some(1));
        assert_eq!(c.incidents().len(), 1);
        assert_eq!(c.incidents()[0].prev_version, None);
        assert_eq!(c.incidents()[0].incident.version, 2);
    }
}
