//! The durable outbox: where an event is kept from the moment the gateway
//! accepts it until the operations center's receipt covers it.
//!
//! One SQLite database (WAL, `synchronous = FULL`) in the gateway's
//! `data_dir`. A single writer thread owns the write connection; callers
//! hand it requests over a bounded channel and wait for the reply, which is
//! sent only after the transaction holding their events has been committed
//! and synced. Everything queued while one commit runs goes into the next
//! transaction together (group commit), so a burst of alarms costs one
//! fsync, not one per alarm.
//!
//! Sequence numbers are assigned here, inside the transaction, from a
//! counter stored in the same database: gap-free per post, never reused,
//! surviving restarts and `kill -9` (a transaction that did not commit
//! assigned nothing).
//!
//! A dedup key (for DC-09: account, panel sequence and the frame content)
//! makes a retransmitted frame resolve to the seq already stored instead of
//! a second event. Keys are kept for `dedup_retention`.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot, watch};
use vigil_proto::{Message, v1::Event};

/// Requests waiting for the writer thread. When full, `append` waits: a
/// caller (a panel connection) is slowed down, never dropped.
const REQUEST_QUEUE: usize = 1024;
/// Most requests folded into one transaction.
const MAX_GROUP: usize = 512;
/// How often expired dedup keys are pruned (at most).
const DEDUP_PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Limits of the outbox.
#[derive(Debug, Clone)]
pub struct OutboxLimits {
    /// Most unreceipted events kept; beyond it new events are refused.
    pub max_events: u64,
    /// Most bytes of unreceipted events kept; beyond it new events are refused.
    pub max_bytes: u64,
    /// How long a dedup key is remembered.
    pub dedup_retention: Duration,
    /// Largest the database file may grow (SQLite `max_page_count`); beyond
    /// it new events are refused as if the disk were full. `None`: no limit
    /// but the disk's.
    pub max_db_bytes: Option<u64>,
    /// Size of the reserve file kept beside the database (see
    /// [`Reserve`]); 0 keeps none.
    pub reserve_bytes: u64,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        Self {
            max_events: 1_000_000,
            max_bytes: 1 << 30,
            dedup_retention: Duration::from_secs(3600),
            max_db_bytes: None,
            reserve_bytes: DEFAULT_RESERVE_BYTES,
        }
    }
}

/// Default size of the reserve file: above SQLite's WAL auto-checkpoint
/// size (1000 pages, about 4 MiB) with room for the database to grow while
/// a checkpoint runs.
pub const DEFAULT_RESERVE_BYTES: u64 = 8 << 20;
/// How often a missing reserve is tried again (on appends).
const RESERVE_RETRY: Duration = Duration::from_secs(2);

/// Disk space held back for receipts.
///
/// When the disk fills, appends fail (the panel gets a NAK and keeps its
/// alarm), but so would the deletes that apply receipts: SQLite needs room
/// in the WAL to write even a delete. A gateway whose disk is full would
/// then never shrink its outbox, and new alarms would take whatever space
/// the operator frees before a checkpoint can run (found by the fault
/// suite on a small tmpfs). So the outbox keeps a file of `reserve_bytes`
/// beside its database. When a receipt fails for lack of space, the file
/// is deleted and the receipt applied in the room it leaves, then the WAL
/// is checkpointed and truncated. While the reserve is missing, appends are
/// refused as if the disk were full; it is written again (and appends
/// resume) as soon as the disk has room for it.
#[derive(Debug)]
struct Reserve {
    path: PathBuf,
    bytes: u64,
    held: bool,
    last_try: Option<std::time::Instant>,
}

impl Reserve {
    fn new(db: &Path, bytes: u64) -> Self {
        let mut name = db.as_os_str().to_owned();
        name.push(".reserve");
        let mut reserve = Self {
            path: PathBuf::from(name),
            bytes,
            held: bytes == 0,
            last_try: None,
        };
        reserve.ensure();
        reserve
    }

    /// Writes the reserve file if it is missing. Real blocks, not a sparse
    /// file: the point is that the space is taken.
    fn ensure(&mut self) -> bool {
        if self.held {
            return true;
        }
        self.last_try = Some(std::time::Instant::now());
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut file = std::fs::File::create(&self.path)?;
            let chunk = vec![0u8; 64 * 1024];
            let mut left = self.bytes;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                file.write_all(&chunk[..n])?;
                left -= n as u64;
            }
            file.sync_all()
        };
        match write() {
            Ok(()) => {
                self.held = true;
                tracing::info!(path = %self.path.display(), bytes = self.bytes, "outbox reserve in place");
            }
            Err(e) => {
                let _ = std::fs::remove_file(&self.path);
                tracing::warn!(
                    path = %self.path.display(),
                    error = %e,
                    "cannot write the outbox reserve; refusing new events until there is room"
                );
            }
        }
        self.held
    }

    /// Before an append: is there (or can there now be) a reserve?
    fn ready_for_append(&mut self) -> bool {
        self.held || (self.last_try.is_none_or(|t| t.elapsed() >= RESERVE_RETRY) && self.ensure())
    }

    /// Gives the reserve's space back to the disk; false if there was none.
    fn release(&mut self) -> bool {
        if !self.held || self.bytes == 0 {
            return false;
        }
        self.held = false;
        self.last_try = None;
        match std::fs::remove_file(&self.path) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "cannot remove the outbox reserve");
                false
            }
        }
    }
}

/// Why the outbox could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OutboxError {
    /// The quota is reached or the disk is full: the event was not stored.
    #[error("outbox full: {0}")]
    Full(String),
    #[error("outbox storage error: {0}")]
    Storage(String),
    #[error("outbox {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("outbox is shut down")]
    Closed,
}

impl From<rusqlite::Error> for OutboxError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => OutboxError::Full(format!("disk full ({e})")),
            _ => OutboxError::Storage(e.to_string()),
        }
    }
}

/// An event to store. `post_id` and `seq` are filled in by the outbox.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event: Event,
    /// Identifies a retransmission of something already stored.
    pub dedup_key: Option<String>,
}

/// What became of one [`NewEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored under this seq.
    Stored(u64),
    /// Its dedup key was seen before; already stored under this seq.
    Duplicate(u64),
}

impl Appended {
    pub fn seq(self) -> u64 {
        match self {
            Appended::Stored(s) | Appended::Duplicate(s) => s,
        }
    }
}

/// An event as kept in the outbox: its seq and its encoded `vigil.v1.Event`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub seq: u64,
    pub bytes: Vec<u8>,
}

/// Counters of the outbox, for status and health reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxState {
    /// Highest seq assigned.
    pub last_seq: u64,
    /// Highest seq covered by a receipt.
    pub receipted_through: u64,
    /// Events kept (not yet receipted).
    pub depth: u64,
    /// Their size in bytes.
    pub bytes: u64,
}

enum Request {
    Append {
        events: Vec<NewEvent>,
        reply: oneshot::Sender<Result<Vec<Appended>, OutboxError>>,
    },
    Receipt {
        through: u64,
        reply: oneshot::Sender<Result<(), OutboxError>>,
    },
}

/// Handle to the outbox; cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbox {
    requests: mpsc::Sender<Request>,
    reader: Arc<Mutex<Connection>>,
    state: watch::Receiver<OutboxState>,
}

impl Outbox {
    /// Opens (or creates) the outbox database at `path` for `post_id` and
    /// starts its writer thread. The thread ends when every handle is dropped.
    pub fn open(path: &Path, post_id: &str, limits: OutboxLimits) -> Result<Self, OutboxError> {
        let open_err = |e: rusqlite::Error| OutboxError::Open {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, body BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS dedup (key TEXT PRIMARY KEY, seq INTEGER NOT NULL, at INTEGER NOT NULL);
             CREATE INDEX IF NOT EXISTS dedup_at ON dedup (at);
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);",
        )
        .map_err(open_err)?;
        if let Some(max) = limits.max_db_bytes {
            let page_size: i64 = conn
                .query_row("PRAGMA page_size", [], |r| r.get(0))
                .map_err(open_err)?;
            let pages = (max / page_size.max(512) as u64).max(1);
            conn.pragma_update(None, "max_page_count", pages as i64)
                .map_err(open_err)?;
        }
        // The outbox belongs to one post: refuse to reuse it for another,
        // since its seqs would then be published under the wrong identity.
        let owner: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'post_id'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(open_err)?;
        match owner {
            Some(owner) if owner != post_id => {
                return Err(OutboxError::Open {
                    path: path.to_owned(),
                    reason: format!("belongs to post {owner}, not {post_id}"),
                });
            }
            Some(_) => {}
            None => {
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('post_id', ?1)",
                    [post_id],
                )
                .map_err(open_err)?;
            }
        }
        let meta_u64 = |key: &str| -> rusqlite::Result<u64> {
            conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .map(|v| v.unwrap_or(0).max(0) as u64)
        };
        let last_seq = meta_u64("last_seq").map_err(open_err)?;
        let receipted_through = meta_u64("receipted_through").map_err(open_err)?;
        let (depth, bytes): (i64, i64) = conn
            .query_row(
                "SELECT count(*), coalesce(sum(length(body)), 0) FROM events",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(open_err)?;
        let initial = OutboxState {
            last_seq,
            receipted_through,
            depth: depth as u64,
            bytes: bytes as u64,
        };

        let reader = Connection::open(path).map_err(open_err)?;
        let (state_tx, state_rx) = watch::channel(initial);
        let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
        let reserve = Reserve::new(path, limits.reserve_bytes);
        let writer = Writer {
            reserve,
            conn,
            post_id: post_id.to_owned(),
            limits,
            state: initial,
            state_tx,
            last_prune: None,
        };
        thread::Builder::new()
            .name("outbox-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| OutboxError::Open {
                path: path.to_owned(),
                reason: format!("cannot start writer thread: {e}"),
            })?;
        Ok(Self {
            requests: tx,
            reader: Arc::new(Mutex::new(reader)),
            state: state_rx,
        })
    }

    /// Stores `events` durably and returns their seqs. When this returns
    /// `Ok`, the events survive a crash of the process or the machine.
    pub async fn append(&self, events: Vec<NewEvent>) -> Result<Vec<Appended>, OutboxError> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request::Append { events, reply })
            .await
            .map_err(|_| OutboxError::Closed)?;
        rx.await.map_err(|_| OutboxError::Closed)?
    }

    /// Records that the operations center stored everything up to `through`
    /// and drops those events. Receipts never move backwards.
    pub async fn receipt(&self, through: u64) -> Result<(), OutboxError> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request::Receipt { through, reply })
            .await
            .map_err(|_| OutboxError::Closed)?;
        rx.await.map_err(|_| OutboxError::Closed)?
    }

    /// Events with seq ≥ `from`, in seq order, at most `max_events` and
    /// (beyond the first) at most `max_bytes` in total.
    pub async fn read_from(
        &self,
        from: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredEvent>, OutboxError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            // A poisoned lock only means another reader panicked mid-read;
            // the connection itself is still usable.
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            let mut stmt = conn.prepare_cached(
                "SELECT seq, body FROM events WHERE seq >= ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![from as i64, max_events as i64], |r| {
                Ok(StoredEvent {
                    seq: r.get::<_, i64>(0)? as u64,
                    bytes: r.get(1)?,
                })
            })?;
            let mut out = Vec::new();
            let mut total = 0;
            for row in rows {
                let row = row?;
                total += row.bytes.len();
                if !out.is_empty() && total > max_bytes {
                    break;
                }
                out.push(row);
            }
            Ok(out)
        })
        .await
        .map_err(|e| OutboxError::Storage(format!("reader task failed: {e}")))?
    }

    /// Current counters.
    pub fn state(&self) -> OutboxState {
        *self.state.borrow()
    }

    /// Follows the counters as they change (new events, receipts).
    pub fn watch(&self) -> watch::Receiver<OutboxState> {
        self.state.clone()
    }
}

struct Writer {
    reserve: Reserve,
    conn: Connection,
    post_id: String,
    limits: OutboxLimits,
    state: OutboxState,
    state_tx: watch::Sender<OutboxState>,
    last_prune: Option<std::time::Instant>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        while let Some(first) = rx.blocking_recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(req) => group.push(req),
                    Err(_) => break,
                }
            }
            self.commit_group(group);
        }
        tracing::debug!("outbox writer stopped");
    }

    /// Runs every request of the group in one transaction, then answers
    /// each. A quota refusal fails its own request only. A storage error
    /// (disk full, I/O) aborts the transaction, and SQLite may already have
    /// rolled all of it back; the requests are then retried one transaction
    /// each, so one request's failure is never another's, and what failed
    /// left nothing behind (on disk or in memory).
    fn commit_group(&mut self, group: Vec<Request>) {
        let single = group.len() == 1;
        // Without its reserve the outbox takes no new events (see
        // [`Reserve`]); receipts go through.
        if !self.reserve.ready_for_append() {
            let (appends, rest): (Vec<_>, Vec<_>) = group
                .into_iter()
                .partition(|r| matches!(r, Request::Append { .. }));
            for req in appends {
                if let Request::Append { reply, .. } = req {
                    let _ = reply.send(Err(OutboxError::Full(
                        "disk full: no room for the outbox reserve".into(),
                    )));
                }
            }
            if !rest.is_empty() {
                self.commit_receipts(rest);
            }
            return;
        }
        let result = self.try_group(&group);
        if single
            && matches!(result, Err(OutboxError::Full(_)))
            && matches!(group[0], Request::Receipt { .. })
        {
            self.finish_receipts(group, result);
            return;
        }
        match result {
            Ok((next, results)) => {
                self.state = next;
                self.state_tx.send_replace(next);
                let mut results = results.into_iter();
                for req in group {
                    match req {
                        Request::Append { reply, .. } => {
                            let result = results
                                .next()
                                .unwrap_or_else(|| Err(OutboxError::Storage("lost result".into())));
                            let _ = reply.send(result);
                        }
                        Request::Receipt { reply, .. } => {
                            let _ = reply.send(Ok(()));
                        }
                    }
                }
            }
            Err(OutboxError::Full(_)) if single && matches!(group[0], Request::Receipt { .. }) => {
                self.commit_receipts(group);
            }
            Err(e) if single => {
                tracing::error!(error = %e, "outbox commit failed");
                for req in group {
                    match req {
                        Request::Append { reply, .. } => {
                            let _ = reply.send(Err(e.clone()));
                        }
                        Request::Receipt { reply, .. } => {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, requests = group.len(), "group commit failed; retrying requests one by one");
                for req in group {
                    self.commit_group(vec![req]);
                }
            }
        }
    }

    /// Commits receipts (a group of them alone). When the disk is too full
    /// even for that, gives up the reserve, commits them in its room and
    /// truncates the WAL.
    fn commit_receipts(&mut self, receipts: Vec<Request>) {
        let result = self.try_group(&receipts);
        self.finish_receipts(receipts, result);
    }

    /// Answers receipts that were just tried (`result`); when that failed
    /// for lack of space, gives up the reserve and tries once more in its
    /// room, then truncates the WAL.
    #[allow(clippy::type_complexity)]
    fn finish_receipts(
        &mut self,
        receipts: Vec<Request>,
        mut result: Result<(OutboxState, Vec<Result<Vec<Appended>, OutboxError>>), OutboxError>,
    ) {
        if matches!(result, Err(OutboxError::Full(_))) && self.reserve.release() {
            tracing::warn!("disk full: released the outbox reserve to apply receipts");
            result = self.try_group(&receipts);
            self.truncate_wal();
        }
        let result = result.map(|(next, _)| {
            self.state = next;
            self.state_tx.send_replace(next);
        });
        if let Err(e) = &result {
            tracing::error!(error = %e, "cannot apply receipts");
        }
        for req in receipts {
            if let Request::Receipt { reply, .. } = req {
                let _ = reply.send(result.clone());
            }
        }
    }

    /// Moves the WAL into the database and truncates it to nothing, giving
    /// its space back to the disk.
    fn truncate_wal(&self) {
        if let Err(e) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        {
            tracing::warn!(error = %e, "outbox checkpoint failed");
        }
    }

    /// One transaction for the whole group. Returns the state after it and
    /// each append's own result (a quota refusal is such a result).
    #[allow(clippy::type_complexity)]
    fn try_group(
        &mut self,
        group: &[Request],
    ) -> Result<(OutboxState, Vec<Result<Vec<Appended>, OutboxError>>), OutboxError> {
        let mut next = self.state;
        let mut results = Vec::new();
        let tx = self.conn.transaction()?;
        for req in group {
            match req {
                Request::Append { events, .. } => {
                    results.push(append(&tx, &self.post_id, &self.limits, &mut next, events)?);
                }
                Request::Receipt { through, .. } => {
                    if *through > next.receipted_through {
                        let through = (*through).min(next.last_seq);
                        let (n, bytes): (i64, i64) = tx.query_row(
                            "SELECT count(*), coalesce(sum(length(body)), 0) FROM events WHERE seq <= ?1",
                            [through as i64],
                            |r| Ok((r.get(0)?, r.get(1)?)),
                        )?;
                        tx.execute("DELETE FROM events WHERE seq <= ?1", [through as i64])?;
                        set_meta(&tx, "receipted_through", through)?;
                        next.receipted_through = through;
                        next.depth -= n as u64;
                        next.bytes -= bytes as u64;
                    }
                }
            }
        }
        let now = std::time::Instant::now();
        if self.last_prune.is_none_or(|t| now - t >= DEDUP_PRUNE_EVERY) {
            let cutoff = unix_now().saturating_sub(self.limits.dedup_retention.as_secs());
            tx.execute("DELETE FROM dedup WHERE at < ?1", [cutoff as i64])?;
            self.last_prune = Some(now);
        }
        tx.commit()?;
        Ok((next, results))
    }
}

/// Appends one request's events inside the open transaction. The outer
/// error (storage) aborts the transaction; the inner one (quota) is this
/// request's answer, checked before anything is written.
fn append(
    tx: &rusqlite::Transaction<'_>,
    post_id: &str,
    limits: &OutboxLimits,
    next: &mut OutboxState,
    events: &[NewEvent],
) -> Result<Result<Vec<Appended>, OutboxError>, OutboxError> {
    let mut out = Vec::with_capacity(events.len());
    let mut encoded = Vec::with_capacity(events.len());
    let mut new_events = 0u64;
    let mut new_bytes = 0u64;
    for item in events {
        if let Some(key) = &item.dedup_key {
            let seen: Option<i64> = tx
                .query_row("SELECT seq FROM dedup WHERE key = ?1", [key], |r| r.get(0))
                .optional()?;
            if let Some(seq) = seen {
                out.push(Appended::Duplicate(seq as u64));
                encoded.push(None);
                continue;
            }
        }
        let seq = next.last_seq + new_events + 1;
        let mut event = item.event.clone();
        event.post_id = post_id.to_owned();
        event.seq = seq;
        let bytes = event.encode_to_vec();
        new_events += 1;
        new_bytes += bytes.len() as u64;
        out.push(Appended::Stored(seq));
        encoded.push(Some(bytes));
    }
    if next.depth + new_events > limits.max_events || next.bytes + new_bytes > limits.max_bytes {
        return Ok(Err(OutboxError::Full(format!(
            "quota reached ({} events, {} bytes kept; limits {} events, {} bytes)",
            next.depth, next.bytes, limits.max_events, limits.max_bytes
        ))));
    }
    let now = unix_now() as i64;
    for ((item, result), bytes) in events.iter().zip(&out).zip(encoded) {
        let (Appended::Stored(seq), Some(bytes)) = (result, bytes) else {
            continue;
        };
        tx.execute(
            "INSERT INTO events (seq, body) VALUES (?1, ?2)",
            params![*seq as i64, bytes],
        )?;
        if let Some(key) = &item.dedup_key {
            tx.execute(
                "INSERT OR REPLACE INTO dedup (key, seq, at) VALUES (?1, ?2, ?3)",
                params![key, *seq as i64, now],
            )?;
        }
    }
    if new_events > 0 {
        next.last_seq += new_events;
        next.depth += new_events;
        next.bytes += new_bytes;
        set_meta(tx, "last_seq", next.last_seq)?;
    }
    Ok(Ok(out))
}

/// Encodes stored events as a `vigil.v1.EventBatch` without decoding them:
/// the batch is field 1 (post id) followed by each event as field 2, so the
/// stored bytes are framed as they are.
pub fn encode_batch(post_id: &str, events: &[StoredEvent]) -> Vec<u8> {
    use vigil_proto::prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
    let len = post_id.len()
        + events
            .iter()
            .map(|e| 1 + encoded_len_varint(e.bytes.len() as u64) + e.bytes.len())
            .sum::<usize>()
        + 11;
    let mut buf = Vec::with_capacity(len);
    if !post_id.is_empty() {
        encode_key(1, WireType::LengthDelimited, &mut buf);
        encode_varint(post_id.len() as u64, &mut buf);
        buf.extend_from_slice(post_id.as_bytes());
    }
    for event in events {
        encode_key(2, WireType::LengthDelimited, &mut buf);
        encode_varint(event.bytes.len() as u64, &mut buf);
        buf.extend_from_slice(&event.bytes);
    }
    buf
}

fn set_meta(tx: &rusqlite::Transaction<'_>, key: &str, value: u64) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value as i64],
    )?;
    Ok(())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_proto::v1::EventBatch;

    fn ev(text: &str) -> NewEvent {
        NewEvent {
            event: Event {
                description: text.into(),
                ..Default::default()
            },
            dedup_key: None,
        }
    }

    fn keyed(text: &str, key: &str) -> NewEvent {
        NewEvent {
            dedup_key: Some(key.into()),
            ..ev(text)
        }
    }

    fn decode(stored: &[StoredEvent]) -> Vec<Event> {
        stored
            .iter()
            .map(|s| Event::decode(s.bytes.as_slice()).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn seqs_are_gap_free_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        {
            let outbox = Outbox::open(&path, "p-1", OutboxLimits::default()).unwrap();
            let r = outbox.append(vec![ev("a"), ev("b")]).await.unwrap();
            assert_eq!(r, vec![Appended::Stored(1), Appended::Stored(2)]);
            let r = outbox.append(vec![ev("c")]).await.unwrap();
            assert_eq!(r, vec![Appended::Stored(3)]);
        }
        let outbox = Outbox::open(&path, "p-1", OutboxLimits::default()).unwrap();
        assert_eq!(outbox.state().last_seq, 3);
        assert_eq!(outbox.state().depth, 3);
        let r = outbox.append(vec![ev("d")]).await.unwrap();
        assert_eq!(r, vec![Appended::Stored(4)]);
        let events = decode(&outbox.read_from(1, 100, usize::MAX).await.unwrap());
        let got: Vec<_> = events
            .iter()
            .map(|e| (e.seq, e.post_id.as_str(), e.description.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, "p-1", "a"),
                (2, "p-1", "b"),
                (3, "p-1", "c"),
                (4, "p-1", "d")
            ]
        );
    }

    #[tokio::test]
    async fn receipts_drop_events_and_never_go_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        let outbox = Outbox::open(&path, "p-1", OutboxLimits::default()).unwrap();
        outbox
            .append((0..5).map(|i| ev(&i.to_string())).collect())
            .await
            .unwrap();
        outbox.receipt(3).await.unwrap();
        outbox.receipt(2).await.unwrap();
        let state = outbox.state();
        assert_eq!(
            (state.receipted_through, state.depth, state.last_seq),
            (3, 2, 5)
        );
        let left: Vec<_> = outbox
            .read_from(0, 100, usize::MAX)
            .await
            .unwrap()
            .iter()
            .map(|s| s.seq)
            .collect();
        assert_eq!(left, vec![4, 5]);
        // A receipt beyond what was assigned cannot cover future events.
        outbox.receipt(99).await.unwrap();
        assert_eq!(outbox.state().receipted_through, 5);
        assert_eq!(
            outbox.append(vec![ev("x")]).await.unwrap(),
            vec![Appended::Stored(6)]
        );
        drop(outbox);
        let outbox = Outbox::open(&path, "p-1", OutboxLimits::default()).unwrap();
        let state = outbox.state();
        assert_eq!(
            (state.receipted_through, state.depth, state.last_seq),
            (5, 1, 6)
        );
    }

    #[tokio::test]
    async fn dedup_keys_resolve_to_the_stored_seq() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        let outbox = Outbox::open(&path, "p-1", OutboxLimits::default()).unwrap();
        let r = outbox
            .append(vec![keyed("a", "k1"), keyed("b", "k2")])
            .await
            .unwrap();
        assert_eq!(r, vec![Appended::Stored(1), Appended::Stored(2)]);
        let r = outbox
            .append(vec![keyed("a again", "k1"), keyed("c", "k3")])
            .await
            .unwrap();
        assert_eq!(r, vec![Appended::Duplicate(1), Appended::Stored(3)]);
        drop(outbox);
        // Still known after a restart (the panel may retransmit across one).
        let outbox = Outbox::open(&path, "p-1", OutboxLimits::default()).unwrap();
        assert_eq!(
            outbox.append(vec![keyed("b", "k2")]).await.unwrap(),
            vec![Appended::Duplicate(2)]
        );
        assert_eq!(outbox.state().last_seq, 3);
    }

    #[tokio::test]
    async fn quota_refuses_only_the_request_that_exceeds_it() {
        let dir = tempfile::tempdir().unwrap();
        let limits = OutboxLimits {
            max_events: 3,
            ..Default::default()
        };
        let outbox = Outbox::open(&dir.path().join("o.db"), "p-1", limits).unwrap();
        outbox.append(vec![ev("a"), ev("b")]).await.unwrap();
        let err = outbox.append(vec![ev("c"), ev("d")]).await.unwrap_err();
        assert!(matches!(err, OutboxError::Full(_)), "{err}");
        // Nothing of the refused request was kept, and no seq was used.
        assert_eq!(
            outbox.append(vec![ev("c")]).await.unwrap(),
            vec![Appended::Stored(3)]
        );
        assert!(matches!(
            outbox.append(vec![ev("e")]).await,
            Err(OutboxError::Full(_))
        ));
        outbox.receipt(2).await.unwrap();
        assert_eq!(
            outbox.append(vec![ev("e")]).await.unwrap(),
            vec![Appended::Stored(4)]
        );
    }

    #[tokio::test]
    async fn a_full_database_refuses_and_recovers_after_receipts() {
        let dir = tempfile::tempdir().unwrap();
        let limits = OutboxLimits {
            // SQLite answers SQLITE_FULL when the database may not grow,
            // the same error a full file system gives.
            max_db_bytes: Some(256 * 1024),
            ..Default::default()
        };
        let outbox = Outbox::open(&dir.path().join("o.db"), "p-1", limits).unwrap();
        let big = "x".repeat(16 * 1024);
        let mut stored = 0;
        let err = loop {
            match outbox.append(vec![ev(&big)]).await {
                Ok(_) => stored += 1,
                Err(e) => break e,
            }
            assert!(stored < 100, "the database never filled up");
        };
        assert!(matches!(err, OutboxError::Full(_)), "{err}");
        assert!(stored > 0);
        // What was refused used no seq; what was stored is intact.
        assert_eq!(outbox.state().last_seq, stored);
        assert_eq!(
            outbox.read_from(1, 1000, usize::MAX).await.unwrap().len() as u64,
            stored
        );
        // Receipts free pages and the outbox accepts events again.
        outbox.receipt(stored).await.unwrap();
        assert_eq!(
            outbox.append(vec![ev(&big)]).await.unwrap(),
            vec![Appended::Stored(stored + 1)]
        );
    }

    #[tokio::test]
    async fn stored_events_encode_as_an_event_batch() {
        let dir = tempfile::tempdir().unwrap();
        let outbox =
            Outbox::open(&dir.path().join("o.db"), "p-9", OutboxLimits::default()).unwrap();
        outbox
            .append(vec![ev("a"), ev("b"), ev(&"c".repeat(300))])
            .await
            .unwrap();
        let stored = outbox.read_from(1, 10, usize::MAX).await.unwrap();
        let bytes = encode_batch("p-9", &stored);
        let expected = EventBatch {
            post_id: "p-9".into(),
            events: decode(&stored),
        };
        assert_eq!(bytes, expected.encode_to_vec());
        // Byte limit: at least one event, then stop before exceeding it.
        let first = outbox.read_from(1, 10, 1).await.unwrap();
        assert_eq!(first.len(), 1);
    }
}
