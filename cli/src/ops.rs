//! `vigil ops --config FILE`: run the operations center; `vigil ops prune
//! --config FILE [--dry-run]`: apply its retention now.

use std::{path::PathBuf, sync::Arc};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;
use vigil_ops::{config::OpsConfig, metrics::Metrics};
use vigil_pki::Role;

use crate::Usage;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct OpsArgs {
    #[command(subcommand)]
    command: Option<OpsCommand>,
    /// The ops-center config (TOML); `vigil config default ops` prints one.
    #[arg(long, required = true)]
    config: Option<PathBuf>,
    /// Copy the SQLite store in this data folder (its `ops.db`) into the
    /// PostgreSQL database of `[store] url`, then exit. The database must be
    /// new, and no operations center may be running on it.
    #[arg(long, value_name = "DATA_DIR")]
    import_sqlite: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum OpsCommand {
    /// Apply the config's [retention] now: archive (if archive_dir is set)
    /// and delete what is past its period, in small transactions; with
    /// --dry-run, only say what would go. Safe while `vigil ops` runs.
    Prune(PruneArgs),
}

#[derive(Debug, Args)]
struct PruneArgs {
    /// The ops-center config (TOML) whose store and [retention] to use.
    #[arg(long)]
    config: PathBuf,
    /// Count what would be deleted; delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: &OpsArgs) -> Result<()> {
    if let Some(OpsCommand::Prune(prune_args)) = &args.command {
        return prune(prune_args);
    }
    let config = args
        .config
        .as_ref()
        .ok_or_else(|| Usage("--config FILE is required".into()))?;
    // Everything that can be wrong with the config is found here, before
    // any file is created or any connection made.
    let cfg = OpsConfig::load(config).map_err(|e| Usage(e.to_string()))?;
    let material = cfg
        .tls
        .load()
        .map_err(|e| Usage(format!("{}: {e}", config.display())))?;
    let role = material.own_peer().role;
    if role != Role::Ops {
        return Err(Usage(format!(
            "{}: tls.cert is a {role} certificate; the operations center needs an ops certificate",
            config.display()
        ))
        .into());
    }
    if let Some(from) = &args.import_sqlite {
        return import_sqlite(&cfg, config, from);
    }
    let (store, engine) = vigil_ops::open(&cfg).context("opening the store")?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        // Handlers are installed before anything starts, so a signal that
        // arrives during start-up still shuts down cleanly.
        let signal = crate::signals::shutdown_signal();
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                signal.await;
                // Cancel first: nothing, not even a log line that cannot be
                // written, may stand between a signal and the shutdown.
                shutdown.cancel();
                tracing::info!("signal received: shutting down");
            }
        });
        let metrics = Arc::new(Metrics::default());
        crate::metrics::serve(
            cfg.metrics.as_ref(),
            "ops",
            {
                let metrics = metrics.clone();
                let own = material.own_cert().clone();
                move |out| {
                    metrics.export(out);
                    out.own_certificate_expiry(own.not_after());
                }
            },
            shutdown.clone(),
        )
        .await?;
        vigil_ops::run(cfg, store, engine, &material, metrics, shutdown)
            .await
            .map_err(anyhow::Error::from)
    })?;
    Ok(())
}

/// `vigil ops --config FILE --import-sqlite DATA_DIR`.
fn import_sqlite(cfg: &OpsConfig, config: &std::path::Path, from: &std::path::Path) -> Result<()> {
    let Some(url) = &cfg.store.url else {
        return Err(Usage(format!(
            "{}: --import-sqlite needs [store] url (the PostgreSQL database to fill)",
            config.display()
        ))
        .into());
    };
    let backend =
        vigil_ops::store::PostgresBackend::open(url).context("opening the PostgreSQL store")?;
    let imported = backend
        .import_sqlite(from)
        .with_context(|| format!("importing {}", from.display()))?;
    println!("imported {imported} from {}", from.display());
    Ok(())
}

/// Most steps of one `vigil ops prune`: a store written faster than it is
/// pruned cannot keep the command going for ever.
const PRUNE_MAX_STEPS: usize = 1_000_000;

/// `vigil ops prune --config FILE [--dry-run] [--json]`.
fn prune(args: &PruneArgs) -> Result<()> {
    let cfg = OpsConfig::load(&args.config).map_err(|e| Usage(e.to_string()))?;
    let backend = vigil_ops::open_backend(&cfg).context("opening the store")?;
    let retention = &cfg.retention;
    let mut pruner = vigil_ops::store::retention::open(&*backend, retention)
        .context("opening the store for retention")?;
    let report = pruner
        .run(std::time::SystemTime::now(), args.dry_run, PRUNE_MAX_STEPS)
        .context("pruning")?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "dry_run": args.dry_run, "report": report })
        );
        return Ok(());
    }
    let verb = if args.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    let by_kind: Vec<String> = report
        .events
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect();
    let range = match (report.first_ms, report.last_ms) {
        (Some(a), Some(b)) => format!(", received {} to {}", millis_rfc3339(a), millis_rfc3339(b)),
        _ => String::new(),
    };
    println!(
        "{verb} {} events ({}){range}",
        report.events_total(),
        if by_kind.is_empty() {
            "none".into()
        } else {
            by_kind.join(", ")
        }
    );
    println!(
        "{verb} {} resolved incidents ({} audit entries, {} notes, {} event links)",
        report.incidents, report.audit, report.notes, report.links
    );
    println!(
        "kept: {} for their category's longer period, {} linked to an incident still kept, \
         {} above their post's watermark ({} examined)",
        report.kept_for_category,
        report.kept_for_incident,
        report.kept_above_watermark,
        report.examined
    );
    if let Some(dir) = &retention.archive_dir {
        if args.dry_run {
            println!("would archive them first in {}", dir.display());
        } else {
            println!(
                "archived first in {}: {} file(s) {}",
                dir.display(),
                report.archive_files.len(),
                report.archive_files.join(" ")
            );
        }
    }
    Ok(())
}

fn millis_rfc3339(ms: i64) -> String {
    let t = time::OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(ms);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| ms.to_string())
}
