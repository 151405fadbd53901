//! The slice of MQTT the front reads and writes: framing by fixed header,
//! the CONNECT (decoded and re-encoded with rumqttd's own `protocol` codec),
//! the topic of a PUBLISH, the filters of a SUBSCRIBE, and the few replies
//! the front sends itself (CONNACK refusals, v5 PUBACK/PUBREC/SUBACK with
//! reason codes, v5 DISCONNECT).
//!
//! Everything else passes through as raw bytes, so the relay never pays for
//! decoding a packet it does not have to check.

use bytes::{Buf, Bytes, BytesMut};
use rumqttd::protocol::{
    self as codec, ConnAck, ConnectReturnCode, Packet, Protocol, PubAck, PubAckReason, PubRec,
    PubRecReason, SubAck, SubscribeReasonCode, v4::V4, v5::V5,
};

/// MQTT control packet types (first nibble of the fixed header).
pub(crate) mod kind {
    pub(crate) const CONNECT: u8 = 1;
    pub(crate) const CONNACK: u8 = 2;
    pub(crate) const PUBLISH: u8 = 3;
    pub(crate) const PUBACK: u8 = 4;
    pub(crate) const PUBREC: u8 = 5;
    pub(crate) const PUBREL: u8 = 6;
    pub(crate) const PUBCOMP: u8 = 7;
    pub(crate) const SUBSCRIBE: u8 = 8;
    pub(crate) const UNSUBSCRIBE: u8 = 10;
    pub(crate) const PINGREQ: u8 = 12;
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

    fn write(self, packet: Packet) -> Bytes {
        let mut buf = BytesMut::with_capacity(64);
        let written = match self {
            Version::V4 => V4.write(packet, &mut buf),
            Version::V5 => V5.write(packet, &mut buf),
        };
        // Only packets built by this module are written, and each is valid
        // for its version; a codec error here is a bug in this module.
        debug_assert!(written.is_ok(), "{written:?}");
        buf.freeze()
    }
}

/// A packet that cannot be relayed.
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

/// A decoded CONNECT, to be checked and rewritten before it goes upstream.
#[derive(Debug)]
pub(crate) struct Connect {
    version: Version,
    packet: Packet,
}

impl Connect {
    /// Decodes a complete CONNECT frame (`buf` holds exactly one packet).
    pub(crate) fn decode(version: Version, mut buf: BytesMut) -> Result<Self, WireError> {
        let packet = version.read(&mut buf)?;
        if !matches!(packet, Packet::Connect(..)) {
            return Err(WireError::Malformed("expected CONNECT"));
        }
        Ok(Self { version, packet })
    }

    pub(crate) fn client_id(&self) -> &str {
        match &self.packet {
            Packet::Connect(connect, ..) => &connect.client_id,
            _ => unreachable!("checked in decode"),
        }
    }

    /// The will topic, if the client registered a will. `Err` when the
    /// topic is not UTF-8.
    pub(crate) fn will_topic(&self) -> Result<Option<&str>, WireError> {
        match &self.packet {
            Packet::Connect(_, _, Some(will), ..) => std::str::from_utf8(&will.topic)
                .map(Some)
                .map_err(|_| WireError::Malformed("will topic")),
            _ => Ok(None),
        }
    }

    /// The CONNECT to send upstream: client id set to `client_id` (the
    /// certificate identity, for clients that sent an empty one) and the
    /// client's username/password replaced by the router secret, so the
    /// router accepts only what came through the front.
    pub(crate) fn rewrite(self, client_id: &str, username: &str, secret: &str) -> Bytes {
        let Self {
            version,
            mut packet,
        } = self;
        if let Packet::Connect(connect, _, _, _, login) = &mut packet {
            client_id.clone_into(&mut connect.client_id);
            *login = Some(codec::Login {
                username: username.to_owned(),
                password: secret.to_owned(),
            });
        }
        version.write(packet)
    }
}

/// What the front needs from a PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PublishInfo<'a> {
    pub(crate) qos: u8,
    /// Packet id (0 for QoS 0).
    pub(crate) pkid: u16,
    /// The topic as sent; empty when a v5 client uses a topic alias.
    pub(crate) topic: &'a str,
    /// v5 topic alias property, if present.
    pub(crate) alias: Option<u16>,
    pub(crate) payload_len: usize,
}

/// Reads the topic, QoS, packet id and payload size of a complete PUBLISH.
///
/// Hand-written rather than rumqttd's decoder: that one keeps QoS and packet
/// id private to the crate, and decodes (allocating) every v5 property,
/// while the front reads a PUBLISH for every message it relays and only
/// needs the topic alias among the properties.
pub(crate) fn publish_info(
    version: Version,
    packet: &[u8],
    frame: Frame,
) -> Result<PublishInfo<'_>, WireError> {
    let qos = (frame.byte1 >> 1) & 0b11;
    if qos == 3 {
        return Err(WireError::Malformed("PUBLISH QoS 3"));
    }
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
                // subscription identifier (the router refuses it from clients)
                0x0B => {
                    take_varint(&mut props)?;
                }
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
    Ok(PublishInfo {
        qos,
        pkid,
        topic,
        alias,
        payload_len: body.len(),
    })
}

/// Packet id and filters of a complete SUBSCRIBE (`buf` holds exactly one).
pub(crate) fn subscribe_filters(
    version: Version,
    mut buf: BytesMut,
) -> Result<(u16, Vec<String>), WireError> {
    match version.read(&mut buf)? {
        Packet::Subscribe(subscribe, _) => Ok((
            subscribe.pkid,
            subscribe.filters.into_iter().map(|f| f.path).collect(),
        )),
        _ => Err(WireError::Malformed("expected SUBSCRIBE")),
    }
}

/// Why the front refuses a CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    NotAuthorized,
    UnsupportedVersion,
    ServerUnavailable,
}

/// A CONNACK refusing the connection.
pub(crate) fn connack_refused(version: Version, refusal: Refusal) -> Bytes {
    let code = match (version, refusal) {
        (_, Refusal::NotAuthorized) => ConnectReturnCode::NotAuthorized,
        (Version::V4, Refusal::UnsupportedVersion) => ConnectReturnCode::RefusedProtocolVersion,
        (Version::V5, Refusal::UnsupportedVersion) => ConnectReturnCode::UnsupportedProtocolVersion,
        (Version::V4, Refusal::ServerUnavailable) => ConnectReturnCode::ServiceUnavailable,
        (Version::V5, Refusal::ServerUnavailable) => ConnectReturnCode::ServerUnavailable,
    };
    let ack = ConnAck {
        session_present: false,
        code,
    };
    version.write(Packet::ConnAck(ack, None))
}

/// v5 reply to a refused QoS 1 (PUBACK) or QoS 2 (PUBREC) publish.
pub(crate) fn publish_not_authorized(qos: u8, pkid: u16) -> Bytes {
    let packet = if qos == 2 {
        Packet::PubRec(
            PubRec {
                pkid,
                reason: PubRecReason::NotAuthorized,
            },
            None,
        )
    } else {
        Packet::PubAck(
            PubAck {
                pkid,
                reason: PubAckReason::NotAuthorized,
            },
            None,
        )
    };
    Version::V5.write(packet)
}

/// v5 SUBACK refusing each of `count` filters with "not authorized".
pub(crate) fn suback_not_authorized(pkid: u16, count: usize) -> Bytes {
    let ack = SubAck {
        pkid,
        return_codes: vec![SubscribeReasonCode::NotAuthorized; count],
    };
    Version::V5.write(Packet::SubAck(ack, None))
}

/// Reason codes of the v5 DISCONNECTs the front sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Reason {
    MalformedPacket = 0x81,
    ProtocolError = 0x82,
    ServerShuttingDown = 0x8B,
    TopicAliasInvalid = 0x94,
    PacketTooLarge = 0x95,
}

/// v5 DISCONNECT sent by the server: reason code and an empty property
/// list. (Remaining length 1, no property length, is also valid MQTT 5, but
/// some clients, rumqttc among them, fail to read it.)
///
/// Written by hand: rumqttd 0.20's v5 DISCONNECT writer produces a corrupt
/// packet for a reason code without properties (length 1, two bytes
/// written), and a bare `E0 00` for one with empty properties.
pub(crate) fn disconnect(reason: Reason) -> Bytes {
    Bytes::copy_from_slice(&[0xE0, 0x02, reason as u8, 0x00])
}

/// Client id of the front's own startup probe: it cannot collide with a
/// client's, since identities never hold `_`.
const PROBE_CLIENT_ID: &str = "_vigil_probe";

/// The CONNECT the front sends to check that the router is up and ours.
pub(crate) fn probe_connect(version: Version, secret: &str) -> Bytes {
    let packet = Packet::Connect(
        codec::Connect {
            keep_alive: 10,
            client_id: PROBE_CLIENT_ID.to_owned(),
            clean_session: true,
        },
        None,
        None,
        None,
        Some(codec::Login {
            username: "vigil-probe".to_owned(),
            password: secret.to_owned(),
        }),
    );
    version.write(packet)
}

/// A client's DISCONNECT (normal disconnection); the same bytes in 3.1.1
/// and 5.
pub(crate) fn client_disconnect() -> &'static [u8] {
    &[0xE0, 0x00]
}

/// Rewrites a v5 CONNACK from the router so that the client uses at most
/// `alias_max` topic aliases (the front remembers each alias's topic). The
/// Topic Alias Maximum property is overwritten in place, or appended if
/// absent; every other byte passes unchanged. Anything unexpected is passed
/// as is.
///
/// Hand-written: rumqttd's v5 codec cannot read a CONNACK (it panics on
/// one), being written for the server side.
pub(crate) fn limit_connack_aliases(packet: Bytes, alias_max: u16) -> Bytes {
    const TOPIC_ALIAS_MAX: u8 = 0x22;
    let Ok(Some(frame)) = frame(&packet, usize::MAX) else {
        return packet;
    };
    if frame.kind() != kind::CONNACK || packet.len() != frame.len() {
        return packet;
    }
    // flags, reason code, then the properties.
    let body_start = frame.header_len + 2;
    let Some(mut rest) = packet.get(body_start..) else {
        return packet;
    };
    let before = rest.len();
    let Ok(props_len) = take_varint(&mut rest) else {
        return packet;
    };
    let props_start = body_start + (before - rest.len());
    if rest.len() != props_len {
        return packet;
    }
    let mut props = rest;
    while let Some(&id) = props.first() {
        let at = packet.len() - props.len();
        props.advance(1);
        let skipped = match id {
            TOPIC_ALIAS_MAX if props.len() >= 2 => {
                let mut out = BytesMut::from(&packet[..]);
                out[at + 1..at + 3].copy_from_slice(&alias_max.to_be_bytes());
                return out.freeze();
            }
            0x24 | 0x25 | 0x28 | 0x29 | 0x2A => skip(&mut props, 1),
            0x21 | 0x13 => skip(&mut props, 2),
            0x11 | 0x27 => skip(&mut props, 4),
            0x12 | 0x1F | 0x1A | 0x1C | 0x15 | 0x16 => {
                take_u16(&mut props).and_then(|n| skip(&mut props, n.into()))
            }
            0x26 => take_u16(&mut props)
                .and_then(|n| skip(&mut props, n.into()))
                .and_then(|()| take_u16(&mut props))
                .and_then(|n| skip(&mut props, n.into())),
            _ => return packet,
        };
        if skipped.is_err() {
            return packet;
        }
    }
    // Not present: append it, which changes both lengths.
    let mut new_props = BytesMut::from(&packet[props_start..]);
    new_props.extend_from_slice(&[TOPIC_ALIAS_MAX]);
    new_props.extend_from_slice(&alias_max.to_be_bytes());
    let mut body = BytesMut::from(&packet[frame.header_len..body_start]);
    put_varint(&mut body, new_props.len());
    body.extend_from_slice(&new_props);
    let mut out = BytesMut::with_capacity(body.len() + 5);
    out.extend_from_slice(&[packet[0]]);
    put_varint(&mut out, body.len());
    out.extend_from_slice(&body);
    out.freeze()
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

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttd::protocol::{LastWill, Login, PublishProperties, QoS};

    fn encode(version: Version, packet: Packet) -> BytesMut {
        let mut buf = BytesMut::new();
        match version {
            Version::V4 => V4.write(packet, &mut buf).unwrap(),
            Version::V5 => V5.write(packet, &mut buf).unwrap(),
        };
        buf
    }

    fn connect(version: Version, client_id: &str, will: Option<&str>) -> BytesMut {
        let packet = Packet::Connect(
            codec::Connect {
                keep_alive: 30,
                client_id: client_id.into(),
                clean_session: true,
            },
            None,
            will.map(|t| LastWill {
                topic: Bytes::copy_from_slice(t.as_bytes()),
                message: Bytes::from_static(b"offline"),
                qos: QoS::AtLeastOnce,
                retain: true,
            }),
            None,
            Some(Login {
                username: "u".into(),
                password: "client-password".into(),
            }),
        );
        encode(version, packet)
    }

    #[test]
    fn frames_by_fixed_header() {
        assert_eq!(frame(&[], 10).unwrap(), None);
        assert_eq!(frame(&[0x30], 10).unwrap(), None);
        let f = frame(&[0x30, 0x03, 1, 2, 3], 10).unwrap().unwrap();
        assert_eq!((f.kind(), f.header_len, f.remaining, f.len()), (3, 2, 3, 5));
        // 321 = 0xC1 0x02
        let f = frame(&[0x30, 0xC1, 0x02], 1000).unwrap().unwrap();
        assert_eq!((f.header_len, f.remaining), (3, 321));
        // Refused from the header alone.
        assert_eq!(
            frame(&[0x30, 0xC1, 0x02], 320),
            Err(WireError::TooLarge(321))
        );
        assert_eq!(frame(&[0x30, 0xff, 0xff], usize::MAX).unwrap(), None);
        assert!(matches!(
            frame(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], usize::MAX),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn connect_is_read_and_rewritten() {
        for version in [Version::V4, Version::V5] {
            let buf = connect(version, "", Some("vigil/v1/posts/p-1/status"));
            let f = frame(&buf, usize::MAX).unwrap().unwrap();
            assert_eq!(connect_version(&buf, f).unwrap(), version);
            let c = Connect::decode(version, buf).unwrap();
            assert_eq!(c.client_id(), "");
            assert_eq!(c.will_topic().unwrap(), Some("vigil/v1/posts/p-1/status"));
            let out = c.rewrite("p-1", "vigil-front", "s3cret");
            let mut again = BytesMut::from(&out[..]);
            match version.read(&mut again).unwrap() {
                Packet::Connect(connect, _, will, _, login) => {
                    assert_eq!(connect.client_id, "p-1");
                    assert_eq!(connect.keep_alive, 30);
                    assert!(will.unwrap().retain);
                    let login = login.unwrap();
                    assert_eq!(
                        (&*login.username, &*login.password),
                        ("vigil-front", "s3cret")
                    );
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn other_protocol_levels_are_unsupported() {
        let mut buf = connect(Version::V4, "x", None);
        // byte 0 type, 1 length, 2-3 name length, 4-7 "MQTT", 8 level
        buf[8] = 3;
        let f = frame(&buf, usize::MAX).unwrap().unwrap();
        assert_eq!(connect_version(&buf, f), Err(WireError::Unsupported(3)));
        buf[4] = b'X';
        assert!(matches!(
            connect_version(&buf, f),
            Err(WireError::Malformed(_))
        ));
    }

    fn publish(
        version: Version,
        qos: QoS,
        topic: &str,
        props: Option<PublishProperties>,
    ) -> BytesMut {
        let mut p = codec::Publish::new(topic.as_bytes().to_vec(), vec![7u8; 200], false);
        // `qos` and `pkid` are private to rumqttd: go through its own
        // serialisation-independent form to set them.
        let mut raw = BytesMut::from(&p.serialize()[..]);
        raw[0] |= (qos as u8) << 1;
        raw[1..3].copy_from_slice(&9u16.to_be_bytes());
        p = codec::Publish::deserialize(raw.freeze());
        encode(
            version,
            Packet::Publish(p, props.filter(|_| version == Version::V5)),
        )
    }

    #[test]
    fn publish_topic_qos_and_alias() {
        for version in [Version::V4, Version::V5] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                let buf = publish(version, qos, "vigil/v1/posts/p-1/events", None);
                let f = frame(&buf, usize::MAX).unwrap().unwrap();
                let info = publish_info(version, &buf, f).unwrap();
                assert_eq!(info.topic, "vigil/v1/posts/p-1/events");
                assert_eq!(info.qos, qos as u8);
                assert_eq!(info.pkid, if qos == QoS::AtMostOnce { 0 } else { 9 });
                assert_eq!(info.payload_len, 200);
                assert_eq!(info.alias, None);
            }
        }
        let props = PublishProperties {
            topic_alias: Some(3),
            user_properties: vec![("k".into(), "v".into())],
            content_type: Some("x".into()),
            message_expiry_interval: Some(5),
            ..Default::default()
        };
        let buf = publish(Version::V5, QoS::AtLeastOnce, "", Some(props));
        let f = frame(&buf, usize::MAX).unwrap().unwrap();
        let info = publish_info(Version::V5, &buf, f).unwrap();
        assert_eq!(
            (info.topic, info.alias, info.payload_len),
            ("", Some(3), 200)
        );
        // No topic and no alias.
        let buf = publish(Version::V5, QoS::AtLeastOnce, "", None);
        let f = frame(&buf, usize::MAX).unwrap().unwrap();
        assert!(publish_info(Version::V5, &buf, f).is_err());
    }

    #[test]
    fn truncated_publish_is_malformed() {
        let buf = publish(Version::V4, QoS::AtLeastOnce, "a/b", None);
        let f = frame(&buf, usize::MAX).unwrap().unwrap();
        for cut in 3..9 {
            let short = Frame {
                remaining: cut - f.header_len,
                ..f
            };
            assert!(
                publish_info(Version::V4, &buf[..cut], short).is_err(),
                "{cut}"
            );
        }
    }

    #[test]
    fn replies_encode_as_expected() {
        assert_eq!(
            &connack_refused(Version::V4, Refusal::NotAuthorized)[..],
            &[0x20, 2, 0, 5]
        );
        assert_eq!(
            &connack_refused(Version::V4, Refusal::UnsupportedVersion)[..],
            &[0x20, 2, 0, 1]
        );
        let v5 = connack_refused(Version::V5, Refusal::NotAuthorized);
        assert_eq!(&v5[..4], &[0x20, 3, 0, 0x87]);
        assert_eq!(&publish_not_authorized(1, 7)[..], &[0x40, 4, 0, 7, 0x87, 0]);
        assert_eq!(&publish_not_authorized(2, 7)[..], &[0x50, 4, 0, 7, 0x87, 0]);
        assert_eq!(
            &suback_not_authorized(7, 2)[..],
            &[0x90, 5, 0, 7, 0, 0x87, 0x87]
        );
        assert_eq!(&disconnect(Reason::PacketTooLarge)[..], &[0xE0, 2, 0x95, 0]);
    }

    #[test]
    fn connack_alias_maximum_is_limited() {
        // receive max 100, topic alias max 4096, user property ("k", "v")
        let with = [
            0x20, 16, 0, 0, 13, 0x21, 0, 100, 0x22, 0x10, 0x00, 0x26, 0, 1, b'k', 0, 1, b'v',
        ];
        let out = limit_connack_aliases(Bytes::copy_from_slice(&with), 16);
        let mut want = with;
        want[9..11].copy_from_slice(&[0, 16]);
        assert_eq!(&out[..], &want[..]);

        let without = [0x20, 6, 0, 0, 3, 0x21, 0, 100];
        let out = limit_connack_aliases(Bytes::copy_from_slice(&without), 16);
        assert_eq!(&out[..], &[0x20, 9, 0, 0, 6, 0x21, 0, 100, 0x22, 0, 16][..]);
        // No properties at all.
        let out = limit_connack_aliases(Bytes::from_static(&[0x20, 3, 0, 0, 0]), 16);
        assert_eq!(&out[..], &[0x20, 6, 0, 0, 3, 0x22, 0, 16][..]);
    }
}
