//! The MQTT-aware pump between one authenticated client and the router.
//!
//! 1. Read the first packet under `limits.connect_timeout`: it must be a
//!    CONNECT for MQTT 3.1.1 or 5. Check the role, that the client id is the
//!    certificate identity (an empty one becomes the identity), and the will
//!    topic. Refuse with CONNACK "not authorized" otherwise.
//! 2. Connect to the router's listener for that version and send the CONNECT
//!    with the router secret as password.
//! 3. Pump both ways, packet by packet. Client → router: PUBLISH topic and
//!    payload size and SUBSCRIBE filters are checked; everything else passes
//!    as raw bytes, runs of allowed packets in one write. Router → client:
//!    only framed (to count publishes, and so that packets the front answers
//!    itself are written between two router packets, never inside one).
//!
//! On a violation, MQTT 3.1.1 has no way to say no, so the connection is
//! closed (the router then publishes the client's will, as for any abnormal
//! end). MQTT 5 gets an answer and the connection stays: PUBACK or PUBREC
//! 0x87 for a QoS 1/2 publish (a QoS 0 one is dropped), SUBACK 0x87 for each
//! filter of a refused SUBSCRIBE. An oversize payload is the exception: v5
//! clients get DISCONNECT 0x95 "packet too large" and the connection closes,
//! since PUBACK has no such reason code and a client that sends one
//! oversize message will usually send more. Every refusal is logged with the
//! identity and topic and counted.
//!
//! Both directions run in the connection's task. Only the router → client
//! half writes to the client; the other half hands it the packets it answers
//! itself through a bounded channel, so the TLS writer is never shared.

use std::{collections::HashMap, io, sync::Arc, time::Duration};

use bytes::{Buf, Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use vigil_pki::Peer;

use crate::{
    acl,
    config::Limits,
    metrics::{Metrics, Reject},
    mqtt::{self, Frame, Reason, Refusal, Version, WireError, kind},
    router::{FRONT_USERNAME, RouterHandle},
};

/// Packets the front answers itself, queued for the client writer. When
/// full, the client → router half waits: a client that does not read its
/// answers stops being read.
const INJECT_CAPACITY: usize = 32;
/// Initial read buffer per direction; grows up to one maximal packet.
const READ_BUFFER: usize = 16 * 1024;
/// Time to reach the router on loopback.
const ROUTER_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// After the client side ends, time left to write the last answers (a v5
/// DISCONNECT, for instance) before the connection is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Topic aliases a v5 client may use (advertised in the CONNACK). The front
/// remembers each alias's topic to apply the ACL to aliased publishes.
const ALIAS_MAX: u16 = 16;

/// What the relay needs from the broker.
#[derive(Debug)]
pub(crate) struct RelayContext {
    pub(crate) limits: Limits,
    pub(crate) router: RouterHandle,
    pub(crate) metrics: Arc<Metrics>,
}

/// Runs one client connection to its end.
pub(crate) async fn run<S>(
    mut client: S,
    peer: Peer,
    ctx: &RelayContext,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(READ_BUFFER);
    let first = tokio::select! {
        () = shutdown.cancelled() => return,
        r = tokio::time::timeout(
            ctx.limits.connect_timeout(),
            read_frame(&mut client, &mut buf, ctx.limits.frame_cap()),
        ) => r,
    };
    let frame = match first {
        Err(_) => {
            ctx.metrics.reject(Reject::ConnectTimeout);
            info!(reason = %Reject::ConnectTimeout, "refused: no CONNECT in time");
            return;
        }
        Ok(Ok(Some(frame))) => frame,
        Ok(Ok(None)) => {
            debug!("closed before CONNECT");
            return;
        }
        Ok(Err(error)) => {
            protocol_error(ctx, &error, "before CONNECT");
            return;
        }
    };
    if frame.kind() != kind::CONNECT {
        protocol_error(ctx, &"first packet is not CONNECT", "before CONNECT");
        return;
    }
    let version = match mqtt::connect_version(&buf, frame) {
        Ok(v) => v,
        Err(error) => {
            if let WireError::Unsupported(_) = error {
                // Answer in 3.1.1 form, which every client version reads.
                let ack = mqtt::connack_refused(Version::V4, Refusal::UnsupportedVersion);
                close_with(&mut client, &ack).await;
            }
            protocol_error(ctx, &error, "CONNECT");
            return;
        }
    };
    let connect = match mqtt::Connect::decode(version, buf.split_to(frame.len())) {
        Ok(c) => c,
        Err(error) => {
            protocol_error(ctx, &error, "CONNECT");
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
    } else if !connect.client_id().is_empty() && connect.client_id() != peer.identity.as_str() {
        Some((
            Reject::NotAuthorized,
            "client id is not the certificate identity",
            connect.client_id().to_owned(),
        ))
    } else {
        match connect.will_topic() {
            Ok(Some(topic)) if !acl::may_will(&peer, topic) => {
                Some((Reject::Will, "will topic not allowed", topic.to_owned()))
            }
            Ok(_) => None,
            Err(error) => {
                protocol_error(ctx, &error, "CONNECT");
                return;
            }
        }
    };
    if let Some((reason, why, detail)) = refusal {
        ctx.metrics.reject(reason);
        warn!(identity = %peer.identity, role = %peer.role, %reason, detail, "refused CONNECT: {why}");
        close_with(
            &mut client,
            &mqtt::connack_refused(version, Refusal::NotAuthorized),
        )
        .await;
        return;
    }

    let upstream = match tokio::time::timeout(
        ROUTER_CONNECT_TIMEOUT,
        TcpStream::connect(ctx.router.addr(version)),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return router_unavailable(ctx, &mut client, version, &e).await,
        Err(_) => return router_unavailable(ctx, &mut client, version, &"timed out").await,
    };
    let _ = upstream.set_nodelay(true);
    let (up_r, mut up_w) = upstream.into_split();
    let rewritten = connect.rewrite(peer.identity.as_str(), FRONT_USERNAME, ctx.router.secret());
    if let Err(e) = up_w.write_all(&rewritten).await {
        return router_unavailable(ctx, &mut client, version, &e).await;
    }
    ctx.metrics.authenticated();
    debug!("session relayed to router");

    let (client_r, client_w) = tokio::io::split(client);
    let (inject_tx, inject_rx) = mpsc::channel(INJECT_CAPACITY);
    let inbound = Inbound {
        version,
        peer: &peer,
        ctx,
        up_w,
        inject: inject_tx,
        aliases: HashMap::new(),
        disconnected: false,
    }
    .run(client_r, buf, shutdown);
    let outbound = outbound(up_r, client_w, inject_rx, version, ctx);
    tokio::pin!(inbound, outbound);
    tokio::select! {
        linger = &mut inbound => {
            // The inject sender is gone with `inbound`: the writer sends
            // what is queued, closes TLS, and waits for the router to close
            // its side. After a client DISCONNECT the router connection is
            // kept open (`linger`) until then: see `Inbound::run`.
            let _ = tokio::time::timeout(CLOSE_GRACE, &mut outbound).await;
            drop(linger);
        }
        () = &mut outbound => {
            // The router ended the session (takeover, keep-alive, its own
            // checks) or the client stopped reading: nothing more to relay.
        }
    }
    debug!("connection closed");
}

/// Client → router half.
struct Inbound<'a> {
    version: Version,
    peer: &'a Peer,
    ctx: &'a RelayContext,
    up_w: OwnedWriteHalf,
    inject: mpsc::Sender<Bytes>,
    /// v5 topic aliases the client set up, for topics the ACL allowed.
    aliases: HashMap<u16, String>,
    /// The client sent DISCONNECT (relayed to the router).
    disconnected: bool,
}

/// What to do with one client packet.
enum Verdict {
    Forward,
    /// Drop it, answering with these bytes if any (v5).
    Refuse(Option<Bytes>),
    /// End the connection, after sending these bytes if any (v5).
    Close(Option<Bytes>),
}

impl Inbound<'_> {
    /// Relays until the client side ends. Returns the router connection's
    /// write half when the client ended with DISCONNECT, for the caller to
    /// hold until the router closes: if the router read end-of-stream
    /// before it had processed the DISCONNECT, rumqttd 0.20 would report the
    /// connection gone twice, and the second report can end whichever new
    /// connection has meanwhile reused its slot. In every other case the
    /// write half is dropped here, which is what makes the router publish
    /// the client's will.
    async fn run<R>(
        mut self,
        client_r: R,
        buf: BytesMut,
        shutdown: CancellationToken,
    ) -> Option<OwnedWriteHalf>
    where
        R: AsyncRead + Unpin,
    {
        let outcome = tokio::select! {
            () = shutdown.cancelled() => Err(Some(mqtt::disconnect(Reason::ServerShuttingDown))),
            r = self.pump(client_r, buf) => r,
        };
        match outcome {
            Ok(()) => debug!("client closed"),
            Err(Some(last)) if self.version == Version::V5 => {
                // Best effort: the writer may be stuck on a client that does
                // not read.
                let _ = tokio::time::timeout(CLOSE_GRACE, self.inject.send(last)).await;
            }
            Err(_) => {}
        }
        let Inbound {
            up_w, disconnected, ..
        } = self;
        disconnected.then_some(up_w)
    }

    /// Reads and relays until the client closes (`Ok`) or the connection must
    /// end (`Err`, with a last packet to send to a v5 client if any).
    async fn pump<R>(&mut self, mut client_r: R, mut buf: BytesMut) -> Result<(), Option<Bytes>>
    where
        R: AsyncRead + Unpin,
    {
        let cap = self.ctx.limits.frame_cap();
        loop {
            // Relay every complete packet in the buffer: allowed packets
            // accumulate in a run written upstream in one go.
            let mut run = 0;
            let mut publishes = 0;
            loop {
                let frame = match mqtt::frame(&buf[run..], cap) {
                    Ok(Some(f)) if buf.len() - run >= f.len() => f,
                    Ok(_) => break,
                    Err(WireError::TooLarge(size)) => {
                        self.flush_run(&mut buf, run, publishes).await?;
                        return Err(self.too_large(buf[0] >> 4, size));
                    }
                    Err(error) => {
                        self.flush_run(&mut buf, run, publishes).await?;
                        protocol_error(self.ctx, &error, "packet");
                        return Err(Some(mqtt::disconnect(Reason::MalformedPacket)));
                    }
                };
                let verdict = self.check(&buf[run..run + frame.len()], frame);
                match verdict {
                    Verdict::Forward => {
                        publishes += u64::from(frame.kind() == kind::PUBLISH);
                        run += frame.len();
                        if frame.kind() == kind::DISCONNECT {
                            // Nothing may follow a DISCONNECT.
                            self.flush_run(&mut buf, run, publishes).await?;
                            self.disconnected = true;
                            return Ok(());
                        }
                    }
                    Verdict::Refuse(answer) => {
                        self.flush_run(&mut buf, run, publishes).await?;
                        run = 0;
                        publishes = 0;
                        buf.advance(frame.len());
                        if let Some(answer) = answer {
                            self.inject.send(answer).await.map_err(|_| None)?;
                        }
                    }
                    Verdict::Close(last) => {
                        self.flush_run(&mut buf, run, publishes).await?;
                        return Err(last);
                    }
                }
            }
            self.flush_run(&mut buf, run, publishes).await?;

            if buf.capacity() - buf.len() < READ_BUFFER / 4 {
                buf.reserve(READ_BUFFER);
            }
            match client_r.read_buf(&mut buf).await {
                Ok(0) => {
                    if buf.is_empty() {
                        return Ok(());
                    }
                    debug!(pending = buf.len(), "client closed inside a packet");
                    return Err(None);
                }
                Ok(_) => {}
                Err(error) => {
                    debug!(%error, "client read failed");
                    return Err(None);
                }
            }
        }
    }

    /// Writes the first `run` bytes of `buf` upstream and drops them.
    async fn flush_run(
        &mut self,
        buf: &mut BytesMut,
        run: usize,
        publishes: u64,
    ) -> Result<(), Option<Bytes>> {
        if run == 0 {
            return Ok(());
        }
        if let Err(error) = self.up_w.write_all(&buf[..run]).await {
            debug!(%error, "router write failed");
            return Err(None);
        }
        buf.advance(run);
        self.ctx.metrics.relayed_in(publishes, run as u64);
        Ok(())
    }

    fn check(&mut self, packet: &[u8], frame: Frame) -> Verdict {
        match frame.kind() {
            kind::PUBLISH => self.check_publish(packet, frame),
            kind::SUBSCRIBE => self.check_subscribe(packet),
            kind::PUBACK
            | kind::PUBREC
            | kind::PUBREL
            | kind::PUBCOMP
            | kind::UNSUBSCRIBE
            | kind::PINGREQ
            | kind::DISCONNECT => Verdict::Forward,
            // A second CONNECT, server-only packets, AUTH (the router has no
            // enhanced authentication) and reserved types.
            other => {
                protocol_error(self.ctx, &format!("packet type {other}"), "packet");
                Verdict::Close(Some(mqtt::disconnect(Reason::ProtocolError)))
            }
        }
    }

    fn check_publish(&mut self, packet: &[u8], frame: Frame) -> Verdict {
        let info = match mqtt::publish_info(self.version, packet, frame) {
            Ok(info) => info,
            Err(error) => {
                protocol_error(self.ctx, &error, "PUBLISH");
                return Verdict::Close(Some(mqtt::disconnect(Reason::MalformedPacket)));
            }
        };
        if info.payload_len > self.ctx.limits.max_payload_bytes {
            return Verdict::Close(self.too_large(kind::PUBLISH, info.payload_len));
        }
        let topic = match (info.topic, info.alias) {
            (_, Some(alias)) if alias == 0 || alias > ALIAS_MAX => {
                protocol_error(self.ctx, &format!("topic alias {alias}"), "PUBLISH");
                return Verdict::Close(Some(mqtt::disconnect(Reason::TopicAliasInvalid)));
            }
            ("", Some(alias)) => match self.aliases.get(&alias) {
                Some(topic) => topic.as_str(),
                None => {
                    protocol_error(self.ctx, &format!("unknown topic alias {alias}"), "PUBLISH");
                    return Verdict::Close(Some(mqtt::disconnect(Reason::ProtocolError)));
                }
            },
            (topic, _) => topic,
        };
        if acl::may_publish(self.peer, topic) {
            if let (Some(alias), false) = (info.alias, info.topic.is_empty()) {
                self.aliases.insert(alias, info.topic.to_owned());
            }
            return Verdict::Forward;
        }
        self.ctx.metrics.reject(Reject::Publish);
        warn!(identity = %self.peer.identity, topic, qos = info.qos, reason = %Reject::Publish, "refused PUBLISH");
        match self.version {
            Version::V4 => Verdict::Close(None),
            Version::V5 if info.qos == 0 => Verdict::Refuse(None),
            Version::V5 => Verdict::Refuse(Some(mqtt::publish_not_authorized(info.qos, info.pkid))),
        }
    }

    fn check_subscribe(&mut self, packet: &[u8]) -> Verdict {
        let (pkid, filters) = match mqtt::subscribe_filters(self.version, BytesMut::from(packet)) {
            Ok(x) => x,
            Err(error) => {
                protocol_error(self.ctx, &error, "SUBSCRIBE");
                return Verdict::Close(Some(mqtt::disconnect(Reason::MalformedPacket)));
            }
        };
        let denied: Vec<&str> = filters
            .iter()
            .map(String::as_str)
            .filter(|f| !acl::may_subscribe(self.peer, f))
            .collect();
        if denied.is_empty() {
            return Verdict::Forward;
        }
        self.ctx.metrics.reject(Reject::Subscribe);
        warn!(identity = %self.peer.identity, filters = ?denied, reason = %Reject::Subscribe, "refused SUBSCRIBE");
        match self.version {
            Version::V4 => Verdict::Close(None),
            // The whole SUBSCRIBE is refused, allowed filters included: a
            // client asking for something it may not have is misconfigured,
            // and a partial grant would need the router's SUBACK merged with
            // ours.
            Version::V5 => Verdict::Refuse(Some(mqtt::suback_not_authorized(pkid, filters.len()))),
        }
    }

    /// Counts and logs a packet above the limits; the v5 DISCONNECT to send.
    fn too_large(&self, packet_kind: u8, size: usize) -> Option<Bytes> {
        self.ctx.metrics.reject(Reject::PayloadTooLarge);
        warn!(
            identity = %self.peer.identity,
            packet_type = packet_kind,
            size,
            limit = self.ctx.limits.max_payload_bytes,
            reason = %Reject::PayloadTooLarge,
            "refused oversize packet"
        );
        Some(mqtt::disconnect(Reason::PacketTooLarge))
    }
}

/// Router → client half: the only writer to the client.
async fn outbound<W>(
    mut up_r: OwnedReadHalf,
    mut client_w: W,
    mut inject: mpsc::Receiver<Bytes>,
    version: Version,
    ctx: &RelayContext,
) where
    W: AsyncWrite + Unpin,
{
    let cap = ctx.limits.frame_cap();
    let mut buf = BytesMut::with_capacity(READ_BUFFER);
    let mut connack_seen = false;
    // Ok(true): the router closed; Ok(false): the client side ended.
    let result: io::Result<bool> = async {
        loop {
            tokio::select! {
                // Answers first: they are few, and a refused packet's answer
                // should not wait behind a long stream of deliveries.
                biased;
                answer = inject.recv() => match answer {
                    Some(bytes) => {
                        client_w.write_all(&bytes).await?;
                        client_w.flush().await?;
                    }
                    // The client side has ended.
                    None => return Ok(false),
                },
                read = up_r.read_buf(&mut buf) => {
                    if read? == 0 {
                        return Ok(true);
                    }
                    if !connack_seen {
                        let Some(frame) = complete_frame(&buf, cap)? else { continue };
                        connack_seen = true;
                        let mut connack = buf.split_to(frame.len()).freeze();
                        if version == Version::V5 && frame.kind() == kind::CONNACK {
                            connack = mqtt::limit_connack_aliases(connack, ALIAS_MAX);
                        }
                        client_w.write_all(&connack).await?;
                    }
                    // Forward every complete packet, in one write.
                    let mut end = 0;
                    let mut publishes = 0u64;
                    while let Some(frame) = complete_frame(&buf[end..], cap)? {
                        publishes += u64::from(frame.kind() == kind::PUBLISH);
                        end += frame.len();
                    }
                    if end > 0 {
                        client_w.write_all(&buf[..end]).await?;
                        buf.advance(end);
                        ctx.metrics.relayed_out(publishes, end as u64);
                    }
                    client_w.flush().await?;
                    if buf.capacity() - buf.len() < READ_BUFFER / 4 {
                        buf.reserve(READ_BUFFER);
                    }
                }
            }
        }
    }
    .await;
    if let Err(error) = &result {
        debug!(%error, "relay to client ended");
    }
    if !matches!(result, Ok(true)) {
        // Wait for the router to close its side before closing ours. Among
        // other things this keeps the connection open until the router has
        // written its CONNACK: rumqttd 0.20 registers a session's will
        // handler before that write and leaves it behind if the write
        // fails; the next CONNECT with the same client id then panics while
        // holding a lock shared by its whole listener, which stops serving
        // every client of that protocol version.
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            loop {
                buf.clear();
                match up_r.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
    // TLS close_notify; the client may already be gone.
    let _ = tokio::time::timeout(CLOSE_GRACE, client_w.shutdown()).await;
}

/// The frame at the start of `buf` if it is complete.
fn complete_frame(buf: &[u8], cap: usize) -> io::Result<Option<Frame>> {
    match mqtt::frame(buf, cap) {
        Ok(Some(f)) if buf.len() >= f.len() => Ok(Some(f)),
        Ok(_) => Ok(None),
        Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
    }
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

fn protocol_error(ctx: &RelayContext, error: &dyn std::fmt::Display, at: &str) {
    ctx.metrics.reject(Reject::Protocol);
    info!(%error, at, reason = %Reject::Protocol, "refused: protocol error");
}

async fn router_unavailable<S>(
    ctx: &RelayContext,
    client: &mut S,
    version: Version,
    error: &(dyn std::fmt::Display + Sync),
) where
    S: AsyncWrite + Unpin,
{
    ctx.metrics.reject(Reject::Router);
    warn!(%error, reason = %Reject::Router, "cannot reach the embedded router");
    close_with(
        client,
        &mqtt::connack_refused(version, Refusal::ServerUnavailable),
    )
    .await;
}
