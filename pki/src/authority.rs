//! The region's certificate authority, kept as files in one folder.
//!
//! ```text
//! DIR/ca.pem    CA certificate (distribute to every party)
//! DIR/ca.key    CA private key (mode 0600; keep the folder offline)
//! DIR/crl.pem   certificate revocation list signed by the CA
//! DIR/ID.pem    certificate of identity ID
//! DIR/ID.key    its private key (mode 0600)
//! ```
//!
//! Keys are ECDSA P-256. The CRL is the only record of revocations: `revoke`
//! reads it, adds the certificate's serial and signs a new one with the next
//! CRL number, so there is no second list that could disagree with it.

use std::{
    fs,
    io::{self, Write},
    net::IpAddr,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, pem::PemObject};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::{Identity, Role};

/// Validity of the CA certificate.
pub const CA_VALIDITY_DAYS: u32 = 3650;
/// Default validity of an issued certificate.
pub const DEFAULT_VALIDITY_DAYS: u32 = 365;
/// How long a CRL is valid. Re-sign (any `revoke`, or `init` of a new CA)
/// before it runs out; servers that enforce `nextUpdate` refuse stale CRLs.
pub const CRL_VALIDITY_DAYS: i64 = 365;
/// Organisation written into every subject.
const ORGANIZATION: &str = "Vigil";

/// Why a PKI operation failed. Every message names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0} already exists; refusing to overwrite an existing CA")]
    CaExists(PathBuf),
    #[error("{0} already exists; revoke it first or pass --force to replace it")]
    CertExists(PathBuf),
    #[error("no CA in {0}: run `vigil pki init --dir {0}` first")]
    NoCa(PathBuf),
    #[error("no certificate for {id} in {dir}")]
    NoSuchCert { id: Identity, dir: PathBuf },
    #[error(
        "role {0} is used by TLS servers and needs at least one --san (the DNS names or IP addresses clients dial)"
    )]
    MissingSan(Role),
    #[error("invalid --san {0:?}: expected a DNS name or an IP address")]
    BadSan(String),
    #[error("validity must be between 1 and {max} days, got {0}", max = CA_VALIDITY_DAYS)]
    BadValidity(u32),
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// Paths of the CA's files in `dir`.
#[derive(Debug, Clone)]
pub struct CaFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub crl: PathBuf,
}

impl CaFiles {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            cert: dir.join("ca.pem"),
            key: dir.join("ca.key"),
            crl: dir.join("crl.pem"),
        }
    }
}

/// Paths of an issued certificate and its key.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Serial number, as lowercase hex.
    pub serial: String,
}

/// Result of a revocation.
#[derive(Debug, Clone)]
pub struct Revoked {
    /// Serial number of the revoked certificate, as lowercase hex.
    pub serial: String,
    /// False when the certificate was already on the CRL (nothing changed).
    pub newly_revoked: bool,
    /// Number of serials on the CRL now.
    pub revoked_count: usize,
    pub crl: PathBuf,
}

/// Creates a new CA in `dir` (created if missing): `ca.pem`, `ca.key` and an
/// empty `crl.pem`. Refuses to touch an existing CA.
pub fn init(dir: &Path, name: &str) -> Result<CaFiles, AuthorityError> {
    let files = CaFiles::in_dir(dir);
    for path in [&files.cert, &files.key] {
        if path.exists() {
            return Err(AuthorityError::CaExists(path.clone()));
        }
    }
    fs::create_dir_all(dir).map_err(|source| AuthorityError::Io {
        path: dir.to_owned(),
        source,
    })?;

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, ORGANIZATION);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    set_validity(&mut params, CA_VALIDITY_DAYS);
    let cert = params.self_signed(&key)?;

    // Key first: if writing the certificate fails, a retry sees no ca.pem
    // and no half-made CA is left that `issue` would use.
    write_new(&files.key, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&files.cert, cert.pem().as_bytes(), 0o644)?;
    let issuer = Issuer::new(params, key);
    write_crl(&files.crl, &issuer, Vec::new(), 1)?;
    Ok(files)
}

/// Issues a certificate for `id` with `role`, signed by the CA in `dir`,
/// written to `dir/ID.pem` and `dir/ID.key`.
///
/// Server roles (`broker`, `ops`) need at least one SAN. `force` replaces an
/// existing certificate of the same identity (revoke the old one as well if
/// its key may be compromised).
pub fn issue(
    dir: &Path,
    role: Role,
    id: &Identity,
    sans: &[String],
    validity_days: u32,
    force: bool,
) -> Result<Issued, AuthorityError> {
    if validity_days == 0 || validity_days > CA_VALIDITY_DAYS {
        return Err(AuthorityError::BadValidity(validity_days));
    }
    if role.is_server() && sans.is_empty() {
        return Err(AuthorityError::MissingSan(role));
    }
    let subject_alt_names = sans
        .iter()
        .map(|s| parse_san(s))
        .collect::<Result<_, _>>()?;

    let issuer = load_issuer(dir)?;
    let cert_path = dir.join(format!("{id}.pem"));
    let key_path = dir.join(format!("{id}.key"));
    if !force && (cert_path.exists() || key_path.exists()) {
        return Err(AuthorityError::CertExists(cert_path));
    }

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, id.as_str());
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, role.as_str());
    params
        .distinguished_name
        .push(DnType::OrganizationName, ORGANIZATION);
    params.subject_alt_names = subject_alt_names;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = Vec::new();
    if role.is_server() {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    if role.is_client() {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ClientAuth);
    }
    params.use_authority_key_identifier_extension = true;
    let serial = random_serial();
    let serial_hex = hex(&serial.to_bytes());
    params.serial_number = Some(serial);
    set_validity(&mut params, validity_days);
    let cert = params.signed_by(&key, &issuer)?;

    write_replace(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_replace(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(Issued {
        cert: cert_path,
        key: key_path,
        serial: serial_hex,
    })
}

/// Revokes the certificate `dir/ID.pem`: adds its serial to `dir/crl.pem`
/// and re-signs the CRL with the next CRL number.
pub fn revoke(dir: &Path, id: &Identity) -> Result<Revoked, AuthorityError> {
    let issuer = load_issuer(dir)?;
    let files = CaFiles::in_dir(dir);
    let cert_path = dir.join(format!("{id}.pem"));
    if !cert_path.exists() {
        return Err(AuthorityError::NoSuchCert {
            id: id.clone(),
            dir: dir.to_owned(),
        });
    }
    let cert_der = read_cert(&cert_path)?;
    let ca_der = read_cert(&files.cert)?;
    let (_, cert) = X509Certificate::from_der(cert_der.as_ref()).map_err(|e| bad(&cert_path, e))?;
    let (_, ca) = X509Certificate::from_der(ca_der.as_ref()).map_err(|e| bad(&files.cert, e))?;
    if cert.issuer() != ca.subject() {
        return Err(AuthorityError::BadFile {
            path: cert_path,
            reason: "was not issued by this CA".into(),
        });
    }
    let serial = cert.raw_serial().to_vec();

    let (mut revoked, number) = if files.crl.exists() {
        read_crl(&files.crl)?
    } else {
        (Vec::new(), 0)
    };
    let newly_revoked = !revoked
        .iter()
        .any(|r: &RevokedCertParams| r.serial_number.to_bytes() == serial);
    if newly_revoked {
        revoked.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&serial),
            revocation_time: OffsetDateTime::now_utc(),
            reason_code: Some(RevocationReason::CessationOfOperation),
            invalidity_date: None,
        });
        write_crl(&files.crl, &issuer, revoked.clone(), number + 1)?;
    }
    Ok(Revoked {
        serial: hex(&serial),
        newly_revoked,
        revoked_count: revoked.len(),
        crl: files.crl,
    })
}

fn load_issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>, AuthorityError> {
    let files = CaFiles::in_dir(dir);
    if !files.cert.exists() || !files.key.exists() {
        return Err(AuthorityError::NoCa(dir.to_owned()));
    }
    let key_pem = read_to_string(&files.key)?;
    let key = KeyPair::from_pem(&key_pem).map_err(|e| bad(&files.key, e))?;
    let cert_pem = read_to_string(&files.cert)?;
    Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| bad(&files.cert, e))
}

fn write_crl(
    path: &Path,
    issuer: &Issuer<'_, KeyPair>,
    revoked_certs: Vec<RevokedCertParams>,
    number: u64,
) -> Result<(), AuthorityError> {
    let now = OffsetDateTime::now_utc();
    let crl = CertificateRevocationListParams {
        this_update: now,
        next_update: now + Duration::days(CRL_VALIDITY_DAYS),
        crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(issuer)?;
    write_replace(path, crl.pem()?.as_bytes(), 0o644)
}

/// Reads the revoked entries and the CRL number of an existing CRL.
fn read_crl(path: &Path) -> Result<(Vec<RevokedCertParams>, u64), AuthorityError> {
    let der = CertificateRevocationListDer::from_pem_file(path).map_err(|e| bad(path, e))?;
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(der.as_ref())
        .map_err(|e| bad(path, e))?;
    let number = crl
        .crl_number()
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0);
    let revoked = crl
        .iter_revoked_certificates()
        .map(|entry| {
            let revocation_time =
                OffsetDateTime::from_unix_timestamp(entry.revocation_date.timestamp())
                    .map_err(|e| bad(path, e))?;
            Ok(RevokedCertParams {
                serial_number: SerialNumber::from_slice(entry.raw_serial()),
                revocation_time,
                reason_code: Some(RevocationReason::CessationOfOperation),
                invalidity_date: None,
            })
        })
        .collect::<Result<Vec<_>, AuthorityError>>()?;
    Ok((revoked, number))
}

fn parse_san(s: &str) -> Result<SanType, AuthorityError> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid_dns = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !valid_dns {
        return Err(AuthorityError::BadSan(s.to_owned()));
    }
    Ok(SanType::DnsName(
        s.to_owned()
            .try_into()
            .map_err(|_| AuthorityError::BadSan(s.to_owned()))?,
    ))
}

/// A random positive 128-bit serial (RFC 5280 allows up to 20 octets).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and without a leading zero octet, so the DER is exactly 16 bytes.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

fn set_validity(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    // Backdate a little so a peer whose clock is slightly behind accepts it.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(i64::from(days));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn bad(path: &Path, e: impl std::fmt::Display) -> AuthorityError {
    AuthorityError::BadFile {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

fn read_to_string(path: &Path) -> Result<String, AuthorityError> {
    fs::read_to_string(path).map_err(|source| AuthorityError::Io {
        path: path.to_owned(),
        source,
    })
}

fn read_cert(path: &Path) -> Result<CertificateDer<'static>, AuthorityError> {
    CertificateDer::from_pem_file(path).map_err(|e| bad(path, e))
}

/// Writes a file that must not exist yet.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), AuthorityError> {
    let io = |source| AuthorityError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = open_options(mode).create_new(true).open(path).map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Replaces a file atomically: readers see the old or the new contents,
/// never a torn file (servers may re-read the CRL at any time).
fn write_replace(path: &Path, contents: &[u8], mode: u32) -> Result<(), AuthorityError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    write_new(&tmp, contents, mode)?;
    fs::rename(&tmp, path).map_err(|source| AuthorityError::Io {
        path: path.to_owned(),
        source,
    })
}

fn open_options(mode: u32) -> fs::OpenOptions {
    let mut options = fs::OpenOptions::new();
    options.write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sans() {
        assert!(matches!(parse_san("127.0.0.1"), Ok(SanType::IpAddress(_))));
        assert!(matches!(parse_san("::1"), Ok(SanType::IpAddress(_))));
        assert!(matches!(
            parse_san("broker.example"),
            Ok(SanType::DnsName(_))
        ));
        for bad in ["", "a..b", "a b", "host_name", "x/y"] {
            assert!(parse_san(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn serials_are_positive_and_sixteen_bytes() {
        for _ in 0..100 {
            let s = random_serial().to_bytes();
            assert_eq!(s.len(), 16);
            assert!(s[0] & 0x80 == 0 && s[0] != 0);
        }
    }
}
