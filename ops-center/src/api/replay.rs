//! `Replay`: stored events by post, kind, time range and seq range, paced.
//!
//! A single post is read in seq order (within the seq range); anything else in
//! received order across posts (`received_at`, then post, then seq). Pages
//! are read from the store as the client consumes them: the stream is fed
//! by a bounded channel, so a slow reader holds one page in memory, not
//! the whole range.
//!
//! Every filter but one is an index range in the store (`store::shapes`),
//! so what is read is what is sent. The exception is a time range on a
//! single post's seq-order replay, checked here event by event. So that
//! long work never goes silent, a replay that has sent nothing for
//! [`PROGRESS_EVERY`] (reading, or waiting out an original-pace gap) sends
//! a `ReplayProgress` instead; and so that one request cannot read the
//! store for ever, it reads at most [`Limits::max_scan_rows`] stored events
//! (`[api] replay_max_scan_rows`), then ends with RESOURCE_EXHAUSTED.

use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use vigil_proto::v1::{
    EventKind, Pacing, ReplayItem, ReplayProgress, ReplayRequest, StoredEvent, event::Body,
};

use super::feed::Reader;
use crate::store::{ReceivedFilter, ReceivedKey, SeqFilter, StoreError};

/// Items queued towards one client; when full, reading the store waits.
pub const CLIENT_CAPACITY: usize = 256;
/// Events read per store query.
const PAGE: usize = 500;

/// Longest silence of a replay that is still working: a progress item is
/// sent when nothing else was for this long.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// Stored events one replay may read unless `[api] replay_max_scan_rows`
/// says otherwise: a few minutes of reading on a small machine.
pub const DEFAULT_MAX_SCAN_ROWS: u64 = 5_000_000;
/// The smallest bound accepted: one page.
pub const MIN_MAX_SCAN_ROWS: u64 = PAGE as u64;

/// What bounds one replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Stored events read, sent or not, before the replay is refused.
    pub max_scan_rows: u64,
    /// Longest silence before a progress item (tests shorten it).
    pub progress_every: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_scan_rows: DEFAULT_MAX_SCAN_ROWS,
            progress_every: PROGRESS_EVERY,
        }
    }
}
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
    /// `shutdown`, within `limits`.
    pub(crate) async fn run(
        self,
        reader: Reader,
        limits: Limits,
        out: mpsc::Sender<Result<ReplayItem, Status>>,
        shutdown: CancellationToken,
    ) {
        let limit = match self.req.limit {
            0 => u64::MAX,
            n => n,
        };
        let mut progress = Progress {
            sent: 0,
            examined: 0,
            last_item: Instant::now(),
            every: limits.progress_every,
            position: None,
            position_seq: 0,
            seq_order: self.req.post_ids.len() == 1,
        };
        let mut prev: Option<SystemTime> = None;
        let mut cursor = Cursor::Start;
        while progress.sent < limit {
            // Read at most what the bound leaves, and one more to tell
            // whether the bound is what stops the replay.
            let room = limits.max_scan_rows.saturating_sub(progress.examined);
            let want = usize::try_from(room.saturating_add(1))
                .unwrap_or(PAGE)
                .min(PAGE);
            let page = match self.page(&reader, &cursor, want).await {
                Ok(page) => page,
                Err(e) => {
                    let _ = out.send(Err(super::store_status(&e))).await;
                    return;
                }
            };
            let Some((next, mut events)) = page else {
                return;
            };
            cursor = next;
            let over = events.len() as u64 > room;
            events.truncate(usize::try_from(room).unwrap_or(usize::MAX));
            for event in events {
                progress.examined += 1;
                progress.read(&event);
                if !self.wanted(&event) {
                    continue;
                }
                let at = event
                    .event
                    .as_ref()
                    .and_then(|e| e.received_at)
                    .and_then(|t| SystemTime::try_from(t).ok());
                let wait = self.gap(prev, at);
                prev = at.or(prev);
                if !wait.is_zero() && !progress.wait(wait, &out, &shutdown).await {
                    return;
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    r = out.send(Ok(ReplayItem { event: Some(event), progress: None })) => {
                        if r.is_err() { return }
                    }
                }
                progress.sent += 1;
                progress.last_item = Instant::now();
                if progress.sent >= limit {
                    return;
                }
            }
            if over {
                let _ = out
                    .send(Err(Status::resource_exhausted(format!(
                        "replay stopped after reading {} stored events ({} sent), this server's \
                         bound per request ([api] replay_max_scan_rows); narrow it with a time \
                         range, a seq range, posts or kinds, or resume after the last event \
                         received",
                        progress.examined, progress.sent
                    ))))
                    .await;
                return;
            }
            if progress.due() && !progress.send(&out, &shutdown).await {
                return;
            }
        }
    }

    /// The next page after `cursor`; `None` when there is no more.
    async fn page(
        &self,
        reader: &Reader,
        cursor: &Cursor,
        size: usize,
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
            let events = r.read(move |s| s.events_by_seq(&filter, size)).await?;
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
            .read(move |s| s.events_received(&filter, after.as_ref(), size))
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

/// How far one replay has got, and when it last told the client.
#[derive(Debug)]
struct Progress {
    sent: u64,
    examined: u64,
    last_item: Instant,
    every: Duration,
    position: Option<prost_types::Timestamp>,
    position_seq: u64,
    /// A single post's replay, read in seq order: its position has a seq.
    seq_order: bool,
}

impl Progress {
    /// Notes an event read from the store.
    fn read(&mut self, event: &StoredEvent) {
        if let Some(e) = &event.event {
            self.position = e.received_at.or(self.position);
            if self.seq_order {
                self.position_seq = e.seq;
            }
        }
    }

    fn due(&self) -> bool {
        self.last_item.elapsed() >= self.every
    }

    /// Sends a progress item; false when the client left or on shutdown.
    async fn send(
        &mut self,
        out: &mpsc::Sender<Result<ReplayItem, Status>>,
        shutdown: &CancellationToken,
    ) -> bool {
        let item = ReplayItem {
            event: None,
            progress: Some(ReplayProgress {
                examined: self.examined,
                sent: self.sent,
                position: self.position,
                position_seq: self.position_seq,
            }),
        };
        self.last_item = Instant::now();
        tokio::select! {
            () = shutdown.cancelled() => false,
            r = out.send(Ok(item)) => r.is_ok(),
        }
    }

    /// Waits out a pacing gap, with a progress item whenever the silence
    /// would grow past `every`; false when the client left or on shutdown.
    async fn wait(
        &mut self,
        gap: Duration,
        out: &mpsc::Sender<Result<ReplayItem, Status>>,
        shutdown: &CancellationToken,
    ) -> bool {
        let until = tokio::time::Instant::now() + gap;
        // Never a busy loop, whatever `every` is.
        let step = self.every.max(Duration::from_millis(100));
        loop {
            let now = tokio::time::Instant::now();
            if now >= until {
                return true;
            }
            let next = until.min(now + step);
            tokio::select! {
                () = shutdown.cancelled() => return false,
                () = out.closed() => return false,
                () = tokio::time::sleep_until(next) => {}
            }
            if next < until && self.due() && !self.send(out, shutdown).await {
                return false;
            }
        }
    }
}
