//! `vigil ops --config FILE`: run the operations center.

use std::{path::PathBuf, sync::Arc};

use anyhow::{Context, Result};
use clap::Args;
use tokio_util::sync::CancellationToken;
use vigil_ops::{config::OpsConfig, metrics::Metrics};
use vigil_pki::Role;

use crate::Usage;

#[derive(Debug, Args)]
pub(crate) struct OpsArgs {
    /// The ops-center config (TOML); `vigil config default ops` prints one.
    #[arg(long)]
    config: PathBuf,
    /// Copy the SQLite store in this data folder (its `ops.db`) into the
    /// PostgreSQL database of `[store] url`, then exit. The database must be
    /// new, and no operations center may be running on it.
    #[arg(long, value_name = "DATA_DIR")]
    import_sqlite: Option<PathBuf>,
}

pub(crate) fn run(args: &OpsArgs) -> Result<()> {
    // Everything that can be wrong with the config is found here, before
    // any file is created or any connection made.
    let cfg = OpsConfig::load(&args.config).map_err(|e| Usage(e.to_string()))?;
    let material = cfg
        .tls
        .load()
        .map_err(|e| Usage(format!("{}: {e}", args.config.display())))?;
    let role = material.own_peer().role;
    if role != Role::Ops {
        return Err(Usage(format!(
            "{}: tls.cert is a {role} certificate; the operations center needs an ops certificate",
            args.config.display()
        ))
        .into());
    }
    if let Some(from) = &args.import_sqlite {
        return import_sqlite(&cfg, &args.config, from);
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
