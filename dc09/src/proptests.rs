//! Property tests: the decoder and the framer must never panic, and
//! everything the encoder produces must decode back unchanged.

use proptest::prelude::*;
use time::OffsetDateTime;

use super::contact_id::ContactId;
use super::crc::crc16_arc;
use super::crypto::Key;
use super::decode::{KeyLookup, decode};
use super::encode::encode;
use super::framer::{Framer, FramerError};
use super::message::{Message, Token};
use super::sia_dcs::parse_sia_dcs;

const K128: &str = "000102030405060708090A0B0C0D0E0F";

fn key() -> Key {
    match Key::from_hex(K128) {
        Ok(k) => k,
        Err(e) => panic!("{e}"),
    }
}

/// Wraps arbitrary bytes in a frame with a correct CRC and length so that
/// the header and body parsers get exercised, not just the CRC check.
fn wrap(body: &[u8]) -> Vec<u8> {
    let mut f = format!("\n{:04X}{:04X}", crc16_arc(body), body.len()).into_bytes();
    f.extend_from_slice(body);
    f.push(b'\r');
    f
}

fn hex_string(min: usize, max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[0-9A-F]{{{min},{max}}}"))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn block_text() -> impl Strategy<Value = String> {
    // Printable ASCII without '[' and ']'.
    proptest::string::string_regex("[ -Z\\\\^-~]{0,40}").unwrap_or_else(|e| panic!("{e}"))
}

fn token() -> impl Strategy<Value = Token> {
    prop_oneof![
        Just(Token::SiaDcs),
        Just(Token::AdmCid),
        Just(Token::Null),
        Just(Token::Ack),
        Just(Token::Duh),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (
        any::<bool>(),
        token(),
        0u16..=9999,
        proptest::option::of(hex_string(1, 6)),
        hex_string(1, 6),
        hex_string(3, 16),
        block_text(),
        proptest::collection::vec(block_text(), 0..3),
        proptest::option::of(0i64..253_402_300_799),
    )
        .prop_map(
            |(encrypted, token, seq, receiver, line, account, data, extended, ts)| {
                let timestamp = ts
                    .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
                    .or(if encrypted {
                        Some(OffsetDateTime::UNIX_EPOCH)
                    } else {
                        None
                    });
                Message {
                    encrypted,
                    token,
                    seq,
                    receiver,
                    line,
                    account,
                    data,
                    extended,
                    timestamp,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode(&bytes, &|_: &str| KeyLookup::Plaintext);
        let _ = decode(&bytes, &|_: &str| KeyLookup::Key(key()));
    }

    #[test]
    fn decode_never_panics_on_valid_crc_frames(body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let frame = wrap(&body);
        let _ = decode(&frame, &|_: &str| KeyLookup::Plaintext);
        let _ = decode(&frame, &|_: &str| KeyLookup::UnknownAccount);
        let _ = decode(&frame, &|_: &str| KeyLookup::Key(key()));
    }

    #[test]
    fn decode_never_panics_on_header_like_frames(
        prefix in "\"\\*?(SIA-DCS|ADM-CID|NULL|ACK|NAK|DUH|[A-Z]{1,5})\"[0-9]{4}(R[0-9A-F]{1,7})?L[0-9A-F]{0,8}(#[0-9A-F]{0,18}|A[0-9A-F]{0,3})\\[",
        rest in proptest::collection::vec(any::<u8>(), 0..120),
    ) {
        let mut body = prefix.into_bytes();
        body.extend_from_slice(&rest);
        let frame = wrap(&body);
        let _ = decode(&frame, &|_: &str| KeyLookup::Plaintext);
        let _ = decode(&frame, &|_: &str| KeyLookup::Key(key()));
    }

    #[test]
    fn encode_decode_round_trip(msg in message(), pad in any::<u8>()) {
        let k = key();
        let key_arg = if msg.encrypted { Some(&k) } else { None };
        let frame = encode(&msg, key_arg, &mut |b: &mut [u8]| b.fill(pad));
        let frame = match frame {
            Ok(f) => f,
            Err(e) => return Err(TestCaseError::fail(format!("{e}"))),
        };
        let back = decode(&frame, &|_: &str| if msg.encrypted { KeyLookup::Key(k.clone()) } else { KeyLookup::Plaintext });
        prop_assert_eq!(back, Ok(msg));
    }

    #[test]
    fn framer_never_panics_and_accounts_for_every_byte(
        chunks in proptest::collection::vec(proptest::collection::vec(
            prop_oneof![Just(b'\n'), Just(b'\r'), any::<u8>()], 0..60), 0..8),
        max in 0usize..64,
    ) {
        let mut framer = Framer::new(max);
        let mut total_in = 0;
        let mut total_out = 0;
        for chunk in &chunks {
            total_in += chunk.len();
            framer.push(chunk);
            while let Some(item) = framer.next_frame() {
                total_out += match item {
                    Ok(frame) => {
                        prop_assert_eq!(frame.first(), Some(&b'\n'));
                        prop_assert_eq!(frame.last(), Some(&b'\r'));
                        prop_assert!(frame.len() <= max.max(10));
                        frame.len()
                    }
                    Err(FramerError::Garbage { discarded } | FramerError::Oversize { discarded }) => {
                        prop_assert!(discarded > 0);
                        discarded
                    }
                };
            }
            prop_assert!(framer.buffered() < max.max(10));
        }
        prop_assert_eq!(total_in, total_out + framer.buffered());
    }

    #[test]
    fn payload_parsers_never_panic(s in "\\PC{0,60}", b in proptest::collection::vec(any::<u8>(), 0..60)) {
        let _ = parse_sia_dcs(&s);
        let _ = ContactId::parse(&s);
        let lossy = String::from_utf8_lossy(&b);
        let _ = parse_sia_dcs(&lossy);
        let _ = ContactId::parse(&lossy);
    }
}
