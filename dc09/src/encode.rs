//! Encoding a [`Message`] into a DC-09 frame.
//!
//! Used by the panel simulator for events and by the receiver for ACK, NAK
//! and DUH. The encoder validates every field against the same rules the
//! decoder enforces, so anything it produces decodes back to an equal
//! message (timestamps lose sub-second precision).
//!
//! Encryption happens exactly when the message is marked `encrypted`; the
//! key must then be supplied, and must not be supplied otherwise. Pad bytes
//! come from the caller's `fill` closure so tests can be deterministic; a
//! production caller passes a closure over a cryptographically secure RNG.

use thiserror::Error;

use super::crc::crc16_arc;
use super::crypto::{self, Key};
use super::message::{Message, Token, is_block_char, is_hex_len};
use super::timestamp::format_timestamp;

/// Largest body the `0LLL` length field can describe.
pub const MAX_BODY: usize = 0xFFF;

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// A header or body field breaks the DC-09 rules.
    #[error("invalid {field}: {reason}")]
    InvalidField {
        /// Field name.
        field: &'static str,
        /// Rule that was broken.
        reason: &'static str,
    },
    /// `encrypted` is set but no key was given.
    #[error("message is marked encrypted but no key was supplied")]
    KeyRequired,
    /// A key was given for a message not marked `encrypted`.
    #[error("a key was supplied for a message not marked encrypted")]
    UnexpectedKey,
    /// Encrypted messages must carry a timestamp.
    #[error("encrypted messages require a timestamp")]
    TimestampRequired,
    /// The timestamp year does not fit the four-digit field.
    #[error("timestamp year is outside 0000-9999")]
    TimestampOutOfRange,
    /// The body exceeds what the length field can express.
    #[error("message body is {0} bytes; the length field allows at most 4095")]
    TooLong(usize),
    /// Internal cipher failure (should not happen with a valid key).
    #[error("encryption failed")]
    Cipher,
}

fn invalid(field: &'static str, reason: &'static str) -> EncodeError {
    EncodeError::InvalidField { field, reason }
}

/// Encodes `msg` as a complete frame including `<LF>` and `<CR>`.
///
/// `fill` is called once per encrypted message to supply pad randomness;
/// it is not called for clear-text messages.
pub fn encode(
    msg: &Message,
    key: Option<&Key>,
    fill: &mut dyn FnMut(&mut [u8]),
) -> Result<Vec<u8>, EncodeError> {
    match (msg.encrypted, key) {
        (true, None) => return Err(EncodeError::KeyRequired),
        (false, Some(_)) => return Err(EncodeError::UnexpectedKey),
        _ => {}
    }

    let token = msg.token.as_str();
    if token.is_empty()
        || token.len() + usize::from(msg.encrypted) > 16
        || !token
            .bytes()
            .all(|b| (0x21..=0x7E).contains(&b) && b != b'"')
        || (token.starts_with('*'))
    {
        return Err(invalid(
            "token",
            "must be 1-16 printable characters without '\"' or leading '*'",
        ));
    }
    if msg.seq > 9999 {
        return Err(invalid("seq", "must be 0..=9999"));
    }
    if msg
        .receiver
        .as_deref()
        .is_some_and(|r| !is_hex_len(r, 1, 6))
    {
        return Err(invalid("receiver", "must be 1-6 hex digits"));
    }
    if !is_hex_len(&msg.line, 1, 6) {
        return Err(invalid("line", "must be 1-6 hex digits"));
    }
    let nak_placeholder = msg.account.is_empty() && msg.token == Token::Nak;
    if !nak_placeholder && !is_hex_len(&msg.account, 3, 16) {
        return Err(invalid("account", "must be 3-16 hex digits"));
    }
    if !msg.data.bytes().all(is_block_char) {
        return Err(invalid(
            "data",
            "must be printable ASCII without '[' or ']'",
        ));
    }
    if !msg.extended.iter().all(|e| e.bytes().all(is_block_char)) {
        return Err(invalid(
            "extended",
            "must be printable ASCII without '[' or ']'",
        ));
    }
    let timestamp = match msg.timestamp {
        Some(ts) => Some(format_timestamp(ts).ok_or(EncodeError::TimestampOutOfRange)?),
        None if msg.encrypted => return Err(EncodeError::TimestampRequired),
        None => None,
    };

    let mut body = String::with_capacity(64 + msg.data.len());
    body.push('"');
    if msg.encrypted {
        body.push('*');
    }
    body.push_str(token);
    body.push('"');
    body.push_str(&format!("{:04}", msg.seq));
    if let Some(r) = &msg.receiver {
        body.push('R');
        body.push_str(r);
    }
    body.push('L');
    body.push_str(&msg.line);
    if nak_placeholder {
        body.push_str("A0");
    } else {
        body.push('#');
        body.push_str(&msg.account);
    }
    body.push('[');

    // Everything after the opening '[' of the data block.
    let mut inner = String::with_capacity(msg.data.len() + 32);
    inner.push_str(&msg.data);
    inner.push(']');
    for ext in &msg.extended {
        inner.push('[');
        inner.push_str(ext);
        inner.push(']');
    }
    if let Some(ts) = &timestamp {
        inner.push_str(ts);
    }

    match key {
        Some(k) => {
            let sealed =
                crypto::seal(k, inner.as_bytes(), fill).map_err(|_| EncodeError::Cipher)?;
            body.push_str(&sealed);
        }
        None => body.push_str(&inner),
    }

    if body.len() > MAX_BODY {
        return Err(EncodeError::TooLong(body.len()));
    }
    let mut frame = Vec::with_capacity(body.len() + 10);
    frame.push(b'\n');
    frame.extend_from_slice(
        format!("{:04X}{:04X}", crc16_arc(body.as_bytes()), body.len()).as_bytes(),
    );
    frame.extend_from_slice(body.as_bytes());
    frame.push(b'\r');
    Ok(frame)
}

#[cfg(test)]
mod tests {
    //! Expected frames are the hand-built literals from the decode tests
    //! (CRC/length computed independently in Python, ciphertext with
    //! `openssl enc -nopad`).

    use super::super::decode::{KeyLookup, decode};
    use super::*;
    use time::macros::datetime;

    const K128: &str = "000102030405060708090A0B0C0D0E0F";
    const K192: &str = "000102030405060708090A0B0C0D0E0F1011121314151617";
    const K256: &str = "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F";

    fn zero_fill(b: &mut [u8]) {
        b.fill(0);
    }

    fn never_fill(_: &mut [u8]) {
        panic!("pad requested for a clear-text message");
    }

    fn sia_message() -> Message {
        Message {
            encrypted: false,
            token: Token::SiaDcs,
            seq: 2,
            receiver: Some("1".into()),
            line: "0".into(),
            account: "1234".into(),
            data: "#1234|Nri1/BA01".into(),
            extended: vec![],
            timestamp: Some(datetime!(2019-09-25 14:12:04 UTC)),
        }
    }

    #[test]
    fn clear_frames_match_hand_built_literals() {
        let frame = encode(&sia_message(), None, &mut never_fill).unwrap();
        assert_eq!(
            frame,
            b"\nE3C5003B\"SIA-DCS\"0002R1L0#1234[#1234|Nri1/BA01]_14:12:04,09-25-2019\r"
        );

        let cid = Message {
            token: Token::AdmCid,
            seq: 9876,
            receiver: Some("579BDF".into()),
            line: "789ABC".into(),
            account: "12345A".into(),
            data: "#12345A|1110 00 129".into(),
            ..sia_message()
        };
        assert_eq!(
            encode(&cid, None, &mut never_fill).unwrap(),
            b"\n5093004B\"ADM-CID\"9876R579BDFL789ABC#12345A[#12345A|1110 00 129]_14:12:04,09-25-2019\r"
        );

        let null = Message::new(Token::Null, "AAA");
        assert_eq!(
            encode(&null, None, &mut never_fill).unwrap(),
            b"\n54230012\"NULL\"0000L0#AAA[]\r"
        );

        let ext = Message {
            seq: 6002,
            receiver: None,
            account: "AAA".into(),
            data: "|Nri1/CL501".into(),
            extended: vec!["M0026B9E4268B".into()],
            ..sia_message()
        };
        assert_eq!(
            encode(&ext, None, &mut never_fill).unwrap(),
            b"\n87570043\"SIA-DCS\"6002L0#AAA[|Nri1/CL501][M0026B9E4268B]_14:12:04,09-25-2019\r"
        );
    }

    #[test]
    fn encrypted_null_matches_openssl_known_answer() {
        let key = Key::from_hex(K128).unwrap();
        let msg = Message {
            encrypted: true,
            seq: 1,
            timestamp: Some(datetime!(2024-06-01 12:00:00 UTC)),
            ..Message::new(Token::Null, "1234")
        };
        let frame = encode(&msg, Some(&key), &mut zero_fill).unwrap();
        assert_eq!(
            frame,
            b"\nA1B00053\"*NULL\"0001L0#1234[DF0223A9F316A68466AA5527CB34289A558F84525EA985DE3868D284C74CC8CC\r"
        );
    }

    #[test]
    fn encrypted_round_trip_all_key_sizes() {
        let mut counter = 0u8;
        let mut fill = |b: &mut [u8]| {
            for x in b {
                counter = counter.wrapping_add(37);
                *x = counter;
            }
        };
        for hex_key in [K128, K192, K256] {
            let key = Key::from_hex(hex_key).unwrap();
            for (token, data) in [
                (Token::SiaDcs, "#1234|Nri1/BA01"),
                (Token::AdmCid, "#1234|1130 01 015"),
                (Token::Null, ""),
            ] {
                let msg = Message {
                    encrypted: true,
                    token,
                    data: data.into(),
                    extended: vec!["X012E345".into(), "Y52E21".into()],
                    timestamp: Some(datetime!(2024-02-29 23:59:59 UTC)),
                    ..sia_message()
                };
                let frame = encode(&msg, Some(&key), &mut fill).unwrap();
                let lookup = |_: &str| KeyLookup::Key(key.clone());
                assert_eq!(decode(&frame, &lookup).unwrap(), msg, "AES-{}", key.bits());
            }
        }
    }

    #[test]
    fn key_and_flag_must_agree() {
        let key = Key::from_hex(K128).unwrap();
        let clear = sia_message();
        assert_eq!(
            encode(&clear, Some(&key), &mut zero_fill),
            Err(EncodeError::UnexpectedKey)
        );
        let enc = Message {
            encrypted: true,
            ..sia_message()
        };
        assert_eq!(
            encode(&enc, None, &mut zero_fill),
            Err(EncodeError::KeyRequired)
        );
        let no_ts = Message {
            timestamp: None,
            ..enc
        };
        assert_eq!(
            encode(&no_ts, Some(&key), &mut zero_fill),
            Err(EncodeError::TimestampRequired)
        );
    }

    #[test]
    fn invalid_fields_are_rejected() {
        let cases: Vec<(Message, &str)> = vec![
            (
                Message {
                    seq: 10000,
                    ..sia_message()
                },
                "seq",
            ),
            (
                Message {
                    receiver: Some(String::new()),
                    ..sia_message()
                },
                "receiver",
            ),
            (
                Message {
                    receiver: Some("1234567".into()),
                    ..sia_message()
                },
                "receiver",
            ),
            (
                Message {
                    line: String::new(),
                    ..sia_message()
                },
                "line",
            ),
            (
                Message {
                    line: "XY".into(),
                    ..sia_message()
                },
                "line",
            ),
            (
                Message {
                    account: "12".into(),
                    ..sia_message()
                },
                "account",
            ),
            (
                Message {
                    account: "12345678901234567".into(),
                    ..sia_message()
                },
                "account",
            ),
            (
                Message {
                    account: String::new(),
                    ..sia_message()
                },
                "account",
            ),
            (
                Message {
                    data: "a]b".into(),
                    ..sia_message()
                },
                "data",
            ),
            (
                Message {
                    data: "caf\u{e9}".into(),
                    ..sia_message()
                },
                "data",
            ),
            (
                Message {
                    extended: vec!["[x".into()],
                    ..sia_message()
                },
                "extended",
            ),
            (
                Message {
                    token: Token::Unknown(String::new()),
                    ..sia_message()
                },
                "token",
            ),
            (
                Message {
                    token: Token::Unknown("A\"B".into()),
                    ..sia_message()
                },
                "token",
            ),
            (
                Message {
                    token: Token::Unknown("*ACK".into()),
                    ..sia_message()
                },
                "token",
            ),
        ];
        for (msg, field) in cases {
            match encode(&msg, None, &mut never_fill) {
                Err(EncodeError::InvalidField { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn too_long_and_out_of_range_timestamp() {
        let long = Message {
            data: "x".repeat(MAX_BODY),
            ..sia_message()
        };
        assert!(matches!(
            encode(&long, None, &mut never_fill),
            Err(EncodeError::TooLong(_))
        ));
        let far = Message {
            timestamp: Some(datetime!(-0001-01-01 00:00:00 UTC)),
            ..sia_message()
        };
        assert_eq!(
            encode(&far, None, &mut never_fill),
            Err(EncodeError::TimestampOutOfRange)
        );
    }
}
