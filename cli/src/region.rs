//! Pieces shared by the commands that stand up a whole region on this
//! machine (`vigil dev`, `vigil bench`): certificates issued on demand, the
//! config files written beside them, and a gRPC channel with a certificate
//! from that PKI.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity as TlsIdentity};
use vigil_pki::{Identity, Role, authority};

/// Validity of the certificates these commands issue.
pub(crate) const CERT_DAYS: u32 = 365;

/// The SANs of the server certificates (broker and ops center) of a region
/// on loopback.
pub(crate) fn loopback_sans() -> Vec<String> {
    vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
}

/// Creates the CA in `pki` (named `ca_name`) on first use and issues every
/// certificate of `wanted` (role, identity, SANs) that is missing. Returns
/// whether the CA is new.
pub(crate) fn ensure_certs(
    pki: &Path,
    ca_name: &str,
    wanted: &[(Role, &str, &[String])],
) -> Result<bool> {
    let fresh = !pki.join("ca.pem").exists();
    if fresh {
        authority::init(pki, ca_name)
            .with_context(|| format!("creating the CA in {}", pki.display()))?;
    }
    for &(role, id, sans) in wanted {
        if pki.join(format!("{id}.pem")).exists() && pki.join(format!("{id}.key")).exists() {
            continue;
        }
        let identity = Identity::new(id).context("identity")?;
        authority::issue(pki, role, &identity, sans, CERT_DAYS, false)
            .with_context(|| format!("issuing the {role} certificate {id}"))?;
    }
    Ok(fresh)
}

/// The `[tls]` table of a config file that sits next to the `pki` folder.
pub(crate) fn tls_table(id: &str) -> String {
    format!(
        "[tls]\nca = \"pki/ca.pem\"\ncert = \"pki/{id}.pem\"\nkey = \"pki/{id}.key\"\ncrl = \"pki/crl.pem\"\n"
    )
}

/// Writes `dir/name`.
pub(crate) fn write_config(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// A gRPC channel to the API at `api` with `pki/ID.pem` as the client
/// certificate.
pub(crate) async fn connect(pki: &Path, id: &str, api: SocketAddr) -> Result<Channel> {
    let read = |name: String| {
        let path = pki.join(name);
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem".into())?))
        .identity(TlsIdentity::from_pem(
            read(format!("{id}.pem"))?,
            read(format!("{id}.key"))?,
        ))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{api}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    Ok(channel)
}
