//! The operations center of `vigil dev`: one replica on SQLite, or several
//! on one PostgreSQL database, with a failover shown live: every so often
//! the leading replica is stopped abruptly (as if its machine died), the
//! terminal tells how long the next one took to lead, and the stopped one
//! comes back as a standby.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use vigil_ops::metrics::Metrics;

use crate::Usage;

/// How long a stopped replica stays down before it comes back.
const DOWN_FOR: Duration = Duration::from_secs(3);
/// Longest wait for another replica to lead before saying so.
const LEAD_WAIT: Duration = Duration::from_secs(60);

/// One operations center process of the region (a task here).
pub(super) struct Replica {
    pub(super) name: String,
    config: PathBuf,
    pub(super) api: SocketAddr,
    pub(super) metrics: Arc<Metrics>,
    task: Option<JoinHandle<()>>,
}

impl Replica {
    /// Loads `config`, opens its store and starts it on `listener`.
    pub(super) async fn start(
        name: String,
        config: PathBuf,
        listener: TcpListener,
        stop: &CancellationToken,
    ) -> Result<Self> {
        let api = listener.local_addr()?;
        let mut replica = Self {
            name,
            config,
            api,
            metrics: Arc::new(Metrics::default()),
            task: None,
        };
        replica.run(listener, stop)?;
        Ok(replica)
    }

    fn run(&mut self, listener: TcpListener, stop: &CancellationToken) -> Result<()> {
        let config =
            vigil_ops::config::OpsConfig::load(&self.config).map_err(|e| Usage(e.to_string()))?;
        let tls = config.tls.load().context("ops-center certificate")?;
        let (store, engine) = vigil_ops::open(&config).context("opening the ops-center store")?;
        let (metrics, stop, name) = (self.metrics.clone(), stop.child_token(), self.name.clone());
        self.task = Some(tokio::spawn(async move {
            if let Err(e) =
                vigil_ops::run_with_api(config, store, engine, &tls, metrics, listener, stop).await
            {
                tracing::error!(replica = %name, "operations center stopped: {e}");
            }
        }));
        Ok(())
    }

    /// Stops the task without a shutdown: no lease given back, nothing
    /// flushed beyond what was committed (as a machine that dies).
    async fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        // Its last word on the matter went with it.
        self.metrics.leading.store(false, Relaxed);
    }

    /// Starts it again on its own API address.
    async fn restart(&mut self, stop: &CancellationToken) -> Result<()> {
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.api).await {
                Ok(l) => break l,
                // The old listener may take a moment to go.
                Err(_) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e).context(format!("{}: binding {}", self.name, self.api)),
            }
        };
        self.run(listener, stop)
    }
}

/// Runs the replicas until `stop`. With several and a non-zero `every`,
/// stops the leading one abruptly every `every` and brings it back after
/// [`DOWN_FOR`], printing what happens.
pub(super) async fn supervise(
    mut replicas: Vec<Replica>,
    every: Duration,
    stop: CancellationToken,
) {
    if replicas.len() > 1 && !every.is_zero() {
        while let Some(()) = sleep_or_stop(every, &stop).await {
            if let Err(e) = fail_over(&mut replicas, &stop).await {
                tracing::error!("replicas: {e:#}");
            }
        }
    } else {
        stop.cancelled().await;
    }
    for replica in &mut replicas {
        if let Some(task) = replica.task.take() {
            let _ = task.await;
        }
    }
}

/// Sleeps `d`: `None` if `stop` came first.
async fn sleep_or_stop(d: Duration, stop: &CancellationToken) -> Option<()> {
    tokio::select! {
        () = stop.cancelled() => None,
        () = tokio::time::sleep(d) => Some(()),
    }
}

async fn fail_over(replicas: &mut [Replica], stop: &CancellationToken) -> Result<()> {
    let Some(leader) = replicas
        .iter()
        .position(|r| r.metrics.leading.load(Relaxed))
    else {
        println!("[replicas] no replica leads at the moment");
        return Ok(());
    };
    println!(
        "[replicas] stopping {} (leading) abruptly, as if its machine died",
        replicas[leader].name
    );
    replicas[leader].kill().await;
    let down = Instant::now();
    let next = loop {
        if let Some(next) = replicas.iter().find(|r| r.metrics.leading.load(Relaxed)) {
            break Some(next);
        }
        if down.elapsed() > LEAD_WAIT {
            break None;
        }
        if sleep_or_stop(Duration::from_millis(50), stop)
            .await
            .is_none()
        {
            return Ok(());
        }
    };
    match next {
        Some(next) => println!(
            "[replicas] {} leads {:.1} s later (gRPC {}); actions on any replica go to it",
            next.name,
            down.elapsed().as_secs_f64(),
            next.api
        ),
        None => println!(
            "[replicas] no replica took over within {} s",
            LEAD_WAIT.as_secs()
        ),
    }
    if sleep_or_stop(DOWN_FOR, stop).await.is_none() {
        return Ok(());
    }
    replicas[leader].restart(stop).await?;
    println!(
        "[replicas] {} is back (gRPC {}), standing by",
        replicas[leader].name, replicas[leader].api
    );
    Ok(())
}
