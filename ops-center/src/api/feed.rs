//! The live incident feed behind `WatchIncidents`.
//!
//! The cursor is the position of an audit entry. Every change to an incident
//! is audited in the same transaction that writes it, so "every audit entry
//! after position N" is exactly "every change a client that saw N has not
//! seen": resuming reads the audit trail from the store, and nothing is
//! missed or repeated. Each item carries the incident as it is now.
//!
//! The writer publishes each commit's changes, with their positions, on a
//! bounded [`broadcast`] channel right after the commit ([`FeedPublisher`]);
//! the store serves only catch-up (a resumed cursor, a snapshot).
//! Publishing never waits, so a slow client cannot slow ingest: a watcher
//! that falls more than [`BROADCAST_CAPACITY`] items behind is told to
//! resync (and its cursor still works). When the publisher goes away (the
//! writer stopped) every watcher ends with UNAVAILABLE, so clients
//! reconnect rather than hear heartbeats over a feed that no longer moves.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use vigil_proto::v1::{
    FeedItem, Heartbeat, Incident, IncidentState, IncidentUpdate, Resync, SnapshotComplete,
    feed_item::Item,
};

use crate::store::{self, IncidentFilter, Readers, Store, StoreError};

/// Feed items held for watchers. A watcher more than this many behind gets
/// a `Resync` item and its stream ends; the hub never waits for anyone.
pub const BROADCAST_CAPACITY: usize = 1024;
/// Items queued towards one client. When full, that client's task waits
/// (and, if it stays full, lags behind the broadcast and is resynced).
pub const CLIENT_CAPACITY: usize = 64;
/// Audit entries read per store query.
const PAGE: usize = 512;
/// A replica following the leader's commits reads the audit trail at least
/// this often, announcement or not.
pub const FOLLOW_EVERY: Duration = Duration::from_secs(1);
/// A quiet feed sends a heartbeat this often.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(15);
/// Largest snapshot sent (open and acknowledged incidents).
const MAX_SNAPSHOT: usize = 100_000;

/// One change: the incident after it, and the audit position that made it.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub position: u64,
    pub incident: Incident,
    pub cause: i32,
}

/// The feed's channel, shared by the writer (through a [`FeedPublisher`])
/// and the watchers.
#[derive(Debug, Clone)]
pub struct Feed {
    tx: broadcast::Sender<Arc<Change>>,
    stopped: CancellationToken,
    /// The last audit position published.
    last: Arc<AtomicU64>,
}

/// The publishing end of the feed: the writer's, and a replica's
/// [`FeedPublisher::follow`]. Clones share one end; when the last clone is
/// dropped the feed stops.
#[derive(Debug, Clone)]
pub struct FeedPublisher {
    inner: Arc<PublisherEnd>,
}

#[derive(Debug)]
struct PublisherEnd {
    feed: Feed,
    /// Whether the last position means anything yet: set by the first
    /// publication, or by a follower's first read of where the store ends.
    /// (Zero cannot say it: an empty store ends at zero too, and its first
    /// change must still be published.)
    started: std::sync::atomic::AtomicBool,
}

impl Drop for PublisherEnd {
    fn drop(&mut self) {
        self.feed.stopped.cancel();
    }
}

impl FeedPublisher {
    /// Publishes the changes of one commit, given the positions the store
    /// gave its audit entries.
    pub fn publish(&self, changes: &store::Changes, positions: &[u64]) {
        for change in commit_changes(changes, positions) {
            self.send(change);
        }
        if let Some(&last) = positions.iter().max() {
            self.inner.feed.last.fetch_max(last, Ordering::Relaxed);
        }
        self.inner.started.store(true, Ordering::Release);
    }

    fn send(&self, change: Change) {
        self.inner
            .feed
            .last
            .fetch_max(change.position, Ordering::Relaxed);
        self.inner.started.store(true, Ordering::Release);
        // No receivers is fine: nobody is watching.
        let _ = self.inner.feed.tx.send(Arc::new(change));
    }

    /// The last audit position published.
    pub fn last_position(&self) -> u64 {
        self.inner.feed.last.load(Ordering::Relaxed)
    }

    /// Publishes what others commit: reads the audit trail after the last
    /// position published, whenever `wake` is notified (a replica hears the
    /// leader's announcements) and at least every [`FOLLOW_EVERY`], until
    /// `stop`. Returns after one last read once stopped, so that whoever
    /// publishes next starts where this left off.
    pub async fn follow(
        &self,
        readers: Reader,
        wake: Arc<tokio::sync::Notify>,
        stop: CancellationToken,
    ) {
        loop {
            if let Err(e) = self.catch_up(&readers).await {
                tracing::warn!(error = %e, "feed: reading the audit trail failed; trying again");
            }
            if stop.is_cancelled() {
                return;
            }
            tokio::select! {
                () = stop.cancelled() => {}
                () = wake.notified() => {}
                () = tokio::time::sleep(FOLLOW_EVERY) => {}
            }
        }
    }

    /// Publishes every change after the last position published.
    pub async fn catch_up(&self, readers: &Reader) -> Result<(), StoreError> {
        if !self.inner.started.load(Ordering::Acquire) {
            // Nothing published yet: watchers read what came before from
            // the store; start from its end.
            let end = readers.read(|s| s.last_audit_position()).await?;
            self.inner.feed.last.fetch_max(end, Ordering::Relaxed);
            self.inner.started.store(true, Ordering::Release);
        }
        loop {
            let after = self.last_position();
            let changes = readers.read(move |s| changes_after(s, after)).await?;
            let Some(last) = changes.last_position else {
                return Ok(());
            };
            for change in changes.items {
                self.send(change);
            }
            self.inner.feed.last.fetch_max(last, Ordering::Relaxed);
        }
    }
}

pub(crate) type Reader = Arc<Readers>;

impl Feed {
    pub fn new() -> Self {
        Self {
            tx: broadcast::channel(BROADCAST_CAPACITY).0,
            stopped: CancellationToken::new(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The publishing end. Call once per feed and clone the result: when
    /// the last clone is dropped, watchers end.
    pub fn publisher(&self) -> FeedPublisher {
        FeedPublisher {
            inner: Arc::new(PublisherEnd {
                feed: self.clone(),
                started: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Whether the publisher went away.
    pub fn is_stopped(&self) -> bool {
        self.stopped.is_cancelled()
    }

    /// Serves one `WatchIncidents` call into `out` until the client leaves,
    /// falls behind, or `shutdown`.
    pub(crate) async fn watch(
        &self,
        reader: Reader,
        cursor: Option<u64>,
        posts: Vec<String>,
        include_logged: bool,
        out: mpsc::Sender<Result<FeedItem, Status>>,
        shutdown: CancellationToken,
    ) {
        // Subscribe before reading the store: whatever commits after the
        // read is then certain to arrive on the channel.
        let mut rx = self.tx.subscribe();
        // Incidents logged in emergency mode are not part of the live queue
        // unless asked for.
        let wanted = |inc: &Incident| {
            (posts.is_empty() || posts.contains(&inc.post_id)) && (include_logged || !inc.logged)
        };
        let mut position = match cursor {
            None => {
                // Position first, incidents second: a change in between is
                // then sent twice (harmless) rather than missed.
                let p = posts.clone();
                let snapshot = reader
                    .read(move |store| {
                        let position = store.last_audit_position()?;
                        let incidents = store.incidents(&IncidentFilter {
                            states: vec![
                                IncidentState::Open as i32,
                                IncidentState::Acknowledged as i32,
                            ],
                            post_ids: p,
                            before_number: None,
                            limit: MAX_SNAPSHOT,
                        })?;
                        Ok((position, incidents))
                    })
                    .await;
                let Ok((position, mut incidents)) = snapshot.inspect_err(|e| {
                    tracing::error!(error = %e, "feed snapshot failed");
                }) else {
                    let _ = out.send(Err(unavailable())).await;
                    return;
                };
                incidents.reverse(); // oldest first
                for incident in incidents.into_iter().filter(|i| wanted(i)) {
                    let item = update(position, incident, 0, true);
                    if out.send(Ok(item)).await.is_err() {
                        return;
                    }
                }
                let done = FeedItem {
                    cursor: position.to_string(),
                    item: Some(Item::SnapshotComplete(SnapshotComplete {})),
                };
                if out.send(Ok(done)).await.is_err() {
                    return;
                }
                position
            }
            Some(mut position) => loop {
                let after = position;
                let changes = match reader.read(move |store| changes_after(store, after)).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(error = %e, "feed catch-up failed");
                        let _ = out.send(Err(unavailable())).await;
                        return;
                    }
                };
                let Some(last) = changes.last_position else {
                    break position;
                };
                for change in changes.items.into_iter().filter(|c| wanted(&c.incident)) {
                    let item = update(change.position, change.incident, change.cause, false);
                    if out.send(Ok(item)).await.is_err() {
                        return;
                    }
                }
                position = last;
            },
        };

        let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
        heartbeat.reset();
        loop {
            let item = tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                () = out.closed() => return,
                r = rx.recv() => match r {

                    Ok(change) => {
                        if change.position <= position {
                            continue;
                        }
                        position = change.position;
                        if !wanted(&change.incident) {
                            continue;
                        }
                        heartbeat.reset();
                        update(change.position, change.incident.clone(), change.cause, false)
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::info!(missed = n, "feed client too slow: resync");
                        let item = FeedItem {
                            cursor: position.to_string(),
                            item: Some(Item::Resync(Resync {
                                reason: format!("too slow: {n} changes behind; reload, or resume from the cursor"),
                            })),
                        };
                        let _ = out.send(Ok(item)).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        let _ = out.send(Err(unavailable())).await;
                        return;
                    }
                },
                () = self.stopped.cancelled() => {
                    let _ = out.send(Err(unavailable())).await;
                    return;
                }
                _ = heartbeat.tick() => FeedItem {
                    cursor: position.to_string(),
                    item: Some(Item::Heartbeat(Heartbeat { at: Some(SystemTime::now().into()) })),
                },
            };
            if out.send(Ok(item)).await.is_err() {
                return;
            }
        }
    }
}

impl Default for Feed {
    fn default() -> Self {
        Self::new()
    }
}

fn update(position: u64, incident: Incident, cause: i32, snapshot: bool) -> FeedItem {
    FeedItem {
        cursor: position.to_string(),
        item: Some(Item::Update(IncidentUpdate {
            incident: Some(incident),
            cause,
            snapshot,
        })),
    }
}

/// Changes read from the audit trail.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    pub(crate) items: Vec<Change>,
    /// Position of the last audit entry read (`None`: nothing new).
    pub(crate) last_position: Option<u64>,
}

/// One page of changes after `after`. Consecutive entries of one incident
/// fold into one item (it carries the incident's current state anyway);
/// entries of different incidents never fold, so every item's position is a
/// cursor that misses nothing. Post-level entries (test mode) move the
/// position without an item.
pub(crate) fn changes_after(store: &dyn Store, after: u64) -> Result<Changes, StoreError> {
    let entries = store.audit_after(after, PAGE)?;
    let mut out = Changes {
        items: Vec::new(),
        last_position: entries.last().map(|(p, _)| *p),
    };
    let mut runs: Vec<(u64, String, i32)> = Vec::new();
    for (position, entry) in entries {
        if entry.incident_id.is_empty() {
            continue;
        }
        match runs.last_mut() {
            Some(run) if run.1 == entry.incident_id => {
                run.0 = position;
                run.2 = entry.action;
            }
            _ => runs.push((position, entry.incident_id, entry.action)),
        }
    }
    for (position, id, cause) in runs {
        if let Some(incident) = store.incident(&id)? {
            out.items.push(Change {
                position,
                incident,
                cause,
            });
        }
    }
    Ok(out)
}

/// What a watcher gets when the feed cannot go on: reconnect and resume.
fn unavailable() -> Status {
    Status::unavailable("the incident feed stopped; reconnect and resume from the last cursor")
}

/// The feed items of one commit: its audit entries with their positions,
/// consecutive entries of one incident folded as [`changes_after`] folds
/// them, each with the incident's state after the commit.
fn commit_changes(changes: &store::Changes, positions: &[u64]) -> Vec<Change> {
    let mut out: Vec<Change> = Vec::new();
    for (entry, &position) in changes.audit.iter().zip(positions) {
        if entry.incident_id.is_empty() {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.incident.id == entry.incident_id => {
                last.position = position;
                last.cause = entry.action;
            }
            _ => {
                if let Some(incident) = changes.incident(&entry.incident_id) {
                    out.push(Change {
                        position,
                        incident: incident.clone(),
                        cause: entry.action,
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Readers, SqliteBackend, StoreWriter};
    use tonic::Code;
    use vigil_proto::v1::{AuditAction, AuditEntry};

    fn opened(n: u64) -> (Incident, AuditEntry) {
        let inc = Incident {
            id: store::incident_id(n),
            post_id: "p-1".into(),
            state: IncidentState::Open as i32,
            version: 1,
            ..Default::default()
        };
        let entry = AuditEntry {
            incident_id: inc.id.clone(),
            post_id: "p-1".into(),
            action: AuditAction::Opened as i32,
            to_version: 1,
            ..Default::default()
        };
        (inc, entry)
    }

    fn commit(w: &mut dyn StoreWriter, pub_: &FeedPublisher, n: u64) {
        let (inc, entry) = opened(n);
        let mut c = store::Changes::default();
        c.put_incident(inc, None);
        c.audit.push(entry);
        let mut tx = w.begin().unwrap();
        let positions = tx.apply(&c).unwrap();
        tx.commit().unwrap();
        pub_.publish(&c, &positions);
    }

    async fn next(rx: &mut mpsc::Receiver<Result<FeedItem, Status>>) -> Result<FeedItem, Status> {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an item within 10 s")
            .expect("stream open")
    }

    /// What the writer publishes reaches a watcher with the audit position
    /// as its cursor; when the publisher goes away the watcher ends with
    /// UNAVAILABLE instead of heartbeats for ever.
    #[tokio::test]
    async fn published_changes_arrive_and_a_stopped_feed_ends_watchers_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Arc::new(SqliteBackend::open(dir.path()).unwrap());
        let readers = Readers::new(backend.clone(), 2);
        let mut writer = crate::store::Backend::writer(&*backend).unwrap();
        let feed = Feed::new();
        let publisher = feed.publisher();
        commit(&mut *writer, &publisher, 1);

        let (tx, mut rx) = mpsc::channel(16);
        let shutdown = CancellationToken::new();
        let watcher = tokio::spawn({
            let (feed, readers, shutdown) = (feed.clone(), readers.clone(), shutdown.clone());
            async move {
                feed.watch(readers, None, Vec::new(), false, tx, shutdown)
                    .await
            }
        });
        // The snapshot: incident 1, then its end with the cursor.
        let first = next(&mut rx).await.unwrap();
        assert!(matches!(first.item, Some(Item::Update(ref u)) if u.snapshot));
        let done = next(&mut rx).await.unwrap();
        assert!(matches!(done.item, Some(Item::SnapshotComplete(_))));
        let cursor: u64 = done.cursor.parse().unwrap();

        commit(&mut *writer, &publisher, 2);
        let live = next(&mut rx).await.unwrap();
        let Some(Item::Update(update)) = live.item else {
            panic!("an update, got {live:?}");
        };
        assert_eq!(update.incident.unwrap().id, store::incident_id(2));
        assert!(live.cursor.parse::<u64>().unwrap() > cursor);

        drop(publisher);
        let end = next(&mut rx).await.unwrap_err();
        assert_eq!(end.code(), Code::Unavailable);
        watcher.await.unwrap();
        assert!(feed.is_stopped());
    }

    /// A follower started on an empty store publishes the first change
    /// too: an empty store's end (zero) is a start, not "nothing yet".
    #[tokio::test]
    async fn a_follower_on_an_empty_store_publishes_the_very_first_change() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Arc::new(SqliteBackend::open(dir.path()).unwrap());
        let readers = Readers::new(backend.clone(), 2);
        let mut writer = crate::store::Backend::writer(&*backend).unwrap();
        // The leader's publisher (nobody listens) and the follower's feed.
        let leader = Feed::new().publisher();
        let feed = Feed::new();
        let follower = feed.publisher();
        let mut rx = feed.tx.subscribe();
        let wake = Arc::new(tokio::sync::Notify::new());
        let stop = CancellationToken::new();
        let following = tokio::spawn({
            let (follower, readers, wake, stop) = (
                follower.clone(),
                readers.clone(),
                wake.clone(),
                stop.clone(),
            );
            async move { follower.follow(readers, wake, stop).await }
        });
        // The follower has read where the empty store ends...
        tokio::time::timeout(Duration::from_secs(10), async {
            while !follower.inner.started.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the follower starts");
        // ...then the leader commits the first change, and the follower
        // hears of it.
        commit(&mut *writer, &leader, 1);
        wake.notify_one();
        let change = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the first change within 10 s")
            .expect("feed open");
        assert_eq!(change.position, 1);
        assert_eq!(change.incident.id, store::incident_id(1));
        stop.cancel();
        wake.notify_one();
        following.await.unwrap();
    }
}
