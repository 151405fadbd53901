//! The CA key as a file: plain PKCS#8, or encrypted PKCS#8 under a
//! passphrase (`vigil pki init --encrypt`).
//!
//! The encrypted form is RFC 5958 `EncryptedPrivateKeyInfo` with PBES2
//! (RFC 8018): PBKDF2-HMAC-SHA256 over a random 16-byte salt, AES-256-CBC
//! with a random IV, in a PEM block labelled `ENCRYPTED PRIVATE KEY`. That
//! is the form `openssl pkcs8 -topk8 -v2 aes-256-cbc` writes, so OpenSSL
//! can read (or re-encrypt) the key, and a key encrypted by OpenSSL with
//! PBKDF2 or scrypt is read here too.
//!
//! The passphrase is not kept: every command that signs derives the key
//! again. The iteration count makes each guess cost about as much as one
//! command's unlock, which is the point.

use pkcs8::{EncryptedPrivateKeyInfo, PrivateKeyInfo, der::Decode, pkcs5::pbes2};
use rcgen::KeyPair;

/// PBKDF2-HMAC-SHA256 iterations for a newly encrypted key (the figure
/// OWASP's password storage guidance gives for this hash).
pub const PBKDF2_ITERATIONS: u32 = 600_000;

/// The PEM label of an encrypted PKCS#8 key.
pub const ENCRYPTED_LABEL: &str = "ENCRYPTED PRIVATE KEY";

/// Why an encrypted key could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The passphrase does not decrypt the key (or the ciphertext was
    /// altered: PBES2 cannot tell the two apart).
    #[error("wrong passphrase")]
    WrongPassphrase,
    #[error("{0}")]
    Malformed(String),
}

/// Whether `pem` holds an encrypted key (by its PEM label).
pub fn is_encrypted(pem: &str) -> bool {
    pem.trim_start()
        .starts_with(&format!("-----BEGIN {ENCRYPTED_LABEL}-----"))
}

/// `key` as an encrypted PKCS#8 PEM under `passphrase`.
pub fn encrypt(key: &KeyPair, passphrase: &str) -> Result<String, KeyFileError> {
    let malformed = |e: &dyn std::fmt::Display| KeyFileError::Malformed(e.to_string());
    let der = key.serialize_der();
    let info = PrivateKeyInfo::from_der(&der).map_err(|e| malformed(&e))?;
    let salt: [u8; 16] = rand::random();
    let iv: [u8; 16] = rand::random();
    let params = pbes2::Parameters::pbkdf2_sha256_aes256cbc(PBKDF2_ITERATIONS, &salt, &iv)
        .map_err(|e| malformed(&e))?;
    let encrypted = info
        .encrypt_with_params(params, passphrase.as_bytes())
        .map_err(|e| malformed(&e))?;
    let pem = encrypted
        .to_pem(ENCRYPTED_LABEL, pkcs8::LineEnding::LF)
        .map_err(|e| malformed(&e))?;
    Ok(pem.to_string())
}

/// Decrypts the encrypted PKCS#8 PEM `pem` with `passphrase`.
pub fn decrypt(pem: &str, passphrase: &str) -> Result<KeyPair, KeyFileError> {
    let (label, doc) =
        pkcs8::SecretDocument::from_pem(pem).map_err(|e| KeyFileError::Malformed(e.to_string()))?;
    if label != ENCRYPTED_LABEL {
        return Err(KeyFileError::Malformed(format!(
            "expected a PEM block {ENCRYPTED_LABEL}, found {label}"
        )));
    }
    let info = EncryptedPrivateKeyInfo::from_der(doc.as_bytes())
        .map_err(|e| KeyFileError::Malformed(e.to_string()))?;
    // A wrong passphrase nearly always fails the CBC padding check; the
    // rare one that passes it yields bytes that are not a key. Both are a
    // wrong passphrase (or a tampered file) to the operator.
    let plain = info
        .decrypt(passphrase.as_bytes())
        .map_err(|_| KeyFileError::WrongPassphrase)?;
    KeyPair::try_from(plain.as_bytes()).map_err(|_| KeyFileError::WrongPassphrase)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::PKCS_ECDSA_P256_SHA256;

    #[test]
    fn round_trip_and_wrong_passphrase() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let pem = encrypt(&key, "correct horse").unwrap();
        assert!(is_encrypted(&pem));
        assert!(!is_encrypted(&key.serialize_pem()));
        assert!(!pem.contains("BEGIN PRIVATE KEY"));
        let back = decrypt(&pem, "correct horse").unwrap();
        assert_eq!(back.public_key_raw(), key.public_key_raw());
        assert!(matches!(
            decrypt(&pem, "correct hors"),
            Err(KeyFileError::WrongPassphrase)
        ));
        // Two encryptions of one key differ (fresh salt and IV).
        assert_ne!(encrypt(&key, "correct horse").unwrap(), pem);
        assert!(matches!(
            decrypt(&key.serialize_pem(), "x"),
            Err(KeyFileError::Malformed(_))
        ));
    }
}
