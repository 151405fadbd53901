//! Retention: events leave the store once their period is over, a small
//! transaction at a time, so a store can live for years.
//!
//! Each event kind has a period (`[retention]`, in days; 0 keeps it for
//! ever), and an event category may override it (`[retention.categories]`).
//! Incidents have their own: a resolved incident leaves, with its audit
//! trail, notes and event links, once it has been resolved for
//! `incident_days`. An event linked to an incident the store still holds
//! is never pruned, so an open incident keeps every event it was built
//! from; nor is an event above its post's watermark (waiting for a gap to
//! fill), which the writer's watermark still counts.
//!
//! The [`Pruner`] walks `events_kind_at (kind, at, post_id, seq)` from the
//! oldest event of each kind up to the shortest period that can apply to
//! that kind, reading [`Policy::batch`] candidates at a time, decoding each
//! one's category, and deleting those whose own period is over in one
//! transaction per batch. What it keeps (a category kept longer, an
//! incident's event) it steps over with a cursor, so a pass reads each
//! candidate once; the next pass starts again from the oldest. With an
//! archive (`store::archive`), the rows are written to a file and fsynced
//! before the transactions that delete them.
//!
//! It runs on a connection of its own (never the writer's, never a
//! reader's): on SQLite each of its transactions holds the write lock for
//! one small batch, so the writer waits at most that long; on PostgreSQL it
//! runs only on the replica that leads.

use std::{
    collections::{BTreeMap, HashMap},
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::{Duration, SystemTime},
};

use prost::Message;
use serde::{Deserialize, Serialize};
use vigil_proto::v1::{Event, EventCategory};

use super::{
    Backend, ReceivedKey, StoreError,
    archive::Archive,
    shapes::{ALL_KINDS, kind_of},
    sqlite::millis,
};

/// The `[retention]` table of the ops config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Prune by itself, every `interval_secs`. Off: only `vigil ops prune`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Seconds between two automatic passes.
    #[serde(default = "default_interval")]
    pub interval_secs: u64,
    /// Rows read, and at most deleted, per transaction.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Alarm-panel signals, in days (0: for ever).
    #[serde(default = "default_alarm_days")]
    pub alarm_days: u32,
    /// Camera events (motion, line crossing, …).
    #[serde(default = "default_camera_days")]
    pub camera_days: u32,
    /// Post health (supervision, outbox depth, …).
    #[serde(default = "default_health_days")]
    pub health_days: u32,
    /// Events whose body this version does not know.
    #[serde(default = "default_other_days")]
    pub other_days: u32,
    /// Resolved incidents with their audit trail, notes and links, counted
    /// from the resolution.
    #[serde(default = "default_incident_days")]
    pub incident_days: u32,
    /// Periods by event category (`test = 30`, `open_close = 365`, …),
    /// overriding the kind's.
    #[serde(default)]
    pub categories: BTreeMap<String, u32>,
    /// Where events are archived before they are deleted (relative paths
    /// are relative to the config file); none: deleted without an archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_dir: Option<std::path::PathBuf>,
}

fn yes() -> bool {
    true
}
fn default_interval() -> u64 {
    300
}
fn default_batch() -> usize {
    1000
}
fn default_alarm_days() -> u32 {
    3650
}
fn default_camera_days() -> u32 {
    90
}
fn default_health_days() -> u32 {
    365
}
fn default_other_days() -> u32 {
    365
}
fn default_incident_days() -> u32 {
    3650
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_secs: default_interval(),
            batch: default_batch(),
            alarm_days: default_alarm_days(),
            camera_days: default_camera_days(),
            health_days: default_health_days(),
            other_days: default_other_days(),
            incident_days: default_incident_days(),
            categories: BTreeMap::new(),
            archive_dir: None,
        }
    }
}

/// The category a `[retention.categories]` key names: the enum's name
/// without its prefix, in lower case (`video_detection`).
pub fn category_named(key: &str) -> Option<EventCategory> {
    if key.is_empty() || key != key.to_ascii_lowercase() {
        return None;
    }
    EventCategory::from_str_name(&format!("EVENT_CATEGORY_{}", key.to_ascii_uppercase()))
}

impl RetentionConfig {
    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.interval_secs == 0 {
            return Err((
                "retention.interval_secs".into(),
                "must be at least 1".into(),
            ));
        }
        if !(10..=100_000).contains(&self.batch) {
            return Err((
                "retention.batch".into(),
                "must be between 10 and 100000".into(),
            ));
        }
        for key in self.categories.keys() {
            if category_named(key).is_none() {
                return Err((
                    format!("retention.categories.{key}"),
                    "not an event category (fire, panic, duress, holdup, medical, burglary, \
                     tamper, gas, environmental, trouble, power, communication, supervisory, \
                     test, open_close, bypass, access, system, other, video_detection)"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// The policy these settings describe.
    pub fn policy(&self) -> Policy {
        let days = |d: u32| (d > 0).then(|| Duration::from_secs(u64::from(d) * 86_400));
        let mut kinds = HashMap::new();
        kinds.insert(
            vigil_proto::v1::EventKind::Alarm as i32,
            days(self.alarm_days),
        );
        kinds.insert(
            vigil_proto::v1::EventKind::Camera as i32,
            days(self.camera_days),
        );
        kinds.insert(
            vigil_proto::v1::EventKind::Health as i32,
            days(self.health_days),
        );
        kinds.insert(
            vigil_proto::v1::EventKind::Unspecified as i32,
            days(self.other_days),
        );
        Policy {
            kinds,
            categories: self
                .categories
                .iter()
                .filter_map(|(k, d)| Some((category_named(k)? as i32, days(*d))))
                .collect(),
            incidents: days(self.incident_days),
            batch: self.batch,
        }
    }
}

/// How long each kind of record is kept; `None` is for ever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub kinds: HashMap<i32, Option<Duration>>,
    pub categories: HashMap<i32, Option<Duration>>,
    pub incidents: Option<Duration>,
    /// Rows read, and at most deleted, per transaction.
    pub batch: usize,
}

impl Policy {
    /// How long an event of `kind` and `category` is kept.
    pub fn period(&self, kind: i32, category: i32) -> Option<Duration> {
        match self.categories.get(&category) {
            Some(p) => *p,
            None => self.kinds.get(&kind).copied().flatten(),
        }
    }

    /// The shortest period any event of `kind` can have: nothing younger
    /// is looked at.
    fn shortest(&self, kind: i32) -> Option<Duration> {
        let own = self.kinds.get(&kind).copied().flatten();
        self.categories.values().flatten().copied().chain(own).min()
    }
}

/// What pruning did (or, dry, would do).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Events read as candidates (old enough for the shortest period).
    pub examined: u64,
    /// Events deleted (dry: that would be), by kind name.
    pub events: BTreeMap<String, u64>,
    /// Old enough for their kind, kept for their category.
    pub kept_for_category: u64,
    /// Kept because an incident the store holds links them.
    pub kept_for_incident: u64,
    /// Kept because they are above their post's watermark.
    pub kept_above_watermark: u64,
    /// Resolved incidents deleted, with their audit entries, notes and
    /// event links.
    pub incidents: u64,
    pub audit: u64,
    pub notes: u64,
    pub links: u64,
    /// Archive files written.
    pub archive_files: Vec<String>,
    /// Oldest and newest received-order time of the events deleted (Unix
    /// ms).
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
}

impl Report {
    pub fn events_total(&self) -> u64 {
        self.events.values().sum()
    }

    fn add(&mut self, other: Report) {
        self.examined += other.examined;
        for (k, n) in other.events {
            *self.events.entry(k).or_default() += n;
        }
        self.kept_for_category += other.kept_for_category;
        self.kept_for_incident += other.kept_for_incident;
        self.kept_above_watermark += other.kept_above_watermark;
        self.incidents += other.incidents;
        self.audit += other.audit;
        self.notes += other.notes;
        self.links += other.links;
        self.archive_files.extend(other.archive_files);
        self.first_ms = [self.first_ms, other.first_ms].into_iter().flatten().min();
        self.last_ms = [self.last_ms, other.last_ms].into_iter().flatten().max();
    }
}

/// The name of an event kind in reports (`alarm`, `camera`, `health`,
/// `other`).
pub fn kind_name(kind: i32) -> &'static str {
    match vigil_proto::v1::EventKind::try_from(kind) {
        Ok(vigil_proto::v1::EventKind::Alarm) => "alarm",
        Ok(vigil_proto::v1::EventKind::Camera) => "camera",
        Ok(vigil_proto::v1::EventKind::Health) => "health",
        _ => "other",
    }
}

/// An event old enough to be looked at.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub key: ReceivedKey,
    pub stored_ms: i64,
    pub kind: i32,
    pub body: Vec<u8>,
    /// The incident linking it, if the store still holds one.
    pub incident: Option<u64>,
    /// Above its post's watermark (waiting for a gap).
    pub above_watermark: bool,
}

/// Rows deleted with resolved incidents.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IncidentRows {
    pub incidents: u64,
    pub audit: u64,
    pub notes: u64,
    pub links: u64,
}

/// What retention needs of a database connection: each method is one
/// statement or one short transaction.
pub trait PruneConn: Send {
    /// Events of `kind` with `at < before`, after `after` in
    /// `(at, post_id, seq)` order, at most `limit`.
    fn candidates(
        &mut self,
        kind: i32,
        before_ms: i64,
        after: Option<&ReceivedKey>,
        limit: usize,
    ) -> Result<Vec<Candidate>, StoreError>;
    /// Deletes these events in one transaction; returns how many went.
    fn delete_events(&mut self, keys: &[(String, u64)]) -> Result<u64, StoreError>;
    /// Resolved incidents numbered above `after`, resolved before
    /// `before_ms`, in number order, at most `limit`.
    fn resolved_before(
        &mut self,
        before_ms: i64,
        after: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError>;
    /// Deletes these incidents, their audit entries, notes and event links
    /// in one transaction.
    fn delete_incidents(&mut self, numbers: &[u64]) -> Result<IncidentRows, StoreError>;
}

/// Candidates of one kind, oldest first (`events_kind_at`); also in the
/// query-plan tests' list (`shapes::shapes`).
pub const CANDIDATES: &str = "SELECT e.post_id, e.seq, e.at, e.stored_at, e.body,
    (SELECT ie.number FROM incident_events ie WHERE ie.post_id = e.post_id AND ie.seq = e.seq LIMIT 1),
    e.seq > coalesce((SELECT p.durable_through FROM posts p WHERE p.post_id = e.post_id), 0)
    FROM events e WHERE e.kind = CAST($1 AS BIGINT) AND e.at < CAST($2 AS BIGINT)
      AND (e.at, e.post_id, e.seq) > (CAST($3 AS BIGINT), $4, CAST($5 AS BIGINT))
    ORDER BY e.at, e.post_id, e.seq LIMIT CAST($6 AS BIGINT)";
/// Resolved incidents old enough (`incidents_state (state, number)`).
pub const RESOLVED_BEFORE: &str = "SELECT number FROM incidents
    WHERE state = 3 AND resolved_at < CAST($1 AS BIGINT) AND number > CAST($2 AS BIGINT)
    ORDER BY number LIMIT CAST($3 AS BIGINT)";

/// Walks the store and deletes what its [`Policy`] says is over.
pub struct Pruner {
    conn: Box<dyn PruneConn>,
    policy: Policy,
    archive: Option<Archive>,
    /// Per kind: where the current pass has got to.
    cursors: HashMap<i32, ReceivedKey>,
    incident_cursor: u64,
    /// What the current pass has finished (kinds; `None` for incidents):
    /// not started again until every part has, so a pass reads each
    /// candidate once.
    finished: std::collections::HashSet<Option<i32>>,
}

impl std::fmt::Debug for Pruner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pruner")
            .field("policy", &self.policy)
            .field("archive", &self.archive)
            .finish_non_exhaustive()
    }
}

/// Rows gathered for one archive file at most (then fsynced, then deleted
/// in transactions of `batch`).
pub const ARCHIVE_FILE_ROWS: usize = 50_000;

impl Pruner {
    /// A pruner on a connection of its own to `backend`.
    pub fn open(
        backend: &dyn Backend,
        policy: Policy,
        archive: Option<Archive>,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            conn: backend.pruner()?,
            policy,
            archive,
            cursors: HashMap::new(),
            incident_cursor: 0,
            finished: std::collections::HashSet::new(),
        })
    }

    /// One step: for each kind, one batch of candidates read and what is
    /// over deleted (with an archive, up to [`ARCHIVE_FILE_ROWS`] gathered,
    /// archived, then deleted a batch per transaction); one batch of
    /// resolved incidents. Returns what it did and whether more is left in
    /// this pass. `dry`: reads only, deletes nothing.
    pub fn step(&mut self, now: SystemTime, dry: bool) -> Result<(Report, bool), StoreError> {
        let mut report = Report::default();
        let mut more = false;
        for kind in ALL_KINDS {
            if self.finished.contains(&Some(kind)) {
                continue;
            }
            let Some(shortest) = self.policy.shortest(kind) else {
                continue;
            };
            let before = millis(now.checked_sub(shortest).unwrap_or(SystemTime::UNIX_EPOCH));
            let gather = if self.archive.is_some() && !dry {
                ARCHIVE_FILE_ROWS
            } else {
                self.policy.batch
            };
            let mut doomed: Vec<Candidate> = Vec::new();
            let mut done = false;
            while doomed.len() < gather {
                let after = self.cursors.get(&kind).cloned();
                let page = self
                    .conn
                    .candidates(kind, before, after.as_ref(), self.policy.batch)?;
                let full = page.len() == self.policy.batch;
                match page.last() {
                    Some(last) if full => {
                        self.cursors.insert(kind, last.key.clone());
                    }
                    _ => {
                        self.cursors.remove(&kind);
                        done = true;
                    }
                }
                for c in page {
                    report.examined += 1;
                    if self.over(&c, now, &mut report) {
                        doomed.push(c);
                    }
                }
                if done {
                    break;
                }
            }
            if done {
                self.finished.insert(Some(kind));
            } else {
                more = true;
            }
            if doomed.is_empty() {
                continue;
            }
            let first = doomed.iter().map(|c| c.key.received_ms).min();
            let last = doomed.iter().map(|c| c.key.received_ms).max();
            report.first_ms = [report.first_ms, first].into_iter().flatten().min();
            report.last_ms = [report.last_ms, last].into_iter().flatten().max();
            if !dry {
                if let Some(archive) = &mut self.archive {
                    let file = archive.write(kind, &doomed)?;
                    report.archive_files.push(file);
                }
                for chunk in doomed.chunks(self.policy.batch) {
                    let keys: Vec<(String, u64)> = chunk
                        .iter()
                        .map(|c| (c.key.post_id.clone(), c.key.seq))
                        .collect();
                    self.conn.delete_events(&keys)?;
                }
            }
            *report.events.entry(kind_name(kind).to_owned()).or_default() += doomed.len() as u64;
        }
        if let Some(period) = self.policy.incidents
            && !self.finished.contains(&None)
        {
            let before = millis(now.checked_sub(period).unwrap_or(SystemTime::UNIX_EPOCH));
            let numbers =
                self.conn
                    .resolved_before(before, self.incident_cursor, self.policy.batch)?;
            if numbers.len() == self.policy.batch {
                self.incident_cursor = numbers.last().copied().unwrap_or(0);
                more = true;
            } else {
                self.incident_cursor = 0;
                self.finished.insert(None);
            }
            if dry {
                report.incidents += numbers.len() as u64;
            } else if !numbers.is_empty() {
                let rows = self.conn.delete_incidents(&numbers)?;
                report.incidents += rows.incidents;
                report.audit += rows.audit;
                report.notes += rows.notes;
                report.links += rows.links;
            }
        }
        if !more {
            // The pass is over: the next step starts another.
            self.finished.clear();
        }
        Ok((report, more))
    }

    /// Whether a candidate's own period is over and nothing keeps it.
    fn over(&self, c: &Candidate, now: SystemTime, report: &mut Report) -> bool {
        let category = Event::decode(&c.body[..]).map_or(0, |e| {
            debug_assert_eq!(kind_of(&e), c.kind);
            e.category
        });
        let Some(period) = self.policy.period(c.kind, category) else {
            report.kept_for_category += 1;
            return false;
        };
        let before = millis(now.checked_sub(period).unwrap_or(SystemTime::UNIX_EPOCH));
        if c.key.received_ms >= before {
            report.kept_for_category += 1;
            return false;
        }
        if c.incident.is_some() {
            report.kept_for_incident += 1;
            return false;
        }
        if c.above_watermark {
            report.kept_above_watermark += 1;
            return false;
        }
        true
    }

    /// Whole passes until nothing is left, at most `max_steps` steps (a
    /// bound, so a store written faster than it is pruned cannot keep this
    /// going for ever). What `vigil ops prune` runs.
    pub fn run(
        &mut self,
        now: SystemTime,
        dry: bool,
        max_steps: usize,
    ) -> Result<Report, StoreError> {
        let mut total = Report::default();
        for _ in 0..max_steps {
            let (report, more) = self.step(now, dry)?;
            total.add(report);
            if !more {
                break;
            }
        }
        Ok(total)
    }
}

// ------------------------------------------------------------ connections

fn param_key(after: Option<&ReceivedKey>) -> (i64, String, i64) {
    match after {
        Some(k) => (
            k.received_ms,
            k.post_id.clone(),
            k.seq.min(i64::MAX as u64) as i64,
        ),
        // Before every key: the smallest time, an empty post.
        None => (i64::MIN, String::new(), i64::MIN),
    }
}

/// SQLite: a connection of its own to `ops.db`, `synchronous = FULL`.
pub(crate) struct SqlitePrune {
    conn: rusqlite::Connection,
}

impl SqlitePrune {
    pub(crate) fn open(path: &std::path::Path) -> Result<Self, StoreError> {
        let conn = rusqlite::Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "busy_timeout", 5000)?;
        Ok(Self { conn })
    }
}

impl PruneConn for SqlitePrune {
    fn candidates(
        &mut self,
        kind: i32,
        before_ms: i64,
        after: Option<&ReceivedKey>,
        limit: usize,
    ) -> Result<Vec<Candidate>, StoreError> {
        let (a, p, s) = param_key(after);
        let mut stmt = self.conn.prepare_cached(CANDIDATES)?;
        let rows = stmt.query_map(
            rusqlite::params![i64::from(kind), before_ms, a, p, s, limit as i64],
            |r| {
                Ok(Candidate {
                    key: ReceivedKey {
                        post_id: r.get(0)?,
                        seq: r.get::<_, i64>(1)? as u64,
                        received_ms: r.get(2)?,
                    },
                    stored_ms: r.get(3)?,
                    kind,
                    body: r.get(4)?,
                    incident: r.get::<_, Option<i64>>(5)?.map(|n| n as u64),
                    above_watermark: r.get::<_, i64>(6)? != 0,
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn delete_events(&mut self, keys: &[(String, u64)]) -> Result<u64, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut n = 0;
        {
            let mut stmt =
                tx.prepare_cached("DELETE FROM events WHERE post_id = ?1 AND seq = ?2")?;
            for (post, seq) in keys {
                n += stmt.execute(rusqlite::params![post, *seq as i64])? as u64;
            }
        }
        tx.commit()?;
        Ok(n)
    }

    fn resolved_before(
        &mut self,
        before_ms: i64,
        after: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let mut stmt = self.conn.prepare_cached(RESOLVED_BEFORE)?;
        let rows = stmt.query_map(
            rusqlite::params![before_ms, after as i64, limit as i64],
            |r| r.get::<_, i64>(0),
        )?;
        Ok(rows
            .map(|n| n.map(|n| n as u64))
            .collect::<Result<_, _>>()?)
    }

    fn delete_incidents(&mut self, numbers: &[u64]) -> Result<IncidentRows, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut rows = IncidentRows::default();
        for &n in numbers {
            let n = n as i64;
            rows.links += tx.execute("DELETE FROM incident_events WHERE number = ?1", [n])? as u64;
            rows.audit += tx.execute("DELETE FROM audit WHERE number = ?1", [n])? as u64;
            rows.notes += tx.execute("DELETE FROM notes WHERE number = ?1", [n])? as u64;
            rows.incidents +=
                tx.execute("DELETE FROM incidents WHERE number = ?1 AND state = 3", [n])? as u64;
        }
        tx.commit()?;
        Ok(rows)
    }
}

/// PostgreSQL: a connection of its own.
pub(crate) struct PostgresPrune {
    client: Option<postgres::Client>,
}

impl PostgresPrune {
    pub(crate) fn new(client: postgres::Client) -> Self {
        Self {
            client: Some(client),
        }
    }

    fn client(&mut self) -> &mut postgres::Client {
        self.client.as_mut().expect("open until dropped")
    }
}

impl Drop for PostgresPrune {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            super::postgres::off_runtime(move || drop(client));
        }
    }
}

impl PruneConn for PostgresPrune {
    fn candidates(
        &mut self,
        kind: i32,
        before_ms: i64,
        after: Option<&ReceivedKey>,
        limit: usize,
    ) -> Result<Vec<Candidate>, StoreError> {
        let (a, p, s) = param_key(after);
        let rows = self.client().query(
            CANDIDATES,
            &[&i64::from(kind), &before_ms, &a, &p, &s, &(limit as i64)],
        )?;
        Ok(rows
            .iter()
            .map(|r| Candidate {
                key: ReceivedKey {
                    post_id: r.get(0),
                    seq: r.get::<_, i64>(1) as u64,
                    received_ms: r.get(2),
                },
                stored_ms: r.get(3),
                kind,
                body: r.get(4),
                incident: r.get::<_, Option<i64>>(5).map(|n| n as u64),
                above_watermark: r.get::<_, bool>(6),
            })
            .collect())
    }

    fn delete_events(&mut self, keys: &[(String, u64)]) -> Result<u64, StoreError> {
        let posts: Vec<&str> = keys.iter().map(|(p, _)| p.as_str()).collect();
        let seqs: Vec<i64> = keys.iter().map(|(_, s)| *s as i64).collect();
        let mut tx = self.client().transaction()?;
        let n = tx.execute(
            "DELETE FROM events e USING unnest($1::text[], $2::int8[]) AS k(p, s)
             WHERE e.post_id = k.p AND e.seq = k.s",
            &[&posts, &seqs],
        )?;
        tx.commit()?;
        Ok(n)
    }

    fn resolved_before(
        &mut self,
        before_ms: i64,
        after: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        Ok(self
            .client()
            .query(
                RESOLVED_BEFORE,
                &[&before_ms, &(after as i64), &(limit as i64)],
            )?
            .iter()
            .map(|r| r.get::<_, i64>(0) as u64)
            .collect())
    }

    fn delete_incidents(&mut self, numbers: &[u64]) -> Result<IncidentRows, StoreError> {
        let numbers: Vec<i64> = numbers.iter().map(|&n| n as i64).collect();
        let mut tx = self.client().transaction()?;
        let links = tx.execute(
            "DELETE FROM incident_events WHERE number = ANY($1)",
            &[&numbers],
        )?;
        let audit = tx.execute("DELETE FROM audit WHERE number = ANY($1)", &[&numbers])?;
        let notes = tx.execute("DELETE FROM notes WHERE number = ANY($1)", &[&numbers])?;
        let incidents = tx.execute(
            "DELETE FROM incidents WHERE number = ANY($1) AND state = 3",
            &[&numbers],
        )?;
        tx.commit()?;
        Ok(IncidentRows {
            incidents,
            audit,
            notes,
            links,
        })
    }
}

// ------------------------------------------------------------ automatic

/// Pause between two steps of a pass: the writer gets the database between
/// two of retention's transactions.
const STEP_PAUSE: Duration = Duration::from_millis(20);
/// Steps of one automatic pass at most; the rest waits for the next pass.
const MAX_STEPS_PER_PASS: usize = 10_000;

/// Opens a pruner as `config` says (with its archive, if any).
pub fn open(backend: &dyn Backend, config: &RetentionConfig) -> Result<Pruner, StoreError> {
    let archive = match &config.archive_dir {
        Some(dir) => Some(Archive::open(dir)?),
        None => None,
    };
    Pruner::open(backend, config.policy(), archive)
}

/// What the periodic passes did since start, for `/metrics`.
#[derive(Debug, Default)]
pub struct RetentionMetrics {
    pub passes: AtomicU64,
    pub failed_passes: AtomicU64,
    /// Events deleted, by kind ([`ALL_KINDS`], in order).
    pub events: [AtomicU64; ALL_KINDS.len()],
    pub incidents: AtomicU64,
    pub archive_files: AtomicU64,
    /// When the last pass ended well (Unix seconds; 0: none yet).
    pub last_pass_unix: AtomicU64,
}

impl RetentionMetrics {
    fn count(&self, report: &Report, at: SystemTime) {
        self.passes.fetch_add(1, Relaxed);
        for (kind, counter) in ALL_KINDS.iter().zip(&self.events) {
            let n = report.events.get(kind_name(*kind)).copied().unwrap_or(0);
            counter.fetch_add(n, Relaxed);
        }
        self.incidents.fetch_add(report.incidents, Relaxed);
        self.archive_files
            .fetch_add(report.archive_files.len() as u64, Relaxed);
        let secs = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        self.last_pass_unix.store(secs.as_secs(), Relaxed);
    }

    /// Adds the `vigil_ops_retention_*` series to a Prometheus exposition.
    pub fn export(&self, out: &mut vigil_telemetry::Exposition) {
        out.counter(
            "vigil_ops_retention_passes_total",
            "Retention passes that ended well (each deletes what is past its period, in small steps).",
            self.passes.load(Relaxed),
        );
        out.counter(
            "vigil_ops_retention_failed_passes_total",
            "Retention passes that failed (the next pass tries again).",
            self.failed_passes.load(Relaxed),
        );
        for (kind, counter) in ALL_KINDS.iter().zip(&self.events) {
            out.counter_with(
                "vigil_ops_retention_events_pruned_total",
                "Events deleted by retention (archived first when an archive is configured), by kind.",
                &[("kind", kind_name(*kind))],
                counter.load(Relaxed),
            );
        }
        out.counter(
            "vigil_ops_retention_incidents_pruned_total",
            "Resolved incidents deleted by retention, with their audit trails and notes.",
            self.incidents.load(Relaxed),
        );
        out.counter(
            "vigil_ops_retention_archive_files_total",
            "Archive files retention wrote (each fsynced before the rows left).",
            self.archive_files.load(Relaxed),
        );
        out.gauge(
            "vigil_ops_retention_last_pass_timestamp_seconds",
            "When the last retention pass ended well (Unix time; 0: none since start).",
            self.last_pass_unix.load(Relaxed) as f64,
        );
    }
}

/// Prunes every `interval_secs` while this replica leads (always, on
/// SQLite), until `shutdown`; counts what it did in `metrics`. Each pass runs on the blocking pool, a small
/// transaction per step with a pause between steps; an error is logged and
/// the next pass opens a fresh connection.
pub async fn run_periodically(
    backend: std::sync::Arc<dyn Backend>,
    config: RetentionConfig,
    leading: impl Fn() -> bool + Send + 'static,
    metrics: std::sync::Arc<RetentionMetrics>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    if !config.enabled {
        return;
    }
    let every = Duration::from_secs(config.interval_secs);
    let mut pruner: Option<Pruner> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        if !leading() {
            pruner = None;
            continue;
        }
        let (b, c, stop) = (backend.clone(), config.clone(), shutdown.clone());
        let held = pruner.take();
        let pass = tokio::task::spawn_blocking(move || {
            let mut p = match held {
                Some(p) => p,
                None => open(&*b, &c)?,
            };
            let now = SystemTime::now();
            let mut total = Report::default();
            for _ in 0..MAX_STEPS_PER_PASS {
                if stop.is_cancelled() {
                    break;
                }
                let (report, more) = p.step(now, false)?;
                total.add(report);
                if !more {
                    break;
                }
                std::thread::sleep(STEP_PAUSE);
            }
            Ok::<_, StoreError>((p, total))
        })
        .await;
        match pass {
            Ok(Ok((p, report))) => {
                pruner = Some(p);
                metrics.count(&report, SystemTime::now());
                if report.events_total() > 0 || report.incidents > 0 {
                    tracing::info!(
                        events = report.events_total(),
                        incidents = report.incidents,
                        audit = report.audit,
                        archive_files = report.archive_files.len(),
                        "retention: pruned"
                    );
                }
            }
            Ok(Err(e)) => {
                metrics.failed_passes.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, "retention: pass failed; next pass retries");
            }
            Err(e) => {
                metrics.failed_passes.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "retention: pass panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use vigil_proto::v1::{CameraEvent, event::Body};

    use super::*;
    use crate::store::{Received, SqliteBackend};

    #[test]
    fn categories_are_named_like_the_enum_in_lower_case() {
        assert_eq!(category_named("test"), Some(EventCategory::Test));
        assert_eq!(
            category_named("video_detection"),
            Some(EventCategory::VideoDetection)
        );
        for bad in ["", "Test", "TEST", "burglar", "event_category_test"] {
            assert_eq!(category_named(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_shortest_period_bounds_what_is_read_and_zero_keeps_for_ever() {
        let mut config = RetentionConfig {
            camera_days: 0,
            alarm_days: 100,
            ..Default::default()
        };
        config.categories.insert("test".into(), 7);
        let p = config.policy();
        let day = Duration::from_secs(86_400);
        let camera = vigil_proto::v1::EventKind::Camera as i32;
        let alarm = vigil_proto::v1::EventKind::Alarm as i32;
        assert_eq!(p.period(camera, EventCategory::VideoDetection as i32), None);
        assert_eq!(p.period(alarm, EventCategory::Test as i32), Some(7 * day));
        assert_eq!(p.period(alarm, EventCategory::Fire as i32), Some(100 * day));
        // A camera event of category test goes after 7 days: cameras are
        // read from there.
        assert_eq!(p.shortest(camera), Some(7 * day));
        config.categories.clear();
        assert_eq!(config.policy().shortest(camera), None, "nothing to read");
    }

    /// The service's own passes: with `interval_secs = 1`, old camera
    /// events leave by themselves while this replica leads; the wait is
    /// bounded (30 s) and only a timeout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_service_prunes_by_itself_every_interval() {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(SqliteBackend::open(dir.path()).unwrap());
        let events: Vec<Received> = (1..=25)
            .map(|seq| {
                Event {
                    post_id: "p-1".into(),
                    seq,
                    received_at: Some(
                        (SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000 + seq)).into(),
                    ),
                    body: Some(Body::Camera(CameraEvent::default())),
                    ..Default::default()
                }
                .into()
            })
            .collect();
        {
            let mut w = backend.writer().unwrap();
            let mut tx = w.begin().unwrap();
            tx.insert_events("p-1", &events, SystemTime::now()).unwrap();
            tx.commit().unwrap();
        }
        let config = RetentionConfig {
            interval_secs: 1,
            batch: 10,
            ..Default::default()
        };
        let stop = tokio_util::sync::CancellationToken::new();
        let metrics = Arc::new(RetentionMetrics::default());
        let task = tokio::spawn(run_periodically(
            backend.clone(),
            config,
            || true,
            metrics.clone(),
            stop.clone(),
        ));
        let count = || {
            let b = backend.clone();
            async move {
                tokio::task::spawn_blocking(move || b.reader().unwrap().event_count().unwrap())
                    .await
                    .unwrap()
            }
        };
        let mut left = count().await;
        for _ in 0..300 {
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            left = count().await;
        }
        assert_eq!(left, 0, "every old camera event pruned");
        // The pass that deleted them is counted by the time it ends.
        let camera = ALL_KINDS
            .iter()
            .position(|k| kind_name(*k) == "camera")
            .unwrap();
        for _ in 0..100 {
            if metrics.events[camera].load(Relaxed) == 25 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(metrics.events[camera].load(Relaxed), 25);
        assert!(metrics.passes.load(Relaxed) >= 1);
        assert_eq!(metrics.failed_passes.load(Relaxed), 0);
        assert!(metrics.last_pass_unix.load(Relaxed) > 1_600_000_000);
        let mut out = vigil_telemetry::Exposition::new();
        metrics.export(&mut out);
        let text = out.render();
        assert!(
            text.contains("vigil_ops_retention_events_pruned_total{kind=\"camera\"} 25"),
            "{text}"
        );
        stop.cancel();
        task.await.unwrap();
    }
}
