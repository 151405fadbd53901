//! Receiver responses: ACK, NAK and DUH.
//!
//! * ACK echoes the sequence number, receiver number, account prefix and
//!   account of the acknowledged message, with an empty data block `[]`.
//!   When the acknowledged message was encrypted, the ACK is encrypted with
//!   the same key, uses the token `*ACK`, and (like every encrypted message)
//!   carries pad and timestamp inside the encrypted region. For clear-text
//!   ACKs the standard makes the timestamp optional; [`ack_for`] includes
//!   the receiver's time in both cases, and a caller that must talk to a
//!   panel which chokes on it can clear `timestamp` on the returned message.
//! * NAK is sent when a message fails the timestamp test (and, by common
//!   receiver practice, for unknown accounts and decryption failures). It
//!   is never encrypted, is not tied to a message (sequence `0000`,
//!   receiver `R0`, prefix `L0`, `A0` in place of the account) and carries
//!   the receiver's current time so that the panel can resynchronise:
//!   `"NAK"0000R0L0A0[]_HH:MM:SS,MM-DD-YYYY`.
//! * DUH means "received correctly but I cannot process it" (unknown token,
//!   unsupported content). It echoes the header like an ACK and is sent in
//!   clear text without a timestamp.
//!
//! The builders return [`Message`] values; turn them into bytes with
//! [`super::encode::encode`] (passing the account key for encrypted ACKs).

use time::OffsetDateTime;

use super::message::{Message, Token};

/// The answer a receiver should send after a decode failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    /// Send nothing (frame-level damage: count and drop).
    None,
    /// Send [`nak`].
    Nak,
    /// Send [`duh_for`] of the carried header.
    Duh(&'a Message),
}

/// ACK for `msg`, stamped with the receiver time `now`. Encrypted iff `msg`
/// was encrypted.
pub fn ack_for(msg: &Message, now: OffsetDateTime) -> Message {
    Message {
        encrypted: msg.encrypted,
        token: Token::Ack,
        seq: msg.seq,
        receiver: msg.receiver.clone(),
        line: msg.line.clone(),
        account: msg.account.clone(),
        data: String::new(),
        extended: Vec::new(),
        timestamp: Some(now),
    }
}

/// The standard NAK, `"NAK"0000R0L0A0[]` plus the receiver time `now`.
pub fn nak(now: OffsetDateTime) -> Message {
    Message {
        encrypted: false,
        token: Token::Nak,
        seq: 0,
        receiver: Some("0".to_owned()),
        line: "0".to_owned(),
        account: String::new(),
        data: String::new(),
        extended: Vec::new(),
        timestamp: Some(now),
    }
}

/// DUH for `msg` (clear text, no timestamp).
pub fn duh_for(msg: &Message) -> Message {
    Message {
        encrypted: false,
        token: Token::Duh,
        seq: msg.seq,
        receiver: msg.receiver.clone(),
        line: msg.line.clone(),
        account: msg.account.clone(),
        data: String::new(),
        extended: Vec::new(),
        timestamp: None,
    }
}

#[cfg(test)]
mod tests {
    //! Expected frames were built by hand; CRC and length computed
    //! independently in Python (see the decode tests).

    use super::super::crypto::Key;
    use super::super::decode::{KeyLookup, decode};
    use super::super::encode::encode;
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2024-06-01 12:00:00 UTC);

    fn no_pad(_: &mut [u8]) {}

    fn event() -> Message {
        Message {
            seq: 2,
            receiver: Some("1".into()),
            data: "#1234|Nri1/BA01".into(),
            ..Message::new(Token::SiaDcs, "1234")
        }
    }

    #[test]
    fn clear_ack_format() {
        let frame = encode(&ack_for(&event(), NOW), None, &mut no_pad).unwrap();
        assert_eq!(
            frame,
            b"\n73BF0028\"ACK\"0002R1L0#1234[]_12:00:00,06-01-2024\r"
        );
    }

    #[test]
    fn nak_format() {
        let frame = encode(&nak(NOW), None, &mut no_pad).unwrap();
        assert_eq!(
            frame,
            b"\nD2DF0025\"NAK\"0000R0L0A0[]_12:00:00,06-01-2024\r"
        );
        // And it decodes back to the same message.
        let back = decode(&frame, &|_: &str| KeyLookup::UnknownAccount).unwrap();
        assert_eq!(back, nak(NOW));
    }

    #[test]
    fn duh_format() {
        let frame = encode(&duh_for(&event()), None, &mut no_pad).unwrap();
        assert_eq!(frame, b"\n6A6A0014\"DUH\"0002R1L0#1234[]\r");
    }

    #[test]
    fn duh_for_encrypted_message_is_clear() {
        let enc = Message {
            encrypted: true,
            ..event()
        };
        let duh = duh_for(&enc);
        assert!(!duh.encrypted);
        assert_eq!(
            encode(&duh, None, &mut no_pad).unwrap(),
            b"\n6A6A0014\"DUH\"0002R1L0#1234[]\r"
        );
    }

    #[test]
    fn encrypted_ack_known_answer() {
        // Same plaintext as the encrypted NULL known answer:
        // "0000000000|]_12:00:00,06-01-2024" under AES-128.
        let key = Key::from_hex("000102030405060708090A0B0C0D0E0F").unwrap();
        let msg = Message {
            encrypted: true,
            seq: 1,
            receiver: None,
            ..event()
        };
        let ack = ack_for(&msg, NOW);
        assert!(ack.encrypted);
        let frame = encode(&ack, Some(&key), &mut |b: &mut [u8]| b.fill(0)).unwrap();
        assert_eq!(
            frame,
            b"\n5B280052\"*ACK\"0001L0#1234[DF0223A9F316A68466AA5527CB34289A558F84525EA985DE3868D284C74CC8CC\r"
        );
        let back = decode(&frame, &|_: &str| KeyLookup::Key(key.clone())).unwrap();
        assert_eq!(back, ack);
    }

    #[test]
    fn ack_echoes_header() {
        let msg = Message {
            seq: 9876,
            receiver: Some("579BDF".into()),
            line: "789ABC".into(),
            account: "12345A".into(),
            ..event()
        };
        let ack = ack_for(&msg, NOW);
        assert_eq!(
            (
                ack.token,
                ack.seq,
                ack.receiver.as_deref(),
                ack.line.as_str(),
                ack.account.as_str()
            ),
            (Token::Ack, 9876, Some("579BDF"), "789ABC", "12345A")
        );
        assert_eq!((ack.data.as_str(), ack.timestamp), ("", Some(NOW)));
    }
}
