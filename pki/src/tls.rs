//! The `[tls]` table every daemon and client shares, and rustls configs built
//! from it.
//!
//! Files are read and checked once, when the config is loaded, so a bad path
//! or a broken key is reported before any socket is bound; the resulting
//! rustls configs are then shared by every connection (never re-read per
//! connection). Servers always require a client certificate from the region
//! CA and, when `crl` is set, refuse revoked ones; clients check the server
//! against the same CA and CRL. While running, servers and clients follow
//! their own certificate and key files ([`crate::reload`]) and servers
//! follow the CRL ([`crate::crl`]), so renewal and revocation need no
//! restart.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rustls::{
    ClientConfig, RootCertStore, ServerConfig, client::WebPkiServerVerifier,
    crypto::CryptoProvider, server::WebPkiClientVerifier,
};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, pem::PemObject};
use serde::{Deserialize, Serialize};

use crate::{
    identity::{IdentityError, Peer},
    reload::{CERT_CHECK_EVERY, OwnCert},
};

/// The `[tls]` config table (DESIGN.md: stable keys `ca`, `cert`, `key`, `crl`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The region CA certificate (PEM).
    pub ca: PathBuf,
    /// This party's certificate (PEM), optionally followed by intermediates.
    pub cert: PathBuf,
    /// This party's private key (PEM, PKCS#8 or SEC1).
    pub key: PathBuf,
    /// The CA's certificate revocation list (PEM). Optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl: Option<PathBuf>,
}

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls.{field} = {path}: {reason}")]
    File {
        field: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("tls.cert = {path}: {source}")]
    Identity {
        path: PathBuf,
        source: IdentityError,
    },
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("tls: {0}")]
    Verifier(String),
}

impl TlsConfig {
    /// Makes relative paths relative to `base` (the config file's folder).
    pub fn resolve_relative_to(&mut self, base: &Path) {
        let paths = [&mut self.ca, &mut self.cert, &mut self.key]
            .into_iter()
            .chain(self.crl.as_mut());
        for path in paths {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }

    /// Reads and checks every file. The certificate must carry a valid
    /// identity and role, and the key must belong to it.
    pub fn load(&self) -> Result<TlsMaterial, TlsError> {
        self.load_following_every(CERT_CHECK_EVERY)
    }

    /// [`TlsConfig::load`], with our certificate and key files looked at
    /// most every `every` while running (tests use a short period).
    pub fn load_following_every(&self, every: Duration) -> Result<TlsMaterial, TlsError> {
        let ca = read_certs("ca", &self.ca)?;
        let mut roots = RootCertStore::empty();
        for cert in ca {
            roots.add(cert).map_err(|e| file_err("ca", &self.ca, e))?;
        }
        // Reads the pair and checks that the key belongs to the
        // certificate now, not at the first handshake.
        let own = OwnCert::load(self.cert.clone(), self.key.clone(), provider(), every)?;
        if let Ok(mode) = key_exposure(&self.key)
            && mode != 0
        {
            tracing::warn!(
                path = %self.key.display(),
                group_other_mode = format!("{mode:03o}"),
                "private key is accessible to its group or others; `chmod 600` it"
            );
        }
        let crls = match &self.crl {
            Some(path) => CertificateRevocationListDer::pem_file_iter(path)
                .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                .map_err(|e| file_err("crl", path, e))?,
            None => Vec::new(),
        };
        Ok(TlsMaterial {
            roots: Arc::new(roots),
            own: Arc::new(own),
            crls,
            crl_path: self.crl.clone(),
        })
    }
}

/// Certificates and keys read from a [`TlsConfig`], ready to build rustls
/// configs.
#[derive(Debug)]
pub struct TlsMaterial {
    roots: Arc<RootCertStore>,
    /// Our certificate and key, following their files; shared by every
    /// config built from this material.
    own: Arc<OwnCert>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    /// Where the CRL came from: servers follow changes to it.
    crl_path: Option<PathBuf>,
}

impl TlsMaterial {
    /// Identity and role of our own certificate.
    pub fn own_peer(&self) -> &Peer {
        self.own.peer()
    }

    /// Our certificate as it follows its files: its current expiry is
    /// [`OwnCert::not_after`] (the `/metrics` gauge).
    pub fn own_cert(&self) -> &Arc<OwnCert> {
        &self.own
    }

    /// Whether a CRL was configured.
    pub fn has_crl(&self) -> bool {
        !self.crls.is_empty()
    }

    /// A server config that requires a client certificate issued by the CA
    /// and not revoked. Callers may set ALPN before wrapping it in an `Arc`.
    ///
    /// With a CRL, the config follows the file: a new `crl.pem` is used
    /// within [`crate::crl::CRL_CHECK_EVERY`], without a restart. Our own
    /// certificate follows its files too (see [`crate::reload`]).
    pub fn server_config(&self) -> Result<ServerConfig, TlsError> {
        self.server_config_checking_crl_every(crate::crl::CRL_CHECK_EVERY)
    }

    /// [`TlsMaterial::server_config`] looking at the CRL file at most every
    /// `every`.
    pub fn server_config_checking_crl_every(
        &self,
        every: std::time::Duration,
    ) -> Result<ServerConfig, TlsError> {
        let provider = self.provider();
        let verifier: Arc<dyn rustls::server::danger::ClientCertVerifier> = match &self.crl_path {
            Some(path) => Arc::new(
                crate::crl::ReloadingVerifier::new(
                    self.roots.clone(),
                    provider.clone(),
                    path.clone(),
                    every,
                )
                .map_err(TlsError::Verifier)?,
            ),
            None => {
                WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider.clone())
                    .build()
                    .map_err(|e| TlsError::Verifier(e.to_string()))?
            }
        };
        Ok(ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(self.own.clone()))
    }

    /// A client config that presents our certificate (following its files,
    /// like servers) and checks the server against the CA (and the CRL,
    /// when configured).
    pub fn client_config(&self) -> Result<ClientConfig, TlsError> {
        let provider = self.provider();
        let verifier =
            WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider.clone())
                .with_crls(self.crls.iter().cloned())
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
        Ok(ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_webpki_verifier(verifier)
            .with_client_cert_resolver(self.own.clone()))
    }

    fn provider(&self) -> Arc<CryptoProvider> {
        provider()
    }
}

/// The installed process-wide provider (ring, see
/// [`crate::install_crypto_provider`]); ring again if none was installed,
/// so a library user that forgot still gets the one provider we link.
fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// The permission bits of the file at `path` that give its group or others
/// any access (`0o077` at most; 0 when none, and always 0 where files have
/// no Unix permissions). A private key should show 0: [`TlsConfig::load`]
/// warns otherwise.
pub fn key_exposure(path: &Path) -> std::io::Result<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        Ok(std::fs::metadata(path)?.permissions().mode() & 0o077)
    }
    #[cfg(not(unix))]
    {
        std::fs::metadata(path).map(|_| 0)
    }
}

pub(crate) fn read_certs(
    field: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_err(field, path, e))?;
    if certs.is_empty() {
        return Err(file_err(field, path, "no certificate in file"));
    }
    Ok(certs)
}

pub(crate) fn file_err(field: &'static str, path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        field,
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn keys_open_to_group_or_others_are_noticed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.key");
        std::fs::write(&key, "not a key").unwrap();
        for (mode, exposed) in [
            (0o600, 0),
            (0o400, 0),
            (0o640, 0o040),
            (0o644, 0o044),
            (0o606, 0o006),
        ] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(key_exposure(&key).unwrap(), exposed, "{mode:o}");
        }
        assert!(key_exposure(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let mut cfg: TlsConfig = toml::from_str(
            "ca = \"pki/ca.pem\"\ncert = \"/etc/vigil/p.pem\"\nkey = \"pki/p.key\"\ncrl = \"pki/crl.pem\"\n",
        )
        .unwrap();
        cfg.resolve_relative_to(Path::new("/srv/post"));
        assert_eq!(cfg.ca, Path::new("/srv/post/pki/ca.pem"));
        assert_eq!(cfg.cert, Path::new("/etc/vigil/p.pem"));
        assert_eq!(cfg.key, Path::new("/srv/post/pki/p.key"));
        assert_eq!(cfg.crl.as_deref(), Some(Path::new("/srv/post/pki/crl.pem")));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err =
            toml::from_str::<TlsConfig>("ca = \"a\"\ncert = \"b\"\nkey = \"c\"\ncrt = \"d\"\n")
                .unwrap_err();
        assert!(err.to_string().contains("unknown field `crt`"), "{err}");
    }
}
