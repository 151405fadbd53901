//! `vigil pki`: create the region CA, issue, revoke, list and renew
//! certificates, re-sign the CRL.
//!
//! Commands that sign (`issue`, `revoke`, `renew`, `crl`) open the CA key;
//! when it is encrypted (`init --encrypt`) the passphrase comes from
//! [`PASSPHRASE_ENV`] or, when that is not set, from the terminal with echo
//! off. A plain key still works, with a warning once the command is done.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Args, Subcommand};
use time::{OffsetDateTime, format_description::well_known::Rfc3339, macros::format_description};
use vigil_pki::{
    Identity, Role,
    authority::{self, Authority, AuthorityError, CertEntry, DEFAULT_VALIDITY_DAYS},
};

use crate::{Status, Usage};

/// Exit status of `vigil pki list` when a certificate that is not revoked
/// has expired or expires within `--within` days. Not 1: that is any other
/// failure (an unreadable file), which a monitor must not mistake for "all
/// certificates read, some due".
pub(crate) const EXIT_DUE: u8 = 2;

/// The environment variable that holds the CA key's passphrase (for
/// scripts; a person at a terminal is asked instead when it is not set).
pub(crate) const PASSPHRASE_ENV: &str = "VIGIL_CA_PASSPHRASE";

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
        /// Store DIR/ca.key encrypted (PKCS#8, PBKDF2 and AES-256) under a
        /// passphrase: from VIGIL_CA_PASSPHRASE, else asked twice on the
        /// terminal. Every command that signs then needs it.
        #[arg(long)]
        encrypt: bool,
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
    /// Re-sign DIR/crl.pem before its next update: the same revoked
    /// certificates, the next CRL number, valid for another year. Run it
    /// from a timer; servers follow the file.
    Crl {
        #[command(flatten)]
        dir: DirArg,
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
    /// Export DIR/ID.pem, DIR/ID.key and the CA as one password-protected
    /// PKCS#12 file (DIR/ID.p12 unless --out), to import into a browser
    /// for the console. The password comes from VIGIL_EXPORT_PASSPHRASE,
    /// else is asked twice on the terminal. The CA key is not needed.
    Export {
        #[command(flatten)]
        dir: DirArg,
        #[arg(long)]
        id: String,
        /// Where to write the bundle (mode 0600).
        #[arg(long)]
        out: Option<PathBuf>,
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
        PkiCommand::Init { dir, name, encrypt } => {
            let files = if encrypt {
                let passphrase = new_passphrase()?;
                authority::init_encrypted(&dir.dir, &name, &passphrase)
            } else {
                authority::init(&dir.dir, &name)
            }
            .map_err(classify)?;
            println!("created CA {}", files.cert.display());
            if encrypt {
                println!(
                    "        key {} (encrypted; keep it offline)",
                    files.key.display()
                );
            } else {
                println!("        key {} (keep it offline)", files.key.display());
            }
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
            let ca = open(&dir.dir)?;
            let issued = ca.issue(role, &id, &sans, days, force).map_err(classify)?;
            println!(
                "issued {role} certificate for {id}: {} (serial {})",
                issued.cert.display(),
                issued.serial
            );
            println!("       key {}", issued.key.display());
            warn_plain(&ca, &dir.dir);
        }
        PkiCommand::Revoke { dir, id } => {
            let id = identity(&id)?;
            let ca = open(&dir.dir)?;
            let revoked = ca.revoke(&id).map_err(classify)?;
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
            warn_plain(&ca, &dir.dir);
        }
        PkiCommand::Crl { dir } => {
            let ca = open(&dir.dir)?;
            let refreshed = ca.refresh_crl().map_err(classify)?;
            println!(
                "re-signed {} (number {}, {} revoked), next update {}",
                refreshed.crl.display(),
                refreshed.number,
                refreshed.revoked_count,
                text_time(refreshed.next_update)
            );
            warn_plain(&ca, &dir.dir);
        }
        PkiCommand::List { dir, json, within } => list(&dir, json, within)?,
        PkiCommand::Export { dir, id, out } => {
            let id = identity(&id)?;
            let out = out.unwrap_or_else(|| dir.dir.join(format!("{id}.p12")));
            let password = export_password(&id)?;
            let bundle =
                vigil_pki::pkcs12::export(&dir.dir, &id, &password).map_err(|e| match e {
                    vigil_pki::pkcs12::Pkcs12Error::EmptyPassword => Usage(e.to_string()).into(),
                    e => anyhow::Error::new(Status(1, format!("cannot export {id}: {e}"))),
                })?;
            write_private(&out, &bundle)?;
            println!(
                "exported {id} (certificate, key and CA) to {}: import it into the browser with its password",
                out.display()
            );
        }
        PkiCommand::Renew {
            dir,
            id,
            days,
            new_key,
        } => {
            let id = identity(&id)?;
            let ca = open(&dir.dir)?;
            let renewed = ca.renew(&id, days, new_key).map_err(classify)?;
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
            warn_plain(&ca, &dir.dir);
        }
    }
    Ok(())
}

/// Opens the CA of `dir`, asking for the passphrase if its key is
/// encrypted.
fn open(dir: &Path) -> Result<Authority> {
    Authority::open(dir, &mut passphrase).map_err(classify)
}

/// Said after the command's work (so an error stays the one line on
/// stderr): a plain CA key is accepted, not recommended.
fn warn_plain(ca: &Authority, dir: &Path) {
    if !ca.key_encrypted() {
        eprintln!(
            "vigil: warning: {} is not encrypted; a region CA should have a passphrase (see `vigil pki init --encrypt`)",
            dir.join("ca.key").display()
        );
    }
}

/// The passphrase of the encrypted key at `key`: [`PASSPHRASE_ENV`], else
/// asked on the terminal.
fn passphrase(key: &Path) -> Result<String, AuthorityError> {
    if let Some(value) = std::env::var_os(PASSPHRASE_ENV) {
        return value
            .into_string()
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                AuthorityError::Passphrase(format!("{PASSPHRASE_ENV} is empty or not UTF-8"))
            });
    }
    let prompt = format!("passphrase for {}: ", key.display());
    match crate::tty::read_hidden(&prompt) {
        Ok(Some(line)) => Ok(line),
        Ok(None) => Err(AuthorityError::NoPassphrase(key.to_owned())),
        Err(e) => Err(AuthorityError::Passphrase(format!(
            "reading the terminal: {e}"
        ))),
    }
}

/// The passphrase for a new encrypted CA key: [`PASSPHRASE_ENV`], else
/// typed twice on the terminal.
fn new_passphrase() -> Result<String> {
    if std::env::var_os(PASSPHRASE_ENV).is_some() {
        return passphrase(Path::new("ca.key")).map_err(classify);
    }
    let ask = |prompt: &str| match crate::tty::read_hidden(prompt) {
        Ok(Some(line)) => Ok(line),
        Ok(None) => Err(Usage(format!(
            "--encrypt needs a passphrase: set {PASSPHRASE_ENV} or run from a terminal"
        ))),
        Err(e) => Err(Usage(format!("reading the terminal: {e}"))),
    };
    let first = ask("passphrase for the new CA key: ")?;
    if first.is_empty() {
        return Err(Usage("an empty passphrase protects nothing".into()).into());
    }
    let second = ask("the same passphrase again: ")?;
    if first != second {
        return Err(Usage("the two passphrases differ; nothing was written".into()).into());
    }
    Ok(first)
}

/// The environment variable that holds the password of an exported
/// bundle (for scripts and `vigil dev`).
pub(crate) const EXPORT_PASSPHRASE_ENV: &str = "VIGIL_EXPORT_PASSPHRASE";

/// The bundle's password: [`EXPORT_PASSPHRASE_ENV`], else typed twice on
/// the terminal.
fn export_password(id: &Identity) -> Result<String> {
    if let Some(value) = std::env::var_os(EXPORT_PASSPHRASE_ENV) {
        return value
            .into_string()
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| Usage(format!("{EXPORT_PASSPHRASE_ENV} is empty or not UTF-8")).into());
    }
    let ask = |prompt: &str| match crate::tty::read_hidden(prompt) {
        Ok(Some(line)) => Ok(line),
        Ok(None) => Err(Usage(format!(
            "export needs a password: set {EXPORT_PASSPHRASE_ENV} or run from a terminal"
        ))),
        Err(e) => Err(Usage(format!("reading the terminal: {e}"))),
    };
    let first = ask(&format!("password for {id}.p12: "))?;
    if first.is_empty() {
        return Err(Usage("an empty password protects nothing".into()).into());
    }
    if ask("the same password again: ")? != first {
        return Err(Usage("the two passwords differ; nothing was written".into()).into());
    }
    Ok(first)
}

/// Writes `bytes` to `path`, readable by its owner only (a key is inside).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};

    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Status(1, format!("{}: {e}", path.display())))?;
    // An older file keeps its mode through `open`: set it.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| Status(1, format!("{}: {e}", path.display())))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| Status(1, format!("{}: {e}", path.display())))?;
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
        | AuthorityError::BadValidity(_)
        | AuthorityError::NoPassphrase(_)
        | AuthorityError::WrongPassphrase(_)
        | AuthorityError::Passphrase(_)
        | AuthorityError::CaKeyMismatch(_) => Usage(err.to_string()).into(),
        other => other.into(),
    }
}
