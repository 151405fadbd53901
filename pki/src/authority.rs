//! The region's certificate authority, kept as files in one folder.
//!
//! ```text
//! DIR/ca.pem    CA certificate (distribute to every party)
//! DIR/ca.key    CA private key (mode 0600; keep the folder offline), plain
//!               or encrypted PKCS#8 (see [`crate::ca_key`])
//! DIR/crl.pem   certificate revocation list signed by the CA
//! DIR/ID.pem    certificate of identity ID
//! DIR/ID.key    its private key (mode 0600)
//! ```
//!
//! Keys are ECDSA P-256. The CRL is the only record of revocations: `revoke`
//! reads it, adds the certificate's serial and signs a new one with the next
//! CRL number, so there is no second list that could disagree with it.
//! Likewise the folder is the only record of what was issued: `list` reads
//! every `*.pem` the CA signed, and `renew` replaces one in place.
//!
//! What signs opens an [`Authority`] (reading the key, asking for its
//! passphrase when it is encrypted); the free functions `issue`, `revoke`
//! and `renew` do the same for a plain key.

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

use crate::{
    ca_key::{self, KeyFileError},
    identity::{Identity, Peer, Role},
};

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
    #[error("{0}: was not issued by this CA")]
    ForeignCert(PathBuf),
    #[error(
        "{0} is revoked; renewing it would bring it back (run `vigil pki issue --force` if that is meant)"
    )]
    RevokedCert(PathBuf),
    #[error("{0} does not exist; pass --new-key to make a new key")]
    NoKey(PathBuf),
    #[error("{0} is not the key of the certificate beside it; pass --new-key to make a new key")]
    KeyMismatch(PathBuf),
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error(
        "{0} is encrypted: set VIGIL_CA_PASSPHRASE or run the command from a terminal to be asked"
    )]
    NoPassphrase(PathBuf),
    #[error("{0}: wrong passphrase for the CA key")]
    WrongPassphrase(PathBuf),
    #[error("passphrase: {0}")]
    Passphrase(String),
    #[error("{0}: the CA key does not belong to the CA certificate beside it")]
    CaKeyMismatch(PathBuf),
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
/// empty `crl.pem`. Refuses to touch an existing CA. The key is written in
/// plain PKCS#8; [`init_encrypted`] writes it under a passphrase.
pub fn init(dir: &Path, name: &str) -> Result<CaFiles, AuthorityError> {
    init_with(dir, name, None)
}

/// [`init`], with `ca.key` encrypted under `passphrase` (see
/// [`crate::ca_key`]).
pub fn init_encrypted(dir: &Path, name: &str, passphrase: &str) -> Result<CaFiles, AuthorityError> {
    if passphrase.is_empty() {
        return Err(AuthorityError::Passphrase("empty".into()));
    }
    init_with(dir, name, Some(passphrase))
}

fn init_with(dir: &Path, name: &str, passphrase: Option<&str>) -> Result<CaFiles, AuthorityError> {
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
    let key_pem = match passphrase {
        Some(passphrase) => ca_key::encrypt(&key, passphrase).map_err(|e| bad(&files.key, e))?,
        None => key.serialize_pem(),
    };
    write_new(&files.key, key_pem.as_bytes(), 0o600)?;
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
    Authority::open(dir, &mut no_passphrase)?.issue(role, id, sans, validity_days, force)
}

fn issue_with(
    dir: &Path,
    issuer: &Issuer<'_, KeyPair>,
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

    let cert_path = dir.join(format!("{id}.pem"));
    let key_path = dir.join(format!("{id}.key"));
    if !force && (cert_path.exists() || key_path.exists()) {
        return Err(AuthorityError::CertExists(cert_path));
    }

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let (params, serial_hex) = leaf_params(role, id, subject_alt_names, validity_days);
    let cert = params.signed_by(&key, issuer)?;

    write_replace(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_replace(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(Issued {
        cert: cert_path,
        key: key_path,
        serial: serial_hex,
    })
}

/// The parameters of an end-entity certificate for `id` in `role`, with a
/// fresh serial (returned as lowercase hex). `issue` and `renew` share it,
/// so a renewed certificate has exactly the extensions a new one would.
fn leaf_params(
    role: Role,
    id: &Identity,
    subject_alt_names: Vec<SanType>,
    validity_days: u32,
) -> (CertificateParams, String) {
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
    (params, serial_hex)
}

/// Revokes the certificate `dir/ID.pem`: adds its serial to `dir/crl.pem`
/// and re-signs the CRL with the next CRL number.
pub fn revoke(dir: &Path, id: &Identity) -> Result<Revoked, AuthorityError> {
    Authority::open(dir, &mut no_passphrase)?.revoke(id)
}

fn revoke_with(
    dir: &Path,
    issuer: &Issuer<'_, KeyPair>,
    id: &Identity,
) -> Result<Revoked, AuthorityError> {
    let files = CaFiles::in_dir(dir);
    let (cert_path, cert_der) = read_issued(dir, id)?;
    let (_, cert) = X509Certificate::from_der(cert_der.as_ref()).map_err(|e| bad(&cert_path, e))?;
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
        write_crl(&files.crl, issuer, revoked.clone(), number + 1)?;
    }
    Ok(Revoked {
        serial: hex(&serial),
        newly_revoked,
        revoked_count: revoked.len(),
        crl: files.crl,
    })
}

/// One certificate of the CA's folder, as `list` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertEntry {
    /// The file it was read from (`DIR/ID.pem`).
    pub file: PathBuf,
    /// Subject CN.
    pub identity: Identity,
    /// Subject OU.
    pub role: Role,
    /// Serial number, as lowercase hex.
    pub serial: String,
    pub not_after: OffsetDateTime,
    /// Whether `crl.pem` lists its serial.
    pub revoked: bool,
}

impl CertEntry {
    /// Whole days from `now` to `not_after`, rounded down: 0 on its last
    /// day, negative once it has expired.
    pub fn days_left(&self, now: OffsetDateTime) -> i64 {
        let left = self.not_after - now;
        let days = left.whole_days();
        if left.is_negative() && left != Duration::days(days) {
            days - 1
        } else {
            days
        }
    }

    /// Whether it still needs attention within `days` of `now`: not
    /// revoked, and expired or expiring by then.
    pub fn due_within(&self, now: OffsetDateTime, days: u32) -> bool {
        !self.revoked && self.not_after <= now + Duration::days(i64::from(days))
    }
}

/// What `list` found in a CA folder.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    /// Certificates issued by this CA, soonest expiry first.
    pub certs: Vec<CertEntry>,
    /// `*.pem` files that are not certificates of this CA, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Lists every certificate in `dir` that the CA in `dir` signed (the
/// `*.pem` files beside `ca.pem`, other than `ca.pem` and `crl.pem`), with
/// its revocation status from `crl.pem`, soonest expiry first.
///
/// Needs `ca.pem` only, not `ca.key`: an inventory can run wherever a copy
/// of the folder's public files is. A file whose signature does not verify
/// against `ca.pem` (another region's certificate, a stray PEM) is skipped
/// and reported in [`Inventory::skipped`], never listed.
pub fn list(dir: &Path) -> Result<Inventory, AuthorityError> {
    let files = CaFiles::in_dir(dir);
    if !files.cert.exists() {
        return Err(AuthorityError::NoCa(dir.to_owned()));
    }
    let ca_der = read_cert(&files.cert)?;
    let (_, ca) = X509Certificate::from_der(ca_der.as_ref()).map_err(|e| bad(&files.cert, e))?;
    let revoked: Vec<Vec<u8>> = if files.crl.exists() {
        read_crl(&files.crl)?
            .0
            .iter()
            .map(|r| r.serial_number.to_bytes())
            .collect()
    } else {
        Vec::new()
    };

    let io = |source| AuthorityError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.extension().is_some_and(|e| e == "pem")
            && path != files.cert
            && path != files.crl
            && path.is_file()
        {
            paths.push(path);
        }
    }
    paths.sort();

    let mut inventory = Inventory::default();
    for path in paths {
        match entry_of(&path, &ca, &revoked) {
            Ok(entry) => inventory.certs.push(entry),
            Err(reason) => inventory.skipped.push((path, reason)),
        }
    }
    inventory
        .certs
        .sort_by(|a, b| (a.not_after, &a.identity).cmp(&(b.not_after, &b.identity)));
    Ok(inventory)
}

/// Reads one listed file; the error is why it is not a certificate of `ca`.
fn entry_of(
    path: &Path,
    ca: &X509Certificate<'_>,
    revoked: &[Vec<u8>],
) -> Result<CertEntry, String> {
    let der = CertificateDer::from_pem_file(path).map_err(|e| e.to_string())?;
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| e.to_string())?;
    if !issued_by(&cert, ca) {
        return Err("not issued by this CA".into());
    }
    let peer = Peer::from_cert(&der).map_err(|e| e.to_string())?;
    let not_after = OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp())
        .map_err(|e| e.to_string())?;
    Ok(CertEntry {
        file: path.to_owned(),
        identity: peer.identity,
        role: peer.role,
        serial: hex(cert.raw_serial()),
        not_after,
        revoked: revoked.iter().any(|s| s == cert.raw_serial()),
    })
}

/// Whether `ca` signed `cert`. The names alone would not do: every CA made
/// with the default `--name` has the same subject, so a certificate of
/// another region would pass for ours.
/// `dir/ID.pem`, its path and DER, once it is known to exist and to be
/// signed by this folder's CA (`revoke` and `renew` act on nothing else).
fn read_issued(
    dir: &Path,
    id: &Identity,
) -> Result<(PathBuf, CertificateDer<'static>), AuthorityError> {
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
    if !issued_by(&cert, &ca) {
        return Err(AuthorityError::ForeignCert(cert_path));
    }
    Ok((cert_path, cert_der))
}

fn issued_by(cert: &X509Certificate<'_>, ca: &X509Certificate<'_>) -> bool {
    cert.issuer() == ca.subject() && cert.verify_signature(Some(ca.public_key())).is_ok()
}

/// Result of a renewal.
#[derive(Debug, Clone)]
pub struct Renewed {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub role: Role,
    /// Serial of the certificate replaced, as lowercase hex.
    pub old_serial: String,
    /// Serial of the new certificate, as lowercase hex.
    pub serial: String,
    pub not_after: OffsetDateTime,
    /// Whether a new key was written; otherwise `ID.key` is untouched.
    pub new_key: bool,
}

/// Renews `dir/ID.pem`: a new certificate, signed by the CA in `dir`, with
/// the same identity, role and SANs, a new serial and `validity_days` from
/// now; written over `ID.pem` atomically (a temporary file in `dir`, then a
/// rename), so a daemon following the file reads the old or the new one,
/// never a torn one.
///
/// The key in `ID.key` is kept (and must match the certificate), so a
/// daemon that follows its files switches with nothing else to copy. With
/// `new_key` a fresh key replaces it, written first: a daemon following
/// both files keeps its last good pair until the certificate lands.
///
/// The old certificate is not revoked: it stays valid until its own
/// not-after. A certificate already revoked is refused: renewing it would
/// undo the revocation; `issue --force` is the deliberate way back.
pub fn renew(
    dir: &Path,
    id: &Identity,
    validity_days: u32,
    new_key: bool,
) -> Result<Renewed, AuthorityError> {
    Authority::open(dir, &mut no_passphrase)?.renew(id, validity_days, new_key)
}

fn renew_with(
    dir: &Path,
    issuer: &Issuer<'_, KeyPair>,
    id: &Identity,
    validity_days: u32,
    new_key: bool,
) -> Result<Renewed, AuthorityError> {
    if validity_days == 0 || validity_days > CA_VALIDITY_DAYS {
        return Err(AuthorityError::BadValidity(validity_days));
    }
    let files = CaFiles::in_dir(dir);
    let key_path = dir.join(format!("{id}.key"));
    let (cert_path, cert_der) = read_issued(dir, id)?;
    let (_, old) = X509Certificate::from_der(cert_der.as_ref()).map_err(|e| bad(&cert_path, e))?;
    let peer = Peer::from_cert(&cert_der).map_err(|e| bad(&cert_path, e))?;
    if peer.identity != *id {
        return Err(bad(
            &cert_path,
            format!("its identity is {}, not {id}", peer.identity),
        ));
    }
    // A revoked certificate stays revoked: a renewal under a new serial
    // would quietly undo `revoke` (with the same, perhaps stolen, key).
    if files.crl.exists() {
        let (revoked, _) = read_crl(&files.crl)?;
        if revoked
            .iter()
            .any(|r| r.serial_number.to_bytes() == old.raw_serial())
        {
            return Err(AuthorityError::RevokedCert(cert_path));
        }
    }
    let sans = sans_of(&old).map_err(|e| bad(&cert_path, e))?;

    let key = if new_key {
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?
    } else {
        if !key_path.exists() {
            return Err(AuthorityError::NoKey(key_path));
        }
        let key = KeyPair::from_pem(&read_to_string(&key_path)?).map_err(|e| bad(&key_path, e))?;
        if key.public_key_raw() != old.public_key().subject_public_key.data.as_ref() {
            return Err(AuthorityError::KeyMismatch(key_path));
        }
        key
    };
    let (params, serial) = leaf_params(peer.role, id, sans, validity_days);
    let not_after = params.not_after;
    let cert = params.signed_by(&key, issuer)?;

    if new_key {
        write_replace(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    }
    write_replace(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(Renewed {
        cert: cert_path,
        key: key_path,
        role: peer.role,
        old_serial: hex(old.raw_serial()),
        serial,
        not_after,
        new_key,
    })
}

/// The DNS and IP subject alternative names of `cert`, the only kinds
/// `issue` writes.
fn sans_of(cert: &X509Certificate<'_>) -> Result<Vec<SanType>, String> {
    use x509_parser::extensions::GeneralName;
    let Some(ext) = cert.subject_alternative_name().map_err(|e| e.to_string())? else {
        return Ok(Vec::new());
    };
    ext.value
        .general_names
        .iter()
        .map(|name| match name {
            GeneralName::DNSName(dns) => parse_san(dns).map_err(|e| e.to_string()),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => Ok(SanType::IpAddress(IpAddr::from(
                    <[u8; 4]>::try_from(*bytes).expect("length checked"),
                ))),
                16 => Ok(SanType::IpAddress(IpAddr::from(
                    <[u8; 16]>::try_from(*bytes).expect("length checked"),
                ))),
                n => Err(format!("subject alternative name: IP address of {n} bytes")),
            },
            other => Err(format!(
                "subject alternative name {other:?}: only DNS names and IP addresses are renewed"
            )),
        })
        .collect()
}

/// Answers "no passphrase": for callers that only handle plain CA keys.
pub fn no_passphrase(key: &Path) -> Result<String, AuthorityError> {
    Err(AuthorityError::NoPassphrase(key.to_owned()))
}

/// The CA of a folder with its key read (and decrypted): what signs
/// certificates and CRLs. Open it once per command; the key is not
/// written anywhere in the clear.
pub struct Authority {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    encrypted: bool,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Authority")
            .field("dir", &self.dir)
            .field("encrypted", &self.encrypted)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// Reads `dir/ca.pem` and `dir/ca.key`. When the key is encrypted,
    /// `passphrase` is called once, with the key's path, for the
    /// passphrase; a plain key never calls it.
    pub fn open(
        dir: &Path,
        passphrase: &mut dyn FnMut(&Path) -> Result<String, AuthorityError>,
    ) -> Result<Self, AuthorityError> {
        let files = CaFiles::in_dir(dir);
        if !files.cert.exists() || !files.key.exists() {
            return Err(AuthorityError::NoCa(dir.to_owned()));
        }
        let key_pem = read_to_string(&files.key)?;
        let encrypted = ca_key::is_encrypted(&key_pem);
        let key = if encrypted {
            let secret = passphrase(&files.key)?;
            ca_key::decrypt(&key_pem, &secret).map_err(|e| match e {
                KeyFileError::WrongPassphrase => AuthorityError::WrongPassphrase(files.key.clone()),
                KeyFileError::Malformed(reason) => AuthorityError::BadFile {
                    path: files.key.clone(),
                    reason,
                },
            })?
        } else {
            KeyPair::from_pem(&key_pem).map_err(|e| bad(&files.key, e))?
        };
        let cert_der = read_cert(&files.cert)?;
        let (_, cert) =
            X509Certificate::from_der(cert_der.as_ref()).map_err(|e| bad(&files.cert, e))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(AuthorityError::CaKeyMismatch(files.key));
        }
        let cert_pem = read_to_string(&files.cert)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| bad(&files.cert, e))?;
        Ok(Self {
            dir: dir.to_owned(),
            issuer,
            encrypted,
        })
    }

    /// Whether `ca.key` is stored encrypted.
    pub fn key_encrypted(&self) -> bool {
        self.encrypted
    }

    /// See [`issue`].
    pub fn issue(
        &self,
        role: Role,
        id: &Identity,
        sans: &[String],
        validity_days: u32,
        force: bool,
    ) -> Result<Issued, AuthorityError> {
        issue_with(
            &self.dir,
            &self.issuer,
            role,
            id,
            sans,
            validity_days,
            force,
        )
    }

    /// See [`revoke`].
    pub fn revoke(&self, id: &Identity) -> Result<Revoked, AuthorityError> {
        revoke_with(&self.dir, &self.issuer, id)
    }

    /// See [`renew`].
    pub fn renew(
        &self,
        id: &Identity,
        validity_days: u32,
        new_key: bool,
    ) -> Result<Renewed, AuthorityError> {
        renew_with(&self.dir, &self.issuer, id, validity_days, new_key)
    }

    /// Re-signs `crl.pem`: the same revoked certificates (serials and
    /// revocation dates as they were), the next CRL number, this update now and
    /// the next one [`CRL_VALIDITY_DAYS`] from now. Written atomically, so
    /// a server following the file never reads a torn one. A folder without
    /// `crl.pem` gets an empty one.
    pub fn refresh_crl(&self) -> Result<CrlRefreshed, AuthorityError> {
        let files = CaFiles::in_dir(&self.dir);
        let (revoked, number) = if files.crl.exists() {
            read_crl(&files.crl)?
        } else {
            (Vec::new(), 0)
        };
        let revoked_count = revoked.len();
        let next_update = write_crl(&files.crl, &self.issuer, revoked, number + 1)?;
        Ok(CrlRefreshed {
            crl: files.crl,
            number: number + 1,
            revoked_count,
            next_update,
        })
    }
}

/// Result of [`Authority::refresh_crl`].
#[derive(Debug, Clone)]
pub struct CrlRefreshed {
    pub crl: PathBuf,
    /// The new CRL number.
    pub number: u64,
    /// Serials on the CRL (unchanged by a refresh).
    pub revoked_count: usize,
    pub next_update: OffsetDateTime,
}

fn write_crl(
    path: &Path,
    issuer: &Issuer<'_, KeyPair>,
    revoked_certs: Vec<RevokedCertParams>,
    number: u64,
) -> Result<OffsetDateTime, AuthorityError> {
    let now = OffsetDateTime::now_utc();
    let next_update = now + Duration::days(CRL_VALIDITY_DAYS);
    let crl = CertificateRevocationListParams {
        this_update: now,
        next_update,
        crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(issuer)?;
    write_replace(path, crl.pem()?.as_bytes(), 0o644)?;
    Ok(next_update)
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

    fn id(s: &str) -> Identity {
        Identity::new(s).unwrap()
    }

    fn ca() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        init(tmp.path(), "Vigil region CA").unwrap();
        tmp
    }

    #[test]
    fn list_sorts_by_expiry_and_marks_revocations() {
        let tmp = ca();
        let dir = tmp.path();
        let broker = issue(
            dir,
            Role::Broker,
            &id("broker"),
            &["localhost".into()],
            90,
            false,
        )
        .unwrap();
        let post = issue(dir, Role::Post, &id("p-017"), &[], 10, false).unwrap();
        let alice = issue(dir, Role::Analyst, &id("alice"), &[], 400, false).unwrap();
        issue(dir, Role::Post, &id("p-018"), &[], 5, false).unwrap();
        revoke(dir, &id("p-018")).unwrap();

        let inventory = list(dir).unwrap();
        assert!(inventory.skipped.is_empty(), "{:?}", inventory.skipped);
        let got: Vec<_> = inventory
            .certs
            .iter()
            .map(|c| (c.identity.as_str(), c.role, c.revoked))
            .collect();
        assert_eq!(
            got,
            [
                ("p-018", Role::Post, true),
                ("p-017", Role::Post, false),
                ("broker", Role::Broker, false),
                ("alice", Role::Analyst, false),
            ]
        );
        let serials: Vec<_> = inventory.certs.iter().map(|c| c.serial.as_str()).collect();
        assert_eq!(serials[1..], [&post.serial, &broker.serial, &alice.serial]);
        assert_eq!(inventory.certs[3].file, alice.cert);

        // Days left and "due" against a fixed instant, not the clock.
        let p017 = &inventory.certs[1];
        let now = p017.not_after - Duration::days(10);
        assert_eq!(p017.days_left(now), 10);
        assert_eq!(p017.days_left(now + Duration::seconds(1)), 9);
        assert_eq!(p017.days_left(p017.not_after), 0);
        assert_eq!(p017.days_left(p017.not_after + Duration::seconds(1)), -1);
        assert!(p017.due_within(now, 10));
        assert!(!p017.due_within(now, 9));
        assert!(p017.due_within(p017.not_after + Duration::days(3), 0));
        // A revoked certificate is never due.
        let p018 = &inventory.certs[0];
        assert!(!p018.due_within(p018.not_after, 30));
    }

    #[test]
    fn list_skips_what_this_ca_did_not_sign() {
        let tmp = ca();
        let other = ca(); // same CA name, another key
        issue(tmp.path(), Role::Post, &id("p-1"), &[], 30, false).unwrap();
        issue(other.path(), Role::Post, &id("p-2"), &[], 30, false).unwrap();
        fs::copy(other.path().join("p-2.pem"), tmp.path().join("p-2.pem")).unwrap();
        fs::write(tmp.path().join("notes.pem"), "not a certificate\n").unwrap();

        let inventory = list(tmp.path()).unwrap();
        assert_eq!(inventory.certs.len(), 1);
        assert_eq!(inventory.certs[0].identity, id("p-1"));
        let mut skipped: Vec<_> = inventory
            .skipped
            .iter()
            .map(|(p, _)| p.file_name().unwrap().to_str().unwrap())
            .collect();
        skipped.sort_unstable();
        assert_eq!(skipped, ["notes.pem", "p-2.pem"]);

        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(list(empty.path()), Err(AuthorityError::NoCa(_))));
    }

    fn parsed(path: &Path) -> (Peer, String, i64, Vec<String>, Vec<u8>) {
        let der = read_cert(path).unwrap();
        let (_, cert) = X509Certificate::from_der(der.as_ref()).unwrap();
        let sans = cert
            .subject_alternative_name()
            .unwrap()
            .map(|e| {
                e.value
                    .general_names
                    .iter()
                    .map(|n| format!("{n:?}"))
                    .collect()
            })
            .unwrap_or_default();
        (
            Peer::from_cert(&der).unwrap(),
            hex(cert.raw_serial()),
            cert.validity().not_after.timestamp(),
            sans,
            cert.public_key().subject_public_key.data.to_vec(),
        )
    }

    #[test]
    fn renew_keeps_identity_role_sans_and_key() {
        let tmp = ca();
        let dir = tmp.path();
        let sans = [
            "ops.region.example".to_owned(),
            "10.0.0.5".into(),
            "::1".into(),
        ];
        let issued = issue(dir, Role::Ops, &id("ops-1"), &sans, 30, false).unwrap();
        let key_before = fs::read(&issued.key).unwrap();
        let (peer, serial, not_after, old_sans, public) = parsed(&issued.cert);
        assert_eq!(old_sans.len(), 3);

        let renewed = renew(dir, &id("ops-1"), 400, false).unwrap();
        assert!(!renewed.new_key);
        assert_eq!(renewed.old_serial, serial);
        assert_eq!(renewed.cert, issued.cert);
        let (peer2, serial2, not_after2, sans2, public2) = parsed(&renewed.cert);
        assert_eq!(peer2, peer);
        assert_eq!(sans2, old_sans);
        assert_eq!(public2, public);
        assert_eq!(serial2, renewed.serial);
        assert_ne!(serial2, serial);
        assert!(not_after2 > not_after);
        assert_eq!(not_after2, renewed.not_after.unix_timestamp());
        assert_eq!(fs::read(&issued.key).unwrap(), key_before);
        // No temporary file left behind.
        assert!(!dir.join("ops-1.tmp").exists());

        // The renewed certificate is the one `list` sees.
        let inventory = list(dir).unwrap();
        assert_eq!(inventory.certs.len(), 1);
        assert_eq!(inventory.certs[0].serial, renewed.serial);

        let renewed = renew(dir, &id("ops-1"), 30, true).unwrap();
        assert!(renewed.new_key);
        let (peer3, _, _, sans3, public3) = parsed(&renewed.cert);
        assert_eq!((peer3, sans3), (peer, old_sans));
        assert_ne!(public3, public);
        assert_ne!(fs::read(&issued.key).unwrap(), key_before);
        let key = KeyPair::from_pem(&fs::read_to_string(&issued.key).unwrap()).unwrap();
        assert_eq!(key.public_key_raw(), public3.as_slice());
    }

    #[test]
    fn renew_refuses_what_it_cannot_renew() {
        let tmp = ca();
        let dir = tmp.path();
        assert!(matches!(
            renew(dir, &id("nobody"), 30, false),
            Err(AuthorityError::NoSuchCert { .. })
        ));

        let other = ca();
        issue(other.path(), Role::Post, &id("p-2"), &[], 30, false).unwrap();
        fs::copy(other.path().join("p-2.pem"), dir.join("p-2.pem")).unwrap();
        fs::copy(other.path().join("p-2.key"), dir.join("p-2.key")).unwrap();
        let before = fs::read(dir.join("p-2.pem")).unwrap();
        assert!(matches!(
            renew(dir, &id("p-2"), 30, true),
            Err(AuthorityError::ForeignCert(_))
        ));
        assert_eq!(fs::read(dir.join("p-2.pem")).unwrap(), before);

        issue(dir, Role::Post, &id("p-3"), &[], 30, false).unwrap();
        issue(dir, Role::Post, &id("p-4"), &[], 30, false).unwrap();
        fs::copy(dir.join("p-4.key"), dir.join("p-3.key")).unwrap();
        assert!(matches!(
            renew(dir, &id("p-3"), 30, false),
            Err(AuthorityError::KeyMismatch(_))
        ));
        fs::remove_file(dir.join("p-3.key")).unwrap();
        assert!(matches!(
            renew(dir, &id("p-3"), 30, false),
            Err(AuthorityError::NoKey(_))
        ));
        renew(dir, &id("p-3"), 30, true).unwrap();
        revoke(dir, &id("p-3")).unwrap();
        let before = fs::read(dir.join("p-3.pem")).unwrap();
        assert!(matches!(
            renew(dir, &id("p-3"), 30, true),
            Err(AuthorityError::RevokedCert(_))
        ));
        assert_eq!(fs::read(dir.join("p-3.pem")).unwrap(), before);
        assert!(matches!(
            renew(dir, &id("p-3"), 0, false),
            Err(AuthorityError::BadValidity(0))
        ));
    }
    #[test]
    fn refresh_crl_keeps_the_revoked_set_and_moves_the_dates() {
        let tmp = ca();
        let dir = tmp.path();
        issue(dir, Role::Post, &id("p-1"), &[], 30, false).unwrap();
        issue(dir, Role::Post, &id("p-2"), &[], 30, false).unwrap();
        revoke(dir, &id("p-1")).unwrap();
        let crl = CaFiles::in_dir(dir).crl;
        let (before, number) = read_crl(&crl).unwrap();
        assert_eq!(number, 2);

        let ca = Authority::open(dir, &mut no_passphrase).unwrap();
        assert!(!ca.key_encrypted());
        let refreshed = ca.refresh_crl().unwrap();
        assert_eq!((refreshed.number, refreshed.revoked_count), (3, 1));
        let (after, number) = read_crl(&crl).unwrap();
        assert_eq!(number, 3);
        let serials = |v: &[RevokedCertParams]| {
            v.iter()
                .map(|r| (r.serial_number.to_bytes(), r.revocation_time))
                .collect::<Vec<_>>()
        };
        assert_eq!(serials(&after), serials(&before));
        assert!(!dir.join("crl.tmp").exists());
        // A folder that lost its CRL gets an empty one.
        fs::remove_file(&crl).unwrap();
        let refreshed = ca.refresh_crl().unwrap();
        assert_eq!((refreshed.number, refreshed.revoked_count), (1, 0));
        assert!(read_crl(&crl).unwrap().0.is_empty());
    }

    #[test]
    fn an_encrypted_ca_key_needs_its_passphrase() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        assert!(matches!(
            init_encrypted(dir, "Vigil region CA", ""),
            Err(AuthorityError::Passphrase(_))
        ));
        init_encrypted(dir, "Vigil region CA", "s3cret phrase").unwrap();
        let pem = fs::read_to_string(dir.join("ca.key")).unwrap();
        assert!(ca_key::is_encrypted(&pem));
        // The plain-key entry points refuse it, naming the file.
        assert!(matches!(
            issue(dir, Role::Post, &id("p-1"), &[], 30, false),
            Err(AuthorityError::NoPassphrase(p)) if p == dir.join("ca.key")
        ));
        let mut asked = 0;
        let mut wrong = |_: &Path| {
            asked += 1;
            Ok("s3cret phrasE".to_owned())
        };
        assert!(matches!(
            Authority::open(dir, &mut wrong),
            Err(AuthorityError::WrongPassphrase(_))
        ));
        assert_eq!(asked, 1);
        let ca = Authority::open(dir, &mut |_: &Path| Ok("s3cret phrase".to_owned())).unwrap();
        assert!(ca.key_encrypted());
        let issued = ca.issue(Role::Post, &id("p-1"), &[], 30, false).unwrap();
        ca.revoke(&id("p-1")).unwrap();
        assert!(list(dir).unwrap().certs[0].revoked);
        assert_eq!(list(dir).unwrap().certs[0].serial, issued.serial);
    }

    #[test]
    fn a_plain_key_never_asks_and_a_foreign_key_is_refused() {
        let tmp = ca();
        let dir = tmp.path();
        let ca = Authority::open(dir, &mut |_: &Path| panic!("asked for a passphrase")).unwrap();
        assert!(!ca.key_encrypted());
        let other = ca_dir_key();
        fs::write(dir.join("ca.key"), other).unwrap();
        assert!(matches!(
            Authority::open(dir, &mut no_passphrase),
            Err(AuthorityError::CaKeyMismatch(_))
        ));
    }

    fn ca_dir_key() -> String {
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .unwrap()
            .serialize_pem()
    }
}
