//! One client's MQTT session, from its CONNECT to its end, attached to the
//! router in process.
//!
//! 1. Read the first packet under `limits.connect_timeout`: a CONNECT for
//!    MQTT 3.1.1 or 5. Check the role, that the client id is the certificate
//!    identity (an empty one becomes the identity), and the will topic. A
//!    CONNECT that passes is the end of pre-authentication: the listener is
//!    told, and no longer sheds the connection or holds it to its deadline.
//! 2. Claim the identity in the [`Registry`] (a takeover, or a refusal when
//!    two clients fight over one identity), attach a link to the router and
//!    answer CONNACK.
//! 3. Run one loop that reads the client, reads the router's link and writes
//!    to the client, all in this task. The client's packets are checked and
//!    handed to the router as typed operations (publish with topic, payload
//!    and retain; subscribe; unsubscribe; acknowledgment of a delivery);
//!    MQTT 5 properties stay here. The front answers PUBACK, PUBREC,
//!    PUBCOMP, UNSUBACK and PINGRESP itself, and encodes every packet the
//!    router has for the client in the client's own protocol version.
//!
//! Writes are coalesced: everything produced while handling one batch of
//! input (one read, or everything the router had queued) leaves in one
//! write, so a run of small packets becomes one TLS record.
//!
//! Delivery to the client uses the router's QoS 1 window (up to 100
//! unacknowledged publishes per client). rumqttd requires acknowledgments in
//! the order it sent the publishes and drops a link on any other order, so
//! the front takes them in any order and hands the router the longest
//! acknowledged prefix. A v5 client's receive maximum is honoured by
//! holding back deliveries beyond it.
//!
//! On a violation, MQTT 3.1.1 has no way to say no, so the connection is
//! closed (the client's will is then published, as for any abnormal end).
//! MQTT 5 gets an answer and the connection stays: PUBACK or PUBREC 0x87
//! for a refused QoS 1/2 publish (a QoS 0 one is dropped), SUBACK 0x87 for
//! each filter of a refused SUBSCRIBE. An oversize packet is the exception:
//! v5 clients get DISCONNECT 0x95 "packet too large" and the connection
//! closes. Every refusal is logged with the identity and counted.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::{Buf, Bytes, BytesMut};
use rumqttd::protocol::{
    Packet, PubAck, PubAckReason, Publish, Subscribe, SubscribeReasonCode, Unsubscribe,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::mpsc,
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use vigil_pki::Peer;

use crate::{
    acl,
    config::Limits,
    metrics::{Metrics, Reject},
    mqtt::{self, Connect, Frame, Reason, Refusal, Version, WireError, kind},
    registry::{self, Claim, Delivery, Direct, Registry},
    router::{Link, Ring, Ringing, Router},
};

/// First size of a connection's read buffer; it grows to hold the largest
/// packet in flight and goes back to this size when the connection idles.
const READ_BUFFER: usize = 2 * 1024;
/// Bytes waiting for the client above which the session takes no more
/// deliveries from the router until the client reads. The router keeps
/// them meanwhile (within its window of 100 per client).
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// Bytes waiting for the client above which the session also stops reading
/// it. Far above what a client that reads its acknowledgments leaves: the
/// client is still read while its deliveries back up, since a client
/// blocked writing to us (its PUBACKs, its publishes) may stop reading
/// until it can write; refusing to read it then would deadlock both.
const READ_HARD_LIMIT: usize = 1024 * 1024;
/// A buffer larger than this is given back when it empties at a
/// housekeeping tick.
const SHRINK_ABOVE: usize = 16 * 1024;
/// Packets a link's inbound buffer keeps room for when idle.
const LINK_BUFFER: usize = 4;
/// How often an idle session gives back buffer memory, and how often it
/// checks the keep-alive deadline at most.
const HOUSEKEEPING: Duration = Duration::from_secs(10);
/// Time to attach to the router; it answers in microseconds unless stuck.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);
/// After the session ends, time left to write the last packets and close.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Topic aliases a v5 client may use (advertised in the CONNACK).
const ALIAS_MAX: u16 = 16;
/// Receipts and commands in flight to one post at once.
const DIRECT_WINDOW: usize = 100;
/// Least time between two log lines about one post's throttling.
const THROTTLE_LOG_EVERY: Duration = Duration::from_secs(60);
/// QoS 2 publishes a client may have waiting for PUBREL (advertised to v5
/// clients as the receive maximum; a 3.1.1 client over it is closed).
const INBOUND_QOS2_MAX: u16 = 128;

/// Connections that sent no CONNECT in time: one log line per interval,
/// with a count (each is counted in the metrics).
static LOG_CONNECT_TIMEOUT: vigil_telemetry::log_limit::LogLimiter =
    vigil_telemetry::log_limit::LogLimiter::new(vigil_telemetry::log_limit::PEER_ERROR_INTERVAL);

/// What every session shares.
#[derive(Debug)]
pub(crate) struct Context {
    pub(crate) limits: Limits,
    pub(crate) router: Router,
    pub(crate) registry: Arc<Registry>,
    pub(crate) metrics: Arc<Metrics>,
    /// Numbers sessions, to tell a session from its successor.
    pub(crate) next_id: AtomicU64,
}

/// Runs one client connection, TLS done, to its end; `authenticated` is
/// called once its CONNECT passed every check.
pub(crate) async fn run<S>(
    mut stream: S,
    peer: Peer,
    ctx: &Context,
    shutdown: CancellationToken,
    authenticated: impl FnOnce(),
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut inbuf = BytesMut::with_capacity(READ_BUFFER);
    let first = tokio::select! {
        () = shutdown.cancelled() => return,
        r = tokio::time::timeout(
            ctx.limits.connect_timeout(),
            read_frame(&mut stream, &mut inbuf, ctx.limits.frame_cap()),
        ) => r,
    };
    let frame = match first {
        Err(_) => {
            ctx.metrics.reject(Reject::ConnectTimeout);
            if let Some(count) = LOG_CONNECT_TIMEOUT.hit() {
                info!(reason = %Reject::ConnectTimeout, count, "refused: no CONNECT in time");
            }
            return;
        }
        Ok(Ok(Some(frame))) => frame,
        Ok(Ok(None)) => {
            debug!("closed before CONNECT");
            return;
        }
        Ok(Err(error)) => {
            protocol_error(&ctx.metrics, &error, "before CONNECT");
            return;
        }
    };
    if frame.kind() != kind::CONNECT {
        protocol_error(
            &ctx.metrics,
            &"first packet is not CONNECT",
            "before CONNECT",
        );
        return;
    }
    let version = match mqtt::connect_version(&inbuf, frame) {
        Ok(v) => v,
        Err(error) => {
            if let WireError::Unsupported(_) = error {
                // Answer in 3.1.1 form, which every client version reads.
                let ack = mqtt::connack_refused(Version::V4, Refusal::UnsupportedVersion);
                close_with(&mut stream, &ack).await;
            }
            protocol_error(&ctx.metrics, &error, "CONNECT");
            return;
        }
    };
    let connect = match Connect::decode(version, inbuf.split_to(frame.len())) {
        Ok(c) => c,
        Err(error) => {
            protocol_error(&ctx.metrics, &error, "CONNECT");
            return;
        }
    };
    tracing::Span::current().record("mqtt", version.as_str());

    // Authorisation: role, client id, will.
    let refusal = if !acl::may_connect(peer.role) {
        Some((
            Reject::NotAuthorized,
            "role may not use MQTT",
            String::new(),
        ))
    } else if !connect.client_id.is_empty() && connect.client_id != peer.identity.as_str() {
        Some((
            Reject::NotAuthorized,
            "client id is not the certificate identity",
            connect.client_id.clone(),
        ))
    } else {
        match &connect.will {
            Some(will)
                if !acl::may_will(&peer, &will.topic)
                    || (will.retain && !acl::may_retain(&will.topic)) =>
            {
                Some((Reject::Will, "will topic not allowed", will.topic.clone()))
            }
            _ => None,
        }
    };
    if let Some((reason, why, detail)) = refusal {
        ctx.metrics.reject(reason);
        warn!(identity = %peer.identity, role = %peer.role, %reason, detail, "refused CONNECT: {why}");
        close_with(
            &mut stream,
            &mqtt::connack_refused(version, Refusal::NotAuthorized),
        )
        .await;
        return;
    }
    authenticated();

    let id = ctx.next_id.fetch_add(1, Ordering::Relaxed);
    let (mailbox_tx, mailbox) = if peer.role == vigil_pki::Role::Post {
        let (tx, rx) = mpsc::channel(registry::MAILBOX);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let claim = ctx
        .registry
        .claim(peer.identity.as_str(), id, Instant::now(), mailbox_tx);
    let session = match claim {
        Claim::Fresh(session) => session,
        Claim::TookOver(session) => {
            ctx.metrics.takeover();
            warn!(identity = %peer.identity, "session taken over by a new connection with the same identity");
            session
        }
        Claim::Refused { retry_in } => {
            ctx.metrics.reject(Reject::Takeover);
            warn!(
                identity = %peer.identity,
                reason = %Reject::Takeover,
                retry_in_ms = retry_in.as_millis() as u64,
                "refused CONNECT: this identity keeps taking over its own session (two clients sharing one certificate?)"
            );
            close_with(&mut stream, &mqtt::connack_refused(version, Refusal::Busy)).await;
            return;
        }
    };

    let link = if peer.role == vigil_pki::Role::Post {
        ctx.router.ingress(peer.identity.as_str())
    } else {
        let attach = tokio::time::timeout(
            ATTACH_TIMEOUT,
            ctx.router
                .attach(peer.identity.as_str(), connect.clean_session),
        );
        match attach.await {
            Ok(Ok(link)) => link,
            Ok(Err(error)) => return router_unavailable(ctx, &mut stream, version, &error).await,
            Err(_) => return router_unavailable(ctx, &mut stream, version, &"timed out").await,
        }
    };
    ctx.metrics.authenticated();
    debug!(session_present = link.session_present, "attached");
    link.shrink(LINK_BUFFER);

    let mut out = BytesMut::new();
    let offer = mqtt::Offer {
        receive_maximum: INBOUND_QOS2_MAX,
        topic_alias_max: ALIAS_MAX,
        max_packet_size: u32::try_from(ctx.limits.frame_cap()).unwrap_or(u32::MAX),
    };
    mqtt::connack(version, link.session_present, offer, &mut out);

    let kicked = session.kicked.clone();
    let mut conn = Conn {
        version,
        peer: &peer,
        ctx,
        keep_alive: (connect.keep_alive > 0)
            .then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1_500)),
        will: connect.will,
        client_receive_max: usize::from(connect.receive_maximum),
        client_max_packet: connect.max_packet_size.map_or(usize::MAX, |n| n as usize),
        link,
        inbuf,
        out,
        to_router: Vec::new(),
        ringing: None,
        aliases: HashMap::new(),
        qos2: HashSet::new(),
        inflight: VecDeque::new(),
        held: VecDeque::new(),
        unscheduled: false,
        last_heard: Instant::now(),
        mailbox,
        direct_subs: HashMap::new(),
        direct_inflight: HashSet::new(),
        next_pkid: 0,
        budget: (peer.role == vigil_pki::Role::Post)
            .then(|| Budget::new(&ctx.limits, Instant::now())),
        throttled_until: None,
        throttle_logged: None,
    };
    let (rd, wr) = tokio::io::split(stream);
    let end = conn.serve(rd, wr, &shutdown, &kicked).await;
    drop(session);
    debug!(?end, "session ended");
}

/// How a session ended.
#[derive(Debug)]
enum End {
    /// The client sent DISCONNECT; `will`: v5 "disconnect with will".
    Disconnect { will: bool },
    /// The client closed the connection or it failed, without DISCONNECT.
    Lost,
    /// The client broke the rules; the v5 DISCONNECT reason to send.
    Violation(Option<Reason>),
    /// Nothing heard within 1.5 times the keep-alive.
    KeepAlive,
    /// A newer session with the same identity replaced this one.
    Kicked,
    /// The broker is stopping.
    Shutdown,
    /// The router dropped the link.
    RouterGone,
}

impl End {
    /// Whether the client's will is published.
    fn publishes_will(&self) -> bool {
        match self {
            End::Disconnect { will } => *will,
            End::Lost | End::Violation(_) | End::KeepAlive => true,
            // A takeover is the same client back again: its will (for a
            // post, "offline") must not land after the new session's own
            // status. On shutdown or router loss there is nobody to tell.
            End::Kicked | End::Shutdown | End::RouterGone => false,
        }
    }

    /// The v5 DISCONNECT to send the client, if any.
    fn reason(&self) -> Option<Reason> {
        match self {
            End::Violation(reason) => *reason,
            End::KeepAlive => Some(Reason::KeepAliveTimeout),
            End::Kicked => Some(Reason::SessionTakenOver),
            End::Shutdown => Some(Reason::ServerShuttingDown),
            End::Disconnect { .. } | End::Lost | End::RouterGone => None,
        }
    }
}

/// The state of one attached session.
struct Conn<'a> {
    version: Version,
    peer: &'a Peer,
    ctx: &'a Context,
    /// 1.5 times the client's keep-alive; `None`: no keep-alive.
    keep_alive: Option<Duration>,
    will: Option<mqtt::Will>,
    /// v5 receive maximum: QoS 1 deliveries the client takes at once.
    client_receive_max: usize,
    /// v5 maximum packet size of the client.
    client_max_packet: usize,
    link: Link,
    inbuf: BytesMut,
    /// Encoded packets waiting to be written to the client.
    out: BytesMut,
    /// Operations for the router, handed over in one go per batch.
    to_router: Vec<Packet>,
    /// The router's channel was full: wait before handing it anything more.
    ringing: Option<Ringing>,
    /// v5 topic aliases the client set up, for topics the ACL allowed.
    aliases: HashMap<u16, Bytes>,
    /// QoS 2 publishes routed and waiting for the client's PUBREL.
    qos2: HashSet<u16>,
    /// Packet ids of QoS 1 deliveries written to the client, in the router's
    /// order, and whether the client has acknowledged each.
    inflight: VecDeque<(u16, bool)>,
    /// Deliveries held back by the client's receive maximum.
    held: VecDeque<Publish>,
    /// The router paused this link until told it is ready for more.
    unscheduled: bool,
    last_heard: Instant,
    /// Receipts and commands for this post, delivered by the front (posts
    /// only; see [`Conn::subscribe`]).
    mailbox: Option<mpsc::Receiver<Direct>>,
    /// The post's own topics it subscribed to, with the granted QoS.
    direct_subs: HashMap<Bytes, u8>,
    /// Packet ids of QoS 1 messages from the mailbox awaiting PUBACK.
    direct_inflight: HashSet<u16>,
    next_pkid: u16,
    /// A post's publish budget; `None` for the ops center.
    budget: Option<Budget>,
    /// Over budget: the client is not read until then.
    throttled_until: Option<Instant>,
    throttle_logged: Option<Instant>,
}

impl Conn<'_> {
    async fn serve<R, W>(
        &mut self,
        mut rd: R,
        mut wr: W,
        shutdown: &CancellationToken,
        kicked: &CancellationToken,
    ) -> End
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let end = self.pump(&mut rd, &mut wr, shutdown, kicked).await;
        self.finish(&end);
        if let Some(reason) = end.reason().filter(|_| self.version == Version::V5) {
            self.out.extend_from_slice(&mqtt::disconnect(reason));
        }
        // Best effort: the client may not be reading.
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            wr.write_all(&self.out).await?;
            wr.shutdown().await
        })
        .await;
        end
    }

    async fn pump<R, W>(
        &mut self,
        rd: &mut R,
        wr: &mut W,
        shutdown: &CancellationToken,
        kicked: &CancellationToken,
    ) -> End
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let cap = self.ctx.limits.frame_cap();
        let tick = tokio::time::sleep(self.keep_alive.unwrap_or(HOUSEKEEPING).min(HOUSEKEEPING));
        tokio::pin!(tick);
        loop {
            if let Err(end) = self.take_input(cap) {
                return end;
            }
            if let Err(end) = self.hand_to_router() {
                return end;
            }
            if self.unscheduled && self.out.len() < WRITE_HIGH_WATER {
                // The router paused this link when its buffer filled; now
                // that the client has taken what we had, ask for more.
                self.unscheduled = false;
                let woken = match self.link.receiver() {
                    Some(rx) => rx.wake().await.is_ok(),
                    None => true,
                };
                if !woken {
                    return End::RouterGone;
                }
            }
            let room = self.out.len() < WRITE_HIGH_WATER;
            let may_read = self.out.len() < READ_HARD_LIMIT
                && self.ringing.is_none()
                && self.throttled_until.is_none();
            let throttle =
                tokio::time::sleep_until(self.throttled_until.unwrap_or_else(Instant::now));
            let out = &self.out;
            let inbuf = &mut self.inbuf;
            let rx = self.link.receiver();
            let has_rx = rx.is_some();
            let ringing = &mut self.ringing;
            let direct_room =
                room && self.direct_inflight.len() < self.client_receive_max.min(DIRECT_WINDOW);
            let mailbox = &mut self.mailbox;
            tokio::select! {
                () = shutdown.cancelled() => return End::Shutdown,
                () = kicked.cancelled() => return End::Kicked,
                written = write_some(wr, out), if !out.is_empty() => match written {
                    Ok(n) => {
                        self.out.advance(n);
                    }
                    Err(error) => {
                        debug!(%error, "write to client failed");
                        return End::Lost;
                    }
                },
                read = read_some(rd, inbuf), if may_read => match read {
                    Ok(0) => {
                        debug!(pending = self.inbuf.len(), "client closed");
                        return End::Lost;
                    }
                    Ok(_) => self.last_heard = Instant::now(),
                    Err(error) => {
                        debug!(%error, "client read failed");
                        return End::Lost;
                    }
                },
                note = async move {
                    match rx {
                        Some(rx) => rx.next().await,
                        None => std::future::pending().await,
                    }
                }, if room && has_rx => match note {
                    Ok(note) => {
                        if let Err(end) = self.deliver(note) {
                            return end;
                        }
                        // Everything else the router has queued, in the same batch.
                        loop {
                            let rx = self.link.receiver().expect("a link of its own");
                            match rx.recv_deadline(std::time::Instant::now()) {
                                Ok(note) => {
                                    if let Err(end) = self.deliver(note) {
                                        return end;
                                    }
                                }
                                Err(rumqttd::local::LinkError::RecvTimeout(
                                    flume::RecvTimeoutError::Timeout,
                                )) => break,
                                Err(_) => return self.link_gone(kicked),
                            }
                        }
                    }
                    Err(_) => return self.link_gone(kicked),
                },
                () = throttle, if self.throttled_until.is_some() => self.throttled_until = None,
                direct = async { mailbox.as_mut().expect("guarded").recv().await },
                    if direct_room && mailbox.is_some() => match direct {
                    Some(direct) => self.deliver_direct(&direct),
                    // Replaced by a newer session: the kick follows.
                    None => self.mailbox = None,
                },
                alive = async { ringing.as_mut().expect("guarded").await }, if ringing.is_some() => {
                    self.ringing = None;
                    if !alive {
                        return End::RouterGone;
                    }
                },
                () = &mut tick => {
                    if let Some(keep_alive) = self.keep_alive
                        && self.last_heard.elapsed() > keep_alive
                    {
                        info!(identity = %self.peer.identity, "closing: nothing heard within 1.5 times the keep-alive");
                        return End::KeepAlive;
                    }
                    self.shrink();
                    let next = self.keep_alive.map_or(HOUSEKEEPING, |k| {
                        k.saturating_sub(self.last_heard.elapsed()).clamp(Duration::from_millis(100), HOUSEKEEPING)
                    });
                    tick.as_mut().reset(Instant::now() + next);
                }
            }
        }
    }

    fn link_gone(&self, kicked: &CancellationToken) -> End {
        if kicked.is_cancelled() {
            End::Kicked
        } else {
            End::RouterGone
        }
    }

    /// Handles every complete packet in the read buffer, while there is room
    /// to answer.
    fn take_input(&mut self, cap: usize) -> Result<(), End> {
        while self.out.len() < READ_HARD_LIMIT
            && self.ringing.is_none()
            && self.throttled_until.is_none()
        {
            let frame = match mqtt::frame(&self.inbuf, cap) {
                Ok(Some(f)) if self.inbuf.len() >= f.len() => f,
                Ok(Some(f)) => {
                    // Make room for the rest of this packet only.
                    self.inbuf.reserve(f.len() - self.inbuf.len());
                    return Ok(());
                }
                Ok(None) => return Ok(()),
                Err(WireError::TooLarge(size)) => {
                    return Err(self.too_large(self.inbuf[0] >> 4, size));
                }
                Err(error) => {
                    protocol_error(&self.ctx.metrics, &error, "packet");
                    return Err(End::Violation(Some(Reason::MalformedPacket)));
                }
            };
            let result = self.packet(frame);
            self.inbuf.advance(frame.len());
            result?;
        }
        Ok(())
    }

    /// One complete client packet at the start of `inbuf`.
    fn packet(&mut self, frame: Frame) -> Result<(), End> {
        let packet = &self.inbuf[..frame.len()];
        match frame.kind() {
            kind::PUBLISH => self.publish(frame),
            kind::PUBACK => {
                let pkid = self.ack_pkid(frame)?;
                self.delivery_acked(pkid);
                Ok(())
            }
            kind::PUBREL => {
                let pkid = self.ack_pkid(frame)?;
                if self.qos2.remove(&pkid) {
                    mqtt::write_ack(kind::PUBCOMP, pkid, &mut self.out);
                } else {
                    mqtt::write_pubcomp_not_found(self.version, pkid, &mut self.out);
                }
                Ok(())
            }
            kind::SUBSCRIBE => self.subscribe(BytesMut::from(packet)),
            kind::UNSUBSCRIBE => {
                let (pkid, filters) = mqtt::unsubscribe(self.version, BytesMut::from(packet))
                    .map_err(|e| self.malformed(&e, "UNSUBSCRIBE"))?;
                mqtt::write_unsuback(self.version, pkid, filters.len(), &mut self.out);
                if self.mailbox.is_some() {
                    for filter in &filters {
                        self.direct_subs.remove(filter.as_bytes());
                    }
                    return Ok(());
                }
                let filters = filters.iter().map(|f| router_filter(f)).collect();
                self.to_router
                    .push(Packet::Unsubscribe(Unsubscribe { pkid, filters }, None));
                Ok(())
            }
            kind::PINGREQ => {
                mqtt::write_pingresp(&mut self.out);
                Ok(())
            }
            kind::DISCONNECT => {
                let reason = mqtt::disconnect_reason(packet, frame);
                Err(End::Disconnect {
                    will: self.version == Version::V5 && reason == mqtt::DISCONNECT_WITH_WILL,
                })
            }
            // A second CONNECT, PUBREC/PUBCOMP for deliveries (the front
            // never delivers with QoS 2), server-only packets, AUTH (no
            // enhanced authentication) and reserved types.
            other => {
                protocol_error(&self.ctx.metrics, &format!("packet type {other}"), "packet");
                Err(End::Violation(Some(Reason::ProtocolError)))
            }
        }
    }

    fn publish(&mut self, frame: Frame) -> Result<(), End> {
        let packet = &self.inbuf[..frame.len()];
        let info = match mqtt::publish_info(self.version, packet, frame) {
            Ok(info) => info,
            Err(error) => return Err(self.malformed(&error, "PUBLISH")),
        };
        if info.payload_len > self.ctx.limits.max_payload_bytes {
            return Err(self.too_large(kind::PUBLISH, info.payload_len));
        }
        let topic = match (info.topic, info.alias) {
            (_, Some(alias)) if alias == 0 || alias > ALIAS_MAX => {
                protocol_error(
                    &self.ctx.metrics,
                    &format!("topic alias {alias}"),
                    "PUBLISH",
                );
                return Err(End::Violation(Some(Reason::TopicAliasInvalid)));
            }
            ("", Some(alias)) => match self.aliases.get(&alias) {
                Some(topic) => topic.clone(),
                None => {
                    protocol_error(
                        &self.ctx.metrics,
                        &format!("unknown topic alias {alias}"),
                        "PUBLISH",
                    );
                    return Err(End::Violation(Some(Reason::ProtocolError)));
                }
            },
            (topic, _) => Bytes::copy_from_slice(topic.as_bytes()),
        };
        // The topic is UTF-8: it came from a checked packet, or from an
        // alias set by one.
        let topic_str = std::str::from_utf8(&topic).unwrap_or_default();
        let refused = if !acl::may_publish(self.peer, topic_str) {
            Some("refused PUBLISH")
        } else if info.retain && !acl::may_retain(topic_str) {
            Some("refused retained PUBLISH: only status is retained")
        } else {
            None
        };
        if let Some(why) = refused {
            self.ctx.metrics.reject(Reject::Publish);
            warn!(identity = %self.peer.identity, topic = topic_str, qos = info.qos, retain = info.retain, reason = %Reject::Publish, "{why}");
            return match self.version {
                Version::V4 => Err(End::Violation(None)),
                Version::V5 => {
                    if info.qos > 0 {
                        mqtt::write_publish_not_authorized(info.qos, info.pkid, &mut self.out);
                    }
                    Ok(())
                }
            };
        }
        if let (Some(alias), false) = (info.alias, info.topic.is_empty()) {
            self.aliases.insert(alias, topic.clone());
        }
        let (qos, pkid) = (info.qos, info.pkid);
        if qos == 2 && self.qos2.contains(&pkid) {
            // A retransmission before PUBREL: routed once already.
            mqtt::write_ack(kind::PUBREC, pkid, &mut self.out);
            return Ok(());
        }
        let payload = Bytes::copy_from_slice(&packet[info.payload_at..]);
        let size = packet.len() as u64;
        match acl::direct_recipient(self.peer, topic_str) {
            // A receipt or command for one post: straight to its session.
            Some(post) => {
                let post = post.to_owned();
                let delivery = self.ctx.registry.deliver(&post, Direct { topic, payload });
                if delivery != Delivery::Queued {
                    self.ctx.metrics.direct_dropped();
                    debug!(post, ?delivery, "message for a post not delivered");
                }
            }
            None => self
                .to_router
                .push(mqtt::router_publish(topic, payload, info.retain)),
        }
        self.ctx.metrics.relayed_in(1, size);
        self.charge(size);
        match qos {
            1 => mqtt::write_ack(kind::PUBACK, pkid, &mut self.out),
            2 => {
                if self.qos2.len() >= usize::from(INBOUND_QOS2_MAX) {
                    protocol_error(
                        &self.ctx.metrics,
                        &"too many QoS 2 publishes waiting for PUBREL",
                        "PUBLISH",
                    );
                    return Err(End::Violation(Some(Reason::ReceiveMaximumExceeded)));
                }
                self.qos2.insert(pkid);
                mqtt::write_ack(kind::PUBREC, pkid, &mut self.out);
            }
            _ => {}
        }
        Ok(())
    }

    fn subscribe(&mut self, packet: BytesMut) -> Result<(), End> {
        let (pkid, mut filters) =
            mqtt::subscribe(self.version, packet).map_err(|e| self.malformed(&e, "SUBSCRIBE"))?;
        let denied: Vec<&str> = filters
            .iter()
            .map(|f| f.path.as_str())
            .filter(|f| !acl::may_subscribe(self.peer, f))
            .collect();
        if !denied.is_empty() {
            self.ctx.metrics.reject(Reject::Subscribe);
            warn!(identity = %self.peer.identity, filters = ?denied, reason = %Reject::Subscribe, "refused SUBSCRIBE");
            return match self.version {
                Version::V4 => Err(End::Violation(None)),
                // The whole SUBSCRIBE is refused, allowed filters included:
                // a client asking for something it may not have is
                // misconfigured.
                Version::V5 => {
                    mqtt::write_suback(
                        self.version,
                        pkid,
                        &vec![None; filters.len()],
                        &mut self.out,
                    );
                    Ok(())
                }
            };
        }
        if self.mailbox.is_some() {
            // A post subscribes to its own receipts and commands only (the
            // ACL saw to it), and those reach it from the ops center
            // through the front, not through the router: see `publish`.
            let granted: Vec<Option<u8>> = filters
                .iter()
                .map(|f| Some(mqtt::granted_qos(f.qos) as u8))
                .collect();
            for (filter, qos) in filters.iter().zip(&granted) {
                self.direct_subs.insert(
                    Bytes::copy_from_slice(filter.path.as_bytes()),
                    qos.unwrap_or(0),
                );
            }
            mqtt::write_suback(self.version, pkid, &granted, &mut self.out);
            return Ok(());
        }
        for filter in &mut filters {
            filter.qos = mqtt::granted_qos(filter.qos);
            filter.path = router_filter(&filter.path);
        }
        self.to_router
            .push(Packet::Subscribe(Subscribe { pkid, filters }, None));
        Ok(())
    }

    fn ack_pkid(&self, frame: Frame) -> Result<u16, End> {
        mqtt::ack_pkid(&self.inbuf[..frame.len()], frame)
            .map_err(|e| self.malformed(&e, "acknowledgment"))
    }

    /// The client acknowledged delivery `pkid`: hand the router every
    /// acknowledgment it can take in its order, then deliver what the
    /// client's receive maximum held back.
    fn delivery_acked(&mut self, pkid: u16) {
        if self.direct_inflight.remove(&pkid) {
            return;
        }
        let Some(entry) = self
            .inflight
            .iter_mut()
            .find(|(id, acked)| *id == pkid && !acked)
        else {
            debug!(pkid, "acknowledgment of nothing in flight; ignored");
            return;
        };
        entry.1 = true;
        while let Some(&(pkid, true)) = self.inflight.front() {
            self.inflight.pop_front();
            self.to_router.push(Packet::PubAck(
                PubAck {
                    pkid,
                    reason: PubAckReason::Success,
                },
                None,
            ));
        }
        while self.inflight.len() < self.client_receive_max {
            let Some(publish) = self.held.pop_front() else {
                break;
            };
            self.write_delivery(publish);
        }
    }

    /// One notification from the router.
    fn deliver(&mut self, note: Option<rumqttd::Notification>) -> Result<(), End> {
        let Some(note) = note else { return Ok(()) };
        match Option::<Packet>::from(note) {
            // `None` is "unscheduled": the router's buffer for this link filled.
            None => self.unscheduled = true,
            Some(Packet::Publish(publish, _)) => {
                if self.inflight.len() >= self.client_receive_max || !self.held.is_empty() {
                    self.held.push_back(publish);
                } else {
                    self.write_delivery(publish);
                }
            }
            Some(Packet::SubAck(ack, _)) => {
                let codes: Vec<Option<u8>> = ack
                    .return_codes
                    .iter()
                    .map(|code| match code {
                        SubscribeReasonCode::QoS0 => Some(0),
                        SubscribeReasonCode::QoS1 => Some(1),
                        SubscribeReasonCode::QoS2 => Some(2),
                        SubscribeReasonCode::Success(qos) => Some(*qos as u8),
                        _ => None,
                    })
                    .collect();
                mqtt::write_suback(self.version, ack.pkid, &codes, &mut self.out);
            }
            Some(Packet::Disconnect(..)) => {
                warn!(identity = %self.peer.identity, "the router ended the session");
                return Err(End::RouterGone);
            }
            // The front answers CONNACK, UNSUBACK and PINGRESP itself and
            // routes publishes at QoS 0, so the router's own answers are
            // not needed.
            Some(_) => {}
        }
        Ok(())
    }

    /// Writes a receipt or command from the mailbox, if the post subscribed
    /// to its topic (a clean session that has not subscribed yet, or no
    /// more, does not get it, as with any MQTT subscription).
    fn deliver_direct(&mut self, direct: &Direct) {
        let Some(&qos) = self.direct_subs.get(&direct.topic) else {
            self.ctx.metrics.direct_dropped();
            return;
        };
        let pkid = if qos > 0 {
            loop {
                self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
                if !self.direct_inflight.contains(&self.next_pkid) {
                    break;
                }
            }
            self.direct_inflight.insert(self.next_pkid);
            self.next_pkid
        } else {
            0
        };
        let size = mqtt::write_direct_publish(
            self.version,
            qos,
            pkid,
            &direct.topic,
            &direct.payload,
            &mut self.out,
        );
        self.ctx.metrics.relayed_out(1, size as u64);
    }

    /// Encodes a delivery for the client, noting a QoS 1 one as in flight.
    fn write_delivery(&mut self, publish: Publish) {
        let start = self.out.len();
        match mqtt::write_publish(self.version, publish, &mut self.out) {
            Ok((pkid, size)) if size > self.client_max_packet => {
                // MQTT 5: a packet larger than the client takes is dropped
                // as if delivered.
                self.out.truncate(start);
                warn!(identity = %self.peer.identity, size, limit = self.client_max_packet, "delivery larger than the client's maximum packet size; dropped");
                if pkid != 0 {
                    self.inflight.push_back((pkid, false));
                    self.delivery_acked(pkid);
                }
            }
            Ok((pkid, size)) => {
                if pkid != 0 {
                    self.inflight.push_back((pkid, false));
                }
                self.ctx.metrics.relayed_out(1, size as u64);
            }
            Err(error) => {
                self.out.truncate(start);
                warn!(%error, "the router handed over a publish that cannot be encoded; dropped");
            }
        }
    }

    /// Hands the batch to the router, unless it is still digesting the last.
    fn hand_to_router(&mut self) -> Result<(), End> {
        if self.to_router.is_empty() || self.ringing.is_some() {
            return Ok(());
        }
        match self.link.send(self.to_router.drain(..)) {
            Ring::Done => Ok(()),
            Ring::Wait(ringing) => {
                self.ringing = Some(ringing);
                Ok(())
            }
            Ring::Gone => Err(End::RouterGone),
        }
    }

    /// Last words to the router: the will if due, then the end of the link.
    fn finish(&mut self, end: &End) {
        if matches!(end, End::RouterGone) {
            self.link.forget();
            return;
        }
        // After a takeover the DISCONNECT below is still sent: if the new
        // session has not attached yet, it ends this link cleanly (saving a
        // persistent session for the successor); if it has, the router has
        // already dropped this link and never reads its buffer again.
        // A ring still waiting for room is superseded by the one below.
        self.ringing = None;
        // What the client sent before it left was answered (PUBACK) and
        // must reach the router: a gateway's goodbye is "OFFLINE" then
        // DISCONNECT, often in one read.
        let mut last: Vec<Packet> = self.to_router.drain(..).collect();
        if end.publishes_will()
            && let Some(will) = self.will.take()
        {
            debug!(topic = will.topic, "publishing the will");
            last.push(mqtt::router_publish(
                Bytes::from(will.topic),
                will.payload,
                will.retain,
            ));
        }
        if let Ring::Wait(ringing) = self.link.detach(last) {
            // This ring must arrive, however long the router's channel
            // stays full: without it the router never reads the end of the
            // link and keeps its slot for good. It needs nothing of this
            // session, which can close meanwhile.
            tokio::spawn(ringing);
        }
    }

    /// Charges a routed publish to the post's budget; over budget, stops
    /// reading the client until the budget has refilled.
    fn charge(&mut self, size: u64) {
        let Some(budget) = &mut self.budget else {
            return;
        };
        let now = Instant::now();
        let wait = budget.take(size, now);
        if wait.is_zero() {
            return;
        }
        self.throttled_until = Some(now + wait);
        self.ctx.metrics.reject(Reject::Throttled);
        if self
            .throttle_logged
            .is_none_or(|at| now.duration_since(at) >= THROTTLE_LOG_EVERY)
        {
            self.throttle_logged = Some(now);
            info!(
                identity = %self.peer.identity,
                reason = %Reject::Throttled,
                "post over its publish budget: reading paused (logged at most once a minute)"
            );
        }
    }

    /// Gives back buffer memory an idle session does not need.
    fn shrink(&mut self) {
        if self.inbuf.is_empty() && self.inbuf.capacity() > SHRINK_ABOVE {
            self.inbuf = BytesMut::with_capacity(READ_BUFFER);
        }
        if self.out.is_empty() && self.out.capacity() > SHRINK_ABOVE {
            self.out = BytesMut::new();
        }
        self.link.shrink(LINK_BUFFER);
    }

    fn malformed(&self, error: &dyn std::fmt::Display, at: &str) -> End {
        protocol_error(&self.ctx.metrics, error, at);
        End::Violation(Some(Reason::MalformedPacket))
    }

    /// Counts and logs a packet above the limits.
    fn too_large(&self, packet_kind: u8, size: usize) -> End {
        self.ctx.metrics.reject(Reject::PayloadTooLarge);
        warn!(
            identity = %self.peer.identity,
            packet_type = packet_kind,
            size,
            limit = self.ctx.limits.max_payload_bytes,
            reason = %Reject::PayloadTooLarge,
            "refused oversize packet"
        );
        End::Violation(Some(Reason::PacketTooLarge))
    }
}

/// A post's publish budget: one token bucket for publishes, one for bytes.
#[derive(Debug)]
struct Budget {
    publishes: Option<Bucket>,
    bytes: Option<Bucket>,
}

impl Budget {
    fn new(limits: &Limits, now: Instant) -> Self {
        Self {
            publishes: Bucket::new(
                f64::from(limits.post_publish_rate),
                f64::from(limits.post_publish_burst),
                now,
            ),
            bytes: Bucket::new(
                limits.post_byte_rate as f64,
                limits.post_byte_burst as f64,
                now,
            ),
        }
    }

    /// Takes one publish of `size` bytes; how long until the budget is out
    /// of debt (zero when it is not in debt).
    fn take(&mut self, size: u64, now: Instant) -> Duration {
        let publishes = self
            .publishes
            .as_mut()
            .map_or(Duration::ZERO, |b| b.take(1.0, now));
        let bytes = self
            .bytes
            .as_mut()
            .map_or(Duration::ZERO, |b| b.take(size as f64, now));
        publishes.max(bytes)
    }
}

/// A token bucket that may go into debt by one take.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// `None` for a rate of 0 (no limit).
    fn new(rate: f64, burst: f64, now: Instant) -> Option<Self> {
        (rate > 0.0).then_some(Self {
            rate,
            burst,
            tokens: burst,
            at: now,
        })
    }

    fn take(&mut self, n: f64, now: Instant) -> Duration {
        let refill = self.rate * now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + refill).min(self.burst) - n;
        self.at = now;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// The filter the router is given for a client's filter.
///
/// rumqttd keys a shared-subscription group by its name alone and keeps one
/// read cursor per group: one group over two filters (`$share/g/…/events`
/// and `$share/g/…/status`) mixes two logs' cursors and loses messages. The
/// front gives each (group, filter) pair a group of its own, named from the
/// group and a hash of the filter, the same in every broker process, so
/// the clients of one group share each filter as MQTT intends.
pub(crate) fn router_filter(filter: &str) -> String {
    let Some((group, path)) = filter
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
    else {
        return filter.to_owned();
    };
    let hash = crate::router::fnv1a(path.as_bytes());
    format!("$share/{group}.{hash:016x}/{path}")
}

/// Writes as much of `out` as the connection takes, flushing once all of it
/// is written. Cancel-safe: a write that completed is reported.
async fn write_some<W: AsyncWrite + Unpin>(wr: &mut W, out: &[u8]) -> std::io::Result<usize> {
    let n = wr.write(out).await?;
    if n == 0 {
        return Err(std::io::ErrorKind::WriteZero.into());
    }
    if n == out.len() {
        wr.flush().await?;
    }
    Ok(n)
}

/// Reads what the client has sent into `buf`, growing it if it is full.
async fn read_some<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut BytesMut) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < READ_BUFFER / 4 {
        buf.reserve(READ_BUFFER);
    }
    rd.read_buf(buf).await
}

/// Reads until `buf` holds one complete packet. `Ok(None)` on a clean close
/// before any byte.
async fn read_frame<S>(
    stream: &mut S,
    buf: &mut BytesMut,
    cap: usize,
) -> Result<Option<Frame>, WireError>
where
    S: AsyncRead + Unpin,
{
    loop {
        if let Some(frame) = mqtt::frame(buf, cap)? {
            if buf.len() >= frame.len() {
                return Ok(Some(frame));
            }
            buf.reserve(frame.len() - buf.len());
        }
        match stream.read_buf(buf).await {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => return Err(WireError::Malformed("closed inside a packet")),
            Ok(_) => {}
            Err(_) => return Ok(None),
        }
    }
}

/// Writes `bytes` to the client and closes it, within `CLOSE_GRACE`.
async fn close_with<S>(client: &mut S, bytes: &[u8])
where
    S: AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        client.write_all(bytes).await?;
        client.shutdown().await
    })
    .await;
}

fn protocol_error(metrics: &Metrics, error: &dyn std::fmt::Display, at: &str) {
    metrics.reject(Reject::Protocol);
    info!(%error, at, reason = %Reject::Protocol, "refused: protocol error");
}

async fn router_unavailable<S>(
    ctx: &Context,
    client: &mut S,
    version: Version,
    error: &(dyn std::fmt::Display + Sync),
) where
    S: AsyncWrite + Unpin,
{
    ctx.metrics.reject(Reject::Router);
    warn!(%error, reason = %Reject::Router, "cannot attach to the embedded router");
    close_with(
        client,
        &mqtt::connack_refused(version, Refusal::ServerUnavailable),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let start = Instant::now();
        let mut bucket = Bucket::new(10.0, 5.0, start).unwrap();
        for _ in 0..5 {
            assert_eq!(bucket.take(1.0, start), Duration::ZERO);
        }
        // The sixth at once is in debt by one: a tenth of a second.
        let wait = bucket.take(1.0, start);
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        // After that tenth, one more costs another tenth.
        let later = start + Duration::from_millis(100);
        let wait = bucket.take(1.0, later);
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        // A long pause refills only up to the burst.
        let much_later = later + Duration::from_secs(60);
        for _ in 0..5 {
            assert_eq!(bucket.take(1.0, much_later), Duration::ZERO);
        }
        assert!(bucket.take(1.0, much_later) > Duration::ZERO);
        assert!(Bucket::new(0.0, 5.0, start).is_none());
    }

    #[test]
    fn shared_groups_are_split_per_filter() {
        assert_eq!(
            router_filter("vigil/v1/posts/+/events"),
            "vigil/v1/posts/+/events"
        );
        let events = router_filter("$share/ops/vigil/v1/posts/+/events");
        let status = router_filter("$share/ops/vigil/v1/posts/+/status");
        assert!(events.starts_with("$share/ops."), "{events}");
        assert!(events.ends_with("/vigil/v1/posts/+/events"), "{events}");
        let group = |f: &str| f.split('/').nth(1).unwrap().to_owned();
        assert_ne!(group(&events), group(&status));
        // The same in every process: a fixed function of the filter.
        assert_eq!(events, router_filter("$share/ops/vigil/v1/posts/+/events"));
        // Not a shared subscription without a filter after the group.
        assert_eq!(router_filter("$share/ops"), "$share/ops");
    }
}
