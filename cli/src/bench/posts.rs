//! The simulated posts: one mTLS MQTT connection each, publishing
//! `EventBatch`es with gap-free seqs the way a gateway's publisher does, and
//! counting the `Receipt`s that come back.
//!
//! Each post is two tasks: one polls the rumqttc event loop (which also
//! reconnects, with the gateway's backoff) and applies receipts; the other
//! sends. The sender keeps at most `window` events sent but not receipted,
//! and after every reconnect, when receipts stop coming for
//! [`RESEND_AFTER`], or when the operations center asks (a
//! `ResendUnreceipted` command, as a new leader does), sends again from the
//! last receipt, as a gateway does;
//! the operations center stores by `(post, seq)`, so a repeat is harmless.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result};
use rumqttc::{
    AsyncClient, Event as MqttEvent, EventLoop, LastWill, MqttOptions, Packet, QoS,
    TlsConfiguration, Transport,
};
use tokio::{
    sync::{Notify, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use vigil_proto::{
    Message as _, Timestamp,
    topics::{self, TopicKind},
    v1::{
        AlarmProtocol, AlarmSignal, Event, EventBatch, EventCategory, PostCommand, PostState,
        PostStatus, Receipt, Severity, Source, SourceKind, event::Body, post_command,
    },
};

/// Requests queued towards one post's MQTT event loop; a full queue makes
/// the sender wait.
const CLIENT_QUEUE: usize = 64;
/// Largest MQTT packet a post sends or accepts.
const MAX_PACKET: usize = 1024 * 1024;
/// Reconnect backoff: the gateway publisher's policy (full jitter, doubling
/// from 200 ms up to 30 s), so the reconnect figure is what a region of
/// real gateways would see.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// With events outstanding and no receipt for this long, send again from
/// the last receipt (a gateway's `resend_after_secs`).
const RESEND_AFTER: Duration = Duration::from_secs(5);
/// Longest sleep of an idle sender between two looks at its schedule.
const IDLE_TICK: Duration = Duration::from_millis(50);

/// What every post sends.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Load {
    /// Each post's `target` events, as fast as receipts allow.
    Count,
    /// Events per second per post, for `duration`.
    Rate { per_post: f64, duration: Duration },
}

/// The settings shared by every post.
#[derive(Debug, Clone)]
pub(crate) struct PostSettings {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) batch: u64,
    pub(crate) window: u64,
}

/// Live counts of one post, read by the progress line and the report.
#[derive(Debug, Default)]
pub(crate) struct PostStats {
    /// Highest seq sent (each event counted once, resends not).
    pub(crate) sent: AtomicU64,
    /// Highest seq covered by a receipt.
    pub(crate) receipted: AtomicU64,
    /// CONNACKs received.
    pub(crate) connects: AtomicU64,
    /// Events sent again (after a reconnect or a silence).
    pub(crate) resent: AtomicU64,
    /// Events the post is to send in all; set when the load is known.
    pub(crate) target: AtomicU64,
    /// The operations center asked for everything not receipted again.
    pub(crate) resend_asked: AtomicBool,
    /// With a rate, how long after the common start this post's schedule
    /// begins (nanoseconds), so that the posts' sends interleave instead
    /// of arriving together at every tick.
    pub(crate) phase_ns: AtomicU64,
}

/// One post, ready to connect.
#[derive(Debug)]
pub(crate) struct Post {
    pub(crate) id: String,
    pub(crate) tls: Arc<rustls_config::ClientConfig>,
    pub(crate) stats: Arc<PostStats>,
}

/// The rustls client config type, named through rumqttc's re-export so the
/// cli needs no rustls dependency of its own.
pub(crate) mod rustls_config {
    pub(crate) use rumqttc::tokio_rustls::rustls::ClientConfig;
}

/// Starts `post`: it connects at once, then waits for `start` to carry the
/// load and its start time before sending. Runs until `stop`.
pub(crate) fn spawn(
    post: &Post,
    settings: &PostSettings,
    start: watch::Receiver<Option<(Load, Instant)>>,
    stop: &CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) {
    let status_topic = topics::topic(&post.id, TopicKind::Status);
    let offline = status(&post.id, PostState::Offline).encode_to_vec();
    let mut options = MqttOptions::new(post.id.clone(), settings.host.clone(), settings.port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_last_will(LastWill::new(
            &status_topic,
            offline,
            QoS::AtLeastOnce,
            true,
        ))
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            post.tls.clone(),
        )));
    let (client, eventloop) = AsyncClient::new(options, CLIENT_QUEUE);
    let (connected_tx, connected) = watch::channel(0u64);
    let receipts = Arc::new(Notify::new());
    tracker.spawn(drive(
        eventloop,
        post.stats.clone(),
        connected_tx,
        receipts.clone(),
        post.id.clone(),
        stop.clone(),
    ));
    let sender = Sender {
        id: post.id.clone(),
        client,
        stats: post.stats.clone(),
        settings: settings.clone(),
    };
    tracker.spawn(sender.run(connected, receipts, start, stop.clone()));
}

/// Polls the event loop: counts connections, applies receipts.
async fn drive(
    mut eventloop: EventLoop,
    stats: Arc<PostStats>,
    connected: watch::Sender<u64>,
    receipts: Arc<Notify>,
    id: String,
    stop: CancellationToken,
) {
    let receipts_topic = topics::topic(&id, TopicKind::Receipts);
    let commands_topic = topics::topic(&id, TopicKind::Commands);
    let mut backoff = BACKOFF_MIN;
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            e = eventloop.poll() => e,
        };
        match event {
            Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                backoff = BACKOFF_MIN;
                let n = stats.connects.fetch_add(1, Relaxed) + 1;
                connected.send_replace(n);
            }
            Ok(MqttEvent::Incoming(Packet::Publish(p))) if p.topic == receipts_topic => {
                match Receipt::decode(p.payload) {
                    Ok(r) => {
                        stats.receipted.fetch_max(r.durable_through_seq, Relaxed);
                        receipts.notify_one();
                    }
                    Err(e) => tracing::warn!(post = %id, "malformed receipt: {e}"),
                }
            }
            Ok(MqttEvent::Incoming(Packet::Publish(p))) if p.topic == commands_topic => {
                match PostCommand::decode(p.payload) {
                    Ok(PostCommand {
                        command: Some(post_command::Command::ResendUnreceipted(_)),
                        ..
                    }) => {
                        stats.resend_asked.store(true, Relaxed);
                        receipts.notify_one();
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(post = %id, "malformed command: {e}"),
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(post = %id, "connection: {e}");
                let wait = backoff.mul_f64(rand::random::<f64>()).max(BACKOFF_MIN);
                backoff = (backoff * 2).min(BACKOFF_MAX);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

struct Sender {
    id: String,
    client: AsyncClient,
    stats: Arc<PostStats>,
    settings: PostSettings,
}

impl Sender {
    async fn run(
        self,
        mut connected: watch::Receiver<u64>,
        receipts: Arc<Notify>,
        mut start: watch::Receiver<Option<(Load, Instant)>>,
        stop: CancellationToken,
    ) {
        let result = tokio::select! {
            () = stop.cancelled() => Ok(()),
            r = self.send_all(&mut connected, &receipts, &mut start) => r,
        };
        // At the end of a run the channels close as the bench lets go of
        // them; only an earlier stop is worth a word.
        if let Err(e) = result
            && !stop.is_cancelled()
        {
            tracing::warn!(post = %self.id, "sender stopped: {e:#}");
        }
    }

    async fn send_all(
        &self,
        connected: &mut watch::Receiver<u64>,
        receipts: &Notify,
        start: &mut watch::Receiver<Option<(Load, Instant)>>,
    ) -> Result<()> {
        let events_topic = topics::topic(&self.id, TopicKind::Events);
        let receipts_topic = topics::topic(&self.id, TopicKind::Receipts);
        let commands_topic = topics::topic(&self.id, TopicKind::Commands);
        let status_topic = topics::topic(&self.id, TopicKind::Status);
        let template = template(&self.id);
        let mut seen_connection = 0u64;
        // Highest seq sent in this connection.
        let mut sent_through = 0u64;
        let mut last_progress = Instant::now();
        let mut last_receipted = 0u64;
        loop {
            let connection = *connected.borrow_and_update();
            if connection != seen_connection {
                seen_connection = connection;
                // A clean session: subscribe again, say ONLINE, and send
                // again whatever no receipt covers.
                self.client
                    .subscribe(&receipts_topic, QoS::AtLeastOnce)
                    .await
                    .context("subscribe")?;
                self.client
                    .subscribe(&commands_topic, QoS::AtLeastOnce)
                    .await
                    .context("subscribe")?;
                self.client
                    .publish(
                        &status_topic,
                        QoS::AtLeastOnce,
                        true,
                        status(&self.id, PostState::Online).encode_to_vec(),
                    )
                    .await
                    .context("publish status")?;
                let receipted = self.stats.receipted.load(Relaxed);
                self.resend_from(receipted, &mut sent_through);
                last_progress = Instant::now();
            }
            let load = *start.borrow_and_update();
            let receipted = self.stats.receipted.load(Relaxed);
            if self.stats.resend_asked.swap(false, Relaxed) {
                self.resend_from(receipted, &mut sent_through);
                last_progress = Instant::now();
            }
            if receipted > last_receipted {
                last_receipted = receipted;
                last_progress = Instant::now();
            }
            let mut wake = Instant::now() + IDLE_TICK;
            if let (Some((load, t0)), true) = (load, seen_connection > 0) {
                let target = self.stats.target.load(Relaxed);
                let phase = Duration::from_nanos(self.stats.phase_ns.load(Relaxed));
                let (allowed, next) = allowed(load, t0 + phase, target);
                if let Some(next) = next {
                    wake = wake.min(next);
                }
                let room = self
                    .settings
                    .window
                    .saturating_sub(sent_through.saturating_sub(receipted));
                let n = allowed
                    .saturating_sub(sent_through)
                    .min(room)
                    .min(self.settings.batch);
                if n > 0 {
                    if sent_through == receipted {
                        // Nothing was outstanding: the silence before this
                        // send is no reason to resend.
                        last_progress = Instant::now();
                    }
                    let batch = EventBatch {
                        post_id: self.id.clone(),
                        events: (sent_through + 1..=sent_through + n)
                            .map(|seq| Event {
                                seq,
                                received_at: Some(now()),
                                ..template.clone()
                            })
                            .collect(),
                    };
                    self.client
                        .publish(
                            &events_topic,
                            QoS::AtLeastOnce,
                            false,
                            batch.encode_to_vec(),
                        )
                        .await
                        .context("publish events")?;
                    sent_through += n;
                    self.stats.sent.fetch_max(sent_through, Relaxed);
                    continue;
                }
                if sent_through > receipted && last_progress.elapsed() >= RESEND_AFTER {
                    self.resend_from(receipted, &mut sent_through);
                    last_progress = Instant::now();
                    continue;
                }
            }
            tokio::select! {
                () = receipts.notified() => {}
                r = connected.changed() => r.context("event loop ended")?,
                r = start.changed() => r.context("bench ended")?,
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    fn resend_from(&self, receipted: u64, sent_through: &mut u64) {
        let again = self.stats.sent.load(Relaxed).saturating_sub(receipted);
        self.stats.resent.fetch_add(again, Relaxed);
        *sent_through = receipted;
    }
}

/// How many events the schedule allows by now, and when the next one
/// becomes due (`None` when nothing more will).
fn allowed(load: Load, t0: Instant, target: u64) -> (u64, Option<Instant>) {
    match load {
        Load::Count => (target, None),
        Load::Rate { per_post, duration } => {
            let total = target;
            let elapsed = Instant::now()
                .saturating_duration_since(t0)
                .min(duration)
                .as_secs_f64();
            let now = ((per_post * elapsed) as u64).min(total);
            let next =
                (now < total).then(|| t0 + Duration::from_secs_f64((now + 1) as f64 / per_post));
            (now, next)
        }
    }
}

/// Events the `i`th of `posts` posts sends in all when they share `total`.
pub(crate) fn share(total: u64, posts: u64, i: u64) -> u64 {
    total / posts + u64::from(i < total % posts)
}

fn now() -> Timestamp {
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: t.as_secs() as i64,
        nanos: t.subsec_nanos() as i32,
    }
}

/// The event every simulated post sends: a panel's periodic test report
/// (SIA `RP`), the commonest message a real panel sends; it is stored and
/// receipted like any other but opens no incident, so the incident feed
/// carries only the latency probes' alarms.
fn template(post: &str) -> Event {
    Event {
        post_id: post.to_owned(),
        source: Some(Source {
            device_id: "1234".into(),
            kind: SourceKind::AlarmPanel as i32,
        }),
        severity: Severity::Info as i32,
        category: EventCategory::Test as i32,
        restore: false,
        description: "Automatic test report".into(),
        body: Some(Body::Alarm(AlarmSignal {
            account: "1234".into(),
            line: "0".into(),
            protocol: AlarmProtocol::SiaDcs as i32,
            sia_code: "RP".into(),
            ..AlarmSignal::default()
        })),
        ..Event::default()
    }
}

fn status(post: &str, state: PostState) -> PostStatus {
    PostStatus {
        post_id: post.to_owned(),
        state: state as i32,
        at: Some(now()),
        gateway_version: concat!("bench-", env!("CARGO_PKG_VERSION")).into(),
        ..PostStatus::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_schedule_allows_events_in_proportion_to_time() {
        let load = Load::Rate {
            per_post: 10.0,
            duration: Duration::from_secs(2),
        };
        let t0 = Instant::now() - Duration::from_millis(550);
        let (n, next) = allowed(load, t0, 20);
        assert_eq!(n, 5);
        assert!(next.is_some());
        let (n, next) = allowed(load, Instant::now() - Duration::from_secs(5), 20);
        assert_eq!((n, next), (20, None));
        assert_eq!(allowed(Load::Count, Instant::now(), 7), (7, None));
    }

    #[test]
    fn shares_add_up_to_the_total() {
        let total: u64 = (0..7).map(|i| share(100, 7, i)).sum();
        assert_eq!(total, 100);
        assert_eq!(share(100, 7, 0), 15);
        assert_eq!(share(100, 7, 6), 14);
    }
}
