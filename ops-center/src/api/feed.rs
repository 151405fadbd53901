//! The live incident feed behind `WatchIncidents`.
//!
//! The cursor is the position of an audit entry. Every change to an incident
//! is audited in the same transaction that writes it, so "every audit entry
//! after position N" is exactly "every change a client that saw N has not
//! seen": resuming reads the audit trail from the store, and nothing is
//! missed or repeated. Each item carries the incident as it is now.
//!
//! One hub task follows the audit trail: the writer wakes it after each
//! commit, it reads the new entries and publishes them on a bounded
//! [`broadcast`] channel. Publishing never waits, so a slow client cannot
//! slow ingest: a watcher that falls more than [`BROADCAST_CAPACITY`] items
//! behind is told to resync (and its cursor still works).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use tokio::sync::{Notify, broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use vigil_proto::v1::{
    FeedItem, Heartbeat, Incident, IncidentState, IncidentUpdate, Resync, SnapshotComplete,
    feed_item::Item,
};

use crate::store::{IncidentFilter, Store, StoreError};

/// Feed items held for watchers. A watcher more than this many behind gets
/// a `Resync` item and its stream ends; the hub never waits for anyone.
pub const BROADCAST_CAPACITY: usize = 1024;
/// Items queued towards one client. When full, that client's task waits
/// (and, if it stays full, lags behind the broadcast and is resynced).
pub const CLIENT_CAPACITY: usize = 64;
/// Audit entries read per store query.
const PAGE: usize = 512;
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

/// Shared by the service and the hub.
#[derive(Debug, Clone)]
pub struct Feed {
    tx: broadcast::Sender<Arc<Change>>,
}

pub(crate) type Reader = Arc<Mutex<Box<dyn Store>>>;

impl Feed {
    pub fn new() -> Self {
        Self {
            tx: broadcast::channel(BROADCAST_CAPACITY).0,
        }
    }

    /// Follows the audit trail until `shutdown`: woken by `changed`, reads
    /// what is new, publishes it.
    pub(crate) async fn hub(
        self,
        reader: Reader,
        changed: Arc<Notify>,
        shutdown: CancellationToken,
    ) -> Result<(), StoreError> {
        let r = reader.clone();
        let mut position =
            blocking(move || r.lock().expect("reader").last_audit_position()).await?;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = changed.notified() => {}
            }
            loop {
                let (r, after) = (reader.clone(), position);
                let changes =
                    blocking(move || changes_after(&**r.lock().expect("reader"), after)).await?;
                let Some(last) = changes.last_position else {
                    break;
                };
                position = last;
                for change in changes.items {
                    // No receivers is fine: nobody is watching.
                    let _ = self.tx.send(Arc::new(change));
                }
            }
        }
    }

    /// Serves one `WatchIncidents` call into `out` until the client leaves,
    /// falls behind, or `shutdown`.
    pub(crate) async fn watch(
        &self,
        reader: Reader,
        cursor: Option<u64>,
        posts: Vec<String>,
        out: mpsc::Sender<Result<FeedItem, Status>>,
        shutdown: CancellationToken,
    ) {
        // Subscribe before reading the store: whatever commits after the
        // read is then certain to arrive on the channel.
        let mut rx = self.tx.subscribe();
        let wanted = |inc: &Incident| posts.is_empty() || posts.contains(&inc.post_id);
        let mut position = match cursor {
            None => {
                // Position first, incidents second: a change in between is
                // then sent twice (harmless) rather than missed.
                let (r, p) = (reader.clone(), posts.clone());
                let snapshot = blocking(move || {
                    let store = r.lock().expect("reader");
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
                    let _ = out.send(Err(Status::internal("internal error"))).await;
                    return;
                };
                incidents.reverse(); // oldest first
                for incident in incidents {
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
                let (r, after) = (reader.clone(), position);
                let changes = match blocking(move || {
                    changes_after(&**r.lock().expect("reader"), after)
                })
                .await
                {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(error = %e, "feed catch-up failed");
                        let _ = out.send(Err(Status::internal("internal error"))).await;
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
                () = shutdown.cancelled() => return,
                () = out.closed() => return,
                _ = heartbeat.tick() => FeedItem {
                    cursor: position.to_string(),
                    item: Some(Item::Heartbeat(Heartbeat { at: Some(SystemTime::now().into()) })),
                },
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
                    Err(broadcast::error::RecvError::Closed) => return,
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

/// Runs a store read on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|_| Err(StoreError::Corrupt("store read panicked".into())))
}
