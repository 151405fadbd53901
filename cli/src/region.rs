//! Pieces shared by the commands that stand up a whole region on this
//! machine (`vigil dev`, `vigil bench`): certificates issued on demand and
//! the config files written beside them. Their gRPC clients connect through
//! the client commands' own `client::connect`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
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
