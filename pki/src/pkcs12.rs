//! A certificate, its key and the CA as one password-protected PKCS#12
//! file (RFC 7292), for a browser to import (`vigil pki export`).
//!
//! Written by hand, the minimum a browser and OpenSSL need: the pure-Rust
//! PKCS#12 crates that write the modern form (`p12-keystore`) pull in a
//! second generation of the RustCrypto stack (about thirty more crates),
//! while everything it takes is already here: PBES2 from `pkcs8`, SHA-256
//! and HMAC from `ring`, and a few DER lengths and tags.
//!
//! ```text
//! PFX v3
//!  ├ authSafe: data → AuthenticatedSafe
//!  │   ├ data → SafeContents: certBag (ours; localKeyId, friendlyName), certBag (CA)
//!  │   └ data → SafeContents: pkcs8ShroudedKeyBag (localKeyId, friendlyName)
//!  │        EncryptedPrivateKeyInfo: PBES2, PBKDF2-HMAC-SHA256, AES-256-CBC
//!  └ macData: HMAC-SHA256 over the AuthenticatedSafe, its key from the
//!    password by the PKCS#12 KDF (RFC 7292 B.2) with SHA-256
//! ```
//!
//! That is OpenSSL 3's default form (`openssl pkcs12 -export`) except that
//! the certificates are not encrypted: they are public, and the key, the
//! only secret, is. The MAC covers everything, so a wrong password or an
//! altered file is refused on import.

use std::path::{Path, PathBuf};

use pkcs8::{PrivateKeyInfo, der::Decode, pkcs5::pbes2};
use ring::{digest, hmac};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer, pem::PemObject};

use crate::Identity;

/// PBKDF2 iterations for the key and PKCS#12 KDF iterations for the MAC.
/// The MAC check is as good a password oracle as the key, so both cost
/// the same; a browser imports in well under a second.
pub const ITERATIONS: u32 = 100_000;

/// Why a bundle could not be written.
#[derive(Debug, thiserror::Error)]
pub enum Pkcs12Error {
    #[error("the private key is not PKCS#8: {0}")]
    Key(String),
    #[error("an empty password protects nothing")]
    EmptyPassword,
    #[error("{path}: {reason}")]
    Read { path: PathBuf, reason: String },
}

/// The bundle of identity `id` from the PKI folder `dir`: `ID.pem`,
/// `ID.key` and `ca.pem`, under `password`.
pub fn export(dir: &Path, id: &Identity, password: &str) -> Result<Vec<u8>, Pkcs12Error> {
    let read = |name: String| {
        let path = dir.join(name);
        let reason = |e: &dyn std::fmt::Display| Pkcs12Error::Read {
            path: path.clone(),
            reason: e.to_string(),
        };
        let pem = std::fs::read(&path).map_err(|e| reason(&e))?;
        Ok::<_, Pkcs12Error>((path.clone(), pem))
    };
    let (cert_path, cert) = read(format!("{}.pem", id.as_str()))?;
    let (key_path, key) = read(format!("{}.key", id.as_str()))?;
    let (ca_path, ca) = read("ca.pem".to_owned())?;
    let bad = |path: PathBuf, what: &str| Pkcs12Error::Read {
        path,
        reason: format!("no {what} in it"),
    };
    let cert = CertificateDer::from_pem_slice(&cert).map_err(|_| bad(cert_path, "certificate"))?;
    let ca = CertificateDer::from_pem_slice(&ca).map_err(|_| bad(ca_path, "certificate"))?;
    let key = PrivatePkcs8KeyDer::from_pem_slice(&key)
        .map_err(|_| bad(key_path, "PKCS#8 private key (BEGIN PRIVATE KEY)"))?;
    bundle(&cert, key.secret_pkcs8_der(), &ca, id.as_str(), password)
}

// ------------------------------------------------------------ DER

fn length(n: usize, out: &mut Vec<u8>) {
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes = n.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    length(content.len(), &mut out);
    out.extend_from_slice(content);
    out
}

fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

/// A SET OF with one member (so no ordering to do).
fn set1(member: &[u8]) -> Vec<u8> {
    tlv(0x31, member)
}

fn explicit0(content: &[u8]) -> Vec<u8> {
    tlv(0xA0, content)
}

fn octets(bytes: &[u8]) -> Vec<u8> {
    tlv(0x04, bytes)
}

fn integer(n: u32) -> Vec<u8> {
    let bytes = n.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count().min(3);
    let mut body = bytes[skip..].to_vec();
    // A leading bit set would read as negative.
    if body[0] & 0x80 != 0 {
        body.insert(0, 0);
    }
    tlv(0x02, &body)
}

fn oid(dotted: &str) -> Vec<u8> {
    let arcs: Vec<u64> = dotted.split('.').map(|a| a.parse().unwrap_or(0)).collect();
    let mut body = Vec::new();
    let mut push = |mut v: u64| {
        let mut chunk = vec![(v & 0x7f) as u8];
        v >>= 7;
        while v > 0 {
            chunk.push(0x80 | (v & 0x7f) as u8);
            v >>= 7;
        }
        chunk.reverse();
        body.extend_from_slice(&chunk);
    };
    push(arcs[0] * 40 + arcs[1]);
    for &a in &arcs[2..] {
        push(a);
    }
    tlv(0x06, &body)
}

/// UTF-16 big-endian, as PKCS#12 wants names and the MAC password.
fn bmp_bytes(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_be_bytes).collect()
}

const DATA: &str = "1.2.840.113549.1.7.1";
const CERT_BAG: &str = "1.2.840.113549.1.12.10.1.3";
const SHROUDED_KEY_BAG: &str = "1.2.840.113549.1.12.10.1.2";
const X509_CERTIFICATE: &str = "1.2.840.113549.1.9.22.1";
const FRIENDLY_NAME: &str = "1.2.840.113549.1.9.20";
const LOCAL_KEY_ID: &str = "1.2.840.113549.1.9.21";
const SHA256: &str = "2.16.840.1.101.3.4.2.1";

/// ContentInfo of type data around `content`.
fn data(content: &[u8]) -> Vec<u8> {
    seq(&[&oid(DATA), &explicit0(&octets(content))])
}

fn attributes(name: Option<&str>, key_id: Option<&[u8]>) -> Vec<u8> {
    let mut attrs = Vec::new();
    if let Some(name) = name {
        attrs.push(seq(&[
            &oid(FRIENDLY_NAME),
            &set1(&tlv(0x1E, &bmp_bytes(name))),
        ]));
    }
    if let Some(id) = key_id {
        attrs.push(seq(&[&oid(LOCAL_KEY_ID), &set1(&octets(id))]));
    }
    if attrs.is_empty() {
        return Vec::new();
    }
    // DER orders a SET OF by encoding.
    attrs.sort();
    tlv(0x31, &attrs.concat())
}

fn cert_bag(cert_der: &[u8], attrs: &[u8]) -> Vec<u8> {
    let cert = seq(&[&oid(X509_CERTIFICATE), &explicit0(&octets(cert_der))]);
    seq(&[&oid(CERT_BAG), &explicit0(&cert), attrs])
}

// ------------------------------------------------------------ keys

/// RFC 7292 appendix B.2 with SHA-256 (u = 32, v = 64): `n` bytes of
/// purpose `id` (1 encryption key, 2 IV, 3 MAC key) from the password
/// (BMPString with its two zero bytes) and salt.
fn pkcs12_kdf(password: &str, salt: &[u8], id: u8, iterations: u32, n: usize) -> Vec<u8> {
    const U: usize = 32;
    const V: usize = 64;
    let mut pass = bmp_bytes(password);
    pass.extend_from_slice(&[0, 0]);
    let fill = |s: &[u8]| -> Vec<u8> {
        if s.is_empty() {
            return Vec::new();
        }
        let len = V * s.len().div_ceil(V);
        s.iter().copied().cycle().take(len).collect()
    };
    let mut i = [fill(salt), fill(&pass)].concat();
    let d = [id; V];
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(&d);
        ctx.update(&i);
        let mut a = ctx.finish().as_ref().to_vec();
        for _ in 1..iterations {
            a = digest::digest(&digest::SHA256, &a).as_ref().to_vec();
        }
        out.extend_from_slice(&a[..U.min(n - out.len())]);
        // I_j = (I_j + B + 1) mod 2^(8v), B = A repeated to v bytes.
        let b: Vec<u8> = a.iter().copied().cycle().take(V).collect();
        for block in i.chunks_mut(V) {
            let mut carry = 1u16;
            for k in (0..V).rev() {
                let sum = u16::from(block[k]) + u16::from(b[k]) + carry;
                block[k] = sum as u8;
                carry = sum >> 8;
            }
        }
    }
    out
}

/// The PKCS#12 bundle: `cert_der` with its PKCS#8 key `key_der` and the CA
/// certificate `ca_der`, under `password`, shown by browsers as `name`.
pub fn bundle(
    cert_der: &[u8],
    key_der: &[u8],
    ca_der: &[u8],
    name: &str,
    password: &str,
) -> Result<Vec<u8>, Pkcs12Error> {
    bundle_with_iterations(cert_der, key_der, ca_der, name, password, ITERATIONS)
}

fn bundle_with_iterations(
    cert_der: &[u8],
    key_der: &[u8],
    ca_der: &[u8],
    name: &str,
    password: &str,
    iterations: u32,
) -> Result<Vec<u8>, Pkcs12Error> {
    if password.is_empty() {
        return Err(Pkcs12Error::EmptyPassword);
    }
    let key_err = |e: &dyn std::fmt::Display| Pkcs12Error::Key(e.to_string());
    // The certificate's own digest names the pair, as OpenSSL does.
    let key_id = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, cert_der);
    let key_id = key_id.as_ref();

    let info = PrivateKeyInfo::from_der(key_der).map_err(|e| key_err(&e))?;
    let (salt, iv): ([u8; 16], [u8; 16]) = (rand::random(), rand::random());
    let params = pbes2::Parameters::pbkdf2_sha256_aes256cbc(iterations, &salt, &iv)
        .map_err(|e| key_err(&e))?;
    let encrypted = info
        .encrypt_with_params(params, password.as_bytes())
        .map_err(|e| key_err(&e))?;
    let key_bag = seq(&[
        &oid(SHROUDED_KEY_BAG),
        &explicit0(encrypted.as_bytes()),
        &attributes(Some(name), Some(key_id)),
    ]);
    let certs = seq(&[
        &cert_bag(cert_der, &attributes(Some(name), Some(key_id))),
        &cert_bag(ca_der, &attributes(None, None)),
    ]);
    let keys = seq(&[&key_bag]);
    let auth_safe = seq(&[&data(&certs), &data(&keys)]);

    let mac_salt: [u8; 16] = rand::random();
    let mac_key = pkcs12_kdf(password, &mac_salt, 3, iterations, 32);
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &mac_key), &auth_safe);
    let null = [0x05, 0x00];
    let mac_data = seq(&[
        &seq(&[&seq(&[&oid(SHA256), &null]), &octets(tag.as_ref())]),
        &octets(&mac_salt),
        &integer(iterations),
    ]);
    Ok(seq(&[&integer(3), &data(&auth_safe), &mac_data]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_basics() {
        assert_eq!(integer(3), [0x02, 0x01, 0x03]);
        assert_eq!(integer(128), [0x02, 0x02, 0x00, 0x80]);
        assert_eq!(integer(100_000), [0x02, 0x03, 0x01, 0x86, 0xA0]);
        assert_eq!(
            oid(DATA),
            [
                0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x07, 0x01
            ]
        );
        let long = tlv(0x04, &[0u8; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2C]);
    }

    #[test]
    fn kdf_is_deterministic_and_depends_on_everything() {
        let a = pkcs12_kdf("pass", b"salt", 3, 2, 32);
        assert_eq!(a.len(), 32);
        assert_eq!(a, pkcs12_kdf("pass", b"salt", 3, 2, 32));
        assert_ne!(a, pkcs12_kdf("pasS", b"salt", 3, 2, 32));
        assert_ne!(a, pkcs12_kdf("pass", b"salT", 3, 2, 32));
        assert_ne!(a, pkcs12_kdf("pass", b"salt", 1, 2, 32));
        assert_ne!(a, pkcs12_kdf("pass", b"salt", 3, 3, 32));
        // Longer outputs extend shorter ones.
        assert_eq!(
            &pkcs12_kdf("pass", b"salt", 1, 2, 40)[..32],
            &pkcs12_kdf("pass", b"salt", 1, 2, 32)[..]
        );
    }

    #[test]
    fn an_empty_password_is_refused() {
        assert!(matches!(
            bundle(b"", b"", b"", "x", ""),
            Err(Pkcs12Error::EmptyPassword)
        ));
    }
}
