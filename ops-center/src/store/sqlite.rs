//! [`Store`] on SQLite: one database file `ops.db` in `data_dir`, WAL mode.
//!
//! `synchronous = FULL`: in WAL mode, NORMAL survives a crash of the process
//! but not of the machine (the last commits may be lost on power failure).
//! A receipt tells a gateway it may delete events from its outbox, so a
//! commit must be on disk before the receipt leaves; FULL fsyncs the WAL on
//! every commit. Group commit keeps that to one fsync per batch of batches.
//!
//! Events, incidents, audit entries and notes are stored as their protobuf
//! encoding in a `body` column, next to the few columns that are queried.
//! Times are Unix milliseconds.
//!
//! Per-post watermarks ([`SeqWatermark`]) live in memory, loaded at open from
//! `posts.durable_through` and the events stored above it; every transaction
//! works on copies of the ones it touches and swaps them in only after the
//! commit succeeded, so a failed commit leaves them exact.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prost::Message;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use vigil_proto::v1::{
    ActionPlan, AuditEntry, EmergencyMode, Event, Incident, IncidentState, Note, PostInfo,
    PostRecord, PostStatus, SiteDocument, StoredEvent,
};

use super::{
    Backend, Changes, CommitResult, EngineSnapshot, HistoryFilter, IncidentFilter, OpenedFilter,
    Received, ReceivedFilter, ReceivedKey, SeqFilter, Store, StoreError, StoreTx, StoreWriter,
    TimeKey, incident_id, incident_number,
    notify::{self, Notification, NotifyState},
    shapes::{self, Param},
    sites,
    watermark::SeqWatermark,
};

impl rusqlite::ToSql for Param {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(match self {
            Param::Int(i) => rusqlite::types::ToSqlOutput::from(*i),
            Param::Text(t) => rusqlite::types::ToSqlOutput::from(t.as_str()),
        })
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend {
            backend: "sqlite",
            message: e.to_string(),
        }
    }
}

/// The embedded backend: `data_dir/ops.db`.
#[derive(Debug, Clone)]
pub struct SqliteBackend {
    data_dir: PathBuf,
}

impl SqliteBackend {
    /// Creates the folder and the schema, so that readers can open at once.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        drop(SqliteStore::open_reader_or_create(data_dir, true)?);
        Ok(Self {
            data_dir: data_dir.to_owned(),
        })
    }
}

impl Backend for SqliteBackend {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn location(&self) -> String {
        self.data_dir.join(DB_FILE).display().to_string()
    }

    fn writer(&self) -> Result<Box<dyn StoreWriter>, StoreError> {
        Ok(Box::new(SqliteStore::open(&self.data_dir)?))
    }

    fn reader(&self) -> Result<Box<dyn Store>, StoreError> {
        Ok(Box::new(SqliteStore::open_reader(&self.data_dir)?))
    }

    fn pruner(&self) -> Result<Box<dyn super::retention::PruneConn>, StoreError> {
        Ok(Box::new(super::retention::SqlitePrune::open(
            &self.data_dir.join(DB_FILE),
        )?))
    }
}

/// Name of the database file inside `data_dir`.
pub const DB_FILE: &str = "ops.db";
/// Schema version written to `PRAGMA user_version`: 1 the first schema,
/// 2 the event kind and received-order time as indexed columns, 3 post
/// records and action plans (`store::sites`), 4 when each incident opened
/// as an indexed column (`store::history`), 5 timer state per post and
/// emergency mode (`store::timers`), 6 the outbound notification queue
/// (`store::notify`).
const SCHEMA_VERSION: i64 = 6;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS posts (
    post_id         TEXT PRIMARY KEY,
    durable_through INTEGER NOT NULL DEFAULT 0,
    last_seq        INTEGER NOT NULL DEFAULT 0,
    last_seen       INTEGER,
    status          BLOB,
    test_mode_until INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    post_id     TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    received_at INTEGER,
    stored_at   INTEGER NOT NULL,
    body        BLOB NOT NULL,
    PRIMARY KEY (post_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS incidents (
    number      INTEGER PRIMARY KEY,
    post_id     TEXT NOT NULL,
    state       INTEGER NOT NULL,
    version     INTEGER NOT NULL,
    resolved_at INTEGER,
    body        BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_state ON incidents (state, number);
CREATE TABLE IF NOT EXISTS incident_events (
    number  INTEGER NOT NULL,
    post_id TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    PRIMARY KEY (number, post_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS incident_events_event ON incident_events (post_id, seq);
CREATE TABLE IF NOT EXISTS audit (
    id      INTEGER PRIMARY KEY,
    number  INTEGER,
    post_id TEXT NOT NULL,
    body    BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_incident ON audit (number);
CREATE INDEX IF NOT EXISTS audit_post ON audit (post_id) WHERE number IS NULL;
CREATE TABLE IF NOT EXISTS notes (
    id     INTEGER PRIMARY KEY,
    number INTEGER NOT NULL,
    body   BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS notes_incident ON notes (number);
";

/// Version 2, part one: the columns every replay filters and sorts on,
/// `kind` (an `EventKind`, filled from the stored bodies by
/// [`backfill_kinds`]) and `at` (received-order time: `received_at`, or
/// `stored_at` for an event without one).
const MIGRATE_2_COLUMNS: &str = "
ALTER TABLE events ADD COLUMN kind INTEGER NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN at INTEGER NOT NULL DEFAULT 0;
UPDATE events SET at = coalesce(received_at, stored_at);
";

/// Version 2, part two: one index per query shape (see `store::shapes`),
/// built after the backfill. `events_received` (on `received_at` alone)
/// served no query by itself: the order is by `at`, post and seq.
const MIGRATE_2_INDEXES: &str = "
DROP INDEX IF EXISTS events_received;
CREATE INDEX events_post_kind ON events (post_id, kind, seq);
CREATE INDEX events_kind_at ON events (kind, at, post_id, seq);
CREATE INDEX events_post_kind_at ON events (post_id, kind, at, seq);
DROP INDEX IF EXISTS incidents_post;
CREATE INDEX incidents_post ON incidents (post_id, state, number);
";

/// Rows read per statement while filling `kind` from stored bodies.
const BACKFILL_CHUNK: i64 = 5000;

/// Sets `events.kind` of every stored event from its body, walking the
/// primary key in chunks. A body that does not decode keeps kind 0
/// (`EVENT_KIND_UNSPECIFIED`) and is counted in the log.
fn backfill_kinds(tx: &rusqlite::Transaction<'_>) -> Result<u64, StoreError> {
    let mut select = tx.prepare(
        "SELECT post_id, seq, body FROM events WHERE (post_id, seq) > (?1, ?2)
         ORDER BY post_id, seq LIMIT ?3",
    )?;
    let mut update = tx.prepare("UPDATE events SET kind = ?3 WHERE post_id = ?1 AND seq = ?2")?;
    let (mut post, mut seq) = (String::new(), i64::MIN);
    let (mut done, mut undecodable) = (0u64, 0u64);
    loop {
        let rows: Vec<(String, i64, Vec<u8>)> = select
            .query_map(params![post, seq, BACKFILL_CHUNK], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<Result<_, _>>()?;
        let Some(last) = rows.last() else { break };
        (post, seq) = (last.0.clone(), last.1);
        for (p, s, body) in &rows {
            match Event::decode(&body[..]) {
                Ok(event) => {
                    let kind = super::shapes::kind_of(&event);
                    if kind != 0 {
                        update.execute(params![p, s, kind])?;
                    }
                }
                Err(_) => undecodable += 1,
            }
            done += 1;
        }
    }
    if undecodable > 0 {
        tracing::warn!(
            undecodable,
            "sqlite: events whose body does not decode keep kind 0"
        );
    }
    Ok(done)
}

/// One connection to the SQLite store: the writer's (with the watermarks
/// in memory) or a reader's; see the module docs.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    /// The writer's watermarks; `None` on a reader's connection.
    marks: Option<HashMap<String, SeqWatermark>>,
}

impl SqliteStore {
    /// Opens (creating if needed) `data_dir/ops.db` as the writer.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let mut store = Self::open_reader_or_create(data_dir, true)?;
        store.marks = Some(load_marks(&store.conn)?);
        Ok(store)
    }

    /// Opens `data_dir/ops.db` for reading only.
    pub fn open_reader(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_reader_or_create(data_dir, false)
    }

    fn open_reader_or_create(data_dir: &Path, create: bool) -> Result<Self, StoreError> {
        if create {
            std::fs::create_dir_all(data_dir).map_err(|source| StoreError::Io {
                path: data_dir.to_owned(),
                source,
            })?;
        }
        let path = data_dir.join(DB_FILE);
        let mut conn = Connection::open(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "busy_timeout", 5000)?;
        // 64 MiB of page cache: the events index stays hot under load.
        conn.pragma_update(None, "cache_size", -65536)?;
        conn.set_prepared_statement_cache_capacity(64);
        let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        if create {
            conn.execute_batch(SCHEMA)?;
            if found < 1 {
                conn.pragma_update(None, "user_version", 1)?;
            }
            if found < 2 {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                tx.execute_batch(MIGRATE_2_COLUMNS)?;
                let events = backfill_kinds(&tx)?;
                tx.execute_batch(MIGRATE_2_INDEXES)?;
                tx.pragma_update(None, "user_version", 2)?;
                tx.commit()?;
                if events > 0 {
                    tracing::info!(events, "sqlite: schema migrated to version 2 (event kinds)");
                }
            }
            if found < 3 {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                tx.execute_batch(super::sites::SQLITE_SCHEMA)?;
                tx.pragma_update(None, "user_version", 3)?;
                tx.commit()?;
            }
            if found < 4 {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                super::history::migrate_sqlite(&tx)?;
                tx.pragma_update(None, "user_version", 4)?;
                tx.commit()?;
            }
            if found < 5 {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                tx.execute_batch(super::timers::SQLITE_SCHEMA)?;
                tx.pragma_update(None, "user_version", 5)?;
                tx.commit()?;
            }
            if found < 6 {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                tx.execute_batch(super::notify::SQLITE_SCHEMA)?;
                tx.pragma_update(None, "user_version", 6)?;
                tx.commit()?;
            }
        } else {
            conn.pragma_update(None, "query_only", true)?;
        }
        Ok(Self {
            conn,
            path,
            marks: None,
        })
    }

    /// Incidents of a query whose columns are body, opened_at, number.
    fn timed_incidents(&self, q: &shapes::Query) -> Result<Vec<(TimeKey, Incident)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&q.sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(q.params.iter()), |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (body, ms, number) = row?;
            out.push((
                TimeKey {
                    ms,
                    key: number as u64,
                },
                decode::<Incident>(&body)?,
            ));
        }
        Ok(out)
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn post_info(&self, row: PostRow) -> Result<PostInfo, StoreError> {
        // From the database, not `self.marks`: those are only kept current
        // on the connection that writes, and the API reads through another.
        let above: Vec<u64> = self
            .conn
            .prepare_cached(shapes::POST_EVENTS_ABOVE)?
            .query_map(params![row.post_id, row.durable_through], |r| {
                r.get::<_, i64>(0)
            })?
            .map(|seq| seq.map(|s| s as u64))
            .collect::<Result<_, _>>()?;
        let mark = SeqWatermark::restore(row.durable_through as u64, above);
        let open: u32 = self
            .conn
            .prepare_cached(shapes::POST_OPEN_INCIDENTS)?
            .query_row(params![row.post_id], |r| r.get(0))?;
        let status = match row.status {
            Some(bytes) => Some(decode::<PostStatus>(&bytes)?),
            None => None,
        };
        Ok(PostInfo {
            post_id: row.post_id,
            status,
            last_seen: row.last_seen.map(|ms| ts(from_millis(ms))),
            last_seq: mark.last_seq(),
            durable_through_seq: mark.durable_through(),
            missing_events: mark.missing(),
            test_mode_until: row.test_mode_until.map(|ms| ts(from_millis(ms))),
            open_incidents: open,
        })
    }

    fn post_rows(&self, post_id: Option<&str>) -> Result<Vec<PostRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT post_id, last_seen, status, test_mode_until, durable_through FROM posts
             WHERE ?1 IS NULL OR post_id = ?1 ORDER BY post_id",
        )?;
        let rows = stmt.query_map(params![post_id], |r| {
            Ok(PostRow {
                post_id: r.get(0)?,
                last_seen: r.get(1)?,
                status: r.get(2)?,
                test_mode_until: r.get(3)?,
                durable_through: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn stored_events(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map(params, stored_event)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(to_stored(row?)?);
        }
        Ok(out)
    }

    fn notification_rows(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<Notification>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map(params, |r| {
            Ok(notify::Row {
                id: r.get(0)?,
                delivery: r.get(1)?,
                webhook: r.get(2)?,
                event: r.get(3)?,
                incident: r.get(4)?,
                at: r.get(5)?,
                state: r.get(6)?,
                attempts: r.get(7)?,
                next_at: r.get(8)?,
                last_error: r.get(9)?,
            })
        })?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row?.decode()?);
        }
        Ok(out)
    }

    fn bodies<M: Message + Default>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<M>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map(params, |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for body in rows {
            out.push(decode::<M>(&body?)?);
        }
        Ok(out)
    }
}

struct PostRow {
    post_id: String,
    durable_through: i64,
    last_seen: Option<i64>,
    status: Option<Vec<u8>>,
    test_mode_until: Option<i64>,
}

/// A stored event from the first three columns of a row (body, stored_at,
/// incident number).
fn stored_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Vec<u8>, i64, Option<i64>)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
}

fn to_stored(
    (body, stored_at, number): (Vec<u8>, i64, Option<i64>),
) -> Result<StoredEvent, StoreError> {
    Ok(StoredEvent {
        event: Some(decode::<Event>(&body)?),
        stored_at: Some(ts(from_millis(stored_at))),
        incident_id: number.map(|n| incident_id(n as u64)).unwrap_or_default(),
    })
}

impl StoreWriter for SqliteStore {
    fn begin(&mut self) -> Result<Box<dyn StoreTx + '_>, StoreError> {
        let Some(marks) = self.marks.as_mut() else {
            return Err(StoreError::Backend {
                backend: "sqlite",
                message: "a reader's connection cannot write".into(),
            });
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        Ok(Box::new(SqliteTx {
            tx,
            marks,
            work: BTreeMap::new(),
            inserted: 0,
            duplicates: 0,
        }))
    }
}

impl Store for SqliteStore {
    fn durable_through(&self, post_id: &str) -> Result<u64, StoreError> {
        if let Some(marks) = &self.marks {
            return Ok(marks.get(post_id).map_or(0, SeqWatermark::durable_through));
        }
        let d: Option<i64> = self
            .conn
            .prepare_cached("SELECT durable_through FROM posts WHERE post_id = ?1")?
            .query_row(params![post_id], |r| r.get(0))
            .optional()?;
        Ok(d.unwrap_or(0) as u64)
    }

    fn event(&self, post_id: &str, seq: u64) -> Result<Option<StoredEvent>, StoreError> {
        Ok(self
            .stored_events(shapes::EVENT_BY_KEY, params![post_id, seq as i64])?
            .pop())
    }

    fn events(
        &self,
        post_id: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let filter = SeqFilter {
            post_id: post_id.to_owned(),
            from_seq,
            ..Default::default()
        };
        self.events_by_seq(&filter, limit)
    }

    fn events_by_seq(
        &self,
        filter: &SeqFilter,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let q = shapes::events_by_seq(filter, limit, shapes::Dialect::Sqlite)?;
        self.stored_events(&q.sql, rusqlite::params_from_iter(q.params.iter()))
    }

    fn event_bytes(&self, post_id: &str, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT body FROM events WHERE post_id = ?1 AND seq = ?2")?
            .query_row(params![post_id, seq as i64], |r| r.get(0))
            .optional()?)
    }

    fn event_count(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))?;
        Ok(n as u64)
    }

    fn incident(&self, id: &str) -> Result<Option<Incident>, StoreError> {
        let Some(number) = incident_number(id) else {
            return Ok(None);
        };
        Ok(self
            .bodies::<Incident>(
                "SELECT body FROM incidents WHERE number = ?1",
                params![number as i64],
            )?
            .pop())
    }

    fn incidents(&self, filter: &IncidentFilter) -> Result<Vec<Incident>, StoreError> {
        let q = shapes::incidents(filter)?;
        self.bodies(&q.sql, rusqlite::params_from_iter(q.params.iter()))
    }

    fn incident_events(&self, id: &str) -> Result<Vec<StoredEvent>, StoreError> {
        let Some(number) = incident_number(id) else {
            return Ok(Vec::new());
        };
        self.stored_events(shapes::INCIDENT_EVENTS, params![number as i64])
    }

    fn audit(&self, incident_id: &str) -> Result<Vec<AuditEntry>, StoreError> {
        let Some(number) = incident_number(incident_id) else {
            return Ok(Vec::new());
        };
        self.bodies(shapes::AUDIT_OF_INCIDENT, params![number as i64])
    }

    fn post_audit(&self, post_id: &str) -> Result<Vec<AuditEntry>, StoreError> {
        self.bodies(shapes::AUDIT_OF_POST, params![post_id])
    }

    fn notes(&self, incident_id: &str) -> Result<Vec<Note>, StoreError> {
        let Some(number) = incident_number(incident_id) else {
            return Ok(Vec::new());
        };
        self.bodies(shapes::NOTES_OF_INCIDENT, params![number as i64])
    }

    fn post(&self, post_id: &str) -> Result<Option<PostInfo>, StoreError> {
        match self.post_rows(Some(post_id))?.pop() {
            Some(row) => Ok(Some(self.post_info(row)?)),
            None => Ok(None),
        }
    }

    fn posts(&self) -> Result<Vec<PostInfo>, StoreError> {
        self.post_rows(None)?
            .into_iter()
            .map(|row| self.post_info(row))
            .collect()
    }

    fn emergency(&self) -> Result<Option<EmergencyMode>, StoreError> {
        Ok(self
            .bodies(super::timers::EMERGENCY_SELECT, [])?
            .into_iter()
            .next())
    }

    fn site(&self) -> Result<SiteDocument, StoreError> {
        Ok(SiteDocument {
            posts: self.bodies(sites::SELECT_POSTS, [])?,
            plans: self.bodies(sites::SELECT_PLANS, [])?,
        })
    }

    fn plans(&self) -> Result<Vec<ActionPlan>, StoreError> {
        self.bodies(sites::SELECT_PLANS, [])
    }

    fn post_record(&self, post_id: &str) -> Result<Option<PostRecord>, StoreError> {
        Ok(self
            .bodies(sites::sqlite::SELECT_POST, params![post_id])?
            .pop())
    }

    fn notifications_due(
        &self,
        webhook: &str,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<Notification>, StoreError> {
        self.notification_rows(
            notify::DUE,
            params![
                NotifyState::Pending as i64,
                webhook,
                millis(now),
                limit as i64
            ],
        )
    }

    fn notifications(
        &self,
        state: NotifyState,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Notification>, StoreError> {
        let before = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
        self.notification_rows(
            notify::BY_STATE,
            params![state as i64, before, limit as i64],
        )
    }

    fn notification(&self, id: u64) -> Result<Option<Notification>, StoreError> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(None);
        };
        Ok(self.notification_rows(notify::ONE, params![id])?.pop())
    }

    fn notification_count(&self, state: NotifyState) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .prepare_cached(notify::COUNT)?
            .query_row(params![state as i64], |r| r.get(0))?;
        Ok(n as u64)
    }

    fn last_audit_position(&self) -> Result<u64, StoreError> {
        let n: Option<i64> = self
            .conn
            .query_row("SELECT max(id) FROM audit", [], |r| r.get(0))?;
        Ok(n.unwrap_or(0) as u64)
    }

    fn audit_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, AuditEntry)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(shapes::AUDIT_AFTER)?;
        let rows = stmt.query_map(params![after as i64, limit as i64], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, body) = row?;
            out.push((id as u64, decode::<AuditEntry>(&body)?));
        }
        Ok(out)
    }

    fn events_received(
        &self,
        filter: &ReceivedFilter,
        after: Option<&ReceivedKey>,
        limit: usize,
    ) -> Result<Vec<(ReceivedKey, StoredEvent)>, StoreError> {
        let q = shapes::events_received(filter, after, limit)?;
        let mut stmt = self.conn.prepare_cached(&q.sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(q.params.iter()), |r| {
            Ok((
                stored_event(r)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (event, at, post_id, seq) = row?;
            out.push((
                ReceivedKey {
                    received_ms: at,
                    post_id,
                    seq: seq as u64,
                },
                to_stored(event)?,
            ));
        }
        Ok(out)
    }

    fn history_events(
        &self,
        filter: &HistoryFilter,
        limit: usize,
    ) -> Result<Vec<(TimeKey, StoredEvent)>, StoreError> {
        let q = shapes::history_events(filter, limit, shapes::Dialect::Sqlite)?;
        let mut stmt = self.conn.prepare_cached(&q.sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(q.params.iter()), |r| {
            Ok((stored_event(r)?, r.get::<_, i64>(3)?, r.get::<_, i64>(5)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (event, at, seq) = row?;
            out.push((
                TimeKey {
                    ms: at,
                    key: seq as u64,
                },
                to_stored(event)?,
            ));
        }
        Ok(out)
    }

    fn history_incidents(
        &self,
        filter: &HistoryFilter,
        limit: usize,
    ) -> Result<Vec<(TimeKey, Incident)>, StoreError> {
        self.timed_incidents(&shapes::history_incidents(filter, limit))
    }

    fn incidents_opened(
        &self,
        filter: &OpenedFilter,
        after: Option<TimeKey>,
        limit: usize,
    ) -> Result<Vec<(TimeKey, Incident)>, StoreError> {
        self.timed_incidents(&shapes::incidents_opened(filter, after, limit)?)
    }

    fn engine_snapshot(&self, resolved_since: SystemTime) -> Result<EngineSnapshot, StoreError> {
        let incidents = self.bodies(
            "SELECT body FROM incidents WHERE state != ?1 OR resolved_at >= ?2 ORDER BY number",
            params![IncidentState::Resolved as i32, millis(resolved_since)],
        )?;
        let mut stmt = self.conn.prepare_cached(
            "SELECT post_id, test_mode_until FROM posts WHERE test_mode_until IS NOT NULL",
        )?;
        let test_modes = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, from_millis(r.get::<_, i64>(1)?)))
            })?
            .collect::<Result<_, _>>()?;
        let last: Option<i64> =
            self.conn
                .query_row("SELECT max(number) FROM incidents", [], |r| r.get(0))?;
        let statuses = self.bodies("SELECT status FROM posts WHERE status IS NOT NULL", [])?;
        let mut stmt = self.conn.prepare_cached(super::timers::SELECT_ALL)?;
        let rows: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let timers = rows
            .into_iter()
            .map(|(post, text)| {
                let state = super::PostTimers::decode(&post, &text)?;
                Ok((post, state))
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(EngineSnapshot {
            incidents,
            test_modes,
            last_incident_number: last.unwrap_or(0) as u64,
            statuses,
            site_posts: self.bodies(sites::SELECT_POSTS, [])?,
            timers,
            emergency: self.emergency()?,
        })
    }
}

struct SqliteTx<'a> {
    tx: rusqlite::Transaction<'a>,
    marks: &'a mut HashMap<String, SeqWatermark>,
    /// Working copies of the watermarks this transaction touches, with the
    /// time their post was last heard from.
    work: BTreeMap<String, (SeqWatermark, SystemTime)>,
    inserted: u64,
    duplicates: u64,
}

impl StoreTx for SqliteTx<'_> {
    fn insert_events(
        &mut self,
        post_id: &str,
        events: &[Received],
        stored_at: SystemTime,
    ) -> Result<Vec<bool>, StoreError> {
        if !self.work.contains_key(post_id) {
            let mark = self.marks.get(post_id).cloned().unwrap_or_default();
            self.work.insert(post_id.to_owned(), (mark, stored_at));
        }
        let (mark, seen) = self.work.get_mut(post_id).expect("inserted above");
        *seen = stored_at;
        let mut stmt = self.tx.prepare_cached(
            "INSERT OR IGNORE INTO events (post_id, seq, received_at, stored_at, body, kind, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        let stored_ms = millis(stored_at);
        let mut new = Vec::with_capacity(events.len());
        for Received { event, raw } in events {
            // The watermark knows every stored seq of this post, so a re-sent
            // event costs no database work at all.
            if mark.contains(event.seq) {
                new.push(false);
                self.duplicates += 1;
                continue;
            }
            let received = event
                .received_at
                .and_then(|t| SystemTime::try_from(t).ok())
                .map(millis);
            let changed = stmt.execute(params![
                post_id,
                event.seq as i64,
                received,
                stored_ms,
                &raw[..],
                shapes::kind_of(event),
                received.unwrap_or(stored_ms)
            ])?;
            mark.add(event.seq);
            if changed == 1 {
                self.inserted += 1;
                new.push(true);
            } else {
                self.duplicates += 1;
                new.push(false);
            }
        }
        Ok(new)
    }

    fn apply(&mut self, changes: &Changes) -> Result<Vec<u64>, StoreError> {
        for (post, state) in &changes.timers {
            self.tx
                .prepare_cached(super::timers::UPSERT)?
                .execute(params![post, state.encode()])?;
        }
        match &changes.emergency {
            Some(Some(mode)) => {
                self.tx.execute(
                    super::timers::EMERGENCY_UPSERT,
                    params![mode.encode_to_vec()],
                )?;
            }
            Some(None) => {
                self.tx.execute(super::timers::EMERGENCY_CLEAR, [])?;
            }
            None => {}
        }
        if let Some(site) = &changes.site {
            let (posts, plans) = sites::rows(site);
            self.tx.execute(sites::CLEAR_POSTS, [])?;
            self.tx.execute(sites::CLEAR_PLANS, [])?;
            for r in posts {
                self.tx
                    .prepare_cached(sites::sqlite::INSERT_POST)?
                    .execute(params![r.post_id, r.position, r.body])?;
            }
            for r in plans {
                self.tx
                    .prepare_cached(sites::sqlite::INSERT_PLAN)?
                    .execute(params![r.position, r.category, r.post_id, r.body])?;
            }
        }
        for write in changes.incidents() {
            let inc = &write.incident;
            let number = incident_number(&inc.id)
                .ok_or_else(|| StoreError::Corrupt(format!("bad incident id {:?}", inc.id)))?;
            let resolved_at = inc
                .resolved_at
                .filter(|_| inc.state == IncidentState::Resolved as i32)
                .and_then(|t| SystemTime::try_from(t).ok())
                .map(millis);
            let body = inc.encode_to_vec();
            // Set once: an incident's opening time never changes (and an
            // update that named the column would rewrite both its indexes).
            let opened_at = super::history::opened_ms(inc);
            let changed = match write.prev_version {
                None => self
                    .tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO incidents (number, post_id, state, version, resolved_at, body, opened_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )?
                    .execute(params![
                        number as i64,
                        inc.post_id,
                        inc.state,
                        inc.version as i64,
                        resolved_at,
                        body,
                        opened_at
                    ])?,
                Some(prev) => self
                    .tx
                    .prepare_cached(
                        "UPDATE incidents SET state = ?2, version = ?3, resolved_at = ?4, body = ?5
                         WHERE number = ?1 AND version = ?6",
                    )?
                    .execute(params![
                        number as i64,
                        inc.state,
                        inc.version as i64,
                        resolved_at,
                        body,
                        prev as i64
                    ])?,
            };
            if changed != 1 {
                let found: Option<i64> = self
                    .tx
                    .query_row(
                        "SELECT version FROM incidents WHERE number = ?1",
                        params![number as i64],
                        |r| r.get(0),
                    )
                    .optional()?;
                return Err(StoreError::VersionConflict {
                    id: inc.id.clone(),
                    expected: write.prev_version.unwrap_or(0),
                    found: found.map(|v| v as u64),
                });
            }
        }
        {
            let mut stmt = self.tx.prepare_cached(notify::INSERT)?;
            for n in &changes.notifications {
                stmt.execute(params![
                    n.delivery,
                    n.webhook,
                    n.event,
                    n.incident.encode_to_vec(),
                    millis(n.at),
                    millis(n.at)
                ])?;
            }
            let mut stmt = self.tx.prepare_cached(notify::UPDATE)?;
            for u in &changes.notify_updates {
                stmt.execute(params![
                    u.state as i64,
                    i64::from(u.attempts),
                    millis(u.next_at),
                    u.last_error,
                    i64::try_from(u.id).unwrap_or(-1),
                    u.only_if as i64
                ])?;
            }
            if let Some(before) = changes.notify_prune_before {
                let ids: Vec<i64> = self
                    .tx
                    .prepare_cached(notify::PRUNABLE)?
                    .query_map(
                        params![
                            NotifyState::Delivered as i64,
                            millis(before),
                            notify::PRUNE_BATCH
                        ],
                        |r| r.get(0),
                    )?
                    .collect::<Result<_, _>>()?;
                let mut stmt = self.tx.prepare_cached(notify::DELETE)?;
                for id in ids {
                    stmt.execute(params![id])?;
                }
            }
        }
        let mut positions = Vec::with_capacity(changes.audit.len());
        {
            let mut stmt = self
                .tx
                .prepare_cached("INSERT INTO audit (number, post_id, body) VALUES (?1, ?2, ?3)")?;
            for entry in &changes.audit {
                let number = incident_number(&entry.incident_id).map(|n| n as i64);
                stmt.execute(params![number, entry.post_id, entry.encode_to_vec()])?;
                positions.push(self.tx.last_insert_rowid() as u64);
            }
        }
        {
            let mut stmt = self
                .tx
                .prepare_cached("INSERT INTO notes (number, body) VALUES (?1, ?2)")?;
            for note in &changes.notes {
                let number = incident_number(&note.incident_id).ok_or_else(|| {
                    StoreError::Corrupt(format!("note for bad incident id {:?}", note.incident_id))
                })?;
                stmt.execute(params![number as i64, note.encode_to_vec()])?;
            }
        }
        {
            let mut stmt = self.tx.prepare_cached(
                "INSERT OR IGNORE INTO incident_events (number, post_id, seq) VALUES (?1, ?2, ?3)",
            )?;
            for link in &changes.links {
                let number = incident_number(&link.incident_id).ok_or_else(|| {
                    StoreError::Corrupt(format!("link to bad incident id {:?}", link.incident_id))
                })?;
                stmt.execute(params![number as i64, link.post_id, link.seq as i64])?;
            }
        }
        {
            let mut stmt = self.tx.prepare_cached(
                "INSERT INTO posts (post_id, last_seen, status) VALUES (?1, ?2, ?3)
                 ON CONFLICT (post_id) DO UPDATE SET
                   last_seen = max(coalesce(last_seen, 0), excluded.last_seen),
                   status = excluded.status",
            )?;
            for (status, seen) in &changes.statuses {
                stmt.execute(params![
                    status.post_id,
                    millis(*seen),
                    status.encode_to_vec()
                ])?;
            }
        }
        {
            let mut stmt = self.tx.prepare_cached(
                "INSERT INTO posts (post_id, test_mode_until) VALUES (?1, ?2)
                 ON CONFLICT (post_id) DO UPDATE SET test_mode_until = excluded.test_mode_until",
            )?;
            for tm in &changes.test_modes {
                stmt.execute(params![tm.post_id, tm.until.map(millis)])?;
            }
        }
        Ok(positions)
    }

    fn commit(self: Box<Self>) -> Result<CommitResult, StoreError> {
        let this = *self;
        {
            let mut stmt = this.tx.prepare_cached(
                "INSERT INTO posts (post_id, durable_through, last_seq, last_seen) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (post_id) DO UPDATE SET
                   durable_through = excluded.durable_through,
                   last_seq = excluded.last_seq,
                   last_seen = max(coalesce(last_seen, 0), excluded.last_seen)",
            )?;
            for (post, (mark, seen)) in &this.work {
                stmt.execute(params![
                    post,
                    mark.durable_through() as i64,
                    mark.last_seq() as i64,
                    millis(*seen)
                ])?;
            }
        }
        this.tx.commit()?;
        let mut durable = Vec::with_capacity(this.work.len());
        for (post, (mark, _)) in this.work {
            durable.push((post.clone(), mark.durable_through()));
            this.marks.insert(post, mark);
        }
        Ok(CommitResult {
            durable,
            inserted: this.inserted,
            duplicates: this.duplicates,
        })
    }
}

fn load_marks(conn: &Connection) -> Result<HashMap<String, SeqWatermark>, StoreError> {
    let mut durable: HashMap<String, u64> = HashMap::new();
    let mut stmt = conn.prepare("SELECT post_id, durable_through FROM posts")?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (post, d) = row?;
        durable.insert(post, d as u64);
    }
    // Events stored above a post's watermark: those waiting for a gap to
    // fill. Normally none. The watermark is written in the same transaction
    // as the events, so it is never ahead of them.
    let mut above: HashMap<String, Vec<u64>> = HashMap::new();
    let mut stmt = conn.prepare(
        "SELECT e.post_id, e.seq FROM posts p JOIN events e
         ON e.post_id = p.post_id AND e.seq > p.durable_through",
    )?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (post, seq) = row?;
        above.entry(post).or_default().push(seq as u64);
    }
    Ok(durable
        .into_iter()
        .map(|(post, d)| {
            let mark = SeqWatermark::restore(d, above.remove(&post).unwrap_or_default());
            (post, mark)
        })
        .collect())
}

fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Unix milliseconds (negative before 1970, saturating far out).
pub(crate) fn millis(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

pub(crate) fn from_millis(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

fn ts(t: SystemTime) -> prost_types::Timestamp {
    t.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_proto::v1::event::Body;

    #[test]
    fn the_store_suite_passes_on_sqlite() {
        for (name, case) in crate::store::suite::CASES {
            let dir = tempfile::tempdir().unwrap();
            let backend = SqliteBackend::open(dir.path()).unwrap();
            eprintln!("store suite on sqlite: {name}");
            case(&backend);
        }
    }

    /// Tables (and the aliases the queries give them) a plan must never
    /// read from one end to the other.
    const TABLES: &[&str] = &[
        "events",
        "e",
        "incidents",
        "audit",
        "notes",
        "incident_events",
        "ie",
        "l",
        "posts",
        "notifications",
    ];

    #[test]
    fn every_query_shape_is_served_by_an_index() {
        let dir = tempfile::tempdir().unwrap();
        SqliteBackend::open(dir.path()).unwrap();
        let store = SqliteStore::open_reader(dir.path()).unwrap();
        let mut failures = Vec::new();
        for (name, shape) in crate::store::shapes::shapes() {
            let q = shape.query(crate::store::shapes::Dialect::Sqlite).unwrap();
            let mut stmt = store
                .conn
                .prepare(&format!("EXPLAIN QUERY PLAN {}", q.sql))
                .unwrap();
            let plan: Vec<String> = stmt
                .query_map(rusqlite::params_from_iter(q.params.iter()), |r| r.get(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let scans: Vec<&String> = plan
                .iter()
                .filter(|line| {
                    let Some(rest) = line.strip_prefix("SCAN ") else {
                        return false;
                    };
                    let table = rest.split_whitespace().next().unwrap_or_default();
                    TABLES.contains(&table)
                        && !(shape.ordered_scan_allowed() && table == "incidents")
                })
                .collect();
            eprintln!("{name}:\n  {}", plan.join("\n  "));
            let kind_unused = shape.filters_kind()
                && plan
                    .iter()
                    .any(|l| l.starts_with("SEARCH e ") && !l.contains("kind=?"));
            let searched = plan.iter().any(|l| l.starts_with("SEARCH "));
            if !scans.is_empty() || kind_unused || !(searched || shape.ordered_scan_allowed()) {
                failures.push(format!("{name}:\n  {}", plan.join("\n  ")));
            }
        }
        assert!(failures.is_empty(), "full scans:\n{}", failures.join("\n"));
    }

    #[test]
    fn a_version_1_store_is_migrated_with_its_event_kinds() {
        use vigil_proto::v1::{AlarmSignal, PostHealth};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        {
            // The first schema as version 1 wrote it, with two events.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.execute_batch(
                "CREATE INDEX events_received ON events (received_at);
                 CREATE INDEX incidents_post ON incidents (post_id, state);",
            )
            .unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            for (seq, body) in [
                (1, Body::Alarm(AlarmSignal::default())),
                (2, Body::Health(PostHealth::default())),
            ] {
                let event = Event {
                    post_id: "p-1".into(),
                    seq,
                    received_at: Some(ts(from_millis(1_000 * seq as i64))),
                    body: Some(body),
                    ..Default::default()
                };
                conn.execute(
                    "INSERT INTO events (post_id, seq, received_at, stored_at, body)
                     VALUES ('p-1', ?1, ?2, 99, ?3)",
                    params![seq as i64, 1_000 * seq as i64, event.encode_to_vec()],
                )
                .unwrap();
            }
        }
        SqliteBackend::open(dir.path()).unwrap();
        let store = SqliteStore::open_reader(dir.path()).unwrap();
        let version: i64 = store
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let health = SeqFilter {
            post_id: "p-1".into(),
            kinds: vec![vigil_proto::v1::EventKind::Health as i32],
            from_seq: 1,
            to_seq: None,
        };
        let found = store.events_by_seq(&health, 10).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].event.as_ref().unwrap().seq, 2);
        let filter = ReceivedFilter {
            kinds: vec![vigil_proto::v1::EventKind::Alarm as i32],
            ..Default::default()
        };
        let found = store.events_received(&filter, None, 10).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0.received_ms, 1_000);
        assert!(
            store
                .conn
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE name = 'events_received'",
                    [],
                    |r| r.get::<_, i64>(0)
                )
                .unwrap()
                == 0
        );
    }

    /// A store from before version 4 (no `incidents.opened_at`) with
    /// incidents in it: opening it fills the column from the stored bodies,
    /// and a post's history finds them newest first by when they opened.
    #[test]
    fn a_version_3_store_is_migrated_with_when_incidents_opened() {
        use crate::store::{HistoryFilter, TimeKey};
        let dir = tempfile::tempdir().unwrap();
        SqliteBackend::open(dir.path()).unwrap();
        {
            let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
            conn.execute_batch(
                "DROP INDEX incidents_post_opened; DROP INDEX incidents_opened;
                 ALTER TABLE incidents DROP COLUMN opened_at;",
            )
            .unwrap();
            for (n, secs) in [(1i64, 30i64), (2, 10), (3, 20)] {
                let inc = Incident {
                    id: incident_id(n as u64),
                    post_id: "p-1".into(),
                    version: 1,
                    opened_at: Some(prost_types::Timestamp {
                        seconds: secs,
                        nanos: 0,
                    }),
                    ..Default::default()
                };
                conn.execute(
                    "INSERT INTO incidents (number, post_id, state, version, body)
                     VALUES (?1, 'p-1', 1, 1, ?2)",
                    params![n, inc.encode_to_vec()],
                )
                .unwrap();
            }
            conn.pragma_update(None, "user_version", 3).unwrap();
        }
        SqliteBackend::open(dir.path()).unwrap();
        let store = SqliteStore::open_reader(dir.path()).unwrap();
        let version: i64 = store
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let filter = HistoryFilter {
            post_id: "p-1".into(),
            ..Default::default()
        };
        let keys: Vec<TimeKey> = store
            .history_incidents(&filter, 10)
            .unwrap()
            .iter()
            .map(|(k, _)| *k)
            .collect();
        assert_eq!(
            keys,
            [
                TimeKey { ms: 30_000, key: 1 },
                TimeKey { ms: 20_000, key: 3 },
                TimeKey { ms: 10_000, key: 2 }
            ]
        );
    }

    #[test]
    fn a_reader_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let backend = SqliteBackend::open(dir.path()).unwrap();
        let mut reader = SqliteStore::open_reader(dir.path()).unwrap();
        assert!(matches!(reader.begin(), Err(StoreError::Backend { .. })));
        drop(backend);
    }
}
