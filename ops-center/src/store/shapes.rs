//! Query shapes: every filtered read the API makes, written once for both
//! backends, so that each is served by an index and a test can prove it.
//!
//! A filter on a list of values (posts, kinds, states) is not one `IN (…)`
//! or `= ANY(…)` predicate: with an `ORDER BY … LIMIT`, a database answers
//! that by reading every matching row and sorting them, which for "the
//! health events of all posts" is the whole table. Instead each value gets
//! its own *arm*, an index range read in the order wanted and cut at the
//! limit, and the arms are merged (`UNION ALL` then `ORDER BY … LIMIT`), so
//! a page costs at most `arms × limit` rows however large the store. An
//! absent filter on a leading index column is expanded to every value it
//! can take (the event kinds, the incident states), which is a few arms.
//!
//! Placeholders are written `$1`, `$2`, … in order of first appearance:
//! PostgreSQL numbers them so, and SQLite binds such named parameters in
//! the order they first appear, so one text serves both.
//!
//! [`SHAPES`] lists one example of every shape; the query-plan tests of both
//! backends (`store::sqlite` unit tests, `ops-center/tests/postgres.rs`)
//! run `EXPLAIN` on each and fail on a full scan.

use std::{
    fmt::Write as _,
    time::{SystemTime, UNIX_EPOCH},
};

use vigil_proto::v1::{Event, EventKind, IncidentState, event::Body};

use super::{IncidentFilter, ReceivedFilter, ReceivedKey, StoreError, sqlite::millis};

/// Posts one replay or incident listing may name: each is an arm per kind
/// or state, and SQLite caps a compound query at 500 arms. Leave the list
/// empty for every post.
pub const MAX_POSTS_PER_QUERY: usize = 32;

/// Most arms one query may have ([`MAX_POSTS_PER_QUERY`] × every kind or
/// state, with room to spare); beyond it the query is refused.
const MAX_ARMS: usize = 256;

/// Every kind an event can be stored as (`events.kind`), for expanding an
/// absent kind filter. An event whose body this version does not know is
/// stored as `EVENT_KIND_UNSPECIFIED` (0).
pub const ALL_KINDS: [i32; 4] = [
    EventKind::Unspecified as i32,
    EventKind::Alarm as i32,
    EventKind::Camera as i32,
    EventKind::Health as i32,
];

/// Every incident state, for expanding an absent state filter.
pub const ALL_STATES: [i32; 4] = [
    IncidentState::Unspecified as i32,
    IncidentState::Open as i32,
    IncidentState::Acknowledged as i32,
    IncidentState::Resolved as i32,
];

/// States of an incident that is not resolved (what `posts` counts as open).
pub const UNRESOLVED_STATES: [i32; 3] = [
    IncidentState::Unspecified as i32,
    IncidentState::Open as i32,
    IncidentState::Acknowledged as i32,
];

/// The kind an event is stored (and replayed) as.
pub fn kind_of(event: &Event) -> i32 {
    match &event.body {
        Some(Body::Alarm(_)) => EventKind::Alarm as i32,
        Some(Body::Camera(_)) => EventKind::Camera as i32,
        Some(Body::Health(_)) => EventKind::Health as i32,
        None => EventKind::Unspecified as i32,
    }
}

/// Which database a query is written for: the text is the same but for
/// SQLite's `INDEXED BY`, which pins an index where its planner, without
/// statistics, would take the primary key and filter (a per-kind arm of a
/// post's seq-order replay: the primary key covers the body, the kind
/// index needs a lookup, so it looks cheaper, and reads the whole post).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A value bound to a placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    Int(i64),
    Text(String),
}

/// SQL text and the values of its placeholders, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub sql: String,
    pub params: Vec<Param>,
}

impl Query {
    /// Appends `p` and returns its placeholder. Integers are cast to
    /// BIGINT: PostgreSQL would otherwise infer the column's own type
    /// (`state` is INTEGER, `kind` SMALLINT) and refuse an i64 for it;
    /// SQLite takes the cast as a no-op, and both still use the index.
    fn bind(&mut self, p: Param) -> String {
        let int = matches!(p, Param::Int(_));
        self.params.push(p);
        let n = self.params.len();
        if int {
            format!("CAST(${n} AS BIGINT)")
        } else {
            format!("${n}")
        }
    }
}

/// Which events of one post [`super::Store::events_by_seq`] returns, in seq
/// order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SeqFilter {
    pub post_id: String,
    /// Only these kinds (`EventKind` values); empty = all.
    pub kinds: Vec<i32>,
    /// From this seq (inclusive)…
    pub from_seq: u64,
    /// …to this one (inclusive), if bounded.
    pub to_seq: Option<u64>,
}

/// The columns of a stored event, then its received-order key. The link
/// to an incident is looked up per row through `incident_events_event`.
const EVENT_COLUMNS: &str = "e.body, e.stored_at,
    (SELECT ie.number FROM incident_events ie WHERE ie.post_id = e.post_id AND ie.seq = e.seq LIMIT 1) AS number,
    e.at, e.post_id, e.seq";

fn distinct(values: &[i32]) -> Vec<i32> {
    let mut v = values.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

fn distinct_text(values: &[String]) -> Vec<String> {
    let mut v = values.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

fn check_arms(n: usize) -> Result<(), StoreError> {
    if n > MAX_ARMS {
        return Err(StoreError::Backend {
            backend: "query",
            message: format!(
                "a query of {n} index ranges is refused (at most {MAX_ARMS}); name at most \
                 {MAX_POSTS_PER_QUERY} posts, or none for all"
            ),
        });
    }
    Ok(())
}

/// Merges arms (each a full `SELECT … ORDER BY … LIMIT`) into one query
/// in `order`, cut at `limit`.
fn merge(q: &mut Query, arms: Vec<String>, order: &str, limit: usize) {
    if arms.len() == 1 {
        q.sql = arms.into_iter().next().unwrap_or_default();
        return;
    }
    let mut sql = String::new();
    for (i, arm) in arms.iter().enumerate() {
        if i > 0 {
            sql.push_str("\nUNION ALL ");
        }
        let _ = write!(sql, "SELECT * FROM ({arm}) AS a{i}");
    }
    let l = q.bind(Param::Int(limit as i64));
    let _ = write!(sql, "\nORDER BY {order} LIMIT {l}");
    q.sql = sql;
}

/// Events of one post in seq order: the primary key `(post_id, seq)`, or
/// per kind `events_post_kind (post_id, kind, seq)`.
pub fn events_by_seq(f: &SeqFilter, limit: usize, dialect: Dialect) -> Result<Query, StoreError> {
    let mut q = Query {
        sql: String::new(),
        params: Vec::new(),
    };
    let kinds: Vec<Option<i32>> = if f.kinds.is_empty() {
        vec![None]
    } else {
        distinct(&f.kinds).into_iter().map(Some).collect()
    };
    check_arms(kinds.len())?;
    let mut arms = Vec::new();
    for kind in kinds {
        let pin = match (kind, dialect) {
            (Some(_), Dialect::Sqlite) => " INDEXED BY events_post_kind",
            _ => "",
        };
        let mut arm = format!("SELECT {EVENT_COLUMNS} FROM events e{pin} WHERE e.post_id = ");
        arm.push_str(&q.bind(Param::Text(f.post_id.clone())));
        if let Some(k) = kind {
            let _ = write!(arm, " AND e.kind = {}", q.bind(Param::Int(i64::from(k))));
        }
        let _ = write!(
            arm,
            " AND e.seq >= {}",
            q.bind(Param::Int(f.from_seq.min(i64::MAX as u64) as i64))
        );
        if let Some(to) = f.to_seq {
            let _ = write!(
                arm,
                " AND e.seq <= {}",
                q.bind(Param::Int(to.min(i64::MAX as u64) as i64))
            );
        }
        let _ = write!(
            arm,
            " ORDER BY e.seq LIMIT {}",
            q.bind(Param::Int(limit as i64))
        );
        arms.push(arm);
    }
    merge(&mut q, arms, "seq", limit);
    Ok(q)
}

/// Events in received order (`at`, then post, then seq) strictly after
/// `after`: per kind `events_kind_at (kind, at, post_id, seq)`, or, for
/// named posts, per post and kind `events_post_kind_at (post_id, kind, at,
/// seq)`.
pub fn events_received(
    f: &ReceivedFilter,
    after: Option<&ReceivedKey>,
    limit: usize,
) -> Result<Query, StoreError> {
    let mut q = Query {
        sql: String::new(),
        params: Vec::new(),
    };
    let kinds = if f.kinds.is_empty() {
        ALL_KINDS.to_vec()
    } else {
        distinct(&f.kinds)
    };
    let posts: Vec<Option<String>> = if f.post_ids.is_empty() {
        vec![None]
    } else {
        distinct_text(&f.post_ids).into_iter().map(Some).collect()
    };
    check_arms(kinds.len() * posts.len())?;
    let mut arms = Vec::new();
    for post in &posts {
        for &kind in &kinds {
            let mut arm = format!("SELECT {EVENT_COLUMNS} FROM events e WHERE ");
            if let Some(p) = post {
                let _ = write!(arm, "e.post_id = {} AND ", q.bind(Param::Text(p.clone())));
            }
            let _ = write!(arm, "e.kind = {}", q.bind(Param::Int(i64::from(kind))));
            // After a key at or past `from`, the key is the lower bound
            // (one range, not a range and a filter).
            if let Some(from) = f
                .from
                .filter(|&t| after.is_none_or(|k| k.received_ms < millis(t)))
            {
                let _ = write!(arm, " AND e.at >= {}", q.bind(Param::Int(millis(from))));
            }
            if let Some(to) = f.to {
                let _ = write!(arm, " AND e.at < {}", q.bind(Param::Int(millis(to))));
            }
            if let Some(k) = after {
                match post {
                    // One post: (at, post, seq) > (a, p', s) in terms of
                    // the index's own columns (at, seq).
                    Some(p) => {
                        let a = q.bind(Param::Int(k.received_ms));
                        match p.as_str().cmp(k.post_id.as_str()) {
                            std::cmp::Ordering::Greater => {
                                let _ = write!(arm, " AND e.at >= {a}");
                            }
                            std::cmp::Ordering::Less => {
                                let _ = write!(arm, " AND e.at > {a}");
                            }
                            std::cmp::Ordering::Equal => {
                                let s = q.bind(Param::Int(k.seq.min(i64::MAX as u64) as i64));
                                let _ = write!(arm, " AND (e.at, e.seq) > ({a}, {s})");
                            }
                        }
                    }
                    None => {
                        let a = q.bind(Param::Int(k.received_ms));
                        let p = q.bind(Param::Text(k.post_id.clone()));
                        let s = q.bind(Param::Int(k.seq.min(i64::MAX as u64) as i64));
                        let _ = write!(arm, " AND (e.at, e.post_id, e.seq) > ({a}, {p}, {s})");
                    }
                }
            }
            let order = if post.is_some() {
                "e.at, e.seq"
            } else {
                "e.at, e.post_id, e.seq"
            };
            let _ = write!(
                arm,
                " ORDER BY {order} LIMIT {}",
                q.bind(Param::Int(limit as i64))
            );
            arms.push(arm);
        }
    }
    merge(&mut q, arms, "at, post_id, seq", limit);
    Ok(q)
}

/// Incidents newest first: by number (the primary key), per state
/// `incidents_state (state, number)`, or per post and state
/// `incidents_post (post_id, state, number)`.
pub fn incidents(f: &IncidentFilter) -> Result<Query, StoreError> {
    let mut q = Query {
        sql: String::new(),
        params: Vec::new(),
    };
    let posts: Vec<Option<String>> = if f.post_ids.is_empty() {
        vec![None]
    } else {
        distinct_text(&f.post_ids).into_iter().map(Some).collect()
    };
    let states: Vec<Option<i32>> = match (f.states.is_empty(), f.post_ids.is_empty()) {
        (true, true) => vec![None],
        (true, false) => ALL_STATES.iter().copied().map(Some).collect(),
        (false, _) => distinct(&f.states).into_iter().map(Some).collect(),
    };
    check_arms(posts.len() * states.len())?;
    let mut arms = Vec::new();
    for post in &posts {
        for state in &states {
            let mut conds = Vec::new();
            if let Some(p) = post {
                conds.push(format!("post_id = {}", q.bind(Param::Text(p.clone()))));
            }
            if let Some(s) = state {
                conds.push(format!("state = {}", q.bind(Param::Int(i64::from(*s)))));
            }
            if let Some(b) = f.before_number {
                conds.push(format!(
                    "number < {}",
                    q.bind(Param::Int(b.min(i64::MAX as u64) as i64))
                ));
            }
            let mut arm = String::from("SELECT body, number FROM incidents");
            if !conds.is_empty() {
                let _ = write!(arm, " WHERE {}", conds.join(" AND "));
            }
            let _ = write!(
                arm,
                " ORDER BY number DESC LIMIT {}",
                q.bind(Param::Int(f.limit as i64))
            );
            arms.push(arm);
        }
    }
    merge(&mut q, arms, "number DESC", f.limit);
    Ok(q)
}

/// A position in time order: milliseconds (`events.at` or
/// `incidents.opened_at`) and the row's own key (the event's seq or the
/// incident's number), for keyset pagination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeKey {
    pub ms: i64,
    pub key: u64,
}

/// One post's history ([`super::Store::history_events`],
/// [`super::Store::history_incidents`]), newest first: events by `at`,
/// incidents by `opened_at`, in `[from, to)`, strictly before `before`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HistoryFilter {
    pub post_id: String,
    pub from: Option<SystemTime>,
    pub to: Option<SystemTime>,
    pub before: Option<TimeKey>,
}

/// Incidents opened in `[from, to)` ([`super::Store::incidents_opened`]),
/// of these posts (empty = every post), oldest first.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OpenedFilter {
    pub post_ids: Vec<String>,
    pub from: Option<SystemTime>,
    pub to: Option<SystemTime>,
}

fn key_param(k: u64) -> Param {
    Param::Int(k.min(i64::MAX as u64) as i64)
}

/// A post's events newest first: per kind `events_post_kind_at (post_id,
/// kind, at, seq)` read backwards (pinned on SQLite, whose planner would
/// otherwise take `events_post_kind` and sort).
pub fn history_events(
    f: &HistoryFilter,
    limit: usize,
    dialect: Dialect,
) -> Result<Query, StoreError> {
    let mut q = Query {
        sql: String::new(),
        params: Vec::new(),
    };
    let pin = match dialect {
        Dialect::Sqlite => " INDEXED BY events_post_kind_at",
        Dialect::Postgres => "",
    };
    let mut arms = Vec::new();
    for kind in ALL_KINDS {
        let mut arm = format!("SELECT {EVENT_COLUMNS} FROM events e{pin} WHERE e.post_id = ");
        arm.push_str(&q.bind(Param::Text(f.post_id.clone())));
        let _ = write!(arm, " AND e.kind = {}", q.bind(Param::Int(i64::from(kind))));
        if let Some(from) = f.from {
            let _ = write!(arm, " AND e.at >= {}", q.bind(Param::Int(millis(from))));
        }
        if let Some(to) = f.to {
            let _ = write!(arm, " AND e.at < {}", q.bind(Param::Int(millis(to))));
        }
        if let Some(b) = f.before {
            let a = q.bind(Param::Int(b.ms));
            let s = q.bind(key_param(b.key));
            let _ = write!(arm, " AND (e.at, e.seq) < ({a}, {s})");
        }
        let _ = write!(
            arm,
            " ORDER BY e.at DESC, e.seq DESC LIMIT {}",
            q.bind(Param::Int(limit as i64))
        );
        arms.push(arm);
    }
    merge(&mut q, arms, "at DESC, seq DESC", limit);
    Ok(q)
}

/// A post's incidents newest first by when they opened:
/// `incidents_post_opened (post_id, opened_at, number)` read backwards.
pub fn history_incidents(f: &HistoryFilter, limit: usize) -> Query {
    let mut q = Query {
        sql: String::new(),
        params: Vec::new(),
    };
    let mut sql = String::from("SELECT body, opened_at, number FROM incidents WHERE post_id = ");
    sql.push_str(&q.bind(Param::Text(f.post_id.clone())));
    if let Some(from) = f.from {
        let _ = write!(
            sql,
            " AND opened_at >= {}",
            q.bind(Param::Int(millis(from)))
        );
    }
    if let Some(to) = f.to {
        let _ = write!(sql, " AND opened_at < {}", q.bind(Param::Int(millis(to))));
    }
    if let Some(b) = f.before {
        let a = q.bind(Param::Int(b.ms));
        let n = q.bind(key_param(b.key));
        let _ = write!(sql, " AND (opened_at, number) < ({a}, {n})");
    }
    let _ = write!(
        sql,
        " ORDER BY opened_at DESC, number DESC LIMIT {}",
        q.bind(Param::Int(limit as i64))
    );
    q.sql = sql;
    q
}

/// Incidents opened in a period, oldest first, strictly after `after`:
/// `incidents_opened (opened_at, number)`, or per named post
/// `incidents_post_opened (post_id, opened_at, number)`.
pub fn incidents_opened(
    f: &OpenedFilter,
    after: Option<TimeKey>,
    limit: usize,
) -> Result<Query, StoreError> {
    let mut q = Query {
        sql: String::new(),
        params: Vec::new(),
    };
    let posts: Vec<Option<String>> = if f.post_ids.is_empty() {
        vec![None]
    } else {
        distinct_text(&f.post_ids).into_iter().map(Some).collect()
    };
    check_arms(posts.len())?;
    let mut arms = Vec::new();
    for post in posts {
        let mut conds = Vec::new();
        if let Some(p) = post {
            conds.push(format!("post_id = {}", q.bind(Param::Text(p))));
        }
        if let Some(from) = f.from {
            conds.push(format!("opened_at >= {}", q.bind(Param::Int(millis(from)))));
        }
        if let Some(to) = f.to {
            conds.push(format!("opened_at < {}", q.bind(Param::Int(millis(to)))));
        }
        if let Some(k) = after {
            let a = q.bind(Param::Int(k.ms));
            let n = q.bind(key_param(k.key));
            conds.push(format!("(opened_at, number) > ({a}, {n})"));
        }
        let mut arm = String::from("SELECT body, opened_at, number FROM incidents");
        if !conds.is_empty() {
            let _ = write!(arm, " WHERE {}", conds.join(" AND "));
        }
        let _ = write!(
            arm,
            " ORDER BY opened_at, number LIMIT {}",
            q.bind(Param::Int(limit as i64))
        );
        arms.push(arm);
    }
    merge(&mut q, arms, "opened_at, number", limit);
    Ok(q)
}

/// One stored event by its key (primary key).
pub const EVENT_BY_KEY: &str = "SELECT e.body, e.stored_at,
    (SELECT ie.number FROM incident_events ie WHERE ie.post_id = e.post_id AND ie.seq = e.seq LIMIT 1) AS number
    FROM events e WHERE e.post_id = $1 AND e.seq = $2";
/// The events of an incident (`incident_events` primary key, then the
/// events' primary key).
pub const INCIDENT_EVENTS: &str = "SELECT e.body, e.stored_at, l.number
    FROM incident_events l JOIN events e ON e.post_id = l.post_id AND e.seq = l.seq
    WHERE l.number = $1 ORDER BY l.post_id, l.seq";
/// An incident's audit trail (`audit_incident`).
pub const AUDIT_OF_INCIDENT: &str = "SELECT body FROM audit WHERE number = $1 ORDER BY id";
/// A post's own audit entries (`audit_post`, partial).
pub const AUDIT_OF_POST: &str =
    "SELECT body FROM audit WHERE post_id = $1 AND number IS NULL ORDER BY id";
/// An incident's notes (`notes_incident`).
pub const NOTES_OF_INCIDENT: &str = "SELECT body FROM notes WHERE number = $1 ORDER BY id";
/// Audit entries after a feed cursor (primary key).
pub const AUDIT_AFTER: &str = "SELECT id, body FROM audit WHERE id > $1 ORDER BY id LIMIT $2";
/// A post's events above its watermark (primary key range).
pub const POST_EVENTS_ABOVE: &str = "SELECT seq FROM events WHERE post_id = $1 AND seq > $2";
/// A post's incidents that are not resolved (`incidents_post`, one range
/// per state: `state <> resolved` would read every resolved one too).
pub const POST_OPEN_INCIDENTS: &str =
    "SELECT count(*) FROM incidents WHERE post_id = $1 AND state IN (0, 1, 2)";
/// Unresolved incidents of every post, for the list of posts
/// (`incidents_state`, one range per state).
pub const OPEN_INCIDENTS_BY_POST: &str =
    "SELECT post_id, count(*) FROM incidents WHERE state IN (0, 1, 2) GROUP BY post_id";

/// One example of a read the API makes, for the query-plan tests.
#[derive(Debug, Clone)]
pub enum Shape {
    EventsBySeq(SeqFilter),
    EventsReceived(ReceivedFilter, Option<ReceivedKey>),
    Incidents(IncidentFilter),
    HistoryEvents(HistoryFilter),
    HistoryIncidents(HistoryFilter),
    IncidentsOpened(OpenedFilter, Option<TimeKey>),
    Fixed(&'static str, Vec<Param>),
}

impl Shape {
    /// The query as a backend runs it.
    pub fn query(&self, dialect: Dialect) -> Result<Query, StoreError> {
        match self {
            Shape::EventsBySeq(f) => events_by_seq(f, 500, dialect),
            Shape::EventsReceived(f, after) => events_received(f, after.as_ref(), 500),
            Shape::Incidents(f) => incidents(f),
            Shape::HistoryEvents(f) => history_events(f, 51, dialect),
            Shape::HistoryIncidents(f) => Ok(history_incidents(f, 51)),
            Shape::IncidentsOpened(f, after) => incidents_opened(f, *after, 1000),
            Shape::Fixed(sql, params) => Ok(Query {
                sql: (*sql).to_owned(),
                params: params.clone(),
            }),
        }
    }

    /// Whether the shape filters on event kinds: then every read of
    /// `events` must have the kind in its index condition.
    pub fn filters_kind(&self) -> bool {
        match self {
            Shape::EventsBySeq(f) => !f.kinds.is_empty(),
            Shape::EventsReceived(f, _) => !f.kinds.is_empty(),
            // Every arm is one kind.
            Shape::HistoryEvents(_) => true,
            _ => false,
        }
    }

    /// Whether a plan may read an index from one end without a bound: only
    /// "every incident, newest first", which stops at its limit.
    pub fn ordered_scan_allowed(&self) -> bool {
        matches!(self, Shape::Incidents(f) if f.post_ids.is_empty() && f.states.is_empty() && f.before_number.is_none())
    }
}

/// Every query shape the API uses, by name: each filter alone and
/// combined. Both backends' plan tests run this one list.
pub fn shapes() -> Vec<(&'static str, Shape)> {
    use std::time::Duration;
    let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let t1 = t0 + Duration::from_secs(3600);
    let key = ReceivedKey {
        received_ms: millis(t0) + 5,
        post_id: "p-2".into(),
        seq: 7,
    };
    let health = vec![EventKind::Health as i32];
    let two_kinds = vec![EventKind::Alarm as i32, EventKind::Camera as i32];
    let posts = vec!["p-1".to_owned(), "p-2".to_owned()];
    let received =
        |post_ids: Vec<String>, kinds: Vec<i32>, from: Option<SystemTime>, to| ReceivedFilter {
            post_ids,
            kinds,
            from,
            to,
        };
    let open = vec![
        IncidentState::Open as i32,
        IncidentState::Acknowledged as i32,
    ];
    vec![
        (
            "replay one post by seq",
            Shape::EventsBySeq(SeqFilter {
                post_id: "p-1".into(),
                kinds: vec![],
                from_seq: 10,
                to_seq: Some(900),
            }),
        ),
        (
            "replay one post by seq, one kind",
            Shape::EventsBySeq(SeqFilter {
                post_id: "p-1".into(),
                kinds: health.clone(),
                from_seq: 1,
                to_seq: None,
            }),
        ),
        (
            "replay one post by seq, two kinds",
            Shape::EventsBySeq(SeqFilter {
                post_id: "p-1".into(),
                kinds: two_kinds.clone(),
                from_seq: 1,
                to_seq: Some(50),
            }),
        ),
        (
            "replay all posts",
            Shape::EventsReceived(received(vec![], vec![], None, None), None),
        ),
        (
            "replay all posts, one kind",
            Shape::EventsReceived(received(vec![], health.clone(), None, None), None),
        ),
        (
            "replay all posts, one kind, time range, next page",
            Shape::EventsReceived(
                received(vec![], health, Some(t0), Some(t1)),
                Some(key.clone()),
            ),
        ),
        (
            "replay all posts, time range",
            Shape::EventsReceived(received(vec![], vec![], Some(t0), Some(t1)), None),
        ),
        (
            "replay several posts",
            Shape::EventsReceived(received(posts.clone(), vec![], None, None), None),
        ),
        (
            "replay several posts, two kinds, time range, next page",
            Shape::EventsReceived(
                received(posts.clone(), two_kinds, Some(t0), None),
                Some(key),
            ),
        ),
        (
            "incidents, every one",
            Shape::Incidents(IncidentFilter {
                limit: 51,
                ..Default::default()
            }),
        ),
        (
            "incidents, next page",
            Shape::Incidents(IncidentFilter {
                before_number: Some(1000),
                limit: 51,
                ..Default::default()
            }),
        ),
        (
            "incidents by state",
            Shape::Incidents(IncidentFilter {
                states: open.clone(),
                limit: 51,
                ..Default::default()
            }),
        ),
        (
            "incidents by post",
            Shape::Incidents(IncidentFilter {
                post_ids: posts.clone(),
                limit: 51,
                ..Default::default()
            }),
        ),
        (
            "incidents by post and state, next page",
            Shape::Incidents(IncidentFilter {
                states: open,
                post_ids: posts.clone(),
                before_number: Some(1000),
                limit: 51,
            }),
        ),
        (
            "history of a post: events",
            Shape::HistoryEvents(HistoryFilter {
                post_id: "p-1".into(),
                ..Default::default()
            }),
        ),
        (
            "history of a post: events, time range, next page",
            Shape::HistoryEvents(HistoryFilter {
                post_id: "p-1".into(),
                from: Some(t0),
                to: Some(t1),
                before: Some(TimeKey {
                    ms: millis(t0) + 60_000,
                    key: 40,
                }),
            }),
        ),
        (
            "history of a post: incidents",
            Shape::HistoryIncidents(HistoryFilter {
                post_id: "p-1".into(),
                ..Default::default()
            }),
        ),
        (
            "history of a post: incidents, time range, next page",
            Shape::HistoryIncidents(HistoryFilter {
                post_id: "p-1".into(),
                from: Some(t0),
                to: Some(t1),
                before: Some(TimeKey {
                    ms: millis(t0) + 60_000,
                    key: 40,
                }),
            }),
        ),
        (
            "report: incidents opened in a period",
            Shape::IncidentsOpened(
                OpenedFilter {
                    post_ids: vec![],
                    from: Some(t0),
                    to: Some(t1),
                },
                None,
            ),
        ),
        (
            "report: incidents opened in a period, next chunk",
            Shape::IncidentsOpened(
                OpenedFilter {
                    post_ids: vec![],
                    from: Some(t0),
                    to: Some(t1),
                },
                Some(TimeKey {
                    ms: millis(t0) + 5,
                    key: 9,
                }),
            ),
        ),
        (
            "report: incidents of several posts opened in a period, next chunk",
            Shape::IncidentsOpened(
                OpenedFilter {
                    post_ids: posts,
                    from: Some(t0),
                    to: Some(t1),
                },
                Some(TimeKey {
                    ms: millis(t0) + 5,
                    key: 9,
                }),
            ),
        ),
        (
            "one event",
            Shape::Fixed(EVENT_BY_KEY, vec![Param::Text("p-1".into()), Param::Int(3)]),
        ),
        (
            "events of an incident",
            Shape::Fixed(INCIDENT_EVENTS, vec![Param::Int(1)]),
        ),
        (
            "audit of an incident",
            Shape::Fixed(AUDIT_OF_INCIDENT, vec![Param::Int(1)]),
        ),
        (
            "audit of a post",
            Shape::Fixed(AUDIT_OF_POST, vec![Param::Text("p-1".into())]),
        ),
        (
            "notes of an incident",
            Shape::Fixed(NOTES_OF_INCIDENT, vec![Param::Int(1)]),
        ),
        (
            "feed catch-up",
            Shape::Fixed(AUDIT_AFTER, vec![Param::Int(10), Param::Int(500)]),
        ),
        (
            "post: events above its watermark",
            Shape::Fixed(
                POST_EVENTS_ABOVE,
                vec![Param::Text("p-1".into()), Param::Int(10)],
            ),
        ),
        (
            "post: open incidents",
            Shape::Fixed(POST_OPEN_INCIDENTS, vec![Param::Text("p-1".into())]),
        ),
        (
            "posts: open incidents of each",
            Shape::Fixed(OPEN_INCIDENTS_BY_POST, vec![]),
        ),
        (
            "retention: events of a kind older than a time",
            Shape::Fixed(
                super::retention::CANDIDATES,
                vec![
                    Param::Int(EventKind::Camera as i64),
                    Param::Int(millis(t1)),
                    Param::Int(millis(t0)),
                    Param::Text("p-1".into()),
                    Param::Int(3),
                    Param::Int(1000),
                ],
            ),
        ),
        (
            "notifications: due for one webhook",
            Shape::Fixed(
                super::notify::DUE,
                vec![
                    Param::Int(0),
                    Param::Text("pager".into()),
                    Param::Int(millis(t1)),
                    Param::Int(64),
                ],
            ),
        ),
        (
            "notifications: by state, next page",
            Shape::Fixed(
                super::notify::BY_STATE,
                vec![Param::Int(2), Param::Int(1000), Param::Int(51)],
            ),
        ),
        (
            "notifications: one",
            Shape::Fixed(super::notify::ONE, vec![Param::Int(7)]),
        ),
        (
            "notifications: how many in a state",
            Shape::Fixed(super::notify::COUNT, vec![Param::Int(0)]),
        ),
        (
            "notifications: delivered before a time",
            Shape::Fixed(
                super::notify::PRUNABLE,
                vec![Param::Int(1), Param::Int(millis(t0)), Param::Int(1000)],
            ),
        ),
        (
            "retention: incidents resolved before a time",
            Shape::Fixed(
                super::retention::RESOLVED_BEFORE,
                vec![Param::Int(millis(t1)), Param::Int(0), Param::Int(1000)],
            ),
        ),
    ]
}
