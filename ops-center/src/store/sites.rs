//! Post records and action plans in the store (issue #17): the site
//! document, kept whole, replaced whole by an import.
//!
//! Both backends keep it in two tables with one row per post record and
//! per plan, each its protobuf encoding (`PostRecord`, `ActionPlan`) beside
//! the columns it is looked up by, and `position`, the order of the
//! document, so an export gives back what was imported. The statements are
//! here; `sqlite.rs` and `postgres.rs` hold only the hooks that run them
//! (SQLite schema version 3, PostgreSQL migration 6).
//!
//! A new document arrives as [`super::Changes::site`] and is written in the
//! writer's transaction, with the audit entries that describe it.

use prost::Message;
use vigil_proto::v1::SiteDocument;

/// SQLite schema version 3.
pub(crate) const SQLITE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS site_posts (
    post_id  TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    body     BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS site_plans (
    position INTEGER PRIMARY KEY,
    category TEXT NOT NULL,
    post_id  TEXT NOT NULL,
    body     BLOB NOT NULL
);
";

/// PostgreSQL migration 6.
pub(crate) const POSTGRES_MIGRATION: &str = "
CREATE TABLE site_posts (
    post_id  TEXT PRIMARY KEY,
    position BIGINT NOT NULL,
    body     BYTEA NOT NULL
);
CREATE TABLE site_plans (
    position BIGINT PRIMARY KEY,
    category TEXT NOT NULL,
    post_id  TEXT NOT NULL,
    body     BYTEA NOT NULL
);
";

pub(crate) const CLEAR_POSTS: &str = "DELETE FROM site_posts";
pub(crate) const CLEAR_PLANS: &str = "DELETE FROM site_plans";
pub(crate) const SELECT_POSTS: &str = "SELECT body FROM site_posts ORDER BY position";
pub(crate) const SELECT_PLANS: &str = "SELECT body FROM site_plans ORDER BY position";

pub(crate) mod sqlite {
    pub(crate) const INSERT_POST: &str =
        "INSERT INTO site_posts (post_id, position, body) VALUES (?1, ?2, ?3)";
    pub(crate) const INSERT_PLAN: &str =
        "INSERT INTO site_plans (position, category, post_id, body) VALUES (?1, ?2, ?3, ?4)";
    pub(crate) const SELECT_POST: &str = "SELECT body FROM site_posts WHERE post_id = ?1";
}

pub(crate) mod postgres {
    pub(crate) const INSERT_POST: &str =
        "INSERT INTO site_posts (post_id, position, body) VALUES ($1, $2, $3)";
    pub(crate) const INSERT_PLAN: &str =
        "INSERT INTO site_plans (position, category, post_id, body) VALUES ($1, $2, $3, $4)";
    pub(crate) const SELECT_POST: &str = "SELECT body FROM site_posts WHERE post_id = $1";
}

/// A row to insert: key columns, position and encoded body.
pub(crate) struct PostRow<'a> {
    pub(crate) post_id: &'a str,
    pub(crate) position: i64,
    pub(crate) body: Vec<u8>,
}

pub(crate) struct PlanRow<'a> {
    pub(crate) position: i64,
    pub(crate) category: &'a str,
    pub(crate) post_id: &'a str,
    pub(crate) body: Vec<u8>,
}

/// The rows a document is stored as.
pub(crate) fn rows(doc: &SiteDocument) -> (Vec<PostRow<'_>>, Vec<PlanRow<'_>>) {
    let posts = doc
        .posts
        .iter()
        .enumerate()
        .map(|(i, p)| PostRow {
            post_id: &p.post_id,
            position: i as i64,
            body: p.encode_to_vec(),
        })
        .collect();
    let plans = doc
        .plans
        .iter()
        .enumerate()
        .map(|(i, p)| PlanRow {
            position: i as i64,
            category: &p.category,
            post_id: &p.post_id,
            body: p.encode_to_vec(),
        })
        .collect();
    (posts, plans)
}
