//! `vigil gateway --config FILE`: run a post's gateway until SIGTERM/SIGINT.

use std::{path::PathBuf, sync::Arc};

use anyhow::{Context, Result};
use clap::Args;
use tokio_util::sync::CancellationToken;
use vigil_gateway::{GatewayConfig, Listeners, Metrics};
use vigil_pki::Role;

use crate::Usage;

#[derive(Debug, Args)]
pub(crate) struct GatewayArgs {
    /// Config file (TOML); `vigil config default gateway` prints one.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

pub(crate) fn run(args: &GatewayArgs) -> Result<()> {
    // Everything in the config is checked before any socket is bound.
    let config = GatewayConfig::load(&args.config).map_err(|e| Usage(e.to_string()))?;
    let tls = config
        .tls
        .load()
        .map_err(|e| Usage(format!("{}: {e}", args.config.display())))?;
    let role = tls.own_peer().role;
    if role != Role::Post {
        return Err(Usage(format!(
            "{}: tls.cert is a {role} certificate; a gateway needs a post certificate",
            args.config.display()
        ))
        .into());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let signal = crate::signals::shutdown_signal();
        let listeners = Listeners::bind(&config)
            .await
            .with_context(|| format!("dc09.listen = {}", config.dc09.listen))?;
        let shutdown = CancellationToken::new();
        let metrics = Arc::new(Metrics::default());
        crate::metrics::serve(
            config.metrics.as_ref(),
            "gateway",
            {
                let metrics = metrics.clone();
                let own = tls.own_cert().clone();
                move |out| {
                    metrics.export(out);
                    out.own_certificate_expiry(own.not_after());
                }
            },
            shutdown.clone(),
        )
        .await?;
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                signal.await;
                // Cancel first: nothing, not even a log line that cannot be
                // written, may stand between a signal and the shutdown.
                shutdown.cancel();
                tracing::info!("shutdown requested");
            }
        });
        vigil_gateway::run(config, tls, listeners, metrics, shutdown).await?;
        anyhow::Ok(())
    })
}
