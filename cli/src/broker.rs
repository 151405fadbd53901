//! `vigil broker --config FILE`: run the MQTT broker until SIGTERM/SIGINT.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use vigil_broker::{Broker, BrokerConfig};

use crate::Usage;

#[derive(Debug, Args)]
pub(crate) struct BrokerArgs {
    /// Config file (TOML); `vigil config default broker` prints one.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

pub(crate) fn run(args: &BrokerArgs) -> Result<()> {
    // Everything in the config is checked before any socket is bound.
    let config = BrokerConfig::load(&args.config).map_err(|e| Usage(e.to_string()))?;
    // The broker loads its own TLS material; this copy follows the same
    // files, for the certificate-expiry gauge only.
    let own = config
        .tls
        .load()
        .map_err(|e| Usage(format!("{}: {e}", args.config.display())))?
        .own_cert()
        .clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let signal = crate::signals::shutdown_signal();
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listen = {}", config.listen))?;
        let shutdown = CancellationToken::new();
        let broker = Broker::start(&config, listener, shutdown.clone()).await?;
        let counters = broker.counters();
        crate::metrics::serve(
            config.metrics.as_ref(),
            "broker",
            move |out| {
                counters.snapshot().export(out);
                counters.peer_expiry.export(out);
                out.own_certificate_expiry(own.not_after());
            },
            shutdown.clone(),
        )
        .await?;
        tokio::spawn(async move {
            signal.await;
            // Cancel first: nothing, not even a log line that cannot be
            // written, may stand between a signal and the shutdown.
            shutdown.cancel();
            tracing::info!("shutdown requested");
        });
        broker.wait().await;
        anyhow::Ok(())
    })?;
    // The embedded router's threads have no shutdown; the process exit ends
    // them. Do not wait for tasks that may still hold router sockets.
    runtime.shutdown_background();
    Ok(())
}
