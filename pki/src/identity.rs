//! Identities and roles, and how they are read from a certificate.
//!
//! An identity is the certificate subject CN and must match
//! `[a-z0-9][a-z0-9-]{0,62}`: safe to use verbatim as an MQTT client id and
//! as a topic level, in file names and in logs. A role is the subject OU and
//! is one of a fixed set.

use std::{fmt, str::FromStr};

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why an identity, a role or a peer certificate was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error(
        "invalid identity {0:?}: use 1 to 63 characters of a-z, 0-9 and '-', starting with a letter or digit"
    )]
    InvalidIdentity(String),
    #[error("unknown role {0:?}: expected one of {roles}", roles = Role::NAMES.join(", "))]
    UnknownRole(String),
    #[error("certificate cannot be parsed: {0}")]
    BadCertificate(String),
    #[error("certificate subject has no {0}")]
    MissingField(&'static str),
    #[error("certificate subject has more than one {0}")]
    DuplicateField(&'static str),
}

/// A validated party identity (certificate CN), e.g. `p-017`, `ops-1`, `alice`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity(String);

impl Identity {
    /// Longest identity accepted.
    pub const MAX_LEN: usize = 63;

    /// Validates `s` as an identity.
    pub fn new(s: &str) -> Result<Self, IdentityError> {
        let bytes = s.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= Self::MAX_LEN
            && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
        if valid {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdentityError::InvalidIdentity(s.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Identity {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// What a party is allowed to do; the certificate's OU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The MQTT broker (server certificate).
    Broker,
    /// An operations center (server certificate for its API, client
    /// certificate for its MQTT connection).
    Ops,
    /// A post's gateway.
    Post,
    /// A person watching and working incidents.
    Analyst,
    /// An analyst who may also assign, escalate, reopen and set test mode.
    Supervisor,
    /// An on-call engineer: watches and replays.
    Engineer,
    /// Everything.
    Admin,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Role::Broker,
        Role::Ops,
        Role::Post,
        Role::Analyst,
        Role::Supervisor,
        Role::Engineer,
        Role::Admin,
    ];
    const NAMES: [&'static str; 7] = [
        "broker",
        "ops",
        "post",
        "analyst",
        "supervisor",
        "engineer",
        "admin",
    ];

    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// Whether certificates of this role are used by TLS servers.
    pub fn is_server(self) -> bool {
        matches!(self, Role::Broker | Role::Ops)
    }

    /// Whether certificates of this role are used by TLS clients.
    pub fn is_client(self) -> bool {
        !matches!(self, Role::Broker)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| IdentityError::UnknownRole(s.to_owned()))
    }
}

/// Who is at the other end of an authenticated TLS connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    pub identity: Identity,
    pub role: Role,
}

impl Peer {
    /// Reads identity (CN) and role (OU) from a certificate that rustls has
    /// already verified. Exactly one CN and one OU must be present.
    pub fn from_cert(cert: &CertificateDer<'_>) -> Result<Self, IdentityError> {
        let (_, x509) = X509Certificate::from_der(cert.as_ref())
            .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
        let subject = x509.subject();
        let cn = single(subject.iter_common_name(), "CN")?;
        let ou = single(subject.iter_organizational_unit(), "OU")?;
        Ok(Self {
            identity: Identity::new(&cn)?,
            role: ou.parse()?,
        })
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.role, self.identity)
    }
}

fn single<'a>(
    mut values: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
    field: &'static str,
) -> Result<String, IdentityError> {
    let first = values.next().ok_or(IdentityError::MissingField(field))?;
    if values.next().is_some() {
        return Err(IdentityError::DuplicateField(field));
    }
    first
        .as_str()
        .map(str::to_owned)
        .map_err(|e| IdentityError::BadCertificate(format!("{field}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities() {
        for good in ["p-017", "ops-1", "alice", "0", "a-", &"a".repeat(63)] {
            assert!(Identity::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-a",
            "Alice",
            "p_017",
            "p 1",
            "p/1",
            "p+",
            "#",
            "é",
            &"a".repeat(64),
        ] {
            assert_eq!(
                Identity::new(bad),
                Err(IdentityError::InvalidIdentity(bad.to_owned())),
                "{bad}"
            );
        }
    }

    #[test]
    fn roles_round_trip() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        let err = "root".parse::<Role>().unwrap_err();
        assert!(err.to_string().contains("broker, ops, post"), "{err}");
    }
}
