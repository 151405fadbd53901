//! Fuzz target for the DC-09 codec.
//!
//! Feeds arbitrary bytes to the frame decoder (with and without a key), to
//! the stream framer (split into two reads at a fuzzer-chosen point) and to
//! the payload parsers. The input is also wrapped in a frame with a valid
//! CRC and length so the fuzzer reaches the header and body parsers without
//! having to solve the CRC first. Nothing may panic, and every successfully decoded
//! message must survive an encode/decode round trip.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_dc09::{
    ContactId, EncodeError, Framer, Key, KeyLookup, Message, crc16_arc, decode, encode,
    parse_sia_dcs,
};

const K128: [u8; 16] = *b"0123456789abcdef";

fn check(frame: &[u8], key: &Key) {
    let with_key = |_: &str| KeyLookup::Key(key.clone());
    let plain = |_: &str| KeyLookup::Plaintext;
    for lookup in [&with_key as &dyn Fn(&str) -> KeyLookup, &plain] {
        let Ok(msg) = decode(frame, lookup) else {
            continue;
        };
        let _ = ContactId::parse(&msg.data);
        let _ = parse_sia_dcs(&msg.data);
        round_trip(&msg, key, lookup);
    }
}

fn round_trip(msg: &Message, key: &Key, lookup: &dyn Fn(&str) -> KeyLookup) {
    let key_arg = msg.encrypted.then_some(key);
    match encode(msg, key_arg, &mut |b: &mut [u8]| b.fill(0x5A)) {
        Ok(frame) => assert_eq!(decode(&frame, lookup).as_ref(), Ok(msg)),
        // Re-encoding may add a pad block to a frame that was at the limit.
        Err(EncodeError::TooLong(_)) => {}
        Err(e) => panic!("decoded message does not re-encode: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(key) = Key::from_bytes(&K128) else {
        return;
    };
    check(data, &key);

    if data.len() <= 0xFFF {
        let mut wrapped = format!("\n{:04X}{:04X}", crc16_arc(data), data.len()).into_bytes();
        wrapped.extend_from_slice(data);
        wrapped.push(b'\r');
        check(&wrapped, &key);
    }

    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let mut framer = Framer::new(512);
    for chunk in [&data[..split], &data[split..]] {
        framer.push(chunk);
        while let Some(item) = framer.next_frame() {
            if let Ok(frame) = item {
                check(&frame, &key);
            }
        }
    }

    let text = String::from_utf8_lossy(data);
    let _ = ContactId::parse(&text);
    let _ = parse_sia_dcs(&text);
});
