//! When each incident opened, as a column (issue #17: history per post and
//! reports). A post's history and a period's report read incidents by the
//! time they opened; `incidents.opened_at` (milliseconds since the epoch,
//! from the incident's `opened_at`) makes that an index range:
//! `incidents_post_opened (post_id, opened_at, number)` for one post,
//! `incidents_opened (opened_at, number)` for every post.
//!
//! One step on each backend (SQLite schema version 4, PostgreSQL migration
//! 7): the column, the backfill from the stored bodies (the protobuf
//! `Incident`, which SQL cannot read) and the indexes, in one transaction,
//! so a store is never seen half migrated. The writer sets the column when
//! it first writes an incident; an incident's opening time never changes
//! after (a reopened incident keeps it), so updates leave it and its
//! indexes alone.

use prost::Message;
use vigil_proto::v1::Incident;

use super::{StoreError, sqlite::millis};

/// SQLite schema version 4, before the backfill.
pub(crate) const SQLITE_COLUMN: &str =
    "ALTER TABLE incidents ADD COLUMN opened_at INTEGER NOT NULL DEFAULT 0;";
/// PostgreSQL migration 7, before the backfill (see [`postgres_after`]).
pub(crate) const POSTGRES_MIGRATION: &str =
    "ALTER TABLE incidents ADD COLUMN opened_at BIGINT NOT NULL DEFAULT 0;";
/// Both backends, after the backfill.
pub(crate) const INDEXES: &str = "
CREATE INDEX incidents_post_opened ON incidents (post_id, opened_at, number);
CREATE INDEX incidents_opened ON incidents (opened_at, number);
";

/// Incidents read per statement while filling the column.
const CHUNK: i64 = 2000;

/// The `opened_at` column of an incident: its `opened_at` in milliseconds,
/// 0 when it has none (the engine always sets it).
pub(crate) fn opened_ms(incident: &Incident) -> i64 {
    incident
        .opened_at
        .and_then(|t| std::time::SystemTime::try_from(t).ok())
        .map(millis)
        .unwrap_or(0)
}

/// The opened time of a stored body; an undecodable body keeps 0 and is
/// counted.
fn body_opened(body: &[u8], undecodable: &mut u64) -> i64 {
    match Incident::decode(body) {
        Ok(inc) => opened_ms(&inc),
        Err(_) => {
            *undecodable += 1;
            0
        }
    }
}

fn log(backend: &str, done: u64, undecodable: u64) {
    if done > 0 {
        tracing::info!(
            backend,
            incidents = done,
            "incident opening times filled from stored bodies"
        );
    }
    if undecodable > 0 {
        tracing::warn!(
            backend,
            undecodable,
            "incidents whose body does not decode keep opened_at 0"
        );
    }
}

/// SQLite schema version 4, whole, in `tx`.
pub(crate) fn migrate_sqlite(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute_batch(SQLITE_COLUMN)?;
    let mut select = tx
        .prepare("SELECT number, body FROM incidents WHERE number > ?1 ORDER BY number LIMIT ?2")?;
    let mut update = tx.prepare("UPDATE incidents SET opened_at = ?2 WHERE number = ?1")?;
    let (mut after, mut done, mut undecodable) = (i64::MIN, 0u64, 0u64);
    loop {
        let rows: Vec<(i64, Vec<u8>)> = select
            .query_map(rusqlite::params![after, CHUNK], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        let Some(last) = rows.last() else { break };
        after = last.0;
        for (number, body) in &rows {
            update.execute(rusqlite::params![
                number,
                body_opened(body, &mut undecodable)
            ])?;
            done += 1;
        }
    }
    tx.execute_batch(INDEXES)?;
    log("sqlite", done, undecodable);
    Ok(())
}

/// What runs after [`POSTGRES_MIGRATION`], in its transaction: the
/// backfill, then the indexes.
pub(crate) fn postgres_after(tx: &mut postgres::Transaction<'_>) -> Result<(), StoreError> {
    let select = tx
        .prepare("SELECT number, body FROM incidents WHERE number > $1 ORDER BY number LIMIT $2")?;
    let update = tx.prepare(
        "UPDATE incidents SET opened_at = u.o FROM unnest($1::int8[], $2::int8[]) AS u(n, o)
         WHERE incidents.number = u.n",
    )?;
    let (mut after, mut done, mut undecodable) = (i64::MIN, 0u64, 0u64);
    loop {
        let rows = tx.query(&select, &[&after, &CHUNK])?;
        let Some(last) = rows.last() else { break };
        after = last.get(0);
        let (mut numbers, mut opened) = (Vec::new(), Vec::new());
        for row in &rows {
            numbers.push(row.get::<_, i64>(0));
            opened.push(body_opened(row.get::<_, &[u8]>(1), &mut undecodable));
        }
        done += rows.len() as u64;
        tx.execute(&update, &[&numbers, &opened])?;
    }
    tx.batch_execute(INDEXES)?;
    log("postgresql", done, undecodable);
    Ok(())
}
