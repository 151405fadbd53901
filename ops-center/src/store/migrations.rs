//! PostgreSQL migrations of issue #19 (query shapes), kept beside the
//! backend so that its own list stays short: version 4 adds the columns
//! every replay filters and sorts on (`kind`, `at`) and fills them,
//! version 5 builds one index per query shape (see [`super::shapes`]).
//! SQLite's counterpart is its schema version 2 (`store::sqlite`).
//!
//! `kind` is filled from the stored bodies (the protobuf `Event` oneof),
//! which SQL cannot read, so version 4 ends with [`backfill_kinds`], in the
//! same transaction as its columns: a store is never seen half migrated.

use postgres::Transaction;
use prost::Message;
use vigil_proto::v1::Event;

use super::{StoreError, shapes::kind_of};

/// Version 4: the columns. A constant default makes `ADD COLUMN` instant;
/// the `UPDATE` rewrites the table once.
pub(crate) const V4_COLUMNS: &str = "
ALTER TABLE events ADD COLUMN kind SMALLINT NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN at BIGINT NOT NULL DEFAULT 0;
UPDATE events SET at = coalesce(received_at, stored_at);
";

/// Version 5: the indexes, built after the backfill.
pub(crate) const V5_INDEXES: &str = "
DROP INDEX IF EXISTS events_received;
CREATE INDEX events_post_kind ON events (post_id, kind, seq);
CREATE INDEX events_kind_at ON events (kind, at, post_id, seq);
CREATE INDEX events_post_kind_at ON events (post_id, kind, at, seq);
DROP INDEX IF EXISTS incidents_post;
CREATE INDEX incidents_post ON incidents (post_id, state, number);
";

/// Rows read per statement while filling `kind`.
const CHUNK: i64 = 5000;

/// What runs after the SQL of migration `version`, in its transaction.
pub(crate) fn after(tx: &mut Transaction<'_>, version: usize) -> Result<(), StoreError> {
    if version == 4 {
        let n = backfill_kinds(tx)?;
        if n > 0 {
            tracing::info!(
                events = n,
                "postgresql: event kinds filled from stored bodies"
            );
        }
    }
    Ok(())
}

/// Sets `events.kind` of every stored event from its body, walking the
/// primary key a chunk at a time. A body that does not decode keeps kind 0
/// (`EVENT_KIND_UNSPECIFIED`).
fn backfill_kinds(tx: &mut Transaction<'_>) -> Result<u64, StoreError> {
    let select = tx.prepare(
        "SELECT post_id, seq, body FROM events WHERE (post_id, seq) > ($1, $2)
         ORDER BY post_id, seq LIMIT $3",
    )?;
    let update = tx.prepare(
        "UPDATE events SET kind = u.k FROM unnest($1::text[], $2::int8[], $3::int2[]) AS u(p, s, k)
         WHERE events.post_id = u.p AND events.seq = u.s",
    )?;
    let (mut post, mut seq) = (String::new(), i64::MIN);
    let (mut done, mut undecodable) = (0u64, 0u64);
    loop {
        let rows = tx.query(&select, &[&post, &seq, &CHUNK])?;
        let Some(last) = rows.last() else { break };
        (post, seq) = (last.get(0), last.get(1));
        let (mut posts, mut seqs, mut kinds) = (Vec::new(), Vec::new(), Vec::new());
        for row in &rows {
            match Event::decode(row.get::<_, &[u8]>(2)) {
                Ok(event) => {
                    let kind = kind_of(&event);
                    if kind != 0 {
                        posts.push(row.get::<_, String>(0));
                        seqs.push(row.get::<_, i64>(1));
                        kinds.push(kind as i16);
                    }
                }
                Err(_) => undecodable += 1,
            }
        }
        done += rows.len() as u64;
        if !posts.is_empty() {
            tx.execute(&update, &[&posts, &seqs, &kinds])?;
        }
    }
    if undecodable > 0 {
        tracing::warn!(
            undecodable,
            "postgresql: events whose body does not decode keep kind 0"
        );
    }
    Ok(done)
}
