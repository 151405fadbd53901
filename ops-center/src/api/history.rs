//! One post's history (`GetPostHistory`): its incidents and its events in
//! a time range, newest first, one merged page at a time.
//!
//! The two come from two index ranges read backwards (see
//! `store::shapes::history_events` and `history_incidents`), each from its
//! own position. A page reads at most `page_size + 1` rows of each, merges
//! them by time (an incident at the same millisecond as an event comes
//! first) and keeps the first `page_size`; the token holds where each of the
//! two got to, so nothing is missed or repeated whatever the other does.
//! A category filter is applied to the rows read, so a page may hold fewer
//! items than asked while more follow.

use std::time::SystemTime;

use tonic::Status;
use vigil_proto::v1::{GetPostHistoryResponse, HistoryItem};

use crate::store::{HistoryFilter, Store, StoreError, TimeKey, sqlite::from_millis};

/// Where one of the two sources got to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cursor {
    /// Nothing read yet: from the newest.
    Start,
    /// Strictly before this.
    Before(TimeKey),
    /// Nothing left.
    Done,
}

/// Where a page starts: events, then incidents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    events: Cursor,
    incidents: Cursor,
}

const PREFIX: &str = "h1";

impl Token {
    const START: Token = Token {
        events: Cursor::Start,
        incidents: Cursor::Start,
    };

    /// Parses a page token; empty is the first page.
    pub fn parse(s: &str) -> Result<Token, Status> {
        if s.is_empty() {
            return Ok(Self::START);
        }
        let bad = || Status::invalid_argument("page_token: not one this server handed out");
        let mut parts = s.split('.');
        if parts.next() != Some(PREFIX) {
            return Err(bad());
        }
        let mut cursor = || -> Result<Cursor, Status> {
            match parts.next().ok_or_else(bad)? {
                "s" => Ok(Cursor::Start),
                "d" => Ok(Cursor::Done),
                c => {
                    let (ms, key) = c.split_once('_').ok_or_else(bad)?;
                    Ok(Cursor::Before(TimeKey {
                        ms: ms.parse().map_err(|_| bad())?,
                        key: key.parse().map_err(|_| bad())?,
                    }))
                }
            }
        };
        let token = Token {
            events: cursor()?,
            incidents: cursor()?,
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(token)
    }

    fn render(&self) -> String {
        let c = |c: Cursor| match c {
            Cursor::Start => "s".to_owned(),
            Cursor::Done => "d".to_owned(),
            Cursor::Before(k) => format!("{}_{}", k.ms, k.key),
        };
        format!("{PREFIX}.{}.{}", c(self.events), c(self.incidents))
    }
}

/// What to read.
#[derive(Debug, Clone)]
pub struct Query {
    pub post_id: String,
    pub from: Option<SystemTime>,
    pub to: Option<SystemTime>,
    /// `EventCategory` values; empty = all.
    pub categories: Vec<i32>,
    pub page_size: usize,
    pub token: Token,
}

enum Row {
    Event(TimeKey, vigil_proto::v1::StoredEvent),
    Incident(TimeKey, vigil_proto::v1::Incident),
}

impl Row {
    /// Merge order, largest first: time, then incidents before events,
    /// then key.
    fn order(&self) -> (i64, u8, u64) {
        match self {
            Row::Incident(k, _) => (k.ms, 1, k.key),
            Row::Event(k, _) => (k.ms, 0, k.key),
        }
    }
}

/// One page of a post's history.
pub fn page(store: &dyn Store, q: &Query) -> Result<GetPostHistoryResponse, StoreError> {
    let n = q.page_size;
    let filter = |c: Cursor| HistoryFilter {
        post_id: q.post_id.clone(),
        from: q.from,
        to: q.to,
        before: match c {
            Cursor::Before(k) => Some(k),
            _ => None,
        },
    };
    let mut rows = Vec::new();
    let (mut read_events, mut read_incidents) = (0, 0);
    if q.token.events != Cursor::Done {
        for (k, e) in store.history_events(&filter(q.token.events), n + 1)? {
            rows.push(Row::Event(k, e));
            read_events += 1;
        }
    }
    if q.token.incidents != Cursor::Done {
        for (k, i) in store.history_incidents(&filter(q.token.incidents), n + 1)? {
            rows.push(Row::Incident(k, i));
            read_incidents += 1;
        }
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.order()));
    let more = rows.len() > n;
    rows.truncate(n);
    let mut next = q.token;
    let (mut took_events, mut took_incidents) = (0, 0);
    let mut items = Vec::new();
    for row in rows {
        let (at, category, item) = match row {
            Row::Event(k, e) => {
                next.events = Cursor::Before(k);
                took_events += 1;
                let category = e.event.as_ref().map_or(0, |e| e.category);
                (
                    k.ms,
                    category,
                    HistoryItem {
                        event: Some(e),
                        ..Default::default()
                    },
                )
            }
            Row::Incident(k, i) => {
                next.incidents = Cursor::Before(k);
                took_incidents += 1;
                (
                    k.ms,
                    i.category,
                    HistoryItem {
                        incident: Some(i),
                        ..Default::default()
                    },
                )
            }
        };
        if q.categories.is_empty() || q.categories.contains(&category) {
            items.push(HistoryItem {
                at: Some(from_millis(at).into()),
                ..item
            });
        }
    }
    // A source that gave all it had, and all of it made the page, is done.
    if read_events <= n && took_events == read_events {
        next.events = Cursor::Done;
    }
    if read_incidents <= n && took_incidents == read_incidents {
        next.incidents = Cursor::Done;
    }
    let next_page_token = if more { next.render() } else { String::new() };
    Ok(GetPostHistoryResponse {
        items,
        next_page_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_refuse_what_was_not_handed_out() {
        let t = Token {
            events: Cursor::Before(TimeKey { ms: -5, key: 7 }),
            incidents: Cursor::Done,
        };
        assert_eq!(Token::parse(&t.render()).unwrap(), t);
        assert_eq!(Token::parse("").unwrap(), Token::START);
        for bad in [
            "x",
            "h1",
            "h1.s",
            "h1.s.s.s",
            "h2.s.s",
            "h1.1.s",
            "h1.a_1.s",
            "h1.1_-1.d",
        ] {
            assert!(Token::parse(bad).is_err(), "{bad}");
        }
    }
}
