//! Account keys and the DC-09 encryption layer.
//!
//! Encrypted messages use AES in CBC mode with an all-zero initialisation
//! vector; the key size (128, 192 or 256 bits) is chosen per account.
//!
//! The encrypted region starts right after the opening `[` of the data block
//! (the `[` itself stays in clear text) and runs to the end of the
//! timestamp; `<CR>` is never encrypted. Before encryption the region is
//! prefixed with pad bytes and a `|` terminator:
//!
//! ```text
//! [<pad>|<data>]<[ext]...>_HH:MM:SS,MM-DD-YYYY
//!  \_______________ encrypted ________________/
//! ```
//!
//! * The pad length is chosen so that pad + `|` + rest is a multiple of 16
//!   bytes; when the rest is already a multiple of 16, a full 16 pad bytes
//!   are added, so there are always 1 to 16 pad bytes.
//! * Pad bytes are pseudo-random, vary per message and must not be `|`, `[`
//!   or `]`; the standard allows any other byte value. When encoding, this
//!   crate maps the caller's random bytes onto ASCII letters and digits,
//!   which is within the rule and keeps receivers that decode the plaintext
//!   as text happy.
//! * The `|` after the pad is mandatory in encrypted messages.
//! * The ciphertext is written on the wire as hexadecimal (upper case when
//!   encoding; either case is accepted when decoding).
//!
//! Key material is configured per account as a hex string of 32, 48 or 64
//! hex digits (16, 24 or 32 bytes). Some panels and receivers instead use
//! the ASCII characters of a 16/24/32 character string directly as key
//! bytes; [`Key::from_bytes`] covers that convention.

use std::fmt;

use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, block_padding::NoPadding};
use thiserror::Error;

/// AES block size, which is also the DC-09 padding granularity.
pub const BLOCK: usize = 16;

/// The all-zero CBC initialisation vector mandated by DC-09.
const ZERO_IV: [u8; BLOCK] = [0; BLOCK];

/// Characters used for encoder-generated pad bytes.
const PAD_ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A per-account AES key.
#[derive(Clone, PartialEq, Eq)]
pub enum Key {
    /// AES-128.
    Aes128([u8; 16]),
    /// AES-192.
    Aes192([u8; 24]),
    /// AES-256.
    Aes256([u8; 32]),
}

/// Why key material was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    /// The string is not hexadecimal (or has an odd number of digits).
    #[error(
        "encryption key is not a valid hex string; expected 32, 48 or 64 hex digits \
         (16, 24 or 32 bytes for AES-128/192/256)"
    )]
    InvalidHex,
    /// The key has an unsupported length.
    #[error(
        "encryption key is {got} bytes; expected 16, 24 or 32 bytes \
         (32, 48 or 64 hex digits for AES-128/192/256)"
    )]
    InvalidLength {
        /// Length in bytes that was supplied.
        got: usize,
    },
}

impl Key {
    /// Parses a key written as 32, 48 or 64 hex digits (either case).
    pub fn from_hex(s: &str) -> Result<Self, KeyError> {
        let bytes = hex::decode(s).map_err(|_| KeyError::InvalidHex)?;
        Self::from_bytes(&bytes)
    }

    /// Builds a key from 16, 24 or 32 raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let invalid = || KeyError::InvalidLength { got: bytes.len() };
        match bytes.len() {
            16 => Ok(Self::Aes128(bytes.try_into().map_err(|_| invalid())?)),
            24 => Ok(Self::Aes192(bytes.try_into().map_err(|_| invalid())?)),
            32 => Ok(Self::Aes256(bytes.try_into().map_err(|_| invalid())?)),
            _ => Err(invalid()),
        }
    }

    /// Key size in bits (128, 192 or 256).
    pub fn bits(&self) -> u16 {
        match self {
            Self::Aes128(_) => 128,
            Self::Aes192(_) => 192,
            Self::Aes256(_) => 256,
        }
    }
}

impl fmt::Debug for Key {
    /// Never prints key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key(AES-{}, <redacted>)", self.bits())
    }
}

/// Failure inside the cipher layer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CipherError {
    /// The ciphertext was empty or not a whole number of blocks.
    #[error("ciphertext length {0} is not a positive multiple of 16 bytes")]
    BlockLength(usize),
    /// The ciphertext was not hexadecimal.
    #[error("ciphertext is not valid hex")]
    Hex,
    /// No `|` pad terminator (and no lenient fallback applied).
    #[error("no pad terminator '|' found in the decrypted text")]
    NoPadTerminator,
    /// The decrypted text after the pad contains non-printable characters.
    #[error("decrypted text is not printable ASCII")]
    NotText,
}

/// Encrypts `buf` in place with AES-CBC and the zero IV; `buf.len()` must be
/// a multiple of 16 (guaranteed by [`seal`]).
fn encrypt_in_place(key: &Key, buf: &mut [u8]) -> Result<(), CipherError> {
    let len = buf.len();
    let bad = |_| CipherError::BlockLength(len);
    match key {
        Key::Aes128(k) => cbc::Encryptor::<aes::Aes128>::new_from_slices(k, &ZERO_IV)
            .map_err(|_| CipherError::BlockLength(len))?
            .encrypt_padded_mut::<NoPadding>(buf, len)
            .map(|_| ())
            .map_err(bad),
        Key::Aes192(k) => cbc::Encryptor::<aes::Aes192>::new_from_slices(k, &ZERO_IV)
            .map_err(|_| CipherError::BlockLength(len))?
            .encrypt_padded_mut::<NoPadding>(buf, len)
            .map(|_| ())
            .map_err(bad),
        Key::Aes256(k) => cbc::Encryptor::<aes::Aes256>::new_from_slices(k, &ZERO_IV)
            .map_err(|_| CipherError::BlockLength(len))?
            .encrypt_padded_mut::<NoPadding>(buf, len)
            .map(|_| ())
            .map_err(bad),
    }
}

/// Decrypts `buf` in place with AES-CBC and the zero IV.
fn decrypt_in_place(key: &Key, buf: &mut [u8]) -> Result<(), CipherError> {
    let len = buf.len();
    if len == 0 || !len.is_multiple_of(BLOCK) {
        return Err(CipherError::BlockLength(len));
    }
    let bad = |_| CipherError::BlockLength(len);
    match key {
        Key::Aes128(k) => cbc::Decryptor::<aes::Aes128>::new_from_slices(k, &ZERO_IV)
            .map_err(|_| CipherError::BlockLength(len))?
            .decrypt_padded_mut::<NoPadding>(buf)
            .map(|_| ())
            .map_err(bad),
        Key::Aes192(k) => cbc::Decryptor::<aes::Aes192>::new_from_slices(k, &ZERO_IV)
            .map_err(|_| CipherError::BlockLength(len))?
            .decrypt_padded_mut::<NoPadding>(buf)
            .map(|_| ())
            .map_err(bad),
        Key::Aes256(k) => cbc::Decryptor::<aes::Aes256>::new_from_slices(k, &ZERO_IV)
            .map_err(|_| CipherError::BlockLength(len))?
            .decrypt_padded_mut::<NoPadding>(buf)
            .map(|_| ())
            .map_err(bad),
    }
}

/// Number of pad bytes needed in front of `|` + `rest_len` bytes (1..=16).
pub fn pad_len(rest_len: usize) -> usize {
    // +1 for the '|' terminator; a full block of pad when already aligned.
    BLOCK - (rest_len + 1) % BLOCK
}

/// Builds `<pad>|<rest>`, encrypts it and returns upper-case hex.
///
/// `fill` supplies random bytes for the pad; they are mapped onto ASCII
/// letters and digits, so any source (even a constant) yields legal pad.
pub fn seal(
    key: &Key,
    rest: &[u8],
    fill: &mut dyn FnMut(&mut [u8]),
) -> Result<String, CipherError> {
    let pad = pad_len(rest.len());
    let mut buf = vec![0u8; pad];
    fill(&mut buf);
    for b in &mut buf {
        *b = PAD_ALPHABET[usize::from(*b) % PAD_ALPHABET.len()];
    }
    buf.push(b'|');
    buf.extend_from_slice(rest);
    encrypt_in_place(key, &mut buf)?;
    Ok(hex::encode_upper(buf))
}

/// Decrypts hex ciphertext and returns the text after the pad.
///
/// The pad runs up to the first `|`; pad bytes may be any value except `|`,
/// `[` and `]`. For compatibility with implementations that omit the `|`
/// when the data block is empty (seen in public receivers' encrypted ACK and
/// NULL messages), a plaintext whose first reserved character is `]` is
/// accepted with everything before that `]` treated as pad.
///
/// The returned text is guaranteed to be printable ASCII.
pub fn open(key: &Key, hex_text: &[u8]) -> Result<String, CipherError> {
    let mut buf = hex::decode(hex_text).map_err(|_| CipherError::Hex)?;
    decrypt_in_place(key, &mut buf)?;
    let split = buf
        .iter()
        .position(|b| matches!(b, b'|' | b'[' | b']'))
        .ok_or(CipherError::NoPadTerminator)?;
    let rest = match buf[split] {
        b'|' => &buf[split + 1..],
        b']' => &buf[split..],
        _ => return Err(CipherError::NoPadTerminator),
    };
    if !rest.iter().all(|b| (0x20..=0x7E).contains(b)) {
        return Err(CipherError::NotText);
    }
    // Printable ASCII is valid UTF-8.
    String::from_utf8(rest.to_vec()).map_err(|_| CipherError::NotText)
}

/// Raw AES-CBC decryption without any DC-09 pad handling, for diagnostics
/// and tests.
pub fn decrypt_raw(key: &Key, ciphertext: &[u8]) -> Result<Vec<u8>, CipherError> {
    let mut buf = ciphertext.to_vec();
    decrypt_in_place(key, &mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K128: &str = "000102030405060708090A0B0C0D0E0F";
    const K192: &str = "000102030405060708090A0B0C0D0E0F1011121314151617";
    const K256: &str = "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F";

    fn zero_fill(b: &mut [u8]) {
        b.fill(0);
    }

    #[test]
    fn key_from_hex_all_sizes() {
        assert_eq!(Key::from_hex(K128).unwrap().bits(), 128);
        assert_eq!(Key::from_hex(K192).unwrap().bits(), 192);
        assert_eq!(Key::from_hex(&K256.to_lowercase()).unwrap().bits(), 256);
    }

    #[test]
    fn key_wrong_length_names_expected_sizes() {
        let err = Key::from_hex("00112233").unwrap_err();
        assert_eq!(err, KeyError::InvalidLength { got: 4 });
        let text = err.to_string();
        assert!(text.contains("16, 24 or 32 bytes"), "{text}");
        assert!(text.contains("32, 48 or 64 hex"), "{text}");
        assert_eq!(
            Key::from_bytes(&[0; 31]).unwrap_err(),
            KeyError::InvalidLength { got: 31 }
        );
        assert!(Key::from_hex("").is_err());
    }

    #[test]
    fn key_bad_hex_is_a_clear_error() {
        let err = Key::from_hex("ZZ0102030405060708090A0B0C0D0E0F").unwrap_err();
        assert_eq!(err, KeyError::InvalidHex);
        assert!(err.to_string().contains("32, 48 or 64 hex digits"));
        // Odd number of digits.
        assert_eq!(Key::from_hex("000").unwrap_err(), KeyError::InvalidHex);
    }

    #[test]
    fn key_debug_is_redacted() {
        let k = Key::from_hex(K128).unwrap();
        let shown = format!("{k:?}");
        assert!(!shown.contains("0102"), "{shown}");
        assert!(shown.contains("AES-128"));
    }

    #[test]
    fn pad_lengths() {
        // rest + '|' already aligned -> a full block of pad.
        assert_eq!(pad_len(15), 16);
        assert_eq!(pad_len(31), 16);
        assert_eq!(pad_len(14), 1);
        assert_eq!(pad_len(0), 15);
        assert_eq!(pad_len(16), 15);
        for n in 0..100 {
            let p = pad_len(n);
            assert!((1..=16).contains(&p));
            assert_eq!((p + 1 + n) % 16, 0);
        }
    }

    #[test]
    fn seal_open_round_trip_all_key_sizes() {
        for k in [K128, K192, K256] {
            let key = Key::from_hex(k).unwrap();
            for rest in [
                "]_12:00:00,01-01-2024",
                "#1234|1130 01 015]_00:00:00,01-01-2000",
                "",
            ] {
                let hex_text = seal(&key, rest.as_bytes(), &mut zero_fill).unwrap();
                assert_eq!(hex_text.len() % 32, 0);
                assert_eq!(open(&key, hex_text.as_bytes()).unwrap(), rest);
                // Lower-case hex is accepted as well.
                assert_eq!(
                    open(&key, hex_text.to_lowercase().as_bytes()).unwrap(),
                    rest
                );
            }
        }
    }

    #[test]
    fn pad_bytes_never_reserved_characters() {
        let key = Key::from_hex(K128).unwrap();
        // Feed exactly the forbidden values as "random" bytes.
        let mut evil = |b: &mut [u8]| b.fill(b'|');
        let hex_text = seal(&key, b"]", &mut evil).unwrap();
        let raw = decrypt_raw(&key, &hex::decode(hex_text).unwrap()).unwrap();
        let bar = raw.iter().position(|b| *b == b'|').unwrap();
        assert_eq!(bar, 14);
        assert!(raw[..bar].iter().all(u8::is_ascii_alphanumeric));
    }

    #[test]
    fn open_rejects_garbage() {
        let key = Key::from_hex(K128).unwrap();
        assert_eq!(open(&key, b"XYZ"), Err(CipherError::Hex));
        assert_eq!(open(&key, b""), Err(CipherError::BlockLength(0)));
        assert_eq!(open(&key, b"00112233"), Err(CipherError::BlockLength(4)));
    }

    #[test]
    fn open_with_wrong_key_fails() {
        let key = Key::from_hex(K128).unwrap();
        let other = Key::from_hex(K256).unwrap();
        let hex_text = seal(
            &key,
            b"#1234|Nri1/BA01]_12:00:00,01-01-2024",
            &mut zero_fill,
        )
        .unwrap();
        assert!(open(&other, hex_text.as_bytes()).is_err());
    }
}
