//! Strict decoding of one DC-09 frame.
//!
//! Decoding runs in layers, and the first failing layer decides the error
//! (and therefore the receiver's answer, see [`DecodeError::reply`]):
//!
//! 1. Framing: `<LF>`, four hex CRC digits, `0` + three hex length digits,
//!    body, `<CR>`. Then the length field must equal the body length and
//!    the CRC must match. Failures here get no answer: the sender cannot be
//!    trusted to be who it claims.
//! 2. Header: token, sequence, receiver, line, account. A header that does
//!    not parse gets no answer either (there is nothing to echo in a DUH).
//! 3. Token: unknown tokens get a DUH echoing the header.
//! 4. Account and key: unknown account, missing key, wrong key or a
//!    decryption failure get a NAK.
//! 5. Body: data block, extended blocks, timestamp. A malformed clear-text
//!    body gets a DUH; a missing or malformed timestamp gets a NAK.
//!
//! The timestamp window is not checked here (it depends on the receiver
//! clock); see [`super::timestamp::check_window`].

use thiserror::Error;

use super::crc::crc16_arc;
use super::crypto::{self, CipherError, Key};
use super::message::{Message, Token, is_block_char, is_hex_len};
use super::reply::Reply;
use super::timestamp::{self, TIMESTAMP_LEN, TimestampError};

/// Smallest possible frame: LF + CRC(4) + length(4) + CR.
const MIN_FRAME: usize = 10;

/// Longest ID token accepted, including the `*` marker.
const MAX_TOKEN: usize = 16;

/// What the key store knows about an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyLookup {
    /// The account is not configured on this receiver.
    UnknownAccount,
    /// The account is configured for unencrypted reporting.
    Plaintext,
    /// The account is configured for encrypted reporting with this key.
    Key(Key),
}

impl From<Option<Key>> for KeyLookup {
    /// `None` means "known, no key" ([`KeyLookup::Plaintext`]).
    fn from(key: Option<Key>) -> Self {
        key.map_or(Self::Plaintext, Self::Key)
    }
}

/// Everything that can go wrong while decoding a frame.
///
/// Variants that carry a `Box<Message>` hold the parsed header (data,
/// extended blocks and timestamp left empty) so the receiver can log it and
/// build a DUH with [`super::reply::duh_for`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// Not a frame: missing `<LF>`/`<CR>`, too short, or non-hex CRC/length.
    #[error("framing error: {0}")]
    Framing(&'static str),
    /// Length field disagrees with the body length.
    #[error("length field says {declared} bytes but the body has {actual}")]
    BadLength {
        /// Value of the length field.
        declared: usize,
        /// Bytes actually present between the length field and `<CR>`.
        actual: usize,
    },
    /// CRC mismatch.
    #[error("CRC mismatch: frame says {declared:04X}, computed {computed:04X}")]
    BadCrc {
        /// CRC carried in the frame.
        declared: u16,
        /// CRC computed over the body.
        computed: u16,
    },
    /// CRC and length are fine but the header fields are not.
    #[error("malformed header: {0}")]
    MalformedHeader(&'static str),
    /// The ID token is not one this codec handles.
    #[error("unsupported ID token {:?}", .0.token.as_str())]
    Unsupported(Box<Message>),
    /// The account is not known to the receiver.
    #[error("unknown account {:?}", .0.account)]
    UnknownAccount(Box<Message>),
    /// Encrypted message for an account that has no key.
    #[error("encrypted message for account {:?}, which has no key", .0.account)]
    NoKey(Box<Message>),
    /// Clear-text message for an account that requires encryption.
    #[error("unencrypted message for account {:?}, which requires encryption", .0.account)]
    EncryptionRequired(Box<Message>),
    /// The encrypted part could not be decrypted into a valid body
    /// (wrong key, corrupted ciphertext, bad pad).
    #[error("cannot decrypt message for account {:?}: {reason}", .message.account)]
    Undecryptable {
        /// Parsed header.
        message: Box<Message>,
        /// What failed.
        reason: &'static str,
    },
    /// Clear-text body is not `data]` + `[ext]`* + optional timestamp.
    #[error("malformed message body: {reason}")]
    MalformedBody {
        /// Parsed header.
        message: Box<Message>,
        /// What failed.
        reason: &'static str,
    },
    /// Encrypted message without the mandatory timestamp.
    #[error("encrypted message without timestamp")]
    MissingTimestamp(Box<Message>),
    /// Timestamp present but not a valid `_HH:MM:SS,MM-DD-YYYY` UTC time.
    #[error("bad timestamp: {reason}")]
    BadTimestamp {
        /// Parsed header.
        message: Box<Message>,
        /// What failed.
        reason: TimestampError,
    },
}

impl DecodeError {
    /// The answer a receiver should give for this error.
    pub fn reply(&self) -> Reply<'_> {
        match self {
            Self::Framing(_)
            | Self::BadLength { .. }
            | Self::BadCrc { .. }
            | Self::MalformedHeader(_) => Reply::None,
            Self::UnknownAccount(_)
            | Self::NoKey(_)
            | Self::EncryptionRequired(_)
            | Self::Undecryptable { .. }
            | Self::MissingTimestamp(_)
            | Self::BadTimestamp { .. } => Reply::Nak,
            Self::Unsupported(m) | Self::MalformedBody { message: m, .. } => Reply::Duh(m),
        }
    }

    /// The parsed header, when decoding got that far.
    pub fn header(&self) -> Option<&Message> {
        match self {
            Self::Framing(_)
            | Self::BadLength { .. }
            | Self::BadCrc { .. }
            | Self::MalformedHeader(_) => None,
            Self::Unsupported(m)
            | Self::UnknownAccount(m)
            | Self::NoKey(m)
            | Self::EncryptionRequired(m)
            | Self::MissingTimestamp(m)
            | Self::Undecryptable { message: m, .. }
            | Self::MalformedBody { message: m, .. }
            | Self::BadTimestamp { message: m, .. } => Some(m),
        }
    }
}

/// Decodes one complete frame (`<LF>` ... `<CR>`).
///
/// `keys` is asked about the account of every message that carries one
/// (a NAK with `A0` carries none). Never panics, whatever the input.
pub fn decode(bytes: &[u8], keys: &dyn Fn(&str) -> KeyLookup) -> Result<Message, DecodeError> {
    let body = check_frame(bytes)?;
    let (mut msg, rest) = parse_header(body)?;

    if let Token::Unknown(_) = msg.token {
        return Err(DecodeError::Unsupported(Box::new(msg)));
    }

    let key = if msg.account.is_empty() {
        None
    } else {
        match keys(&msg.account) {
            KeyLookup::UnknownAccount => return Err(DecodeError::UnknownAccount(Box::new(msg))),
            KeyLookup::Plaintext if msg.encrypted => return Err(DecodeError::NoKey(Box::new(msg))),
            KeyLookup::Plaintext => None,
            KeyLookup::Key(k) => {
                // NAK and DUH are always sent in clear text, even to
                // encrypted accounts.
                if !msg.encrypted && !matches!(msg.token, Token::Nak | Token::Duh) {
                    return Err(DecodeError::EncryptionRequired(Box::new(msg)));
                }
                Some(k)
            }
        }
    };

    let clear: String;
    let inner: &[u8] = if msg.encrypted {
        let Some(key) = key else {
            return Err(DecodeError::NoKey(Box::new(msg)));
        };
        match crypto::open(&key, rest) {
            Ok(text) => {
                clear = text;
                clear.as_bytes()
            }
            Err(e) => {
                let reason = match e {
                    CipherError::Hex => "ciphertext is not hex",
                    CipherError::BlockLength(_) => "ciphertext is not a whole number of AES blocks",
                    CipherError::NoPadTerminator => "no pad terminator (wrong key?)",
                    CipherError::NotText => "decrypted text is not printable (wrong key?)",
                };
                return Err(DecodeError::Undecryptable {
                    message: Box::new(msg),
                    reason,
                });
            }
        }
    } else {
        rest
    };

    match parse_body(inner) {
        Ok(body) => {
            msg.data = body.data;
            msg.extended = body.extended;
            msg.timestamp = match body.timestamp {
                None if msg.encrypted => return Err(DecodeError::MissingTimestamp(Box::new(msg))),
                None => None,
                Some(ts) => match timestamp::parse_timestamp(ts) {
                    Ok(t) => Some(t),
                    Err(reason) => {
                        return Err(DecodeError::BadTimestamp {
                            message: Box::new(msg),
                            reason,
                        });
                    }
                },
            };
            Ok(msg)
        }
        Err(reason) if msg.encrypted => Err(DecodeError::Undecryptable {
            message: Box::new(msg),
            reason,
        }),
        Err(reason) => Err(DecodeError::MalformedBody {
            message: Box::new(msg),
            reason,
        }),
    }
}

/// Checks LF/CR, length and CRC; returns the CRC-covered body.
fn check_frame(bytes: &[u8]) -> Result<&[u8], DecodeError> {
    if bytes.len() < MIN_FRAME {
        return Err(DecodeError::Framing("frame too short"));
    }
    let (first, last) = match (bytes.first(), bytes.last()) {
        (Some(f), Some(l)) => (*f, *l),
        _ => return Err(DecodeError::Framing("frame too short")),
    };
    if first != b'\n' {
        return Err(DecodeError::Framing("frame does not start with LF"));
    }
    if last != b'\r' {
        return Err(DecodeError::Framing("frame does not end with CR"));
    }
    let declared_crc =
        hex_u16(&bytes[1..5]).ok_or(DecodeError::Framing("CRC field is not 4 hex digits"))?;
    let len_field = &bytes[5..9];
    if len_field[0] != b'0' {
        return Err(DecodeError::Framing("length field does not start with '0'"));
    }
    let declared_len = hex_u16(len_field).ok_or(DecodeError::Framing("length field is not hex"))?;
    let body = &bytes[9..bytes.len() - 1];
    if usize::from(declared_len) != body.len() {
        return Err(DecodeError::BadLength {
            declared: usize::from(declared_len),
            actual: body.len(),
        });
    }
    let computed = crc16_arc(body);
    if computed != declared_crc {
        return Err(DecodeError::BadCrc {
            declared: declared_crc,
            computed,
        });
    }
    Ok(body)
}

/// Parses exactly four hex digits.
fn hex_u16(digits: &[u8]) -> Option<u16> {
    if digits.len() != 4 {
        return None;
    }
    digits.iter().try_fold(0u16, |acc, d| {
        let v = char::from(*d).to_digit(16)?;
        // At most four digits, so this cannot overflow.
        Some((acc << 4) | u16::try_from(v).ok()?)
    })
}

/// A byte cursor for the header.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Takes up to `max` bytes matching `pred`.
    fn take_while(&mut self, max: usize, pred: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.pos;
        while self.pos - start < max && self.peek().is_some_and(&pred) {
            self.pos += 1;
        }
        &self.buf[start..self.pos]
    }

    fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or(&[])
    }
}

/// Hex digits as an owned string (input already checked to be ASCII).
fn ascii(bytes: &[u8]) -> String {
    bytes.iter().map(|b| char::from(*b)).collect()
}

/// Parses `"<token>"<seq>[R..]L..#acct[` and returns the header plus the
/// bytes after the opening `[` of the data block.
fn parse_header(body: &[u8]) -> Result<(Message, &[u8]), DecodeError> {
    let bad = DecodeError::MalformedHeader;
    let mut c = Cursor { buf: body, pos: 0 };

    if !c.eat(b'"') {
        return Err(bad("missing opening quote of ID token"));
    }
    let raw_token = c.take_while(MAX_TOKEN + 1, |b| b != b'"' && (0x21..=0x7E).contains(&b));
    if !c.eat(b'"') {
        return Err(bad("ID token is too long, empty or unterminated"));
    }
    let (encrypted, token_bytes) = match raw_token.split_first() {
        Some((b'*', rest)) => (true, rest),
        _ => (false, raw_token),
    };
    if token_bytes.is_empty() || raw_token.len() > MAX_TOKEN {
        return Err(bad("ID token is too long, empty or unterminated"));
    }
    let token = Token::from_wire(&ascii(token_bytes));

    let seq_digits = c.take_while(4, |b| b.is_ascii_digit());
    if seq_digits.len() != 4 {
        return Err(bad("sequence number must be 4 decimal digits"));
    }
    let seq = seq_digits
        .iter()
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));

    let receiver = if c.eat(b'R') {
        let digits = c.take_while(6, |b| b.is_ascii_hexdigit());
        if digits.is_empty() {
            return Err(bad("receiver number must be 1-6 hex digits"));
        }
        Some(ascii(digits))
    } else {
        None
    };

    if !c.eat(b'L') {
        return Err(bad("missing account prefix (L field)"));
    }
    // Up to 6 prefix digits, plus room for a NAK's "A<hex>" placeholder,
    // which is itself made of hex digits and so runs into the prefix.
    let mut line = c.take_while(6 + 7, |b| b.is_ascii_hexdigit());

    let account = if c.eat(b'#') {
        let digits = c.take_while(16, |b| b.is_ascii_hexdigit());
        if digits.len() < 3 {
            return Err(bad("account number must be 3-16 hex digits"));
        }
        ascii(digits)
    } else if token == Token::Nak {
        // NAK carries "A0" in place of "#<acct>": split the hex run at its
        // last 'A' into the prefix and the placeholder value.
        let split = line
            .iter()
            .rposition(|b| b.eq_ignore_ascii_case(&b'A'))
            .filter(|&i| i > 0 && i + 1 < line.len())
            .ok_or(bad("NAK must carry A<hex> in place of the account"))?;
        line = &line[..split];
        String::new()
    } else {
        return Err(bad("missing account number (# field)"));
    };
    if line.is_empty() || line.len() > 6 {
        return Err(bad("account prefix must be 1-6 hex digits"));
    }
    let line = ascii(line);

    if !c.eat(b'[') {
        return Err(bad("header must be followed by the '[' of the data block"));
    }

    let msg = Message {
        encrypted,
        token,
        seq,
        receiver,
        line,
        account,
        data: String::new(),
        extended: Vec::new(),
        timestamp: None,
    };
    debug_assert!(is_hex_len(&msg.line, 1, 6));
    Ok((msg, c.rest()))
}

/// The parts after the opening `[` of the data block.
struct Body<'a> {
    data: String,
    extended: Vec<String>,
    timestamp: Option<&'a [u8]>,
}

/// Parses `data]` + `[ext]`* + optional `_timestamp`.
fn parse_body(inner: &[u8]) -> Result<Body<'_>, &'static str> {
    let block = |bytes: &[u8]| -> Result<(String, usize), &'static str> {
        let len = bytes
            .iter()
            .position(|b| !is_block_char(*b))
            .ok_or("data block is not closed with ']'")?;
        if bytes[len] != b']' {
            return Err("data block contains a non-printable character or '['");
        }
        Ok((ascii(&bytes[..len]), len + 1))
    };

    let (data, mut pos) = block(inner)?;
    let mut extended = Vec::new();
    while inner.get(pos) == Some(&b'[') {
        let (ext, used) = block(&inner[pos + 1..])?;
        extended.push(ext);
        pos += 1 + used;
    }
    let tail = &inner[pos..];
    let timestamp = match tail.first() {
        None => None,
        Some(b'_') if tail.len() == TIMESTAMP_LEN => Some(tail),
        Some(b'_') => return Err("timestamp has the wrong length"),
        Some(_) => return Err("unexpected characters after the data blocks"),
    };
    Ok(Body {
        data,
        extended,
        timestamp,
    })
}

#[cfg(test)]
mod tests {
    //! The literal frames below were built by hand and their CRC and length
    //! fields computed independently of this crate with a bitwise Python
    //! CRC-16/ARC (which reproduces the catalogue check value 0xBB3D for
    //! "123456789"):
    //!
    //! ```text
    //! def crc(d):
    //!   c = 0
    //!   for b in d:
    //!     c ^= b
    //!     for _ in range(8): c = (c >> 1) ^ 0xA001 if c & 1 else c >> 1
    //!   return c
    //! "%04X%04X" % (crc(body), len(body))
    //! ```
    //!
    //! Ciphertexts were produced with
    //! `openssl enc -aes-<n>-cbc -nopad -K <key> -iv 00000000000000000000000000000000`.

    use super::super::contact_id::{ContactId, Qualifier};
    use super::super::sia_dcs::parse_sia_dcs;
    use super::*;
    use time::macros::datetime;

    pub(super) const K128: &str = "000102030405060708090A0B0C0D0E0F";
    pub(super) const K256: &str =
        "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F";

    fn plain(_: &str) -> KeyLookup {
        KeyLookup::Plaintext
    }

    fn key128(acct: &str) -> KeyLookup {
        match (acct, Key::from_hex(K128)) {
            ("1234", Ok(k)) => KeyLookup::Key(k),
            _ => KeyLookup::UnknownAccount,
        }
    }

    #[test]
    fn clear_sia_dcs_frame() {
        let frame = b"\nE3C5003B\"SIA-DCS\"0002R1L0#1234[#1234|Nri1/BA01]_14:12:04,09-25-2019\r";
        let m = decode(frame, &plain).unwrap();
        assert_eq!(
            m,
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
        );
        let events = parse_sia_dcs(&m.data).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(
            (
                events[0].code.as_str(),
                events[0].zone_or_user,
                events[0].area
            ),
            ("BA", Some(1), Some(1))
        );
    }

    #[test]
    fn clear_adm_cid_frame_with_long_receiver_and_line() {
        let frame = b"\n5093004B\"ADM-CID\"9876R579BDFL789ABC#12345A[#12345A|1110 00 129]_14:12:04,09-25-2019\r";
        let m = decode(frame, &plain).unwrap();
        assert_eq!(m.token, Token::AdmCid);
        assert_eq!(m.seq, 9876);
        assert_eq!(m.receiver.as_deref(), Some("579BDF"));
        assert_eq!(m.line, "789ABC");
        assert_eq!(m.account, "12345A");
        let cid = ContactId::parse(&m.data).unwrap();
        assert_eq!(
            cid,
            ContactId {
                qualifier: Qualifier::New,
                event: 110,
                partition: 0,
                zone_or_user: 129
            }
        );
    }

    #[test]
    fn clear_null_without_timestamp() {
        let m = decode(b"\n54230012\"NULL\"0000L0#AAA[]\r", &plain).unwrap();
        assert_eq!(
            (m.token, m.receiver, m.timestamp),
            (Token::Null, None, None)
        );
        assert_eq!(m.data, "");
    }

    #[test]
    fn extended_blocks_are_kept() {
        let frame =
            b"\n87570043\"SIA-DCS\"6002L0#AAA[|Nri1/CL501][M0026B9E4268B]_14:12:04,09-25-2019\r";
        let m = decode(frame, &plain).unwrap();
        assert_eq!(m.data, "|Nri1/CL501");
        assert_eq!(m.extended, vec!["M0026B9E4268B".to_string()]);
        assert_eq!(m.payload(), "Nri1/CL501");
    }

    #[test]
    fn nak_frame_with_a0_placeholder() {
        let m = decode(
            b"\nD2DF0025\"NAK\"0000R0L0A0[]_12:00:00,06-01-2024\r",
            &|_: &str| KeyLookup::UnknownAccount,
        )
        .unwrap();
        assert_eq!((m.token, m.account.as_str()), (Token::Nak, ""));
        assert_eq!(m.timestamp, Some(datetime!(2024-06-01 12:00:00 UTC)));
    }

    #[test]
    fn encrypted_null_known_answer_aes128() {
        // Plaintext "0000000000|]_12:00:00,06-01-2024" (10 pad bytes).
        let frame = b"\nA1B00053\"*NULL\"0001L0#1234[DF0223A9F316A68466AA5527CB34289A558F84525EA985DE3868D284C74CC8CC\r";
        let m = decode(frame, &key128).unwrap();
        assert!(m.encrypted);
        assert_eq!((m.token, m.seq, m.data.as_str()), (Token::Null, 1, ""));
        assert_eq!(m.timestamp, Some(datetime!(2024-06-01 12:00:00 UTC)));
    }

    #[test]
    fn encrypted_sia_known_answer_aes256_binary_pad() {
        // Plaintext: bytes 01..0A, FF as pad, then
        // "|#1234|Nri1/BA01]_12:00:00,06-01-2024".
        let frame = b"\n5BE20078\"*SIA-DCS\"0042R1L0#1234[A04BCC7E6CAED4DE2D954D5FA39C82D8A3950D1389A9501950EE66C7DABE70E7AB8321D5F083932301CAA1830771FC74\r";
        let lookup = |acct: &str| match Key::from_hex(K256) {
            Ok(k) if acct == "1234" => KeyLookup::Key(k),
            _ => KeyLookup::UnknownAccount,
        };
        let m = decode(frame, &lookup).unwrap();
        assert_eq!(m.data, "#1234|Nri1/BA01");
        assert_eq!(m.seq, 42);
        assert_eq!(m.timestamp, Some(datetime!(2024-06-01 12:00:00 UTC)));
    }

    #[test]
    fn public_vector_without_pad_terminator() {
        // Encrypted NULL from the pysiaalarm test-suite; its key is the
        // ASCII text "AAAAAAAAAAAAAAAA" and its plaintext omits the '|'
        // ("ppppppppppp]_18:24:52,07-05-2020"), which is tolerated.
        let frame = b"\n76D80055\"*NULL\"0000R0L0#AAAB[B4BC8B40D0E6D959D6BEA78E88CC0B2155741A3C44FBB96D476A3E557CAD64D9\r";
        let lookup = |_: &str| match Key::from_bytes(b"AAAAAAAAAAAAAAAA") {
            Ok(k) => KeyLookup::Key(k),
            Err(_) => KeyLookup::UnknownAccount,
        };
        let m = decode(frame, &lookup).unwrap();
        assert_eq!(
            (m.token, m.account.as_str(), m.data.as_str()),
            (Token::Null, "AAAB", "")
        );
        assert_eq!(m.timestamp, Some(datetime!(2020-07-05 18:24:52 UTC)));
    }

    #[test]
    fn bad_crc_is_dropped_silently() {
        let frame = b"\nE3C4003B\"SIA-DCS\"0002R1L0#1234[#1234|Nri1/BA01]_14:12:04,09-25-2019\r";
        let err = decode(frame, &plain).unwrap_err();
        assert_eq!(
            err,
            DecodeError::BadCrc {
                declared: 0xE3C4,
                computed: 0xE3C5
            }
        );
        assert_eq!(err.reply(), Reply::None);
        // Lower-case CRC digits are accepted.
        assert!(
            decode(
                b"\ne3c5003B\"SIA-DCS\"0002R1L0#1234[#1234|Nri1/BA01]_14:12:04,09-25-2019\r",
                &plain
            )
            .is_ok()
        );
    }

    #[test]
    fn flipped_payload_byte_fails_crc() {
        let frame = b"\nE3C5003B\"SIA-DCS\"0002R1L0#1234[#1234|Nri1/BA02]_14:12:04,09-25-2019\r";
        assert!(matches!(
            decode(frame, &plain),
            Err(DecodeError::BadCrc { .. })
        ));
    }

    #[test]
    fn bad_length_is_dropped_silently() {
        let frame = b"\nE3C5003C\"SIA-DCS\"0002R1L0#1234[#1234|Nri1/BA01]_14:12:04,09-25-2019\r";
        let err = decode(frame, &plain).unwrap_err();
        assert_eq!(
            err,
            DecodeError::BadLength {
                declared: 0x3C,
                actual: 0x3B
            }
        );
        assert_eq!(err.reply(), Reply::None);
        // The length field must start with '0'.
        let frame = b"\nE3C5103B\"SIA-DCS\"0002R1L0#1234[#1234|Nri1/BA01]_14:12:04,09-25-2019\r";
        assert!(matches!(
            decode(frame, &plain),
            Err(DecodeError::Framing(_))
        ));
    }

    #[test]
    fn framing_errors() {
        for bad in [
            &b""[..],
            b"\n\r",
            b"54230012\"NULL\"0000L0#AAA[]\r",
            b"\n54230012\"NULL\"0000L0#AAA[]",
            b"\nXXXX0012\"NULL\"0000L0#AAA[]\r",
            b"\n54230G12\"NULL\"0000L0#AAA[]\r",
        ] {
            let err = decode(bad, &plain).unwrap_err();
            assert!(matches!(err, DecodeError::Framing(_)), "{bad:?} -> {err:?}");
            assert_eq!(err.reply(), Reply::None);
        }
    }

    /// Wraps a body in a frame with a correct CRC and length.
    fn wrap(body: &str) -> Vec<u8> {
        let mut f = format!("\n{:04X}{:04X}", crc16_arc(body.as_bytes()), body.len()).into_bytes();
        f.extend_from_slice(body.as_bytes());
        f.push(b'\r');
        f
    }

    #[test]
    fn malformed_headers_get_no_answer() {
        for body in [
            "SIA-DCS\"0002L0#1234[]",
            "\"SIA-DCS0002L0#1234[]",
            "\"\"0002L0#1234[]",
            "\"*\"0002L0#1234[]",
            "\"ABCDEFGHIJKLMNOPQ\"0002L0#1234[]",
            "\"SIA-DCS\"002L0#1234[]",
            "\"SIA-DCS\"0002#1234[]",
            "\"SIA-DCS\"0002R1234567L0#1234[]",
            "\"SIA-DCS\"0002RL0#1234[]",
            "\"SIA-DCS\"0002L#1234[]",
            "\"SIA-DCS\"0002L0#12[]",
            "\"SIA-DCS\"0002L0#12345678901234567[]",
            "\"SIA-DCS\"0002L0#GHI[]",
            "\"SIA-DCS\"0002L0#1234",
            "\"SIA-DCS\"0002L0A0[]",
        ] {
            let err = decode(&wrap(body), &plain).unwrap_err();
            assert!(
                matches!(err, DecodeError::MalformedHeader(_)),
                "{body} -> {err:?}"
            );
            assert_eq!(err.reply(), Reply::None);
            assert!(err.header().is_none());
        }
    }

    #[test]
    fn unknown_token_gets_duh_with_header() {
        let err = decode(b"\nF68A0012\"RSP\"0007L0#1234[]\r", &plain).unwrap_err();
        let Reply::Duh(header) = err.reply() else {
            panic!("expected DUH, got {err:?}");
        };
        assert_eq!(header.token, Token::Unknown("RSP".into()));
        assert_eq!((header.seq, header.account.as_str()), (7, "1234"));
    }

    #[test]
    fn unknown_account_gets_nak() {
        let frame = b"\nE3C5003B\"SIA-DCS\"0002R1L0#1234[#1234|Nri1/BA01]_14:12:04,09-25-2019\r";
        let err = decode(frame, &|_: &str| KeyLookup::UnknownAccount).unwrap_err();
        assert!(matches!(err, DecodeError::UnknownAccount(ref m) if m.account == "1234"));
        assert_eq!(err.reply(), Reply::Nak);
    }

    #[test]
    fn encrypted_without_key_gets_nak() {
        let frame = b"\nA1B00053\"*NULL\"0001L0#1234[DF0223A9F316A68466AA5527CB34289A558F84525EA985DE3868D284C74CC8CC\r";
        let err = decode(frame, &plain).unwrap_err();
        assert!(matches!(err, DecodeError::NoKey(_)));
        assert_eq!(err.reply(), Reply::Nak);
    }

    #[test]
    fn wrong_key_gets_nak() {
        let frame = b"\nA1B00053\"*NULL\"0001L0#1234[DF0223A9F316A68466AA5527CB34289A558F84525EA985DE3868D284C74CC8CC\r";
        let wrong = |_: &str| match Key::from_hex(K256) {
            Ok(k) => KeyLookup::Key(k),
            Err(_) => KeyLookup::UnknownAccount,
        };
        let err = decode(frame, &wrong).unwrap_err();
        assert!(matches!(err, DecodeError::Undecryptable { .. }), "{err:?}");
        assert_eq!(err.reply(), Reply::Nak);
    }

    #[test]
    fn plaintext_from_encrypted_account_gets_nak() {
        let frame = b"\nE3C5003B\"SIA-DCS\"0002R1L0#1234[#1234|Nri1/BA01]_14:12:04,09-25-2019\r";
        let err = decode(frame, &key128).unwrap_err();
        assert!(matches!(err, DecodeError::EncryptionRequired(_)));
        assert_eq!(err.reply(), Reply::Nak);
        // ...but clear-text DUH and NAK responses are fine for such accounts.
        assert!(decode(b"\n6A6A0014\"DUH\"0002R1L0#1234[]\r", &key128).is_ok());
    }

    #[test]
    fn ciphertext_problems_are_undecryptable() {
        for body in [
            "\"*NULL\"0001L0#1234[XYZ",
            "\"*NULL\"0001L0#1234[",
            "\"*NULL\"0001L0#1234[DF0223A9F316A68466AA5527CB34289A",
            "\"*NULL\"0001L0#1234[DF0223A9F316A68466AA5527CB34289A558F84525EA985DE3868D284C74CC8",
        ] {
            let err = decode(&wrap(body), &key128).unwrap_err();
            assert!(
                matches!(err, DecodeError::Undecryptable { .. }),
                "{body} -> {err:?}"
            );
        }
    }

    #[test]
    fn malformed_clear_body_gets_duh() {
        for body in [
            "\"SIA-DCS\"0002L0#1234[#1234|Nri1/BA01",
            "\"SIA-DCS\"0002L0#1234[#1234|Nri1[BA01]",
            "\"SIA-DCS\"0002L0#1234[#1234|Nri1/BA01]junk",
            "\"SIA-DCS\"0002L0#1234[#1234|Nri1/BA01]_14:12:04,09-25-19",
            "\"SIA-DCS\"0002L0#1234[#1234|\tBA01]",
            "\"SIA-DCS\"0002L0#1234[ok][unterminated",
        ] {
            let err = decode(&wrap(body), &plain).unwrap_err();
            assert!(
                matches!(err, DecodeError::MalformedBody { .. }),
                "{body} -> {err:?}"
            );
            assert!(matches!(err.reply(), Reply::Duh(m) if m.account == "1234"));
        }
    }

    #[test]
    fn impossible_timestamp_gets_nak() {
        let err = decode(&wrap("\"NULL\"0000L0#AAA[]_25:00:00,01-01-2024"), &plain).unwrap_err();
        assert!(matches!(err, DecodeError::BadTimestamp { .. }));
        assert_eq!(err.reply(), Reply::Nak);
    }

    #[test]
    fn non_ascii_in_clear_body_is_rejected() {
        let mut body = b"\"SIA-DCS\"0002L0#1234[#1234|Nri1/BA01".to_vec();
        body.extend_from_slice(&[0xC3, 0xA9, b']']);
        let mut frame = format!("\n{:04X}{:04X}", crc16_arc(&body), body.len()).into_bytes();
        frame.extend_from_slice(&body);
        frame.push(b'\r');
        assert!(matches!(
            decode(&frame, &plain),
            Err(DecodeError::MalformedBody { .. })
        ));
    }

    #[test]
    fn option_key_converts_to_lookup() {
        assert_eq!(KeyLookup::from(None), KeyLookup::Plaintext);
        let k = Key::from_hex(K128).unwrap();
        assert_eq!(KeyLookup::from(Some(k.clone())), KeyLookup::Key(k));
    }
}
