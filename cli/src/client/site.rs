//! `vigil site import FILE` and `vigil site export`: the post records,
//! contacts and action plans of the region, as a site file (TOML; the
//! format is `vigil_ops::site`'s and docs/ops-center.md's).
//!
//! `import` reads and checks the whole file here first, so a bad file
//! names every problem (table, key, reason) and exits 64 without a
//! connection; the server checks again and replaces the stored document
//! whole or not at all, then says what changed.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use tonic::Code;
use vigil_ops::site;
use vigil_proto::v1::{ExportSiteRequest, ImportSiteRequest};

use super::{Connection, connect::connect, fail, status_message, unary};
use crate::Usage;

#[derive(Debug, Subcommand)]
pub(crate) enum SiteCommand {
    /// Replace every post record and action plan with those of a site file
    /// (supervisors and admins); prints what changed.
    Import(ImportArgs),
    /// Print the post records and action plans as a site file (supervisors
    /// and admins; duress words and passcodes included).
    Export(ExportArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    #[command(flatten)]
    conn: Connection,
    /// The site file (TOML: [[post]] and [[plan]] tables).
    file: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    #[command(flatten)]
    conn: Connection,
}

pub(crate) async fn run(cmd: SiteCommand) -> Result<()> {
    match cmd {
        SiteCommand::Import(a) => import(a).await,
        SiteCommand::Export(a) => export(a).await,
    }
}

async fn import(args: ImportArgs) -> Result<()> {
    let file = args.file.display().to_string();
    let text = std::fs::read_to_string(&args.file)
        .map_err(|e| Usage(format!("{file}: cannot read it: {e}")))?;
    let doc = site::parse(&text).map_err(|e| {
        Usage(format!(
            "{file}: {} problem{}, nothing imported:\n{e}",
            e.0.len(),
            if e.0.len() == 1 { "" } else { "s" }
        ))
    })?;
    let (posts, plans) = (doc.posts.len(), doc.plans.len());
    let mut s = connect(&args.conn).await?;
    let changes = match unary(s.client.import_site(ImportSiteRequest { site: Some(doc) })).await {
        Ok(r) => r.changes,
        // The server's checks are the same; if it still refuses, the file
        // is what to fix.
        Err(e) if e.code() == Code::InvalidArgument => {
            return Err(Usage(format!("{file}: {}", status_message(&e, &s))).into());
        }
        Err(e) => return Err(fail(&s, &e)),
    };
    if changes.is_empty() {
        println!("{file}: no change ({posts} post records, {plans} plans already stored)");
    } else {
        for c in &changes {
            println!("{c}");
        }
        println!(
            "{file}: {} change{}; {posts} post records and {plans} plans stored",
            changes.len(),
            if changes.len() == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

async fn export(args: ExportArgs) -> Result<()> {
    let mut s = connect(&args.conn).await?;
    let doc = unary(s.client.export_site(ExportSiteRequest::default()))
        .await
        .map_err(|e| fail(&s, &e))?;
    print!("{}", site::to_toml(&doc));
    Ok(())
}
