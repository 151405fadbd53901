//! `vigil pki`: create the region CA, issue, revoke, list and renew
//! certificates.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use time::{OffsetDateTime, format_description::well_known::Rfc3339, macros::format_description};
use vigil_pki::{
    Identity, Role,
    authority::{self, AuthorityError, CertEntry, DEFAULT_VALIDITY_DAYS},
};

use crate::{Status, Usage};

/// Exit status of `vigil pki list` when a certificate that is not revoked
/// has expired or expires within `--within` days. Not 1: that is any other
/// failure (an unreadable file), which a monitor must not mistake for "all
/// certificates read, some due".
pub(crate) const EXIT_DUE: u8 = 2;

/// Default `--within` of `vigil pki list`, in days.
const DEFAULT_WITHIN_DAYS: u32 = 30;

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
    /// List the certificates issued from DIR, soonest expiry first. Exits 2
    /// when one that is not revoked expires within --within days.
    List {
        #[command(flatten)]
        dir: DirArg,
        /// One JSON array of objects instead of a table.
        #[arg(long)]
        json: bool,
        /// Exit 2 when a certificate that is not revoked expires within
        /// this many days (or has expired).
        #[arg(long, value_name = "DAYS", default_value_t = DEFAULT_WITHIN_DAYS)]
        within: u32,
    },
    /// Renew DIR/ID.pem: a new certificate for the same identity, role and
    /// SANs, replacing the old file atomically; the key is kept unless
    /// --new-key.
    Renew {
        #[command(flatten)]
        dir: DirArg,
        #[arg(long)]
        id: String,
        /// Validity in days, from now.
        #[arg(long, default_value_t = DEFAULT_VALIDITY_DAYS)]
        days: u32,
        /// Also replace DIR/ID.key with a new key.
        #[arg(long)]
        new_key: bool,
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
        PkiCommand::List { dir, json, within } => list(&dir, json, within)?,
        PkiCommand::Renew {
            dir,
            id,
            days,
            new_key,
        } => {
            let id = identity(&id)?;
            let renewed = authority::renew(&dir.dir, &id, days, new_key).map_err(classify)?;
            println!(
                "renewed {} certificate for {id}: {} (serial {}, was {}), valid until {}",
                renewed.role,
                renewed.cert.display(),
                renewed.serial,
                renewed.old_serial,
                text_time(renewed.not_after)
            );
            if renewed.new_key {
                println!("        new key {}", renewed.key.display());
            } else {
                println!("        key {} kept", renewed.key.display());
            }
        }
    }
    Ok(())
}

fn list(dir: &DirArg, json: bool, within: u32) -> Result<()> {
    let inventory = authority::list(&dir.dir).map_err(classify)?;
    for (path, reason) in &inventory.skipped {
        eprintln!("vigil: skipped {}: {reason}", path.display());
    }
    let now = OffsetDateTime::now_utc();
    let status = |c: &CertEntry| {
        if c.revoked {
            "revoked"
        } else if c.not_after <= now {
            "expired"
        } else if c.due_within(now, within) {
            "due"
        } else {
            "ok"
        }
    };
    if json {
        let rows: Vec<_> = inventory
            .certs
            .iter()
            .map(|c| {
                serde_json::json!({
                    "identity": c.identity.as_str(),
                    "role": c.role.as_str(),
                    "serial": c.serial,
                    "not_after": c.not_after.format(&Rfc3339).unwrap_or_default(),
                    "days_left": c.days_left(now),
                    "revoked": c.revoked,
                    "status": status(c),
                    "file": c.file.display().to_string(),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
    } else {
        let header = [
            "IDENTITY",
            "ROLE",
            "SERIAL",
            "NOT AFTER (UTC)",
            "DAYS",
            "STATUS",
        ];
        let rows: Vec<[String; 6]> = inventory
            .certs
            .iter()
            .map(|c| {
                [
                    c.identity.to_string(),
                    c.role.to_string(),
                    c.serial.clone(),
                    text_time(c.not_after),
                    c.days_left(now).to_string(),
                    status(c).to_owned(),
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.len());
            }
        }
        let line = |cells: [&str; 6]| {
            // Days are numbers: right-aligned; the last column is not padded.
            format!(
                "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {:>w4$}  {}",
                cells[0],
                cells[1],
                cells[2],
                cells[3],
                cells[4],
                cells[5],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2],
                w3 = widths[3],
                w4 = widths[4],
            )
        };
        println!("{}", line(header));
        for row in &rows {
            println!("{}", line(row.each_ref().map(String::as_str)));
        }
    }

    let due: Vec<_> = inventory
        .certs
        .iter()
        .filter(|c| c.due_within(now, within))
        .map(|c| {
            if c.not_after <= now {
                format!("{} (expired)", c.identity)
            } else {
                format!("{} ({} days left)", c.identity, c.days_left(now))
            }
        })
        .collect();
    if due.is_empty() {
        return Ok(());
    }
    Err(Status(
        EXIT_DUE,
        format!(
            "{} certificate(s) expired or expiring within {within} days: {}",
            due.len(),
            due.join(", ")
        ),
    )
    .into())
}

fn text_time(t: OffsetDateTime) -> String {
    t.format(format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second]Z"
    ))
    .unwrap_or_default()
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
        | AuthorityError::ForeignCert(_)
        | AuthorityError::RevokedCert(_)
        | AuthorityError::NoKey(_)
        | AuthorityError::KeyMismatch(_)
        | AuthorityError::MissingSan(_)
        | AuthorityError::BadSan(_)
        | AuthorityError::BadValidity(_) => Usage(err.to_string()).into(),
        other => other.into(),
    }
}
