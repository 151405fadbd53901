//! `Replay`: stored events by post, kind, time range and seq range, paced.
//!
//! A single post is read in seq order (within the seq range); anything else in
//! received order across posts (`received_at`, then post, then seq). Pages
//! are read from the store as the client consumes them: the stream is fed
//! by a bounded channel, so a slow reader holds one page in memory, not
//! the whole range.

use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use vigil_proto::v1::{EventKind, Pacing, ReplayItem, ReplayRequest, StoredEvent, event::Body};

use super::feed::Reader;
use crate::store::{ReceivedFilter, ReceivedKey, SeqFilter, StoreError};

/// Items queued towards one client; when full, reading the store waits.
pub const CLIENT_CAPACITY: usize = 256;
/// Events read per store query.
const PAGE: usize = 500;
/// Longest pause between two events, whatever the pacing: a replay of a
/// quiet night should not sit silent for hours.
pub const MAX_GAP: Duration = Duration::from_secs(60);

/// Slowest speed-up accepted with `PACING_SPEEDUP` (a hundredth of the
/// original pace)...
pub const MIN_SPEED: f64 = 0.01;
/// ...and the fastest (beyond it, ask for `PACING_FAST`).
pub const MAX_SPEED: f64 = 1e6;

/// A validated replay request.
#[derive(Debug)]
pub(crate) struct Plan {
    req: ReplayRequest,
    kinds: Vec<EventKind>,
}

impl Plan {
    pub(crate) fn new(req: ReplayRequest) -> Result<Self, Status> {
        super::posts_within_cap(&req.post_ids, "replay")?;
        if (req.from_seq != 0 || req.to_seq != 0) && req.post_ids.len() != 1 {
            return Err(Status::invalid_argument(
                "a seq range needs exactly one post in post_ids",
            ));
        }
        if req.to_seq != 0 && req.from_seq > req.to_seq {
            return Err(Status::invalid_argument("from_seq is after to_seq"));
        }
        let pacing = Pacing::try_from(req.pacing)
            .map_err(|_| Status::invalid_argument("pacing: unknown value"))?;
        if pacing == Pacing::Speedup && !(MIN_SPEED..=MAX_SPEED).contains(&req.speed) {
            return Err(Status::invalid_argument(format!(
                "speed must be between {MIN_SPEED} and {MAX_SPEED} with PACING_SPEEDUP"
            )));
        }
        let mut kinds = Vec::new();
        for k in &req.kinds {
            match EventKind::try_from(*k) {
                Ok(EventKind::Unspecified) | Err(_) => {
                    return Err(Status::invalid_argument("kinds: unknown event kind"));
                }
                Ok(kind) => kinds.push(kind),
            }
        }
        if let (Some(from), Some(to)) = (&req.from_time, &req.to_time)
            && (from.seconds, from.nanos) > (to.seconds, to.nanos)
        {
            return Err(Status::invalid_argument("from_time is after to_time"));
        }
        Ok(Self { req, kinds })
    }

    fn wanted(&self, event: &StoredEvent) -> bool {
        let received = event
            .event
            .as_ref()
            .and_then(|e| e.received_at)
            .map(|t| (t.seconds, t.nanos));
        let from = self.req.from_time.map(|t| (t.seconds, t.nanos));
        let to = self.req.to_time.map(|t| (t.seconds, t.nanos));
        // The received-order query filters time in the store; this check
        // serves single-post replays (seq order) and agrees with it.
        if from.is_some_and(|f| received.is_none_or(|r| r < f))
            || to.is_some_and(|t| received.is_none_or(|r| r >= t))
        {
            return false;
        }
        if self.kinds.is_empty() {
            return true;
        }
        let kind = match event.event.as_ref().and_then(|e| e.body.as_ref()) {
            Some(Body::Alarm(_)) => EventKind::Alarm,
            Some(Body::Camera(_)) => EventKind::Camera,
            Some(Body::Health(_)) => EventKind::Health,
            None => EventKind::Unspecified,
        };
        self.kinds.contains(&kind)
    }

    /// How long to wait between an event received at `prev` and one at
    /// `next`.
    fn gap(&self, prev: Option<SystemTime>, next: Option<SystemTime>) -> Duration {
        let (Some(prev), Some(next)) = (prev, next) else {
            return Duration::ZERO;
        };
        let gap = next.duration_since(prev).unwrap_or_default();
        let gap = match Pacing::try_from(self.req.pacing) {
            Ok(Pacing::Original) => gap,
            // Never panics: an out-of-range result means "longer than the
            // cap" (speed is validated, this is a second line of defence).
            Ok(Pacing::Speedup) => {
                Duration::try_from_secs_f64(gap.as_secs_f64() / self.req.speed).unwrap_or(MAX_GAP)
            }
            _ => Duration::ZERO,
        };
        gap.min(MAX_GAP)
    }

    /// Streams the events into `out` until done, the client leaves, or
    /// `shutdown`.
    pub(crate) async fn run(
        self,
        reader: Reader,
        out: mpsc::Sender<Result<ReplayItem, Status>>,
        shutdown: CancellationToken,
    ) {
        let limit = match self.req.limit {
            0 => u64::MAX,
            n => n,
        };
        let mut sent = 0u64;
        let mut prev: Option<SystemTime> = None;
        let mut cursor = Cursor::Start;
        while sent < limit {
            let page = match self.page(&reader, &cursor).await {
                Ok(page) => page,
                Err(e) => {
                    let _ = out.send(Err(super::store_status(&e))).await;
                    return;
                }
            };
            let Some((next, events)) = page else { return };
            cursor = next;
            for event in events.into_iter().filter(|e| self.wanted(e)) {
                let at = event
                    .event
                    .as_ref()
                    .and_then(|e| e.received_at)
                    .and_then(|t| SystemTime::try_from(t).ok());
                let wait = self.gap(prev, at);
                prev = at.or(prev);
                if !wait.is_zero() {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = out.closed() => return,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    r = out.send(Ok(ReplayItem { event: Some(event) })) => if r.is_err() { return },
                }
                sent += 1;
                if sent >= limit {
                    return;
                }
            }
        }
    }

    /// The next page after `cursor`; `None` when there is no more.
    async fn page(
        &self,
        reader: &Reader,
        cursor: &Cursor,
    ) -> Result<Option<(Cursor, Vec<StoredEvent>)>, StoreError> {
        let r = reader.clone();
        if self.req.post_ids.len() == 1 {
            let post = self.req.post_ids[0].clone();
            let from = match cursor {
                Cursor::Start => self.req.from_seq.max(1),
                Cursor::Seq(next) => *next,
                Cursor::Received(_) => unreachable!("seq replays use seq cursors"),
            };
            let to = match self.req.to_seq {
                0 => u64::MAX,
                n => n,
            };
            if from > to {
                return Ok(None);
            }
            let filter = SeqFilter {
                post_id: post,
                kinds: self.kinds.iter().map(|k| *k as i32).collect(),
                from_seq: from,
                to_seq: Some(to),
            };
            let events = r.read(move |s| s.events_by_seq(&filter, PAGE)).await?;
            let Some(last) = events.last().and_then(|e| e.event.as_ref()).map(|e| e.seq) else {
                return Ok(None);
            };
            return Ok(Some((Cursor::Seq(last.saturating_add(1)), events)));
        }
        let filter = ReceivedFilter {
            post_ids: self.req.post_ids.clone(),
            kinds: self.kinds.iter().map(|k| *k as i32).collect(),
            from: self
                .req
                .from_time
                .and_then(|t| SystemTime::try_from(t).ok()),
            to: self.req.to_time.and_then(|t| SystemTime::try_from(t).ok()),
        };
        let after = match cursor {
            Cursor::Received(k) => Some(k.clone()),
            _ => None,
        };
        let rows = r
            .read(move |s| s.events_received(&filter, after.as_ref(), PAGE))
            .await?;
        let Some(last) = rows.last().map(|(k, _)| k.clone()) else {
            return Ok(None);
        };
        Ok(Some((
            Cursor::Received(last),
            rows.into_iter().map(|(_, e)| e).collect(),
        )))
    }
}

#[derive(Debug)]
enum Cursor {
    Start,
    Seq(u64),
    Received(ReceivedKey),
}
