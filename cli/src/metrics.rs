//! The `[metrics]` endpoint of every daemon: bound by the binary like every
//! other listener, served by `vigil-telemetry`.

use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use vigil_telemetry::{Exposition, MetricsConfig};

/// Binds `config`'s address (when the table is present) and serves what
/// `export` adds, with `vigil_build_info` for `part`, until `shutdown`.
pub(crate) async fn serve(
    config: Option<&MetricsConfig>,
    part: &'static str,
    export: impl Fn(&mut Exposition) + Send + Sync + 'static,
    shutdown: CancellationToken,
) -> Result<()> {
    let Some(config) = config else {
        return Ok(());
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("metrics.listen = {}", config.listen))?;
    let render = Arc::new(move || {
        let mut out = Exposition::new();
        out.build_info(part, env!("CARGO_PKG_VERSION"));
        export(&mut out);
        out.render()
    });
    tokio::spawn(vigil_telemetry::serve(listener, render, shutdown));
    Ok(())
}
