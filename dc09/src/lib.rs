//! SIA DC-09 ("Internet Protocol Event Reporting", ANSI/SIA DC-09-2013 and
//! later revisions) codec for the gateway's receiver and the panel simulator
//! (`vigil-sim`), and the alarm event taxonomy.
//!
//! This crate is pure code: no async runtime, no sockets, no clocks, no
//! global randomness.
//! Everything that depends on the outside world (current time, pad bytes,
//! per-account keys) is passed in by the caller so that tests are exact.
//!
//! # Layout
//!
//! * [`crc`]: CRC-16/ARC as used by the frame header.
//! * [`crypto`]: account keys (AES-128/192/256) and the CBC/zero-IV cipher
//!   with the DC-09 pad rules.
//! * [`timestamp`]: the `_HH:MM:SS,MM-DD-YYYY` UTC timestamp and the
//!   acceptance window check.
//! * [`message`]: the typed [`Message`] and [`Token`].
//! * [`mod@decode`]: strict frame decoding with errors that tell the receiver
//!   which answer (none / NAK / DUH) to give.
//! * [`mod@encode`]: frame encoding for the simulator and for responses.
//! * [`reply`]: ACK / NAK / DUH builders.
//! * [`framer`]: splitting a TCP byte stream into frames.
//! * [`contact_id`]: the Ademco Contact ID payload of `ADM-CID` messages.
//! * [`sia_dcs`]: the SIA DC-03 style payload of `SIA-DCS` messages.
//! * [`taxonomy`]: table-driven mapping of event codes to a category,
//!   default severity, description and restore flag. It depends on no
//!   parser: [`contact_id`] and [`sia_dcs`] call into it, never the reverse.
//!
//! # Receiver flow
//!
//! 1. Split the TCP stream with [`Framer`] (UDP: one datagram = one frame).
//! 2. [`decode()`] each frame with a [`KeyLookup`] closure over the account
//!    configuration.
//! 3. On error, [`DecodeError::reply`] says whether to stay silent, NAK or
//!    DUH. On success, check the timestamp with [`check_window`] (mandatory
//!    for encrypted messages) and answer [`ack_for`] or [`nak`].
//! 4. [`encode()`] the answer, passing the account key for encrypted ACKs.
//! 5. Interpret the data block with [`ContactId::parse`] or
//!    [`parse_sia_dcs`] and classify the events with the [`taxonomy`].
//!
//! `tests::receiver_flow` below walks through exactly this. The property
//! tests are in `proptests`; the fuzz target is in `fuzz/` (built with
//! `cargo fuzz`, outside the workspace).

pub mod contact_id;
pub mod crc;
pub mod crypto;
pub mod decode;
pub mod encode;
pub mod framer;
pub mod message;
pub mod reply;
pub mod sia_dcs;
pub mod taxonomy;
pub mod timestamp;

#[cfg(test)]
mod proptests;

pub use contact_id::{ContactId, ContactIdError, Qualifier};
pub use crc::crc16_arc;
pub use crypto::{Key, KeyError};
pub use decode::{DecodeError, KeyLookup, decode};
pub use encode::{EncodeError, encode};
pub use framer::{DEFAULT_MAX_FRAME, Framer, FramerError};
pub use message::{Message, Token};
pub use reply::{Reply, ack_for, duh_for, nak};
pub use sia_dcs::{SiaDcsError, SiaEvent, parse_sia_dcs};
pub use taxonomy::{Classification, EventCategory, Severity, Transition};
pub use timestamp::{DEFAULT_AHEAD, DEFAULT_BEHIND, WindowError, check_window};

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;
    use time::macros::datetime;

    /// What a receiver does with one frame: the answer to send, if any.
    fn answer(frame: &[u8], now: OffsetDateTime) -> Option<Vec<u8>> {
        let lookup = |acct: &str| match acct {
            "1234" => KeyLookup::Plaintext,
            _ => KeyLookup::UnknownAccount,
        };
        let reply = match decode(frame, &lookup) {
            Ok(msg) => match msg
                .timestamp
                .map(|ts| check_window(ts, now, DEFAULT_BEHIND, DEFAULT_AHEAD))
            {
                Some(Err(_)) => nak(now),
                _ => ack_for(&msg, now),
            },
            Err(e) => match e.reply() {
                Reply::None => return None,
                Reply::Nak => nak(now),
                Reply::Duh(header) => duh_for(header),
            },
        };
        // Clear-text account: no key, so the pad source is never used.
        encode(&reply, None, &mut |_: &mut [u8]| {}).ok()
    }

    #[test]
    fn receiver_flow() {
        let frame = b"\nE3C5003B\"SIA-DCS\"0002R1L0#1234[#1234|Nri1/BA01]_14:12:04,09-25-2019\r";
        let now = datetime!(2019-09-25 14:12:10 UTC);

        let mut framer = Framer::default();
        framer.push(frame);
        let Some(Ok(one)) = framer.next_frame() else {
            panic!("framer did not yield the frame");
        };
        assert_eq!(
            answer(&one, now).unwrap(),
            // CRC and length computed independently in Python.
            b"\n6BBC0028\"ACK\"0002R1L0#1234[]_14:12:10,09-25-2019\r"
        );

        let msg = decode(&one, &|_: &str| KeyLookup::Plaintext).unwrap();
        let events = parse_sia_dcs(&msg.data).unwrap();
        let class = events[0].classify();
        assert_eq!(
            (class.category, class.severity, class.restore),
            (EventCategory::Burglary, Severity::High, false)
        );

        // Same frame, receiver clock 41 s later: NAK with the receiver time.
        let late = datetime!(2019-09-25 14:12:45 UTC);
        // (CRC and length computed independently in Python.)
        assert_eq!(
            answer(&one, late).unwrap(),
            b"\nC3DC0025\"NAK\"0000R0L0A0[]_14:12:45,09-25-2019\r"
        );

        // Corrupted frame: silence.
        let mut bad = one;
        bad[20] ^= 1;
        assert_eq!(answer(&bad, now), None);
    }
}
