//! Our own certificate and key, following their files while running.
//!
//! A renewal (`vigil pki renew`, or an operator copying new files over the
//! old ones) must not need a restart: [`OwnCert`] is the rustls certificate
//! resolver of every server and client config built by
//! [`crate::tls::TlsMaterial`]. At a handshake, at most every
//! [`CERT_CHECK_EVERY`], it reads both files (a few kilobytes) and, when
//! either differs from what it last read, parses the pair again; if the
//! pair is good, new handshakes present the new certificate. Contents are
//! compared, not modification times: a renewal written within the same
//! clock tick as the previous one, with the same size, is still seen. Connections already
//! established keep the one they started with.
//!
//! A pair that cannot be used — a file half copied, a key that does not
//! belong to the certificate (the operator copied the certificate first),
//! a certificate for another identity or role — is logged and the last
//! good pair kept. Once the second file lands, the next look reads the
//! pair again and succeeds.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use rustls::{
    SignatureScheme,
    client::ResolvesClientCert,
    crypto::CryptoProvider,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{
    identity::Peer,
    tls::{TlsError, file_err, read_certs},
};

/// Longest time between two looks at the certificate and key files.
pub const CERT_CHECK_EVERY: Duration = Duration::from_secs(10);

/// A file's contents as last read (`None`: unreadable).
type Stamp = Option<Vec<u8>>;

fn stamp(path: &Path) -> Stamp {
    std::fs::read(path).ok()
}

/// A certificate chain and its key, checked to belong together.
#[derive(Debug)]
pub(crate) struct Pair {
    pub(crate) key: Arc<CertifiedKey>,
    pub(crate) peer: Peer,
    /// The leaf's notAfter, in seconds since the Unix epoch.
    pub(crate) not_after: i64,
}

/// Reads and checks the pair at `cert` and `key`.
pub(crate) fn read_pair(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<Pair, TlsError> {
    let chain = read_certs("cert", cert)?;
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err("key", key, e))?;
    let peer = Peer::from_cert(&chain[0]).map_err(|source| TlsError::Identity {
        path: cert.to_owned(),
        source,
    })?;
    let not_after = not_after(&chain[0]).map_err(|e| file_err("cert", cert, e))?;
    let signing_key = provider.key_provider.load_private_key(der)?;
    let certified = CertifiedKey::new(chain, signing_key);
    // A key that does not belong to the certificate fails here, not at
    // the first handshake.
    certified.keys_match()?;
    Ok(Pair {
        key: Arc::new(certified),
        peer,
        not_after,
    })
}

/// The notAfter of `cert`, in seconds since the Unix epoch: the expiry
/// gauges of our own certificate and of connected peers.
pub fn not_after(cert: &CertificateDer<'_>) -> Result<i64, String> {
    let (_, x509) = X509Certificate::from_der(cert.as_ref()).map_err(|e| e.to_string())?;
    Ok(x509.validity().not_after.timestamp())
}

struct Current {
    key: Arc<CertifiedKey>,
    stamps: (Stamp, Stamp),
    checked: Instant,
}

/// See the module documentation.
pub struct OwnCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    every: Duration,
    /// Identity and role, fixed for the life of the process: a pair for
    /// another party is refused.
    peer: Peer,
    not_after: AtomicI64,
    current: Mutex<Current>,
}

impl fmt::Debug for OwnCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnCert")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("peer", &self.peer)
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

impl OwnCert {
    /// Reads the pair now (an error is the caller's to report) and follows
    /// the files from then on, looking at most every `every`.
    pub fn load(
        cert: PathBuf,
        key: PathBuf,
        provider: Arc<CryptoProvider>,
        every: Duration,
    ) -> Result<Self, TlsError> {
        let stamps = (stamp(&cert), stamp(&key));
        let pair = read_pair(&cert, &key, &provider)?;
        Ok(Self {
            cert,
            key,
            provider,
            every,
            peer: pair.peer,
            not_after: AtomicI64::new(pair.not_after),
            current: Mutex::new(Current {
                key: pair.key,
                stamps,
                checked: Instant::now(),
            }),
        })
    }

    /// Identity and role of the certificate.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// The certificate's notAfter (seconds since the Unix epoch), after a
    /// look at the files if one is due: the expiry gauge of `/metrics`.
    pub fn not_after(&self) -> i64 {
        let _ = self.certified();
        self.not_after.load(Ordering::Relaxed)
    }

    /// The certificate and key to present now.
    pub fn certified(&self) -> Arc<CertifiedKey> {
        // Held for two small reads (and, when a file changed, a parse):
        // no await, and at most once per `every`.
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.checked.elapsed() >= self.every {
            current.checked = Instant::now();
            let stamps = (stamp(&self.cert), stamp(&self.key));
            if stamps != current.stamps {
                current.stamps = stamps;
                match self.reread() {
                    Ok(pair) => {
                        tracing::info!(
                            cert = %self.cert.display(),
                            not_after = pair.not_after,
                            "own certificate reloaded"
                        );
                        self.not_after.store(pair.not_after, Ordering::Relaxed);
                        current.key = pair.key;
                    }
                    Err(error) => tracing::error!(
                        cert = %self.cert.display(),
                        key = %self.key.display(),
                        %error,
                        "certificate or key changed but cannot be used; keeping the previous pair"
                    ),
                }
            }
        }
        current.key.clone()
    }

    fn reread(&self) -> Result<Pair, TlsError> {
        let pair = read_pair(&self.cert, &self.key, &self.provider)?;
        if pair.peer != self.peer {
            return Err(file_err(
                "cert",
                &self.cert,
                format!(
                    "is for {}, not {}: a running daemon keeps its identity",
                    pair.peer, self.peer
                ),
            ));
        }
        Ok(pair)
    }
}

impl ResolvesServerCert for OwnCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.certified())
    }
}

impl ResolvesClientCert for OwnCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.certified())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
