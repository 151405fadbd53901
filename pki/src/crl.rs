//! A client-certificate verifier whose CRL follows its file.
//!
//! Revoking a post must not need a restart of every server: the broker and
//! the ops-center keep running while `vigil pki revoke` writes a new
//! `crl.pem` and the operator copies it over the old one. Servers verify
//! client certificates through [`ReloadingVerifier`], which looks at the
//! CRL file at most every [`CRL_CHECK_EVERY`] (at a handshake, so an idle
//! server does no work) and, when its size or modification time changed,
//! reads it again and builds a new webpki verifier. A file that cannot be
//! read or parsed is logged and the previous CRL kept: a half-copied file
//! must not open the door to everyone, nor close it.
//!
//! Connections already established are not re-checked: MQTT and gRPC
//! sessions of a revoked certificate last until they end (the broker's
//! keep-alive and the gateways' reconnects bound that in practice).

use std::{
    fmt,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use rustls::{
    DigitallySignedStruct, DistinguishedName, Error, RootCertStore, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    crypto::CryptoProvider,
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime, pem::PemObject};

/// Longest time between two looks at the CRL file.
pub const CRL_CHECK_EVERY: Duration = Duration::from_secs(10);

/// Size and modification time of the CRL file: a change means a new CRL.
type Stamp = Option<(u64, SystemTime)>;

struct Current {
    verifier: Arc<dyn ClientCertVerifier>,
    stamp: Stamp,
    checked: Instant,
}

/// See the module documentation.
pub struct ReloadingVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    path: PathBuf,
    every: Duration,
    /// The roots' subjects, fixed: only the CRL changes.
    hints: Vec<DistinguishedName>,
    current: Mutex<Current>,
}

impl fmt::Debug for ReloadingVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingVerifier")
            .field("path", &self.path)
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

fn stamp(path: &PathBuf) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

fn build(
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .with_crls(crls)
        .build()
        .map_err(|e| e.to_string())
}

fn read(path: &PathBuf) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    CertificateRevocationListDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| e.to_string())
}

impl ReloadingVerifier {
    /// A verifier for `roots` with the CRL read from `path` now (an error
    /// here is the caller's to report) and again whenever it changes,
    /// looked at most every `every`.
    pub fn new(
        roots: Arc<RootCertStore>,
        provider: Arc<CryptoProvider>,
        path: PathBuf,
        every: Duration,
    ) -> Result<Self, String> {
        let stamp = stamp(&path);
        let verifier = build(&roots, &provider, read(&path)?)?;
        let hints = verifier.root_hint_subjects().to_vec();
        Ok(Self {
            roots,
            provider,
            path,
            every,
            hints,
            current: Mutex::new(Current {
                verifier,
                stamp,
                checked: Instant::now(),
            }),
        })
    }

    fn verifier(&self) -> Arc<dyn ClientCertVerifier> {
        // Held for a stat (and, when the file changed, a small read): no
        // await, and at most once per `every`.
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.checked.elapsed() >= self.every {
            current.checked = Instant::now();
            let now = stamp(&self.path);
            if now != current.stamp {
                current.stamp = now;
                match read(&self.path).and_then(|crls| {
                    let n = crls.len();
                    build(&self.roots, &self.provider, crls).map(|v| (v, n))
                }) {
                    Ok((verifier, lists)) => {
                        tracing::info!(path = %self.path.display(), lists, "CRL reloaded");
                        current.verifier = verifier;
                    }
                    Err(error) => tracing::error!(
                        path = %self.path.display(),
                        %error,
                        "CRL changed but cannot be used; keeping the previous one"
                    ),
                }
            }
        }
        current.verifier.clone()
    }
}

impl ClientCertVerifier for ReloadingVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.verifier()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.verifier().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.verifier().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.verifier().supported_verify_schemes()
    }
}
