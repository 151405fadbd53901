//! Ingest: the MQTT side of the ops-center.
//!
//! One session per broker of `[mqtt] servers`, all at once: a post may be
//! connected to any of them (gateways fail over along their own list), so
//! the operations center listens on every one. Each session is a task that
//! owns its rumqttc event loop. It subscribes (QoS 1; through the shared
//! subscription `$share/{group}/…` when `share_group` is set) to every
//! post's `events` and `status`, checks each message (topic, size,
//! protobuf, `post_id` against the topic, seqs), and queues valid ones for
//! the one writer that every session shares. Invalid ones are counted by
//! reason, logged, and acknowledged at once: they would never become valid,
//! and an unacknowledged message would be sent again forever.
//!
//! Routing commit results: a token carries the index of the session that
//! made it in its top byte ([`SESSION_SHIFT`]), and a small dispatcher task
//! hands each session the tokens that are its own to acknowledge. Receipts
//! go to every session, so each is published on every broker: a post hears
//! its receipts on whichever broker it is connected to now, which need not
//! be the one its batch came through (it may have failed over between
//! sending and the commit). A receipt on a broker where the post is not
//! connected finds no subscriber and costs one small message. The store
//! keeps events by `(post_id, seq)`, so a batch heard twice (a gateway
//! re-sending through another broker after a failover) is stored once.
//!
//! An event time outside years 1-9999 (a device or gateway clock gone
//! wrong) does not make its event invalid: the time is cleared, counted
//! and logged, and the event stored and receipted like any other. Dropping
//! it would lose an alarm, and, since a receipt covers seqs without a gap,
//! hold back every receipt of that post after it.
//!
//! Statuses: a post's status comes through the broker it is on, but a
//! broker it has left may deliver an older one later (its last will, or a
//! retained status on resubscribing). Gateways number their connections
//! (`PostStatus.connection`); the sessions share the newest number heard
//! per post and boot, and a status of an older connection is acknowledged
//! and dropped ([`StatusOrder`]).
//!
//! Acknowledgments are manual. A valid message is acknowledged (PUBACK) only
//! after the writer committed it, in the same step as its post's `Receipt` is
//! published. The receipt is what the guarantee rests on: a gateway deletes
//! events only when a receipt covers them, and a receipt is published only
//! after the commit. A PUBACK alone never lets a gateway drop anything.
//!
//! The session is clean (clean_session = true). A persistent session would
//! let the broker re-send what was in flight when the ops-center died, but
//! the embedded router (rumqttd 0.20) panics — and stops routing for
//! everyone — when the last member of a shared-subscription group with a
//! persistent session disconnects with messages in flight (its
//! `routing.rs`, "group must exists"; found by the kill -9 test). What was
//! in flight is recovered by the gateways instead: they re-send whatever a
//! receipt has not covered after `resend_after_secs`.
//!
//! Backpressure: the writer's queue is bounded. When it is full this task
//! stops polling the event loop (so stops reading from the socket; TCP and
//! the broker hold the rest) until there is room, rather than dropping or
//! buffering without bound. It keeps draining commit results meanwhile, so
//! the writer never waits on it. Since acknowledgments wait for commits, the
//! broker's in-flight window also bounds what it sends us.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque},
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant, SystemTime},
};

use prost::Message;
use rumqttc::{
    AsyncClient, ConnectionError, Event as MqttEvent, EventLoop, MqttOptions, Packet, Publish, QoS,
    TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use vigil_proto::{
    topics::{self, TopicKind},
    v1::{EventBatch, PostCommand, PostState, PostStatus, ResendUnreceipted, post_command},
};
use vigil_telemetry::log_limit::{LogLimiter, PEER_ERROR_INTERVAL};

use bytes::Bytes;

use crate::{
    budget::{BudgetConfig, Budgets},
    config::MqttConfig,
    metrics::{Metrics, Reject},
    store::Received,
    writer::{Committed, Job, Token},
};

/// Capacity of rumqttc's request channel (our acknowledgments, receipts and
/// subscriptions to the event loop). When it is full, what does not fit
/// waits in this task's own small backlog, bounded by the messages in
/// flight, and goes out on the next turn of the loop.
pub const REQUEST_CAPACITY: usize = 1024;
/// Hard limit of an incoming MQTT packet; rumqttc drops the connection
/// beyond it. Set well above `max_batch_bytes` so that an oversize batch is
/// counted and acknowledged instead of dropping the connection again and
/// again.
pub const MAX_PACKET_BYTES: usize = 32 * 1024 * 1024;
/// Receipts (QoS 1) the ops-center may have sent and not yet seen
/// acknowledged by the broker.
///
/// Far above what a broker keeps in flight towards us (rumqttd: 100,
/// Mosquitto: 20), because rumqttc stops taking *any* request — our manual
/// PUBACKs included — while this many are outstanding. With rumqttc's
/// default (100) the two sides could wait on each other: our PUBACKs queued
/// behind receipts waiting for a free slot, and rumqttd, whose delivery
/// window to us was full of messages awaiting those PUBACKs, holding back
/// the acknowledgments of the receipts (it sends acknowledgments only when
/// it schedules the connection). Deliveries then stopped until our
/// keep-alive failed and we reconnected: tens of seconds of alarm latency
/// under a steady load from 1,000 posts (found by `vigil bench`). Each
/// delivered message leads to at most one receipt, so outstanding receipts
/// stay below the broker's window plus one per post in a commit.
pub const MAX_RECEIPTS_IN_FLIGHT: u16 = 8192;
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A token's bits above this one name the session (broker) it came in on;
/// the bits below count that session's messages.
pub const SESSION_SHIFT: u32 = 56;
/// Commit results queued from the dispatcher to one session. Sessions
/// drain theirs at every turn (also while their broker is away), so the
/// dispatcher, and so the writer, never waits long on one.
const ROUTE_CAPACITY: usize = 64;
/// How long shutdown waits for queued batches to commit and be acknowledged.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Invalid messages: one log line per interval, with a count.
static LOG_DROPPED: LogLimiter = LogLimiter::new(PEER_ERROR_INTERVAL);
/// Batches over their post's budget, likewise.
static LOG_DEFERRED: LogLimiter = LogLimiter::new(PEER_ERROR_INTERVAL);
/// Event times cleared, logged at most once per interval.
static LOG_TIMES_CLEARED: LogLimiter = LogLimiter::new(PEER_ERROR_INTERVAL);

/// Why ingest stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{key}: {reason}")]
    Server { key: String, reason: String },
    #[error("the writer stopped")]
    WriterStopped,
}

/// Ingest settings taken from the config.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub mqtt: MqttConfig,
    /// Per-post budgets of what may be stored.
    pub budget: BudgetConfig,
    /// MQTT client id: the ops-center's identity.
    pub client_id: String,
}

/// Runs ingest until `shutdown` is cancelled or the writer stops: one
/// session per broker, and the dispatcher of commit results. On shutdown
/// each session stops reading, lets the writer finish what is queued (it
/// drops its job sender), acknowledges and receipts it, and disconnects.
pub async fn run(
    cfg: IngestConfig,
    tls: Arc<rustls::ClientConfig>,
    jobs: mpsc::Sender<Job>,
    done: mpsc::Receiver<Committed>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), IngestError> {
    let brokers = cfg
        .mqtt
        .brokers()
        .map_err(|(key, reason)| IngestError::Server { key, reason })?;
    let mut routes = Vec::with_capacity(brokers.len());
    let mut sessions = Vec::with_capacity(brokers.len());
    let statuses = Arc::new(std::sync::Mutex::new(StatusOrder::default()));
    for (index, (host, port)) in brokers.into_iter().enumerate() {
        let broker = format!("{host}:{port}");
        let mut options = MqttOptions::new(cfg.client_id.clone(), host, port);
        options
            .set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.clone())))
            .set_keep_alive(Duration::from_secs(cfg.mqtt.keep_alive_secs))
            .set_manual_acks(true)
            .set_inflight(MAX_RECEIPTS_IN_FLIGHT)
            .set_clean_session(true)
            .set_max_packet_size(MAX_PACKET_BYTES, 64 * 1024);
        let (client, eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        let (route, routed) = mpsc::channel(ROUTE_CAPACITY);
        routes.push(route);
        let mut ingest = Ingest {
            client,
            broker,
            statuses: statuses.clone(),
            budgets: Budgets::new(cfg.budget.clone()),
            cfg: cfg.clone(),
            metrics: metrics.clone(),
            pending: HashMap::new(),
            next_token: session_tokens(index),
            session: 0,
            acks: VecDeque::new(),
            receipts: BTreeMap::new(),
            resend_asked: HashSet::new(),
            resend_requests: BTreeSet::new(),
        };
        let jobs = jobs.clone();
        let shutdown = shutdown.clone();
        sessions.push(tokio::spawn(async move {
            ingest.run(eventloop, jobs, routed, shutdown).await
        }));
    }
    drop(jobs);
    let dispatcher = tokio::spawn(dispatch(done, routes));
    let mut result = Ok(());
    for session in sessions {
        match session.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                if result.is_ok() {
                    result = Err(e);
                }
            }
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {}
        }
    }
    // Every session is gone: nothing is left to route to, and the writer
    // must not wait on a full queue of results nobody reads.
    dispatcher.abort();
    result
}

/// The first token of session `index`: its index in the top bits.
fn session_tokens(index: usize) -> Token {
    (index as Token) << SESSION_SHIFT
}

/// The session a token belongs to.
fn session_of(token: Token) -> usize {
    (token >> SESSION_SHIFT) as usize
}

/// Splits one commit's result among the sessions: to each the tokens it
/// made, and every receipt.
fn route(c: Committed, sessions: usize) -> Vec<Committed> {
    let mut out: Vec<Committed> = (0..sessions)
        .map(|_| Committed {
            tokens: Vec::new(),
            receipts: c.receipts.clone(),
        })
        .collect();
    for token in c.tokens {
        match out.get_mut(session_of(token)) {
            Some(to) => to.tokens.push(token),
            None => tracing::error!(token, "a commit result for no session"),
        }
    }
    out
}

/// Routes the writer's results until it stops (then every session sees its
/// route close) or the sessions are gone.
async fn dispatch(mut done: mpsc::Receiver<Committed>, routes: Vec<mpsc::Sender<Committed>>) {
    while let Some(c) = done.recv().await {
        for (to, part) in routes.iter().zip(route(c, routes.len())) {
            if part.tokens.is_empty() && part.receipts.is_empty() {
                continue;
            }
            // A session that has stopped takes nothing more; the others do.
            let _ = to.send(part).await;
        }
    }
}

/// The newest connection heard of each post's gateway, by boot, shared by
/// the sessions: statuses of older connections are out of date.
#[derive(Debug, Default)]
pub struct StatusOrder {
    newest: HashMap<String, (String, u64)>,
}

impl StatusOrder {
    /// Whether `status` is current: not from an older connection of the
    /// same gateway boot than one already heard. Records it if so. A status
    /// without a connection number (an older gateway), or from another
    /// boot, is always current.
    pub fn admit(&mut self, status: &PostStatus) -> bool {
        if status.connection == 0 {
            return true;
        }
        match self.newest.get_mut(&status.post_id) {
            Some((boot, newest)) if *boot == status.boot_id => {
                if status.connection < *newest {
                    return false;
                }
                *newest = status.connection;
            }
            _ => {
                self.newest.insert(
                    status.post_id.clone(),
                    (status.boot_id.clone(), status.connection),
                );
            }
        }
        true
    }
}

/// One broker's session.
struct Ingest {
    client: AsyncClient,
    /// `HOST:PORT`, for logs.
    broker: String,
    /// Shared with the other sessions.
    statuses: Arc<std::sync::Mutex<StatusOrder>>,
    cfg: IngestConfig,
    budgets: Budgets,
    metrics: Arc<Metrics>,
    /// Messages queued for the writer, by token, with the session they came
    /// in.
    pending: HashMap<Token, (u64, Publish)>,
    next_token: Token,
    /// Incremented at every connection without a stored session: packet ids
    /// of older sessions mean nothing any more.
    session: u64,
    /// Acknowledgments and receipts that did not fit the request channel.
    acks: VecDeque<Publish>,
    receipts: BTreeMap<String, u64>,
    /// Posts asked in this session to re-send what is not receipted.
    resend_asked: HashSet<String>,
    /// Such requests not yet handed to the event loop. Both sets hold at
    /// most one entry per post.
    resend_requests: BTreeSet<String>,
}

impl Ingest {
    async fn run(
        &mut self,
        mut eventloop: EventLoop,
        jobs: mpsc::Sender<Job>,
        mut done: mpsc::Receiver<Committed>,
        shutdown: CancellationToken,
    ) -> Result<(), IngestError> {
        let mut waiting: Option<Job> = None;
        let mut backoff = Duration::from_millis(100);
        // While the broker is away: when to try again. Commit results keep
        // being taken meanwhile, so that the dispatcher never waits on us.
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            self.flush();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                committed = done.recv() => match committed {
                    Some(c) => self.committed(c),
                    None => return Err(IngestError::WriterStopped),
                },
                permit = jobs.reserve(), if waiting.is_some() => match permit {
                    Ok(permit) => permit.send(waiting.take().expect("guarded")),
                    Err(_) => return Err(IngestError::WriterStopped),
                },
                () = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)),
                    if retry_at.is_some() => retry_at = None,
                event = eventloop.poll(), if waiting.is_none() && retry_at.is_none() => match event {
                    Ok(event) => {
                        backoff = Duration::from_millis(100);
                        if let Some(job) = self.on_event(event) {
                            match jobs.try_send(job) {
                                Ok(()) => {}
                                Err(mpsc::error::TrySendError::Full(job)) => waiting = Some(job),
                                Err(mpsc::error::TrySendError::Closed(_)) => {
                                    return Err(IngestError::WriterStopped);
                                }
                            }
                        }
                    }
                    Err(e) => {
                        log_connection_error(&self.broker, &e);
                        retry_at = Some(tokio::time::Instant::now() + backoff);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                },
            }
        }

        // Shutdown: no more reading. Let the writer commit what is queued,
        // then acknowledge and receipt it before disconnecting.
        drop(waiting);
        drop(jobs);
        let grace = tokio::time::sleep(DRAIN_GRACE);
        tokio::pin!(grace);
        loop {
            self.flush();
            tokio::select! {
                committed = done.recv() => match committed {
                    Some(c) => self.committed(c),
                    None => break,
                },
                event = eventloop.poll() => if event.is_err() { break },
                () = &mut grace => {
                    tracing::warn!(broker = %self.broker, "shutdown: gave up waiting for the writer");
                    break;
                }
            }
        }
        self.flush();
        let _ = self.client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while eventloop.poll().await.is_ok() {}
        })
        .await;
        Ok(())
    }

    /// A commit finished: acknowledge its messages and publish receipts.
    fn committed(&mut self, c: Committed) {
        for token in c.tokens {
            if let Some((session, publish)) = self.pending.remove(&token)
                && session == self.session
            {
                self.acks.push_back(publish);
            }
        }
        for r in c.receipts {
            // Coalesced: only the newest receipt per post is worth sending.
            self.receipts.insert(r.post_id, r.durable_through_seq);
        }
    }

    /// A retained ONLINE status means the post was connected before this
    /// session subscribed, so its last publishes may have found no
    /// subscriber (the session is clean, and the broker keeps nothing for
    /// an absent one). Rather than leave them to the gateway's re-send
    /// timer (`resend_after_secs`, 30 s by default), ask the post once per
    /// session to re-send everything not yet receipted. A post that comes
    /// online later re-sends by itself on connecting.
    fn maybe_ask_resend(&mut self, status: &PostStatus, retained: bool) {
        if retained
            && status.state() == PostState::Online
            && self.resend_asked.insert(status.post_id.clone())
        {
            self.resend_requests.insert(status.post_id.clone());
        }
    }

    /// Hands queued acknowledgments and receipts to the event loop, as many
    /// as fit.
    fn flush(&mut self) {
        while let Some(publish) = self.acks.front() {
            if self.client.try_ack(publish).is_err() {
                return;
            }
            self.acks.pop_front();
        }
        while let Some((post, &seq)) = self.receipts.first_key_value() {
            let receipt = vigil_proto::v1::Receipt {
                post_id: post.clone(),
                durable_through_seq: seq,
            };
            let topic = topics::topic(post, TopicKind::Receipts);
            if self
                .client
                .try_publish(topic, QoS::AtLeastOnce, false, receipt.encode_to_vec())
                .is_err()
            {
                return;
            }
            self.receipts.pop_first();
            self.metrics.receipts_published.fetch_add(1, Relaxed);
        }
        while let Some(post) = self.resend_requests.first() {
            let command = PostCommand {
                post_id: post.clone(),
                command_id: format!("resend-{}-{}", self.cfg.client_id, self.session),
                issued_at: Some(vigil_proto::Timestamp::from(SystemTime::now())),
                issued_by: self.cfg.client_id.clone(),
                command: Some(post_command::Command::ResendUnreceipted(
                    ResendUnreceipted { from_seq: 0 },
                )),
            };
            let topic = topics::topic(post, TopicKind::Commands);
            if self
                .client
                .try_publish(topic, QoS::AtLeastOnce, false, command.encode_to_vec())
                .is_err()
            {
                return;
            }
            tracing::debug!(%post, broker = %self.broker, "asked the post to re-send what is not receipted");
            self.resend_requests.pop_first();
            self.metrics.resend_requests.fetch_add(1, Relaxed);
        }
    }

    fn on_event(&mut self, event: MqttEvent) -> Option<Job> {
        match event {
            MqttEvent::Incoming(Packet::ConnAck(ack)) => {
                if !ack.session_present {
                    self.session += 1;
                    self.resend_asked.clear();
                    self.resend_requests.clear();
                }
                let group = self.cfg.mqtt.share_group.as_deref();
                let filters = [TopicKind::Events, TopicKind::Status].map(|kind| {
                    let topic = topics::all_posts(kind);
                    rumqttc::SubscribeFilter::new(
                        match group {
                            Some(group) => format!("$share/{group}/{topic}"),
                            None => topic,
                        },
                        QoS::AtLeastOnce,
                    )
                });
                if let Err(e) = self.client.try_subscribe_many(filters) {
                    tracing::error!(broker = %self.broker, error = %e, "cannot queue the subscription");
                }
                tracing::info!(
                    broker = %self.broker,
                    session_present = ack.session_present,
                    "connected to the broker"
                );
                None
            }
            MqttEvent::Incoming(Packet::SubAck(ack)) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure));
                if refused {
                    tracing::error!(
                        broker = %self.broker,
                        "the broker refused a subscription: check the ops certificate's role"
                    );
                }
                None
            }
            MqttEvent::Incoming(Packet::Publish(publish)) => self.on_publish(publish),
            _ => None,
        }
    }

    fn on_publish(&mut self, publish: Publish) -> Option<Job> {
        let at = SystemTime::now();
        match check(&publish, self.cfg.mqtt.max_batch_bytes) {
            Ok(job) => {
                self.next_token += 1;
                let token = self.next_token;
                let job = match job {
                    Checked::Batch {
                        mut batch,
                        times_cleared,
                    } => {
                        if times_cleared > 0 {
                            self.metrics
                                .event_times_cleared
                                .fetch_add(u64::from(times_cleared), Relaxed);
                            if let Some(count) = LOG_TIMES_CLEARED.hit() {
                                tracing::warn!(
                                    post = %batch.post_id,
                                    times_cleared,
                                    count,
                                    "event times outside years 1-9999 cleared (events stored without them)"
                                );
                            }
                        }
                        let admitted = self.budgets.admit(
                            &batch.post_id,
                            batch.events.iter().map(|r| r.raw.len()),
                            Instant::now(),
                        );
                        if admitted.deferred > 0 {
                            self.defer(&batch, admitted.deferred);
                        }
                        if admitted.events == 0 {
                            // Nothing fits: acknowledged (so the broker's
                            // window is not held) but neither stored nor
                            // receipted; the gateway sends it again later.
                            self.acks.push_back(publish);
                            return None;
                        }
                        batch.events.truncate(admitted.events);
                        Job::Batch {
                            post_id: batch.post_id,
                            events: batch.events,
                            at,
                            token,
                        }
                    }
                    Checked::Status(status) => {
                        let current = self
                            .statuses
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .admit(&status);
                        if !current {
                            tracing::debug!(
                                post = %status.post_id,
                                connection = status.connection,
                                broker = %self.broker,
                                "status of an older connection dropped"
                            );
                            self.acks.push_back(publish);
                            return None;
                        }
                        self.maybe_ask_resend(&status, publish.retain);
                        Job::Status { status, at, token }
                    }
                };
                self.pending.insert(token, (self.session, publish));
                Some(job)
            }
            Err((why, detail)) => {
                self.metrics.reject(why);
                // Counted every time; logged once per interval (a post
                // sending garbage as fast as it can must not fill the disk).
                if let Some(count) = LOG_DROPPED.hit() {
                    tracing::warn!(topic = %publish.topic, reason = ?why, detail, count, "message dropped");
                }
                self.acks.push_back(publish);
                None
            }
        }
    }
}

impl Ingest {
    /// Counts (and logs, at most once per interval) events of a batch that
    /// are over their post's budget.
    fn defer(&self, batch: &Batch, deferred: usize) {
        self.metrics
            .budget_deferred_events
            .fetch_add(deferred as u64, Relaxed);
        self.metrics.budget_deferred_batches.fetch_add(1, Relaxed);
        if let Some(count) = LOG_DEFERRED.hit() {
            let first = batch.events[batch.events.len() - deferred].event.seq;
            tracing::warn!(
                post = %batch.post_id,
                deferred,
                from_seq = first,
                count,
                "post over its budget: events deferred (not stored, not receipted; the gateway re-sends them)"
            );
        }
    }
}

/// A message that passed the checks.
#[derive(Debug, PartialEq)]
pub enum Checked {
    /// `times_cleared`: event times outside years 1-9999, cleared.
    Batch {
        batch: Batch,
        times_cleared: u32,
    },
    Status(PostStatus),
}

/// A checked batch of one post's events, each with the bytes it came as
/// (what the store keeps).
#[derive(Debug, PartialEq)]
pub struct Batch {
    pub post_id: String,
    pub events: Vec<Received>,
}

/// The encoded `Event`s of an `EventBatch` payload (field 2), in order, as
/// slices of the payload: no copy, and every byte as the post sent it.
fn event_slices(payload: &Bytes) -> Result<Vec<Bytes>, String> {
    fn varint(buf: &mut &[u8]) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = buf.split_first().ok_or("truncated varint")?;
            *buf = rest;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint too long".into())
    }
    fn skip<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if buf.len() < n {
            return Err("truncated field".into());
        }
        let (head, rest) = buf.split_at(n);
        *buf = rest;
        Ok(head)
    }
    let mut out = Vec::new();
    let mut buf: &[u8] = payload;
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        match key & 7 {
            0 => drop(varint(&mut buf)?),
            1 => drop(skip(&mut buf, 8)?),
            2 => {
                let len = usize::try_from(varint(&mut buf)?).map_err(|e| e.to_string())?;
                let start = payload.len() - buf.len();
                skip(&mut buf, len)?;
                if key >> 3 == 2 {
                    out.push(payload.slice(start..start + len));
                }
            }
            5 => drop(skip(&mut buf, 4)?),
            w => return Err(format!("wire type {w} in an event batch")),
        }
    }
    Ok(out)
}

/// Checks one incoming message: topic, size, decoding, `post_id`s, seqs.
pub fn check(publish: &Publish, max_batch_bytes: usize) -> Result<Checked, (Reject, String)> {
    let Some((post, kind)) = topics::parse(&publish.topic) else {
        return Err((Reject::Topic, "not a post topic".into()));
    };
    if vigil_pki::Identity::new(post).is_err() {
        return Err((Reject::Topic, "post level is not an identity".into()));
    }
    if publish.payload.len() > max_batch_bytes {
        return Err((
            Reject::Oversize,
            format!("{} bytes > {max_batch_bytes}", publish.payload.len()),
        ));
    }
    match kind {
        TopicKind::Events => {
            let mut batch = EventBatch::decode(publish.payload.as_ref())
                .map_err(|e| (Reject::Malformed, e.to_string()))?;
            if batch.post_id != post {
                return Err((
                    Reject::PostMismatch,
                    format!("batch post_id {:?}", batch.post_id),
                ));
            }
            if batch.events.is_empty() {
                return Err((Reject::Malformed, "empty batch".into()));
            }
            let mut last = 0;
            let mut times_cleared = 0;
            let mut cleared = vec![false; batch.events.len()];
            for (ev, cleared) in batch.events.iter_mut().zip(&mut cleared) {
                if ev.post_id != post {
                    return Err((
                        Reject::PostMismatch,
                        format!("event {} post_id {:?}", ev.seq, ev.post_id),
                    ));
                }
                if ev.seq <= last {
                    // (also covers seq 0)
                    return Err((
                        Reject::Malformed,
                        format!("seq {} after {last}: not increasing", ev.seq),
                    ));
                }
                // The store keeps seqs as SQLite integers (i64).
                if i64::try_from(ev.seq).is_err() {
                    return Err((Reject::OutOfRange, format!("seq {} above 2^63-1", ev.seq)));
                }
                // Times that RFC 3339 cannot write would break every client
                // that prints them: cleared (see the module docs).
                for t in [&mut ev.occurred_at, &mut ev.received_at] {
                    if t.as_ref().is_some_and(|t| !vigil_proto::time_in_range(t)) {
                        *t = None;
                        times_cleared += 1;
                        *cleared = true;
                    }
                }
                last = ev.seq;
            }
            let raw = event_slices(&publish.payload).map_err(|e| (Reject::Malformed, e))?;
            if raw.len() != batch.events.len() {
                return Err((Reject::Malformed, "events cannot be delimited".into()));
            }
            let events = batch
                .events
                .into_iter()
                .zip(raw)
                .zip(cleared)
                .map(|((event, raw), cleared)| match cleared {
                    // A cleared time is a changed event: stored as it is now
                    // (fields unknown here are lost with the bad time).
                    true => Received::from(event),
                    false => Received { event, raw },
                })
                .collect();
            Ok(Checked::Batch {
                batch: Batch {
                    post_id: batch.post_id,
                    events,
                },
                times_cleared,
            })
        }
        TopicKind::Status => {
            let status = PostStatus::decode(publish.payload.as_ref())
                .map_err(|e| (Reject::Malformed, e.to_string()))?;
            if status.post_id != post {
                return Err((
                    Reject::PostMismatch,
                    format!("status post_id {:?}", status.post_id),
                ));
            }
            Ok(Checked::Status(status))
        }
        TopicKind::Receipts | TopicKind::Commands => {
            Err((Reject::Topic, format!("ops-center does not consume {kind}")))
        }
    }
}

fn log_connection_error(broker: &str, e: &ConnectionError) {
    match e {
        ConnectionError::ConnectionRefused(code) => {
            tracing::error!(broker, ?code, "the broker refused the connection");
        }
        other => tracing::warn!(broker, error = %other, "broker connection lost; reconnecting"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_proto::v1::Event;

    fn publish(topic: &str, payload: Vec<u8>) -> Publish {
        Publish::new(topic, QoS::AtLeastOnce, payload)
    }

    fn batch(post: &str, seqs: &[u64], event_post: &str) -> Vec<u8> {
        EventBatch {
            post_id: post.into(),
            events: seqs
                .iter()
                .map(|&seq| Event {
                    post_id: event_post.into(),
                    seq,
                    ..Default::default()
                })
                .collect(),
        }
        .encode_to_vec()
    }

    #[test]
    fn commit_results_go_to_the_session_that_made_each_token() {
        let mut tokens = [session_tokens(0), session_tokens(1), session_tokens(2)];
        for t in &mut tokens {
            *t += 1;
        }
        let receipt = vigil_proto::v1::Receipt {
            post_id: "p-1".into(),
            durable_through_seq: 7,
        };
        let parts = route(
            Committed {
                tokens: vec![tokens[2], tokens[0], tokens[2] + 1],
                receipts: vec![receipt.clone()],
            },
            3,
        );
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].tokens, [tokens[0]]);
        assert!(parts[1].tokens.is_empty());
        assert_eq!(parts[2].tokens, [tokens[2], tokens[2] + 1]);
        for part in &parts {
            assert_eq!(
                part.receipts,
                std::slice::from_ref(&receipt),
                "receipts go everywhere"
            );
        }
        // A token of no session is dropped (and logged), not misrouted.
        let parts = route(
            Committed {
                tokens: vec![session_tokens(5) + 1],
                receipts: Vec::new(),
            },
            2,
        );
        assert!(parts.iter().all(|p| p.tokens.is_empty()));
        assert_eq!(session_of(session_tokens(15) + (1 << 40)), 15);
    }

    #[test]
    fn statuses_of_older_connections_are_out_of_date() {
        let status = |boot: &str, connection, state: PostState| PostStatus {
            post_id: "p-1".into(),
            boot_id: boot.into(),
            connection,
            state: state.into(),
            ..Default::default()
        };
        let mut order = StatusOrder::default();
        assert!(order.admit(&status("a", 1, PostState::Online)));
        assert!(order.admit(&status("a", 2, PostState::Online)));
        // Connection 1's will, published late by the broker left behind.
        assert!(!order.admit(&status("a", 1, PostState::Offline)));
        // Connection 2's own will (or goodbye) is current.
        assert!(order.admit(&status("a", 2, PostState::Offline)));
        // A new boot starts again from 1; the old boot's numbers mean
        // nothing for it.
        assert!(order.admit(&status("b", 1, PostState::Online)));
        assert!(order.admit(&status("b", 1, PostState::Offline)));
        // Older gateways do not number connections: always taken.
        assert!(order.admit(&status("", 0, PostState::Offline)));
        // Other posts are on their own.
        let mut other = status("a", 1, PostState::Online);
        other.post_id = "p-2".into();
        assert!(order.admit(&other));
    }

    fn reason(p: &Publish) -> Reject {
        check(p, 4096).unwrap_err().0
    }

    #[test]
    fn valid_batches_and_statuses_pass() {
        let p = publish("vigil/v1/posts/p-1/events", batch("p-1", &[1, 2, 5], "p-1"));
        assert!(
            matches!(check(&p, 4096), Ok(Checked::Batch { batch, times_cleared: 0 }) if batch.events.len() == 3)
        );
        let s = PostStatus {
            post_id: "p-1".into(),
            ..Default::default()
        };
        let p = publish("vigil/v1/posts/p-1/status", s.encode_to_vec());
        assert_eq!(check(&p, 4096), Ok(Checked::Status(s)));
    }

    #[test]
    fn every_kind_of_bad_message_is_rejected_with_its_reason() {
        let t = "vigil/v1/posts/p-1/events";
        assert_eq!(
            reason(&publish(t, batch("p-2", &[1], "p-2"))),
            Reject::PostMismatch
        );
        assert_eq!(
            reason(&publish(t, batch("p-1", &[1], "p-2"))),
            Reject::PostMismatch
        );
        assert_eq!(
            reason(&publish(t, batch("p-1", &[2, 1], "p-1"))),
            Reject::Malformed
        );
        assert_eq!(
            reason(&publish(t, batch("p-1", &[0], "p-1"))),
            Reject::Malformed
        );
        assert_eq!(
            reason(&publish(t, batch("p-1", &[], "p-1"))),
            Reject::Malformed
        );
        assert_eq!(
            reason(&publish(t, vec![0xff, 0xff, 0xff])),
            Reject::Malformed
        );
        assert_eq!(reason(&publish(t, vec![0; 5000])), Reject::Oversize);
        assert_eq!(
            reason(&publish(
                "vigil/v1/posts/p-1/receipts",
                batch("p-1", &[1], "p-1")
            )),
            Reject::Topic
        );
        assert_eq!(
            reason(&publish(
                "vigil/v1/posts/P_1/events",
                batch("P_1", &[1], "P_1")
            )),
            Reject::Topic
        );
        assert_eq!(reason(&publish("other/topic", vec![])), Reject::Topic);
        let seq_too_big = batch("p-1", &[1, 1 << 63], "p-1");
        assert_eq!(reason(&publish(t, seq_too_big)), Reject::OutOfRange);
        let at_max = batch("p-1", &[1, i64::MAX as u64], "p-1");
        assert!(check(&publish(t, at_max), 4096).is_ok(), "2^63-1 is a seq");
        // Times outside years 1-9999 are cleared; the events pass.
        let good = vigil_proto::Timestamp {
            seconds: 1_800_000_000,
            nanos: 0,
        };
        for (seconds, nanos) in [(-62_135_596_801, 0), (253_402_300_800, 0), (0, -1)] {
            let bad = vigil_proto::Timestamp { seconds, nanos };
            let mut b = EventBatch::decode(batch("p-1", &[1, 2], "p-1").as_slice()).unwrap();
            b.events[0].occurred_at = Some(bad);
            b.events[0].received_at = Some(good);
            b.events[1].occurred_at = Some(good);
            b.events[1].received_at = Some(bad);
            let Ok(Checked::Batch {
                batch,
                times_cleared,
            }) = check(&publish(t, b.encode_to_vec()), 4096)
            else {
                panic!("{seconds}.{nanos}: refused");
            };
            assert_eq!(times_cleared, 2, "{seconds}.{nanos}");
            let times: Vec<_> = batch
                .events
                .iter()
                .map(|e| (e.event.occurred_at, e.event.received_at))
                .collect();
            assert_eq!(times, [(None, Some(good)), (Some(good), None)]);
            // What the store gets is the event as it is now, without the
            // bad time.
            for r in &batch.events {
                assert_eq!(Event::decode(r.raw.clone()).unwrap(), r.event);
            }
        }
        let s = PostStatus {
            post_id: "p-9".into(),
            ..Default::default()
        };
        assert_eq!(
            reason(&publish("vigil/v1/posts/p-1/status", s.encode_to_vec())),
            Reject::PostMismatch
        );
    }
}
