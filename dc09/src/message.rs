//! The typed DC-09 message.
//!
//! A frame looks like this (angle brackets are descriptive, square brackets
//! and quotes are literal):
//!
//! ```text
//! <LF><crc><0LLL>"<id>"<seq>[R<rcvr>]L<pref>#<acct>[<data>][<ext>]...[_<timestamp>]<CR>
//! ```
//!
//! * `crc`: four hex digits, CRC-16/ARC of everything from the opening `"`
//!   to the end of the timestamp (see [`super::crc`]).
//! * `0LLL`: `0` followed by three hex digits, the byte length of that same
//!   span.
//! * `id`: the ID token, e.g. `SIA-DCS`, `ADM-CID`, `NULL`, `ACK`, `NAK`,
//!   `DUH`; a leading `*` inside the quotes marks an encrypted message.
//! * `seq`: four decimal digits, 0000-9999.
//! * `R<rcvr>`: optional receiver number, 1-6 hex digits.
//! * `L<pref>`: account prefix ("line"), 1-6 hex digits.
//! * `#<acct>`: account number, 3-16 hex digits. A NAK carries `A0` here
//!   instead, since it is not tied to an account.
//! * `[<data>]`: the message data block. For `SIA-DCS` and `ADM-CID` it
//!   usually starts with `#<acct>|` followed by the payload.
//! * `[<ext>]`: optional extended data blocks, e.g. `[X...]` longitude,
//!   `[Y...]` latitude, `[H...]` event time, `[M...]` MAC address,
//!   `[V...]` verification URL.
//! * `_<timestamp>`: `_HH:MM:SS,MM-DD-YYYY` in UTC, mandatory when
//!   encrypted.

use time::OffsetDateTime;

/// DC-09 ID token, without the `*` encryption marker.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Token {
    /// `SIA-DCS`: SIA DC-03 style event data.
    SiaDcs,
    /// `ADM-CID`: Ademco Contact ID event data.
    AdmCid,
    /// `NULL`: link supervision / poll message.
    Null,
    /// `ACK`: positive acknowledgement.
    Ack,
    /// `NAK`: negative acknowledgement (timestamp rejected).
    Nak,
    /// `DUH`: message understood at frame level but not processed.
    Duh,
    /// Any other token, kept verbatim so a receiver can answer DUH.
    Unknown(String),
}

impl Token {
    /// Maps the token text (without `*`) to a [`Token`].
    pub fn from_wire(s: &str) -> Self {
        match s {
            "SIA-DCS" => Self::SiaDcs,
            "ADM-CID" => Self::AdmCid,
            "NULL" => Self::Null,
            "ACK" => Self::Ack,
            "NAK" => Self::Nak,
            "DUH" => Self::Duh,
            other => Self::Unknown(other.to_owned()),
        }
    }

    /// The token text as written on the wire (without `*`).
    pub fn as_str(&self) -> &str {
        match self {
            Self::SiaDcs => "SIA-DCS",
            Self::AdmCid => "ADM-CID",
            Self::Null => "NULL",
            Self::Ack => "ACK",
            Self::Nak => "NAK",
            Self::Duh => "DUH",
            Self::Unknown(s) => s,
        }
    }

    /// True for the receiver-to-panel responses (ACK, NAK, DUH).
    pub fn is_response(&self) -> bool {
        matches!(self, Self::Ack | Self::Nak | Self::Duh)
    }
}

/// A decoded (or to-be-encoded) DC-09 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Whether the message is (to be) encrypted (`*` before the token).
    pub encrypted: bool,
    /// ID token.
    pub token: Token,
    /// Sequence number, 0..=9999.
    pub seq: u16,
    /// Receiver number as the hex digits given after `R`, if present.
    pub receiver: Option<String>,
    /// Account prefix ("line") as the hex digits given after `L`.
    pub line: String,
    /// Account number as the hex digits given after `#`. Empty for a NAK
    /// that carries `A0` instead of an account.
    pub account: String,
    /// Content of the first `[...]` block, decrypted, without brackets.
    pub data: String,
    /// Contents of any further `[...]` blocks, without brackets.
    pub extended: Vec<String>,
    /// Timestamp, if present.
    pub timestamp: Option<OffsetDateTime>,
}

impl Message {
    /// A message with the given token and account, sequence 0, line `0`, no
    /// receiver, empty data, no extended blocks, no timestamp, unencrypted.
    pub fn new(token: Token, account: impl Into<String>) -> Self {
        Self {
            encrypted: false,
            token,
            seq: 0,
            receiver: None,
            line: "0".to_owned(),
            account: account.into(),
            data: String::new(),
            extended: Vec::new(),
            timestamp: None,
        }
    }

    /// The data block payload with any leading `#<acct>|` (or bare `|`)
    /// removed; see [`split_account`].
    pub fn payload(&self) -> &str {
        split_account(&self.data).1
    }
}

/// Splits a data block into the optional embedded account and the payload.
///
/// `"#1234|1130 01 015"` gives `(Some("1234"), "1130 01 015")`,
/// `"|Nri1/BA01"` gives `(None, "Nri1/BA01")` and anything without a
/// leading `#...|` or `|` is returned unchanged as payload.
pub fn split_account(data: &str) -> (Option<&str>, &str) {
    if let Some(rest) = data.strip_prefix('#') {
        return match rest.split_once('|') {
            Some((acct, payload)) if is_hex_len(acct, 3, 16) => (Some(acct), payload),
            _ => (None, data),
        };
    }
    match data.strip_prefix('|') {
        Some(payload) => (None, payload),
        None => (None, data),
    }
}

/// True if `s` is `min..=max` ASCII hex digits.
pub(super) fn is_hex_len(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// True for characters allowed inside data and extended blocks: printable
/// ASCII except the block delimiters.
pub(super) fn is_block_char(b: u8) -> bool {
    (0x20..=0x7E).contains(&b) && b != b'[' && b != b']'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip() {
        for t in ["SIA-DCS", "ADM-CID", "NULL", "ACK", "NAK", "DUH", "RSP"] {
            assert_eq!(Token::from_wire(t).as_str(), t);
        }
        assert_eq!(Token::from_wire("RSP"), Token::Unknown("RSP".into()));
        assert!(Token::Ack.is_response());
        assert!(!Token::SiaDcs.is_response());
    }

    #[test]
    fn split_account_forms() {
        assert_eq!(
            split_account("#1234|1130 01 015"),
            (Some("1234"), "1130 01 015")
        );
        assert_eq!(split_account("|Nri1/BA01"), (None, "Nri1/BA01"));
        assert_eq!(split_account("Nri1/BA01"), (None, "Nri1/BA01"));
        assert_eq!(split_account("#ZZ|x"), (None, "#ZZ|x"));
        assert_eq!(split_account(""), (None, ""));
    }
}
