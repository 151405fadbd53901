//! Vigil's public-key infrastructure.
//!
//! Every party in a Vigil region — broker, operations center, post gateways,
//! analysts — authenticates with an X.509 certificate issued by the region's
//! CA. The certificate's subject CN is the party's [`Identity`] and its OU is
//! its [`Role`]; nothing else (client ids, topic names, request fields) is
//! trusted to say who someone is.
//!
//! Layout:
//! - [`identity`]: identities, roles, and reading them from a peer certificate.
//! - [`authority`]: the CA on disk: `init`, `issue`, `revoke`, `list`, `renew`,
//!   CRL refresh (rcgen, ECDSA P-256).
//! - [`ca_key`]: the CA key file, plain or encrypted PKCS#8.
//! - [`pkcs12`]: a certificate, its key and the CA as a PKCS#12 bundle for
//!   browsers (`vigil pki export`).
//! - [`reload`]: our own certificate and key, following their files.
//! - [`tls`]: the `[tls]` config table and building rustls server and client
//!   configs from it, with CRL checks.

pub mod authority;
pub mod ca_key;
pub mod crl;
pub mod identity;
pub mod pkcs12;
pub mod reload;
pub mod tls;

pub use identity::{Identity, IdentityError, Peer, Role};
pub use tls::{TlsConfig, TlsError};

/// Installs ring as the process-wide rustls crypto provider.
///
/// Binaries call this once at start (tests may call it any number of times).
/// Vigil links exactly one provider; installing it explicitly means no
/// library can pick another one behind our back.
pub fn install_crypto_provider() {
    // `install_default` fails only when a provider is already installed,
    // which is what we want either way.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
