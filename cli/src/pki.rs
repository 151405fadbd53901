//! `vigil pki`: create the region CA, issue and revoke certificates.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use vigil_pki::{
    Identity, Role,
    authority::{self, AuthorityError, DEFAULT_VALIDITY_DAYS},
};

use crate::Usage;

#[derive(Debug, Subcommand)]
pub(crate) enum PkiCommand {
    /// Create the region CA: DIR/ca.pem, DIR/ca.key and an empty DIR/crl.pem.
    Init {
        #[command(flatten)]
        dir: DirArg,
        /// Common name of the CA certificate.
        #[arg(long, default_value = "Vigil region CA")]
        name: String,
    },
    /// Issue a certificate: DIR/ID.pem and DIR/ID.key.
    Issue {
        #[command(flatten)]
        dir: DirArg,
        /// broker, ops, post, analyst, supervisor, engineer or admin.
        #[arg(long)]
        role: String,
        /// Identity (certificate CN): 1-63 of a-z, 0-9, '-'.
        #[arg(long)]
        id: String,
        /// DNS name or IP address clients use to reach a server (repeatable;
        /// required for broker and ops).
        #[arg(long = "san", value_name = "HOST|IP")]
        sans: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = DEFAULT_VALIDITY_DAYS)]
        days: u32,
        /// Replace an existing certificate of the same identity.
        #[arg(long)]
        force: bool,
    },
    /// Revoke DIR/ID.pem: add it to DIR/crl.pem.
    Revoke {
        #[command(flatten)]
        dir: DirArg,
        #[arg(long)]
        id: String,
    },
}

#[derive(Debug, Args)]
pub(crate) struct DirArg {
    /// Folder holding the CA and issued certificates.
    #[arg(long)]
    dir: PathBuf,
}

pub(crate) fn run(cmd: PkiCommand) -> Result<()> {
    match cmd {
        PkiCommand::Init { dir, name } => {
            let files = authority::init(&dir.dir, &name).map_err(classify)?;
            println!("created CA {}", files.cert.display());
            println!("        key {} (keep it offline)", files.key.display());
            println!("        CRL {}", files.crl.display());
        }
        PkiCommand::Issue {
            dir,
            role,
            id,
            sans,
            days,
            force,
        } => {
            let role: Role = role.parse().map_err(|e| Usage(format!("--role: {e}")))?;
            let id = identity(&id)?;
            let issued =
                authority::issue(&dir.dir, role, &id, &sans, days, force).map_err(classify)?;
            println!(
                "issued {role} certificate for {id}: {} (serial {})",
                issued.cert.display(),
                issued.serial
            );
            println!("       key {}", issued.key.display());
        }
        PkiCommand::Revoke { dir, id } => {
            let id = identity(&id)?;
            let revoked = authority::revoke(&dir.dir, &id).map_err(classify)?;
            if revoked.newly_revoked {
                println!(
                    "revoked {id} (serial {}); {} now lists {} certificate(s): copy it to every server",
                    revoked.serial,
                    revoked.crl.display(),
                    revoked.revoked_count
                );
            } else {
                println!("{id} (serial {}) was already revoked", revoked.serial);
            }
        }
    }
    Ok(())
}

fn identity(id: &str) -> Result<Identity> {
    Ok(Identity::new(id).map_err(|e| Usage(format!("--id: {e}")))?)
}

/// Errors the operator must fix by changing the command are usage errors.
fn classify(err: AuthorityError) -> anyhow::Error {
    match err {
        AuthorityError::CaExists(_)
        | AuthorityError::CertExists(_)
        | AuthorityError::NoCa(_)
        | AuthorityError::NoSuchCert { .. }
        | AuthorityError::MissingSan(_)
        | AuthorityError::BadSan(_)
        | AuthorityError::BadValidity(_) => Usage(err.to_string()).into(),
        other => other.into(),
    }
}
