//! The MQTT the front speaks with its clients: framing by fixed header, the
//! CONNECT, the fields of PUBLISH, SUBSCRIBE, UNSUBSCRIBE and the
//! acknowledgments a client sends, and every packet the front writes.
//!
//! Decoding is hand-written where it runs per message (PUBLISH and the
//! two-byte acknowledgments, which must not allocate) and uses rumqttd's own
//! codec for the rare, structured packets (CONNECT, SUBSCRIBE,
//! UNSUBSCRIBE). Every packet to a client is encoded here in that client's
//! own protocol version, from typed values: nothing one client sent is ever
//! copied onto another's connection.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rumqttd::protocol::{
    self as codec, ConnAck, ConnAckProperties, ConnectReturnCode, Filter, Packet, Protocol,
    Publish, QoS, v4::V4, v5::V5,
};

/// MQTT control packet types (first nibble of the fixed header).
pub(crate) mod kind {
    pub(crate) const CONNECT: u8 = 1;
    pub(crate) const PUBLISH: u8 = 3;
    pub(crate) const PUBACK: u8 = 4;
    pub(crate) const PUBREC: u8 = 5;
    pub(crate) const PUBREL: u8 = 6;
    pub(crate) const PUBCOMP: u8 = 7;
    pub(crate) const SUBSCRIBE: u8 = 8;
    pub(crate) const SUBACK: u8 = 9;
    pub(crate) const UNSUBSCRIBE: u8 = 10;
    pub(crate) const UNSUBACK: u8 = 11;
    pub(crate) const PINGREQ: u8 = 12;
    pub(crate) const PINGRESP: u8 = 13;
    pub(crate) const DISCONNECT: u8 = 14;
}

/// The two protocol versions the broker speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V4,
    /// MQTT 5 (protocol level 5).
    V5,
}

impl Version {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Version::V4 => "3.1.1",
            Version::V5 => "5",
        }
    }

    fn read(self, buf: &mut BytesMut) -> Result<Packet, codec::Error> {
        // The frame is complete and its size already checked against our
        // own cap, so the codec's limit is not the one that matters here.
        match self {
            Version::V4 => V4.read_mut(buf, usize::MAX),
            Version::V5 => V5.read_mut(buf, usize::MAX),
        }
    }

    /// Appends `packet` to `out`. Only packets built by this module are
    /// written, each valid for its version.
    fn write(self, packet: Packet, out: &mut BytesMut) -> Result<usize, codec::Error> {
        match self {
            Version::V4 => V4.write(packet, out),
            Version::V5 => V5.write(packet, out),
        }
    }
}

/// A packet that cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WireError {
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    #[error("packet of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("unsupported protocol level {0}")]
    Unsupported(u8),
    #[error("codec: {0}")]
    Codec(#[from] codec::Error),
}

/// Position of one packet at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frame {
    /// First byte: packet type and flags.
    pub(crate) byte1: u8,
    /// Length of the fixed header (2 to 5 bytes).
    pub(crate) header_len: usize,
    /// Length of everything after the fixed header.
    pub(crate) remaining: usize,
}

impl Frame {
    pub(crate) fn kind(&self) -> u8 {
        self.byte1 >> 4
    }

    /// Length of the whole packet.
    pub(crate) fn len(&self) -> usize {
        self.header_len + self.remaining
    }
}

/// Reads the fixed header at the start of `buf`. `Ok(None)` means more bytes
/// are needed to know the length. A remaining length above `cap` is refused
/// as soon as the header is known, before any of the body is buffered.
pub(crate) fn frame(buf: &[u8], cap: usize) -> Result<Option<Frame>, WireError> {
    let Some(&byte1) = buf.first() else {
        return Ok(None);
    };
    let mut remaining = 0usize;
    for (i, &b) in buf[1..].iter().enumerate().take(4) {
        remaining |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            if remaining > cap {
                return Err(WireError::TooLarge(remaining));
            }
            return Ok(Some(Frame {
                byte1,
                header_len: 2 + i,
                remaining,
            }));
        }
    }
    if buf.len() >= 5 {
        // Four continuation bits in a row: not a valid variable byte integer.
        return Err(WireError::Malformed("remaining length"));
    }
    Ok(None)
}

/// The protocol version a complete CONNECT frame asks for.
pub(crate) fn connect_version(packet: &[u8], frame: Frame) -> Result<Version, WireError> {
    let mut body = &packet[frame.header_len..frame.len()];
    let name_len = usize::from(take_u16(&mut body)?);
    if body.len() < name_len + 1 {
        return Err(WireError::Malformed("CONNECT protocol name"));
    }
    let (name, rest) = body.split_at(name_len);
    let level = rest[0];
    match (name, level) {
        (b"MQTT", 4) => Ok(Version::V4),
        (b"MQTT", 5) => Ok(Version::V5),
        (b"MQTT" | b"MQIsdp", level) => Err(WireError::Unsupported(level)),
        _ => Err(WireError::Malformed("CONNECT protocol name")),
    }
}

/// A client's will, as the front keeps it: published by the front itself if
/// the connection ends without a normal DISCONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Will {
    pub(crate) topic: String,
    pub(crate) payload: Bytes,
    pub(crate) retain: bool,
}

/// What the front keeps of a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Connect {
    pub(crate) version: Version,
    pub(crate) client_id: String,
    pub(crate) clean_session: bool,
    /// Seconds; 0 turns keep-alive off.
    pub(crate) keep_alive: u16,
    pub(crate) will: Option<Will>,
    /// v5: how many QoS 1/2 publishes the client takes unacknowledged.
    pub(crate) receive_maximum: u16,
    /// v5: the largest packet the client takes.
    pub(crate) max_packet_size: Option<u32>,
}

impl Connect {
    /// Decodes a complete CONNECT frame (`buf` holds exactly one packet).
    pub(crate) fn decode(version: Version, mut buf: BytesMut) -> Result<Self, WireError> {
        let Packet::Connect(connect, props, will, _will_props, _login) = version.read(&mut buf)?
        else {
            return Err(WireError::Malformed("expected CONNECT"));
        };
        let will = will
            .map(|w| {
                let topic = String::from_utf8(w.topic.to_vec())
                    .map_err(|_| WireError::Malformed("will topic"))?;
                Ok::<_, WireError>(Will {
                    topic,
                    payload: w.message,
                    retain: w.retain,
                })
            })
            .transpose()?;
        let receive_maximum = props.as_ref().and_then(|p| p.receive_maximum);
        if receive_maximum == Some(0) {
            return Err(WireError::Malformed("receive maximum 0"));
        }
        Ok(Self {
            version,
            client_id: connect.client_id,
            clean_session: connect.clean_session,
            keep_alive: connect.keep_alive,
            will,
            receive_maximum: receive_maximum.unwrap_or(u16::MAX),
            max_packet_size: props.and_then(|p| p.max_packet_size),
        })
    }
}

/// What the front needs from a PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PublishInfo<'a> {
    pub(crate) qos: u8,
    pub(crate) retain: bool,
    /// Packet id (0 for QoS 0).
    pub(crate) pkid: u16,
    /// The topic as sent; empty when a v5 client uses a topic alias.
    pub(crate) topic: &'a str,
    /// v5 topic alias property, if present.
    pub(crate) alias: Option<u16>,
    /// Where the payload starts in the packet; it runs to the end.
    pub(crate) payload_at: usize,
    pub(crate) payload_len: usize,
}

/// Reads the fields of a complete PUBLISH. Of the v5 properties only the
/// topic alias is kept: the others are checked for form and dropped, since
/// nothing a client sends is passed on beyond topic, payload and retain.
pub(crate) fn publish_info(
    version: Version,
    packet: &[u8],
    frame: Frame,
) -> Result<PublishInfo<'_>, WireError> {
    let qos = (frame.byte1 >> 1) & 0b11;
    if qos == 3 {
        return Err(WireError::Malformed("PUBLISH QoS 3"));
    }
    let retain = frame.byte1 & 1 == 1;
    let mut body = &packet[frame.header_len..frame.len()];
    let topic_len = usize::from(take_u16(&mut body)?);
    if body.len() < topic_len {
        return Err(WireError::Malformed("PUBLISH topic"));
    }
    let (topic, rest) = body.split_at(topic_len);
    let topic = std::str::from_utf8(topic).map_err(|_| WireError::Malformed("PUBLISH topic"))?;
    body = rest;
    let pkid = if qos > 0 {
        let pkid = take_u16(&mut body)?;
        if pkid == 0 {
            return Err(WireError::Malformed("PUBLISH packet id 0"));
        }
        pkid
    } else {
        0
    };
    let mut alias = None;
    if version == Version::V5 {
        let props_len = take_varint(&mut body)?;
        if body.len() < props_len {
            return Err(WireError::Malformed("PUBLISH properties"));
        }
        let (mut props, rest) = body.split_at(props_len);
        body = rest;
        while !props.is_empty() {
            let id = props.get_u8();
            match id {
                // payload format indicator
                0x01 => skip(&mut props, 1)?,
                // message expiry interval
                0x02 => skip(&mut props, 4)?,
                // content type, response topic, correlation data
                0x03 | 0x08 | 0x09 => {
                    let n = take_u16(&mut props)?;
                    skip(&mut props, n.into())?;
                }
                // A client must not send a subscription identifier.
                0x0B => return Err(WireError::Malformed("PUBLISH subscription identifier")),
                0x23 => alias = Some(take_u16(&mut props)?),
                // user property: two strings
                0x26 => {
                    for _ in 0..2 {
                        let n = take_u16(&mut props)?;
                        skip(&mut props, n.into())?;
                    }
                }
                _ => return Err(WireError::Malformed("PUBLISH property")),
            }
        }
    }
    if topic.is_empty() && alias.is_none() {
        return Err(WireError::Malformed("PUBLISH without topic"));
    }
    if topic.contains(['+', '#']) {
        return Err(WireError::Malformed("wildcard in a PUBLISH topic"));
    }
    Ok(PublishInfo {
        qos,
        retain,
        pkid,
        topic,
        alias,
        payload_at: frame.len() - body.len(),
        payload_len: body.len(),
    })
}

/// The packet id of a complete PUBACK, PUBREC, PUBREL or PUBCOMP (the
/// reason code and properties a v5 client may add are not needed).
pub(crate) fn ack_pkid(packet: &[u8], frame: Frame) -> Result<u16, WireError> {
    let mut body = &packet[frame.header_len..frame.len()];
    match take_u16(&mut body)? {
        0 => Err(WireError::Malformed("packet id 0")),
        pkid => Ok(pkid),
    }
}

/// Packet id and filters of a complete SUBSCRIBE (`buf` holds exactly one).
pub(crate) fn subscribe(
    version: Version,
    mut buf: BytesMut,
) -> Result<(u16, Vec<Filter>), WireError> {
    match version.read(&mut buf)? {
        Packet::Subscribe(subscribe, props) => {
            if props.is_some_and(|p| p.id.is_some()) {
                // Not offered in the CONNACK.
                return Err(WireError::Malformed("subscription identifier"));
            }
            if subscribe.filters.is_empty() {
                return Err(WireError::Malformed("SUBSCRIBE without filters"));
            }
            Ok((subscribe.pkid, subscribe.filters))
        }
        _ => Err(WireError::Malformed("expected SUBSCRIBE")),
    }
}

/// Packet id and filters of a complete UNSUBSCRIBE.
pub(crate) fn unsubscribe(
    version: Version,
    mut buf: BytesMut,
) -> Result<(u16, Vec<String>), WireError> {
    match version.read(&mut buf)? {
        Packet::Unsubscribe(unsubscribe, _) if !unsubscribe.filters.is_empty() => {
            Ok((unsubscribe.pkid, unsubscribe.filters))
        }
        _ => Err(WireError::Malformed("expected UNSUBSCRIBE with filters")),
    }
}

/// Why the front refuses a CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    NotAuthorized,
    UnsupportedVersion,
    ServerUnavailable,
    /// The identity is fighting over its session (see `registry`).
    Busy,
}

/// A CONNACK refusing the connection.
pub(crate) fn connack_refused(version: Version, refusal: Refusal) -> Bytes {
    let code = match (version, refusal) {
        (_, Refusal::NotAuthorized) => ConnectReturnCode::NotAuthorized,
        (Version::V4, Refusal::UnsupportedVersion) => ConnectReturnCode::RefusedProtocolVersion,
        (Version::V5, Refusal::UnsupportedVersion) => ConnectReturnCode::UnsupportedProtocolVersion,
        (Version::V4, Refusal::ServerUnavailable | Refusal::Busy) => {
            ConnectReturnCode::ServiceUnavailable
        }
        (Version::V5, Refusal::ServerUnavailable) => ConnectReturnCode::ServerUnavailable,
        (Version::V5, Refusal::Busy) => ConnectReturnCode::ServerBusy,
    };
    let ack = ConnAck {
        session_present: false,
        code,
    };
    let mut out = BytesMut::with_capacity(8);
    let written = version.write(Packet::ConnAck(ack, None), &mut out);
    debug_assert!(written.is_ok(), "{written:?}");
    out.freeze()
}

/// What the broker offers a v5 client in its CONNACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Offer {
    /// QoS 2 publishes the client may have waiting for PUBREL.
    pub(crate) receive_maximum: u16,
    /// Topic aliases the client may set up.
    pub(crate) topic_alias_max: u16,
    /// Largest packet the broker takes.
    pub(crate) max_packet_size: u32,
}

/// The CONNACK accepting a session.
pub(crate) fn connack(version: Version, session_present: bool, offer: Offer, out: &mut BytesMut) {
    let ack = ConnAck {
        session_present,
        code: ConnectReturnCode::Success,
    };
    let props = (version == Version::V5).then(|| ConnAckProperties {
        receive_max: Some(offer.receive_maximum),
        max_qos: None,
        retain_available: Some(1),
        max_packet_size: Some(offer.max_packet_size),
        topic_alias_max: Some(offer.topic_alias_max),
        wildcard_subscription_available: Some(1),
        subscription_identifiers_available: Some(0),
        shared_subscription_available: Some(1),
        ..ConnAckProperties::default()
    });
    let written = version.write(Packet::ConnAck(ack, props), out);
    debug_assert!(written.is_ok(), "{written:?}");
}

/// Appends a PUBLISH for a client of `version`, returning its packet id
/// (0 for QoS 0) and size. `Err` only for a publish the router built wrongly.
pub(crate) fn write_publish(
    version: Version,
    publish: Publish,
    out: &mut BytesMut,
) -> Result<(u16, usize), codec::Error> {
    let start = out.len();
    let written = version.write(Packet::Publish(publish, None), out)?;
    let packet = &out[start..];
    let qos = (packet[0] >> 1) & 0b11;
    if qos == 0 {
        return Ok((0, written));
    }
    // Skip the fixed header and the topic: the packet id follows.
    let header = frame(packet, usize::MAX)
        .ok()
        .flatten()
        .map_or(2, |f| f.header_len);
    let topic_len = usize::from(u16::from_be_bytes([packet[header], packet[header + 1]]));
    let at = header + 2 + topic_len;
    Ok((u16::from_be_bytes([packet[at], packet[at + 1]]), written))
}

/// Appends a PUBLISH built by the front itself (a receipt or command for
/// a post) for a client of `version`.
pub(crate) fn write_direct_publish(
    version: Version,
    qos: u8,
    pkid: u16,
    topic: &[u8],
    payload: &[u8],
    out: &mut BytesMut,
) -> usize {
    let start = out.len();
    let props = usize::from(version == Version::V5);
    let id = if qos > 0 { 2 } else { 0 };
    out.put_u8((kind::PUBLISH << 4) | (qos << 1));
    put_varint(out, 2 + topic.len() + id + props + payload.len());
    out.put_u16(topic.len() as u16);
    out.extend_from_slice(topic);
    if qos > 0 {
        out.put_u16(pkid);
    }
    if props == 1 {
        out.put_u8(0);
    }
    out.extend_from_slice(payload);
    out.len() - start
}

/// Appends a two-byte acknowledgment (PUBACK, PUBREC, PUBCOMP) meaning
/// success: without a reason code, which MQTT 5 reads as success too.
pub(crate) fn write_ack(packet_kind: u8, pkid: u16, out: &mut BytesMut) {
    // PUBREL would need flags 0b0010; the front never sends one.
    debug_assert!(matches!(
        packet_kind,
        kind::PUBACK | kind::PUBREC | kind::PUBCOMP
    ));
    out.put_u8(packet_kind << 4);
    out.put_u8(2);
    out.put_u16(pkid);
}

/// Appends a PUBCOMP for a PUBREL whose packet id the front does not hold.
pub(crate) fn write_pubcomp_not_found(version: Version, pkid: u16, out: &mut BytesMut) {
    match version {
        // 3.1.1 has no reason codes: completing it is the only answer.
        Version::V4 => write_ack(kind::PUBCOMP, pkid, out),
        Version::V5 => out.extend_from_slice(&[
            kind::PUBCOMP << 4,
            4,
            (pkid >> 8) as u8,
            pkid as u8,
            0x92, // packet identifier not found
            0,
        ]),
    }
}

pub(crate) fn write_pingresp(out: &mut BytesMut) {
    out.extend_from_slice(&[kind::PINGRESP << 4, 0]);
}

/// Appends a SUBACK with one return code per filter: the granted QoS, or
/// for a refused filter 0x80 (3.1.1, "failure") / 0x87 (5, "not authorized").
pub(crate) fn write_suback(
    version: Version,
    pkid: u16,
    granted: &[Option<u8>],
    out: &mut BytesMut,
) {
    let refused = match version {
        Version::V4 => 0x80,
        Version::V5 => 0x87,
    };
    let props = usize::from(version == Version::V5);
    out.put_u8(kind::SUBACK << 4);
    put_varint(out, 2 + props + granted.len());
    out.put_u16(pkid);
    if props == 1 {
        out.put_u8(0);
    }
    for code in granted {
        out.put_u8(code.unwrap_or(refused));
    }
}

/// Appends an UNSUBACK for `count` filters (v5: "success" for each).
pub(crate) fn write_unsuback(version: Version, pkid: u16, count: usize, out: &mut BytesMut) {
    out.put_u8(kind::UNSUBACK << 4);
    match version {
        Version::V4 => {
            out.put_u8(2);
            out.put_u16(pkid);
        }
        Version::V5 => {
            put_varint(out, 3 + count);
            out.put_u16(pkid);
            out.put_u8(0);
            out.put_bytes(0, count);
        }
    }
}

/// v5 answer to a refused QoS 1 (PUBACK) or QoS 2 (PUBREC) publish.
pub(crate) fn write_publish_not_authorized(qos: u8, pkid: u16, out: &mut BytesMut) {
    let packet_kind = if qos == 2 { kind::PUBREC } else { kind::PUBACK };
    out.extend_from_slice(&[packet_kind << 4, 4, (pkid >> 8) as u8, pkid as u8, 0x87, 0]);
}

/// Reason codes of the v5 DISCONNECTs the front sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Reason {
    MalformedPacket = 0x81,
    ProtocolError = 0x82,
    ServerShuttingDown = 0x8B,
    KeepAliveTimeout = 0x8D,
    SessionTakenOver = 0x8E,
    TopicAliasInvalid = 0x94,
    PacketTooLarge = 0x95,
    ReceiveMaximumExceeded = 0x93,
}

/// v5 DISCONNECT sent by the server: reason code and an empty property
/// list. (Remaining length 1, no property length, is also valid MQTT 5, but
/// some clients, rumqttc among them, fail to read it.)
pub(crate) fn disconnect(reason: Reason) -> Bytes {
    Bytes::copy_from_slice(&[kind::DISCONNECT << 4, 0x02, reason as u8, 0x00])
}

/// The reason code of a client's DISCONNECT: 0 (normal) when absent, as in
/// 3.1.1.
pub(crate) fn disconnect_reason(packet: &[u8], frame: Frame) -> u8 {
    packet
        .get(frame.header_len)
        .copied()
        .filter(|_| frame.remaining > 0)
        .unwrap_or(0)
}

/// v5 DISCONNECT reason "disconnect with will message".
pub(crate) const DISCONNECT_WITH_WILL: u8 = 0x04;

/// A publish in the form the router takes (QoS 0): it sees only topic,
/// payload and retain (the front acknowledges the client itself).
pub(crate) fn router_publish(topic: Bytes, payload: Bytes, retain: bool) -> Packet {
    Packet::Publish(Publish::new(topic, payload, retain), None)
}

/// The QoS the front grants a subscription: at most 1. Vigil's traffic is
/// QoS 1, and the router's QoS 2 delivery needs PUBREC/PUBREL flows the
/// front does not relay.
pub(crate) fn granted_qos(qos: QoS) -> QoS {
    match qos {
        QoS::AtMostOnce => QoS::AtMostOnce,
        QoS::AtLeastOnce | QoS::ExactlyOnce => QoS::AtLeastOnce,
    }
}

fn put_varint(buf: &mut BytesMut, mut value: usize) {
    loop {
        let mut byte = (value & 0x7f) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        buf.extend_from_slice(&[byte]);
        if value == 0 {
            return;
        }
    }
}

fn take_u16(buf: &mut &[u8]) -> Result<u16, WireError> {
    if buf.len() < 2 {
        return Err(WireError::Malformed("truncated"));
    }
    Ok(buf.get_u16())
}

fn skip(buf: &mut &[u8], n: usize) -> Result<(), WireError> {
    if buf.len() < n {
        return Err(WireError::Malformed("truncated"));
    }
    buf.advance(n);
    Ok(())
}

fn take_varint(buf: &mut &[u8]) -> Result<usize, WireError> {
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.first() else {
            return Err(WireError::Malformed("truncated"));
        };
        buf.advance(1);
        value |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(WireError::Malformed("variable byte integer"))
}
