//! The engine's timer state per post (issue #17: schedules, fail-to-test),
//! and emergency mode (one row, the `EmergencyMode` protobuf, absent when
//! off).
//!
//! Timer state:
//! the last opening, closing and test report it saw, how far it has
//! checked the post's schedule deadlines, and how many test periods it
//! has reported missed. One row per post, the state as JSON text, so that
//! a restart or another replica taking over resumes the timers where they
//! stood instead of forgetting an opening or firing a deadline twice.
//!
//! The statements are here; `sqlite.rs` (schema version 4) and
//! `postgres.rs` (migration 7) hold only the hooks that run them. The
//! table is read whole at start (`engine_snapshot`, one row per post) and
//! written by primary key: no filtered read, so no entry in `shapes`.

use serde::{Deserialize, Serialize};

use super::StoreError;

/// The timer state of one post. Times are milliseconds since the Unix
/// epoch (event times for openings, closings and tests).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PostTimers {
    /// Latest opening (disarm) seen.
    pub opened_at: Option<i64>,
    /// Latest closing (arm) seen.
    pub closed_at: Option<i64>,
    /// Latest test report, or when the engine started expecting one.
    pub tested_at: Option<i64>,
    /// Test periods since `tested_at` already reported missed.
    pub test_periods_missed: u32,
    /// Schedule deadlines up to this time have been handled.
    pub checked_through: Option<i64>,
}

impl PostTimers {
    pub(crate) fn encode(&self) -> String {
        serde_json::to_string(self).expect("plain fields")
    }

    pub(crate) fn decode(post_id: &str, text: &str) -> Result<Self, StoreError> {
        serde_json::from_str(text)
            .map_err(|e| StoreError::Corrupt(format!("timer state of {post_id}: {e}")))
    }
}

/// SQLite schema version 4.
pub(crate) const SQLITE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS post_timers (
    post_id TEXT PRIMARY KEY,
    state   TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS emergency (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    body BLOB NOT NULL
);
";

/// PostgreSQL migration 7.
pub(crate) const POSTGRES_MIGRATION: &str = "
CREATE TABLE post_timers (
    post_id TEXT PRIMARY KEY,
    state   TEXT NOT NULL
);
CREATE TABLE emergency (
    id   SMALLINT PRIMARY KEY CHECK (id = 1),
    body BYTEA NOT NULL
);
";

pub(crate) const EMERGENCY_UPSERT: &str = "INSERT INTO emergency (id, body) VALUES (1, $1)
     ON CONFLICT (id) DO UPDATE SET body = excluded.body";
pub(crate) const EMERGENCY_CLEAR: &str = "DELETE FROM emergency";
pub(crate) const EMERGENCY_SELECT: &str = "SELECT body FROM emergency WHERE id = 1";

/// Both dialects (`$N` placeholders bind in order on SQLite too).
pub(crate) const UPSERT: &str = "INSERT INTO post_timers (post_id, state) VALUES ($1, $2)
     ON CONFLICT (post_id) DO UPDATE SET state = excluded.state";
pub(crate) const SELECT_ALL: &str = "SELECT post_id, state FROM post_timers ORDER BY post_id";
