//! The writer: the one thread that owns the store and the incident engine,
//! and turns everything queued into one group commit.
//!
//! Ingest, the API and the timer send [`Job`]s into one bounded queue. The
//! writer blocks for the first job, drains whatever else is queued (up to
//! [`MAX_GROUP_EVENTS`] events or [`MAX_GROUP_JOBS`] jobs), and in one
//! transaction inserts the events, runs the engine on the ones that were new,
//! applies workflow actions and timers, writes the resulting incident
//! changes, and commits (one fsync). Only then does it answer: the
//! [`Committed`] message tells ingest which MQTT messages it may acknowledge
//! and which receipts to publish, and workflow callers get their results.
//!
//! The engine and the store must agree. If a transaction fails (a full disk,
//! an I/O error), the engine's memory already holds changes the store does
//! not. The writer then answers waiting workflow callers with an error
//! (UNAVAILABLE), marks the store unhealthy ([`StoreHealth`]: the gRPC health
//! service says NOT_SERVING, `vigil_ops_store_healthy` is 0), rebuilds the
//! engine from the store, and tries the same group of events and statuses
//! again, backing off up to [`RETRY_MAX`]. It takes no new job meanwhile, so
//! the queue fills and ingest stops reading from MQTT: nothing is receipted
//! while the store cannot write. When a commit succeeds again it marks the
//! store healthy and carries on. Nothing acknowledged is lost: no PUBACK or
//! receipt went out for a group before its commit. Only when every job
//! sender is gone (shutdown) does a failing writer give up and return the
//! error.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering::Relaxed},
    thread,
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::{mpsc, oneshot};
use vigil_proto::v1::{
    AuditAction, AuditEntry, EmergencyMode, Incident, PostStatus, Receipt, SiteDocument,
};

pub use crate::metrics::StoreHealth;
use crate::{
    api::feed::{Feed, FeedPublisher},
    engine::{Action, Actor, Engine, WorkflowError},
    metrics::Metrics,
    notify::Routes,
    store::{Changes, NotifyUpdate, Received, StoreError, StoreWriter},
};

/// Delivered notifications are pruned at most this often (on a timer tick).
const NOTIFY_PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Failed commits: one log line per interval, with a count.
static LOG_COMMIT_FAILED: vigil_telemetry::log_limit::LogLimiter =
    vigil_telemetry::log_limit::LogLimiter::new(Duration::from_secs(10));

/// Capacity of the job queue. When it is full, ingest stops reading from
/// MQTT (the broker holds further messages) and API calls wait.
pub const QUEUE_CAPACITY: usize = 512;
/// Capacity of the [`Committed`] channel back to ingest. When it is full the
/// writer waits before its next group; ingest drains it continuously.
pub const DONE_CAPACITY: usize = 64;
/// A group commit takes at most about this many events...
pub const MAX_GROUP_EVENTS: usize = 50_000;
/// ...and at most this many jobs.
pub const MAX_GROUP_JOBS: usize = 4096;

/// First wait before a failed group commit is tried again...
pub const RETRY_MIN: Duration = Duration::from_millis(50);
/// ...doubling up to this.
pub const RETRY_MAX: Duration = Duration::from_secs(2);

/// Identifies an MQTT message waiting for its commit (ingest's own key).
pub type Token = u64;

/// Work for the writer.
#[derive(Debug)]
pub enum Job {
    /// A validated batch of one post's events, received at `at`.
    Batch {
        post_id: String,
        events: Vec<Received>,
        at: SystemTime,
        token: Token,
    },
    /// A post's status (retained, or its last will).
    Status {
        status: PostStatus,
        at: SystemTime,
        token: Token,
    },
    /// A person's action on an incident.
    Workflow {
        incident_id: String,
        expected_version: u64,
        action: Action,
        actor: Actor,
        at: SystemTime,
        reply: oneshot::Sender<Result<Incident, WorkflowError>>,
    },
    /// Start (duration > 0) or end test mode of a post.
    TestMode {
        post_id: String,
        duration: Duration,
        reason: String,
        actor: Actor,
        at: SystemTime,
        reply: oneshot::Sender<Result<Option<SystemTime>, WorkflowError>>,
    },
    /// Replace the site document (post records and action plans) with a
    /// validated one; the reply lists what changed (see
    /// [`crate::site::diff`]), each change also an audit entry.
    Site {
        site: SiteDocument,
        actor: Actor,
        at: SystemTime,
        reply: oneshot::Sender<Result<Vec<String>, WorkflowError>>,
    },
    /// Start (duration > 0) or end emergency mode.
    Emergency {
        duration: Duration,
        post_ids: Vec<String>,
        reason: String,
        actor: Actor,
        at: SystemTime,
        reply: oneshot::Sender<Result<Option<EmergencyMode>, WorkflowError>>,
    },
    /// Run the engine's timers.
    Tick { at: SystemTime },
    /// Outcomes of webhook deliveries, or a failed notification put back
    /// (see [`crate::notify`]); answered once committed.
    Notify {
        updates: Vec<NotifyUpdate>,
        reply: oneshot::Sender<Result<(), WorkflowError>>,
    },
    /// An action a standby replica forwarded through the request mailbox
    /// (a `Workflow` or `TestMode` job): claimed, applied and answered in
    /// one transaction (see [`crate::forward`]).
    Forwarded { id: u64, job: Box<Job> },
}

impl Job {
    fn events(&self) -> usize {
        match self {
            Job::Batch { events, .. } => events.len(),
            _ => 1,
        }
    }
}

/// What one group commit made durable.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Committed {
    /// MQTT messages that are now stored (or were duplicates): acknowledge
    /// them.
    pub tokens: Vec<Token>,
    /// One receipt per post whose events were in the group.
    pub receipts: Vec<Receipt>,
}

/// A writer thread that has been started.
#[derive(Debug)]
pub struct WriterHandle {
    thread: thread::JoinHandle<Result<(), StoreError>>,
}

impl WriterHandle {
    /// Waits for the writer to stop (after every sender was dropped, or a
    /// store failure). Blocking: call from a blocking context.
    pub fn join(self) -> Result<(), StoreError> {
        self.thread
            .join()
            .unwrap_or_else(|_| Err(StoreError::Corrupt("writer thread panicked".into())))
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }
}

/// Starts the writer thread. It runs until every [`Job`] sender is dropped
/// (then it finishes the queue and returns) or the store fails.
pub fn spawn(
    store: Box<dyn StoreWriter>,
    engine: Engine,
    metrics: Arc<Metrics>,
    jobs: mpsc::Receiver<Job>,
    done: mpsc::Sender<Committed>,
) -> WriterHandle {
    spawn_publishing(store, engine, metrics, jobs, done, Feed::new().publisher())
}

/// Like [`spawn`], and publishes every commit's incident changes, with
/// their audit positions, to the incident feed. The feed stops when the
/// writer does.
pub fn spawn_publishing(
    store: Box<dyn StoreWriter>,
    engine: Engine,
    metrics: Arc<Metrics>,
    jobs: mpsc::Receiver<Job>,
    done: mpsc::Sender<Committed>,
    feed: FeedPublisher,
) -> WriterHandle {
    spawn_notifying(store, engine, metrics, jobs, done, feed, Routes::none())
}

/// Like [`spawn_publishing`], and enqueues the notifications `routes` say
/// each commit's changes cause, in the same transaction.
pub fn spawn_notifying(
    store: Box<dyn StoreWriter>,
    engine: Engine,
    metrics: Arc<Metrics>,
    jobs: mpsc::Receiver<Job>,
    done: mpsc::Sender<Committed>,
    feed: FeedPublisher,
    routes: Arc<Routes>,
) -> WriterHandle {
    // The backlog as it stands on start; every commit that changes an
    // incident recounts it.
    metrics.backlog.set(engine.incidents());
    let mut writer = Writer {
        store,
        engine,
        metrics,
        feed,
        routes,
        last_prune: None,
    };
    let thread = thread::Builder::new()
        .name("vigil-ops-writer".into())
        .spawn(move || writer.run(jobs, &done))
        .expect("spawn the writer thread");
    WriterHandle { thread }
}

struct Writer {
    store: Box<dyn StoreWriter>,
    engine: Engine,
    metrics: Arc<Metrics>,
    feed: FeedPublisher,
    routes: Arc<Routes>,
    /// When delivered notifications were last pruned.
    last_prune: Option<Instant>,
}

enum Reply {
    Workflow(
        oneshot::Sender<Result<Incident, WorkflowError>>,
        Box<Result<Incident, WorkflowError>>,
    ),
    TestMode(
        oneshot::Sender<Result<Option<SystemTime>, WorkflowError>>,
        Result<Option<SystemTime>, WorkflowError>,
    ),
    Site(
        oneshot::Sender<Result<Vec<String>, WorkflowError>>,
        Vec<String>,
    ),
    Emergency(
        oneshot::Sender<Result<Option<EmergencyMode>, WorkflowError>>,
        Result<Option<EmergencyMode>, WorkflowError>,
    ),
    Notify(oneshot::Sender<Result<(), WorkflowError>>),
}

impl Writer {
    fn run(
        &mut self,
        mut jobs: mpsc::Receiver<Job>,
        done: &mpsc::Sender<Committed>,
    ) -> Result<(), StoreError> {
        while let Some(first) = jobs.blocking_recv() {
            let mut events = first.events();
            let mut group = vec![first];
            while group.len() < MAX_GROUP_JOBS && events < MAX_GROUP_EVENTS {
                match jobs.try_recv() {
                    Ok(job) => {
                        events += job.events();
                        group.push(job);
                    }
                    Err(_) => break,
                }
            }
            let committed = self.commit_until_done(group, &jobs)?;
            if !committed.tokens.is_empty() || !committed.receipts.is_empty() {
                // Ingest gone (shutting down): the commit stands; receipts
                // will be re-sent when the gateways re-send.
                let _ = done.blocking_send(committed);
            }
        }
        Ok(())
    }

    /// Commits `group`, trying again after a failure until it succeeds (see
    /// the module docs). Gives up with the error only when every job sender
    /// is gone.
    fn commit_until_done(
        &mut self,
        mut group: Vec<Job>,
        jobs: &mpsc::Receiver<Job>,
    ) -> Result<Committed, StoreError> {
        let mut backoff = RETRY_MIN;
        let mut engine_stale = false;
        loop {
            let attempt = if engine_stale {
                self.rebuild_engine()
                    .map_err(|e| (e, std::mem::take(&mut group)))
            } else {
                Ok(())
            };
            let attempt = attempt.and_then(|()| {
                engine_stale = true;
                self.commit_group(std::mem::take(&mut group))
            });
            match attempt {
                Ok(committed) => {
                    if !self.metrics.store_health.is_healthy() {
                        tracing::warn!("the store can write again: commits and receipts resume");
                        self.metrics.store_health.set(true);
                    }
                    return Ok(committed);
                }
                Err((e, kept)) => {
                    self.metrics.commit_failures.fetch_add(1, Relaxed);
                    if self.metrics.store_health.is_healthy() {
                        self.metrics.store_health.set(false);
                    }
                    if let Some(count) = LOG_COMMIT_FAILED.hit() {
                        tracing::error!(
                            error = %e,
                            count,
                            retry_in_ms = backoff.as_millis() as u64,
                            "group commit failed: not receipting; unhealthy until the store can write"
                        );
                    }
                    if jobs.is_closed() {
                        tracing::error!(error = %e, "shutting down with a failing store");
                        return Err(e);
                    }
                    if matches!(e, StoreError::NotLeader(_)) {
                        // Another replica leads: nothing of this group was
                        // stored or receipted; it will hear it again.
                        drop(kept);
                        return Err(e);
                    }
                    group = kept;
                    thread::sleep(backoff);
                    backoff = (backoff * 2).min(RETRY_MAX);
                    if matches!(e, StoreError::Unavailable(_))
                        && let Err(e) = self.store.reconnect()
                    {
                        tracing::debug!(error = %e, "store still unreachable");
                    }
                }
            }
        }
    }

    /// Replaces the engine with one rebuilt from what the store holds (after
    /// a failed transaction left the engine ahead of the store).
    fn rebuild_engine(&mut self) -> Result<(), StoreError> {
        let cfg = self.engine.config().clone();
        let since = SystemTime::now()
            .checked_sub(Duration::from_secs(cfg.reactivation_window_secs))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let snapshot = self.store.engine_snapshot(since)?;
        self.engine = Engine::new(cfg, snapshot);
        Ok(())
    }

    /// One group commit. On failure, returns the error with the jobs worth
    /// trying again (events, statuses, timer ticks); workflow callers are
    /// answered UNAVAILABLE.
    fn commit_group(&mut self, group: Vec<Job>) -> Result<Committed, (StoreError, Vec<Job>)> {
        let started = Instant::now();
        // Incidents the engine no longer holds are read before the
        // transaction starts (the transaction borrows the store).
        let mut stored: HashMap<String, Option<Incident>> = HashMap::new();
        for job in &group {
            let job = match job {
                Job::Forwarded { job, .. } => job,
                job => job,
            };
            if let Job::Workflow { incident_id, .. } = job
                && self.engine.incident(incident_id).is_none()
            {
                match self.store.incident(incident_id) {
                    Ok(inc) => stored.insert(incident_id.clone(), inc),
                    Err(e) => return Err((e, unavailable(group))),
                };
            }
        }

        // The stored site document, if a job of the group replaces it:
        // changes are named against it (and against each other in turn).
        let mut site_now = None;
        let is_site = |j: &Job| match j {
            Job::Site { .. } => true,
            Job::Forwarded { job, .. } => matches!(**job, Job::Site { .. }),
            _ => false,
        };
        if group.iter().any(is_site) {
            match self.store.site() {
                Ok(site) => site_now = Some(site),
                Err(e) => return Err((e, unavailable(group))),
            }
        }

        let mut changes = Changes::default();
        let mut committed = Committed::default();
        let mut replies = Vec::new();
        let mut kept = Vec::with_capacity(group.len());
        let mut oldest: Option<SystemTime> = None;
        let mut events_in = 0u64;
        let mut batches = 0u64;
        let mut statuses = 0u64;
        let mut tx = match self.store.begin() {
            Ok(tx) => tx,
            Err(e) => return Err((e, unavailable(group))),
        };
        let mut failed = None;
        let mut jobs = group.into_iter();
        for job in jobs.by_ref() {
            match job {
                Job::Batch {
                    post_id,
                    events,
                    at,
                    token,
                } => {
                    let inserted = tx.insert_events(&post_id, &events, at);
                    let ok = inserted.is_ok();
                    match inserted {
                        Ok(new) => {
                            for (received, new) in events.iter().zip(new) {
                                if new {
                                    self.engine.on_event(&received.event, at, &mut changes);
                                }
                            }
                            events_in += events.len() as u64;
                            batches += 1;
                            oldest = Some(oldest.map_or(at, |o| o.min(at)));
                            committed.tokens.push(token);
                        }
                        Err(e) => failed = Some(e),
                    }
                    kept.push(Job::Batch {
                        post_id,
                        events,
                        at,
                        token,
                    });
                    if !ok {
                        break;
                    }
                }
                Job::Status { status, at, token } => {
                    self.engine.on_status(&status, at, &mut changes);
                    statuses += 1;
                    oldest = Some(oldest.map_or(at, |o| o.min(at)));
                    committed.tokens.push(token);
                    kept.push(Job::Status { status, at, token });
                }
                job @ (Job::Workflow { .. } | Job::TestMode { .. } | Job::Emergency { .. }) => {
                    if let Some(reply) = act(&mut self.engine, job, &mut stored, &mut changes) {
                        replies.push(reply);
                    }
                }
                Job::Forwarded { id, job } => {
                    let claimed = tx.claim_request(id);
                    let reply = match claimed {
                        // Answered or given up already: nothing to do.
                        Ok(false) => continue,
                        Ok(true) => match *job {
                            Job::Site {
                                site,
                                actor,
                                at,
                                reply,
                            } => Some(replace_site(
                                &mut self.engine,
                                &mut site_now,
                                site,
                                &actor,
                                at,
                                reply,
                                &mut changes,
                            )),
                            job => act(&mut self.engine, job, &mut stored, &mut changes),
                        },
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    };
                    let answer = match &reply {
                        Some(Reply::Workflow(_, r)) => crate::forward::workflow_answer(r),
                        Some(Reply::TestMode(_, r)) => crate::forward::test_mode_answer(r),
                        Some(Reply::Site(_, lines)) => {
                            crate::forward::site_answer(&Ok(lines.clone()))
                        }
                        Some(Reply::Emergency(_, r)) => crate::forward::emergency_answer(r),
                        // Never forwarded (the leader's own sender).
                        Some(Reply::Notify(_)) | None => continue,
                    };
                    replies.extend(reply);
                    if let Err(e) = tx.answer_request(id, &answer) {
                        failed = Some(e);
                        break;
                    }
                }
                Job::Site {
                    site,
                    actor,
                    at,
                    reply,
                } => {
                    replies.push(replace_site(
                        &mut self.engine,
                        &mut site_now,
                        site,
                        &actor,
                        at,
                        reply,
                        &mut changes,
                    ));
                }
                Job::Tick { at } => {
                    self.engine.tick(at, &mut changes);
                    if self
                        .last_prune
                        .is_none_or(|t| t.elapsed() >= NOTIFY_PRUNE_EVERY)
                    {
                        changes.notify_prune_before = at.checked_sub(self.routes.keep_delivered);
                        self.last_prune = Some(Instant::now());
                    }
                    kept.push(Job::Tick { at });
                }
                Job::Notify { updates, reply } => {
                    changes.notify_updates.extend(updates);
                    replies.push(Reply::Notify(reply));
                }
            }
        }
        // Notifications are committed with the changes that cause them.
        self.routes.enqueue(&mut changes);
        let outcome = match failed {
            Some(e) => Err(e),
            None => tx
                .apply(&changes)
                .and_then(|positions| Ok((positions, tx.commit()?))),
        };
        let (positions, result) = match outcome {
            Ok(result) => result,
            Err(e) => {
                let why = || {
                    WorkflowError::Unavailable("the store failed before the change was confirmed; check before trying again".into())
                };
                for reply in replies {
                    match reply {
                        Reply::Workflow(tx, _) => drop(tx.send(Err(why()))),
                        Reply::TestMode(tx, _) => drop(tx.send(Err(why()))),
                        Reply::Site(tx, _) => drop(tx.send(Err(why()))),
                        Reply::Emergency(tx, _) => drop(tx.send(Err(why()))),
                        Reply::Notify(tx) => drop(tx.send(Err(why()))),
                    }
                }
                kept.extend(unavailable(jobs.collect()));
                return Err((e, kept));
            }
        };

        if !changes.audit.is_empty() {
            self.metrics.backlog.set(self.engine.incidents());
            self.feed.publish(&changes, &positions);
        }
        for reply in replies {
            // A caller that went away does not undo the change.
            match reply {
                Reply::Workflow(tx, r) => drop(tx.send(*r)),
                Reply::TestMode(tx, r) => drop(tx.send(r)),
                Reply::Site(tx, lines) => drop(tx.send(Ok(lines))),
                Reply::Emergency(tx, r) => drop(tx.send(r)),
                Reply::Notify(tx) => drop(tx.send(Ok(()))),
            }
        }
        committed.receipts = result
            .durable
            .into_iter()
            .map(|(post_id, durable_through_seq)| Receipt {
                post_id,
                durable_through_seq,
            })
            .collect();

        let m = &self.metrics;
        m.events_in.fetch_add(events_in, Relaxed);
        m.events_stored.fetch_add(result.inserted, Relaxed);
        m.duplicates.fetch_add(result.duplicates, Relaxed);
        m.batches.fetch_add(batches, Relaxed);
        m.statuses.fetch_add(statuses, Relaxed);
        m.commits.fetch_add(1, Relaxed);
        m.commit_latency.record(started.elapsed());
        if let Some(oldest) = oldest {
            m.record_lag(SystemTime::now().duration_since(oldest).unwrap_or_default());
        }
        tracing::trace!(
            inserted = result.inserted,
            duplicates = result.duplicates,
            incidents = changes.incidents().len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "group committed"
        );
        Ok(committed)
    }
}

/// Applies one action job to the engine; its reply, to send once the
/// transaction has committed.
fn act(
    engine: &mut Engine,
    job: Job,
    stored: &mut HashMap<String, Option<Incident>>,
    changes: &mut Changes,
) -> Option<Reply> {
    match job {
        Job::Workflow {
            incident_id,
            expected_version,
            action,
            actor,
            at,
            reply,
        } => {
            let from_store = stored.remove(&incident_id).flatten();
            let result = engine.apply(
                &incident_id,
                from_store,
                expected_version,
                &action,
                &actor,
                at,
                changes,
            );
            Some(Reply::Workflow(reply, Box::new(result)))
        }
        Job::TestMode {
            post_id,
            duration,
            reason,
            actor,
            at,
            reply,
        } => {
            let result = engine.set_test_mode(&post_id, duration, &reason, &actor, at, changes);
            Some(Reply::TestMode(reply, result))
        }
        Job::Emergency {
            duration,
            post_ids,
            reason,
            actor,
            at,
            reply,
        } => {
            let result = engine.set_emergency(duration, &post_ids, &reason, &actor, at, changes);
            Some(Reply::Emergency(reply, result))
        }
        _ => None,
    }
}

/// Replaces the site document `now` (read from the store before the group)
/// with `site` in `changes`, audited, and gives the engine its post records
/// (schedules, test intervals); the reply to send once committed.
fn replace_site(
    engine: &mut Engine,
    now: &mut Option<SiteDocument>,
    site: SiteDocument,
    actor: &Actor,
    at: SystemTime,
    reply: oneshot::Sender<Result<Vec<String>, WorkflowError>>,
    changes: &mut Changes,
) -> Reply {
    let now = now.get_or_insert_with(SiteDocument::default);
    let lines = site_changes(now, &site, actor, at, changes);
    if !lines.is_empty() {
        engine.set_site(&site.posts);
        *now = site.clone();
        changes.site = Some(site);
    }
    Reply::Site(reply, lines)
}

/// The audit entries of replacing site document `old` with `new` (one per
/// post record or plan added, changed or removed), added to `changes`;
/// returns their details.
fn site_changes(
    old: &SiteDocument,
    new: &SiteDocument,
    actor: &Actor,
    at: SystemTime,
    changes: &mut Changes,
) -> Vec<String> {
    crate::site::diff(old, new)
        .into_iter()
        .map(|c| {
            changes.audit.push(AuditEntry {
                action: AuditAction::SiteChanged as i32,
                actor: actor.id.clone(),
                actor_role: actor.role.clone(),
                at: Some(at.into()),
                detail: c.detail.clone(),
                post_id: c.post_id,
                ..Default::default()
            });
            c.detail
        })
        .collect()
}

/// Answers the workflow jobs of a group that cannot be committed with
/// UNAVAILABLE; returns the others (worth trying again).
fn unavailable(group: Vec<Job>) -> Vec<Job> {
    let why = || {
        WorkflowError::Unavailable(
            "the store failed before the change was confirmed; check before trying again".into(),
        )
    };
    group
        .into_iter()
        .filter_map(|job| match job {
            Job::Workflow { reply, .. } => {
                let _ = reply.send(Err(why()));
                None
            }
            Job::TestMode { reply, .. } => {
                let _ = reply.send(Err(why()));
                None
            }
            Job::Site { reply, .. } => {
                let _ = reply.send(Err(why()));
                None
            }
            Job::Emergency { reply, .. } => {
                let _ = reply.send(Err(why()));
                None
            }
            Job::Notify { reply, .. } => {
                let _ = reply.send(Err(why()));
                None
            }
            // The claim is undone with the transaction: the mailbox passes
            // the request again.
            Job::Forwarded { .. } => None,
            job => Some(job),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        engine::EngineConfig,
        store::{IncidentFilter, SqliteStore, Store},
    };
    use vigil_proto::v1::{AlarmSignal, Event, EventCategory, IncidentState, event::Body};

    fn alarm(post: &str, seq: u64, zone: u32) -> Event {
        Event {
            post_id: post.into(),
            seq,
            category: EventCategory::Burglary as i32,
            body: Some(Body::Alarm(AlarmSignal {
                account: "1234".into(),
                zone,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn start(
        dir: &std::path::Path,
    ) -> (mpsc::Sender<Job>, mpsc::Receiver<Committed>, WriterHandle) {
        let store = SqliteStore::open(dir).unwrap();
        let engine = Engine::new(
            EngineConfig::default(),
            store.engine_snapshot(SystemTime::UNIX_EPOCH).unwrap(),
        );
        let (jobs_tx, jobs_rx) = mpsc::channel(QUEUE_CAPACITY);
        let (done_tx, done_rx) = mpsc::channel(DONE_CAPACITY);
        let handle = spawn(
            Box::new(store),
            engine,
            Arc::new(Metrics::default()),
            jobs_rx,
            done_tx,
        );
        (jobs_tx, done_rx, handle)
    }

    fn batch(post: &str, seqs: &[u64], token: Token) -> Job {
        Job::Batch {
            post_id: post.into(),
            events: seqs
                .iter()
                .map(|&s| alarm(post, s, s as u32).into())
                .collect(),
            at: SystemTime::now(),
            token,
        }
    }

    /// Collects commits until every token in `tokens` was acknowledged;
    /// returns the last receipt per post.
    async fn until_acked(
        done: &mut mpsc::Receiver<Committed>,
        tokens: &[Token],
    ) -> HashMap<String, u64> {
        let mut acked = Vec::new();
        let mut receipts = HashMap::new();
        while !tokens.iter().all(|t| acked.contains(t)) {
            let c = done.recv().await.expect("writer alive");
            acked.extend(c.tokens);
            for r in c.receipts {
                receipts.insert(r.post_id, r.durable_through_seq);
            }
        }
        receipts
    }

    #[tokio::test]
    async fn duplicate_and_reordered_batches_are_stored_once_and_receipted() {
        let dir = tempfile::tempdir().unwrap();
        let (jobs, mut done, handle) = start(dir.path());
        jobs.send(batch("p-1", &[1, 2, 3], 1)).await.unwrap();
        jobs.send(batch("p-1", &[6, 7], 2)).await.unwrap();
        jobs.send(batch("p-1", &[1, 2, 3], 3)).await.unwrap();
        jobs.send(batch("p-2", &[1], 4)).await.unwrap();
        let r = until_acked(&mut done, &[1, 2, 3, 4]).await;
        assert_eq!(r["p-1"], 3, "gap at 4..5");
        assert_eq!(r["p-2"], 1);
        // The gap fills, out of order.
        jobs.send(batch("p-1", &[5], 5)).await.unwrap();
        jobs.send(batch("p-1", &[4, 5, 6], 6)).await.unwrap();
        let r = until_acked(&mut done, &[5, 6]).await;
        assert_eq!(r["p-1"], 7);
        // A fully duplicate batch still gets a receipt (the gateway may have
        // missed the first).
        jobs.send(batch("p-1", &[7], 7)).await.unwrap();
        assert_eq!(until_acked(&mut done, &[7]).await["p-1"], 7);
        drop(jobs);
        tokio::task::spawn_blocking(move || handle.join())
            .await
            .unwrap()
            .unwrap();

        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(store.event_count().unwrap(), 8);
        // Each new event opened or joined exactly one incident; duplicates
        // did nothing.
        let incidents = store
            .incidents(&IncidentFilter {
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        let events: u32 = incidents.iter().map(|i| i.event_count).sum();
        assert_eq!(events, 8);
    }

    #[tokio::test]
    async fn workflow_actions_are_committed_before_the_reply() {
        let dir = tempfile::tempdir().unwrap();
        let (jobs, mut done, handle) = start(dir.path());
        jobs.send(batch("p-1", &[1], 1)).await.unwrap();
        until_acked(&mut done, &[1]).await;
        let (reply, rx) = oneshot::channel();
        jobs.send(Job::Workflow {
            incident_id: crate::store::incident_id(1),
            expected_version: 1,
            action: Action::Acknowledge {
                note: "seen".into(),
            },
            actor: Actor::new("alice", "analyst"),
            at: SystemTime::now(),
            reply,
        })
        .await
        .unwrap();
        let inc = rx.await.unwrap().unwrap();
        assert_eq!(inc.state(), IncidentState::Acknowledged);
        // Same version again: refused with the current incident.
        let (reply, rx) = oneshot::channel();
        jobs.send(Job::Workflow {
            incident_id: inc.id.clone(),
            expected_version: 1,
            action: Action::Escalate {
                reason: String::new(),
            },
            actor: Actor::new("bob", "supervisor"),
            at: SystemTime::now(),
            reply,
        })
        .await
        .unwrap();
        assert!(matches!(
            rx.await.unwrap(),
            Err(WorkflowError::VersionMismatch { .. })
        ));
        drop(jobs);
        tokio::task::spawn_blocking(move || handle.join())
            .await
            .unwrap()
            .unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let stored = store.incident(&inc.id).unwrap().unwrap();
        assert_eq!(stored, inc);
        assert_eq!(store.audit(&inc.id).unwrap().len(), 2);
        assert_eq!(store.notes(&inc.id).unwrap().len(), 1);
    }

    /// The schedule timers resume from the store after a restart: an
    /// opening seen before it still counts, and a deadline handled before
    /// it does not fire again.
    #[tokio::test]
    async fn schedule_timers_survive_a_restart() {
        use vigil_proto::v1::{PostRecord, SiteDocument};
        let utc = |s: &str| SystemTime::try_from(s.parse::<jiff::Timestamp>().unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (jobs, mut done, handle) = start(dir.path());
        let site = SiteDocument {
            posts: vec![PostRecord {
                post_id: "p-1".into(),
                name: "Embassy".into(),
                timezone: "Europe/Vienna".into(),
                schedules: vec![crate::schedule::schedule(
                    &["mon", "tue", "wed", "thu", "fri"],
                    "07:30-08:30",
                    "17:00-18:00",
                    15,
                )],
                ..Default::default()
            }],
            plans: Vec::new(),
        };
        let (reply, answer) = oneshot::channel();
        jobs.send(Job::Site {
            site,
            actor: Actor::new("alice", "admin"),
            at: utc("2026-03-01T12:00:00Z"),
            reply,
        })
        .await
        .unwrap();
        assert_eq!(answer.await.unwrap().unwrap(), ["post p-1 added"]);
        // Monday 2 March 2026 (Vienna UTC+1): opened at 07:50 local.
        jobs.send(Job::Tick {
            at: utc("2026-03-02T00:00:00Z"),
        })
        .await
        .unwrap();
        let opening = Event {
            post_id: "p-1".into(),
            seq: 1,
            received_at: Some(utc("2026-03-02T06:50:00Z").into()),
            category: EventCategory::OpenClose as i32,
            body: Some(Body::Alarm(AlarmSignal {
                account: "1234".into(),
                sia_code: "OP".into(),
                user: 2,
                ..Default::default()
            })),
            ..Default::default()
        };
        jobs.send(Job::Batch {
            post_id: "p-1".into(),
            events: vec![opening.into()],
            at: utc("2026-03-02T06:50:01Z"),
            token: 1,
        })
        .await
        .unwrap();
        until_acked(&mut done, &[1]).await;
        // Past the open deadline (07:45Z): opened in time, nothing fires.
        jobs.send(Job::Tick {
            at: utc("2026-03-02T08:00:00Z"),
        })
        .await
        .unwrap();
        drop(jobs);
        tokio::task::spawn_blocking(move || handle.join())
            .await
            .unwrap()
            .unwrap();

        // A new process on the same store, first ticking in the evening.
        let (jobs, _done, handle) = start(dir.path());
        for at in ["2026-03-02T12:00:00Z", "2026-03-02T17:20:00Z"] {
            jobs.send(Job::Tick { at: utc(at) }).await.unwrap();
        }
        drop(jobs);
        tokio::task::spawn_blocking(move || handle.join())
            .await
            .unwrap()
            .unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let subjects: Vec<String> = store
            .incidents(&IncidentFilter {
                limit: 10,
                ..Default::default()
            })
            .unwrap()
            .into_iter()
            .map(|i| i.subject)
            .collect();
        // The opening before the restart was remembered: the post is open
        // at the close deadline (17:15Z), and the morning is not re-checked.
        assert_eq!(subjects, ["timer:late_to_close"]);
    }
}
