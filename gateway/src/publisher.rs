//! The publisher: from the outbox to the operations center over mTLS MQTT.
//!
//! Events leave in `EventBatch`es, in seq order, at QoS 1 on
//! `vigil/v1/posts/{post}/events`. A broker PUBACK proves nothing (the
//! embedded broker keeps messages in memory only, and an MQTT 3.1.1 broker
//! acknowledges publishes its ACL dropped), so an event stays in the outbox
//! until a `Receipt` on `…/receipts` covers its seq. Everything not yet
//! receipted is sent again after every (re)connect, when no receipt has come
//! for `resend_after` while events were outstanding, and when the operations
//! center asks for it; the operations center stores by `(post, seq)`, so a
//! repeat costs bandwidth, never a duplicate.
//!
//! The post id is the CN of the gateway's certificate: the broker lets a
//! post publish only under its own id, so there is nothing to configure.
//! A retained `PostStatus` says ONLINE on connect; the last will (also
//! retained) says OFFLINE when the connection drops without a goodbye.
//!
//! Several brokers (`[mqtt] servers`, in order of preference): the gateway
//! is connected to one at a time. It starts with the first. Whenever a
//! connection fails — an attempt that gets no CONNACK, or an established
//! connection lost — it waits the reconnect backoff and tries the next
//! broker of the list; after the last it starts again from the first. So
//! it stays on a broker that works, moves on from one that does not, and
//! comes back to the first broker the next time its connection fails
//! anywhere else (once the first answers again, the gateway is on it after
//! at most one pass through the list). Every broker's certificate is
//! checked against the host name of its own entry. Each connection attempt
//! has a number (`PostStatus.connection`, from 1 at every start) that its
//! ONLINE status and its last will both carry, so the operations center can
//! tell a late will from a broker the post has left (an older connection)
//! from a current one. Nothing else changes with the broker: receipts are
//! per post (the operations center publishes them on every broker it
//! hears), and after every (re)connect, to any broker, the gateway re-sends
//! everything not receipted.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use rumqttc::{
    AsyncClient, Event as MqttEvent, EventLoop, LastWill, MqttOptions, Packet, QoS,
    TlsConfiguration, Transport,
};
use time::OffsetDateTime;
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use vigil_proto::{
    Message,
    topics::{self, TopicKind},
    v1::{PostCommand, PostState, PostStatus, Receipt, post_command},
};

use crate::{
    outbox::{Outbox, encode_batch},
    signals::timestamp,
};

/// Events sent but not yet receipted, at most. Past it the publisher waits
/// for receipts: a stalled operations center is not flooded.
const MAX_UNRECEIPTED_IN_FLIGHT: u64 = 20_000;
/// Most bytes in one `EventBatch` (beyond its first event).
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Largest MQTT packet sent or accepted.
const MAX_PACKET: usize = 1024 * 1024;
/// Requests queued towards the MQTT event loop.
const CLIENT_QUEUE: usize = 64;
/// Notices (connects, receipts, commands) queued from the event loop to the
/// publisher. The event loop waits when it is full, which stops reading
/// from the broker: backpressure, nothing is dropped.
const NOTICE_QUEUE: usize = 256;
/// Reconnect backoff bounds; each wait is randomised (full jitter) so a
/// region's posts do not reconnect in lockstep after a broker restart.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a clean shutdown waits for the OFFLINE status to go out.
const GOODBYE_GRACE: Duration = Duration::from_secs(2);

/// Where and how to publish.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// `(host, port)` of each broker, in order of preference (at least one).
    pub brokers: Vec<(String, u16)>,
    pub tls: Arc<rustls::ClientConfig>,
    pub post_id: String,
    pub keep_alive: Duration,
    pub batch_max_events: usize,
    pub resend_after: Duration,
}

/// Counters of the publisher.
#[derive(Debug, Default)]
pub struct PublisherMetrics {
    pub connects: AtomicU64,
    pub disconnects: AtomicU64,
    pub batches_sent: AtomicU64,
    pub events_sent: AtomicU64,
    pub resends: AtomicU64,
    pub receipts: AtomicU64,
    pub rejected_messages: AtomicU64,
    /// Moves to another broker of the list after a failed connection.
    pub failovers: AtomicU64,
    /// Index in the broker list of the broker connected to, or being tried.
    pub broker: AtomicU64,
}

enum Notice {
    /// Connected to the broker at this index of the list, in the
    /// connection attempt with this number.
    Connected {
        broker: usize,
        connection: u64,
    },
    Disconnected(String),
    Message {
        topic: String,
        payload: Bytes,
    },
}

/// Runs until `shutdown`: publishes the outbox, applies receipts.
pub async fn run(
    config: PublisherConfig,
    outbox: Outbox,
    metrics: Arc<PublisherMetrics>,
    shutdown: CancellationToken,
) {
    let boot_id = format!("{:016x}", rand::random::<u64>());
    let status_topic = topics::topic(&config.post_id, TopicKind::Status);
    assert!(
        !config.brokers.is_empty(),
        "the config lists at least one broker"
    );
    let dialer = Dialer {
        config: config.clone(),
        boot_id: boot_id.clone(),
        outbox: outbox.clone(),
    };
    let (client, eventloop) = AsyncClient::new(dialer.options(0, 1), CLIENT_QUEUE);

    let (notices_tx, notices) = mpsc::channel(NOTICE_QUEUE);
    let loop_stop = CancellationToken::new();
    let loop_task = tokio::spawn(drive(
        eventloop,
        dialer,
        notices_tx,
        loop_stop.clone(),
        metrics.clone(),
    ));

    let mut publisher = Publisher {
        config,
        outbox,
        client,
        metrics,
        boot_id,
        connected: false,
        connection: 0,
        sent_through: 0,
        last_progress: Instant::now(),
    };
    publisher.run(notices, shutdown).await;

    // Goodbye: a clean shutdown says OFFLINE itself (the will is only for
    // abrupt ones), then disconnects.
    if publisher.connected {
        let offline = status(
            &publisher.config.post_id,
            &publisher.boot_id,
            publisher.connection,
            PostState::Offline,
            &publisher.outbox,
        );
        let _ = publisher
            .client
            .publish(
                status_topic,
                QoS::AtLeastOnce,
                true,
                offline.encode_to_vec(),
            )
            .await;
        let _ = publisher.client.disconnect().await;
    }
    // The event loop keeps running until the broker closes the connection
    // after our DISCONNECT, or the grace period ends.
    let mut loop_task = loop_task;
    if !publisher.connected {
        loop_stop.cancel();
    }
    if tokio::time::timeout(GOODBYE_GRACE, &mut loop_task)
        .await
        .is_err()
    {
        loop_stop.cancel();
        let _ = loop_task.await;
    }
}

/// The broker to try after the one at `current` failed: the next one, and
/// after the last the first again.
fn next_broker(current: usize, count: usize) -> usize {
    (current + 1) % count
}

/// What it takes to connect to each broker of the list.
struct Dialer {
    config: PublisherConfig,
    boot_id: String,
    outbox: Outbox,
}

impl Dialer {
    /// The options of connection attempt number `connection`, to the broker
    /// at `index` of the list: its address (also the name its certificate
    /// must carry) and a last will that names this connection.
    fn options(&self, index: usize, connection: u64) -> MqttOptions {
        let c = &self.config;
        let (host, port) = &c.brokers[index];
        let will = status(
            &c.post_id,
            &self.boot_id,
            connection,
            PostState::Offline,
            &self.outbox,
        );
        let mut options = MqttOptions::new(c.post_id.clone(), host.clone(), *port);
        options
            .set_keep_alive(c.keep_alive)
            .set_clean_session(true)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET)
            .set_last_will(LastWill::new(
                topics::topic(&c.post_id, TopicKind::Status),
                will.encode_to_vec(),
                QoS::AtLeastOnce,
                true,
            ))
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                c.tls.clone(),
            )));
        options
    }
}

/// Polls the MQTT event loop (which also reconnects), forwarding what the
/// publisher needs to know. After a failed connection it points the event
/// loop at the next broker of the list (see the module's notes), with the
/// next connection number in its will.
async fn drive(
    mut eventloop: EventLoop,
    dialer: Dialer,
    notices: mpsc::Sender<Notice>,
    stop: CancellationToken,
    metrics: Arc<PublisherMetrics>,
) {
    let mut backoff = BACKOFF_MIN;
    let mut current = 0;
    let mut connection = 1;
    let count = dialer.config.brokers.len();
    metrics.broker.store(0, Ordering::Relaxed);
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            event = eventloop.poll() => event,
        };
        let notice = match event {
            Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                backoff = BACKOFF_MIN;
                metrics.connects.fetch_add(1, Ordering::Relaxed);
                Notice::Connected {
                    broker: current,
                    connection,
                }
            }
            Ok(MqttEvent::Incoming(Packet::Publish(p))) => Notice::Message {
                topic: p.topic,
                payload: p.payload,
            },
            Ok(_) => continue,
            Err(e) => {
                metrics.disconnects.fetch_add(1, Ordering::Relaxed);
                let (host, port) = eventloop.mqtt_options.broker_address();
                let reason = format!("{host}:{port}: {e}");
                if notices.send(Notice::Disconnected(reason)).await.is_err() {
                    return;
                }
                // The event loop has dropped its connection; its next poll
                // connects with these options.
                let next = next_broker(current, count);
                connection += 1;
                eventloop.mqtt_options = dialer.options(next, connection);
                if next != current {
                    current = next;
                    metrics.failovers.fetch_add(1, Ordering::Relaxed);
                    metrics.broker.store(current as u64, Ordering::Relaxed);
                }
                let wait = backoff.mul_f64(rand::random::<f64>()).max(BACKOFF_MIN);
                backoff = (backoff * 2).min(BACKOFF_MAX);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => continue,
                }
            }
        };
        if notices.send(notice).await.is_err() {
            return;
        }
    }
}

struct Publisher {
    config: PublisherConfig,
    outbox: Outbox,
    client: AsyncClient,
    metrics: Arc<PublisherMetrics>,
    boot_id: String,
    connected: bool,
    /// Number of the current (or last) connection; its statuses carry it.
    connection: u64,
    /// Highest seq handed to the broker in this connection.
    sent_through: u64,
    /// Last time receipts moved forward (or a resend started).
    last_progress: Instant,
}

impl Publisher {
    async fn run(&mut self, mut notices: mpsc::Receiver<Notice>, shutdown: CancellationToken) {
        let mut outbox_changes = self.outbox.watch();
        loop {
            let state = self.outbox.state();
            let outstanding = self.sent_through > state.receipted_through;
            let can_send = self.connected
                && self.sent_through < state.last_seq
                && self.sent_through - state.receipted_through < MAX_UNRECEIPTED_IN_FLIGHT;
            let resend_at = self.last_progress + self.config.resend_after;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                notice = notices.recv() => match notice {
                    Some(notice) => self.on_notice(notice).await,
                    None => return,
                },
                sent = self.send_next(), if can_send => {
                    if let Err(e) = sent {
                        warn!(error = %e, "publish failed");
                    }
                }
                _ = tokio::time::sleep_until(resend_at), if self.connected && outstanding => {
                    warn!(
                        from_seq = state.receipted_through + 1,
                        through = self.sent_through,
                        "no receipt for a while: re-sending what is not receipted"
                    );
                    self.restart_from_receipted();
                }
                changed = outbox_changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }

    fn restart_from_receipted(&mut self) {
        let receipted = self.outbox.state().receipted_through;
        if self.sent_through > receipted {
            self.metrics.resends.fetch_add(1, Ordering::Relaxed);
        }
        self.sent_through = receipted;
        self.last_progress = Instant::now();
    }

    async fn on_notice(&mut self, notice: Notice) {
        match notice {
            Notice::Connected { broker, connection } => {
                let (host, port) = &self.config.brokers[broker];
                self.connection = connection;
                info!(post = %self.config.post_id, broker = %format!("{host}:{port}"), "connected to broker");
                self.connected = true;
                // Whatever the broker or the operations center lost while we
                // were away is sent again.
                self.restart_from_receipted();
                for kind in [TopicKind::Receipts, TopicKind::Commands] {
                    let topic = topics::topic(&self.config.post_id, kind);
                    if let Err(e) = self.client.subscribe(topic, QoS::AtLeastOnce).await {
                        warn!(error = %e, "subscribe failed");
                    }
                }
                self.publish_status().await;
            }
            Notice::Disconnected(reason) => {
                if self.connected {
                    warn!(reason, "disconnected from broker");
                } else {
                    debug!(reason, "broker connection attempt failed");
                }
                self.connected = false;
            }
            Notice::Message { topic, payload } => self.on_message(&topic, &payload).await,
        }
    }

    async fn on_message(&mut self, topic: &str, payload: &[u8]) {
        let post = self.config.post_id.as_str();
        match topics::parse(topic) {
            Some((p, TopicKind::Receipts)) if p == post => match Receipt::decode(payload) {
                Ok(receipt) if receipt.post_id == post => {
                    self.metrics.receipts.fetch_add(1, Ordering::Relaxed);
                    let before = self.outbox.state().receipted_through;
                    if receipt.durable_through_seq > before {
                        if let Err(e) = self.outbox.receipt(receipt.durable_through_seq).await {
                            warn!(error = %e, "cannot apply receipt");
                            return;
                        }
                        self.last_progress = Instant::now();
                        let after = self.outbox.state().receipted_through;
                        // Never re-send what is now covered.
                        self.sent_through = self.sent_through.max(after);
                        debug!(through = after, "receipt");
                    }
                }
                Ok(receipt) => {
                    self.reject(topic, &format!("receipt for post {:?}", receipt.post_id))
                }
                Err(e) => self.reject(topic, &format!("malformed receipt: {e}")),
            },
            Some((p, TopicKind::Commands)) if p == post => match PostCommand::decode(payload) {
                Ok(command) => self.on_command(command).await,
                Err(e) => self.reject(topic, &format!("malformed command: {e}")),
            },
            _ => self.reject(topic, "unexpected topic"),
        }
    }

    async fn on_command(&mut self, command: PostCommand) {
        info!(command_id = %command.command_id, issued_by = %command.issued_by, "command");
        match command.command {
            Some(post_command::Command::ResendUnreceipted(_)) => self.restart_from_receipted(),
            Some(post_command::Command::PublishStatus(_)) => self.publish_status().await,
            Some(post_command::Command::TestModeChanged(t)) => {
                info!(
                    enabled = t.enabled,
                    "test mode changed at the operations center"
                );
            }
            None => self.reject("commands", "empty command"),
        }
    }

    fn reject(&self, topic: &str, why: &str) {
        self.metrics
            .rejected_messages
            .fetch_add(1, Ordering::Relaxed);
        warn!(topic, why, "ignored message from broker");
    }

    async fn publish_status(&self) {
        let online = status(
            &self.config.post_id,
            &self.boot_id,
            self.connection,
            PostState::Online,
            &self.outbox,
        );
        let topic = topics::topic(&self.config.post_id, TopicKind::Status);
        if let Err(e) = self
            .client
            .publish(topic, QoS::AtLeastOnce, true, online.encode_to_vec())
            .await
        {
            warn!(error = %e, "cannot publish status");
        }
    }

    /// Publishes the next batch after `sent_through`. Cancel-safe: the
    /// position moves only once the batch is queued to the broker.
    async fn send_next(&mut self) -> Result<(), String> {
        let from = self.sent_through + 1;
        let batch = self
            .outbox
            .read_from(from, self.config.batch_max_events, MAX_BATCH_BYTES)
            .await
            .map_err(|e| e.to_string())?;
        let Some(last) = batch.last().map(|e| e.seq) else {
            return Ok(());
        };
        // Events below `from` were receipted and deleted meanwhile: fine.
        let payload = encode_batch(&self.config.post_id, &batch);
        let topic = topics::topic(&self.config.post_id, TopicKind::Events);
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|e| e.to_string())?;
        self.metrics.batches_sent.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .events_sent
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.sent_through = last;
        Ok(())
    }
}

fn status(
    post_id: &str,
    boot_id: &str,
    connection: u64,
    state: PostState,
    outbox: &Outbox,
) -> PostStatus {
    let o = outbox.state();
    PostStatus {
        post_id: post_id.to_owned(),
        state: state.into(),
        at: Some(timestamp(OffsetDateTime::now_utc())),
        gateway_version: env!("CARGO_PKG_VERSION").to_owned(),
        outbox_depth: o.depth,
        last_seq: o.last_seq,
        receipted_through_seq: o.receipted_through,
        boot_id: boot_id.to_owned(),
        connection,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failover_goes_down_the_list_and_back_to_the_first() {
        assert_eq!(next_broker(0, 1), 0, "one broker: always that one");
        let mut at = 0;
        let mut tried = Vec::new();
        for _ in 0..7 {
            at = next_broker(at, 3);
            tried.push(at);
        }
        assert_eq!(tried, [1, 2, 0, 1, 2, 0, 1]);
    }
}
