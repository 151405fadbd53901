//! Tools for the abuse suite: a flood of hostile sockets (idle, or stopped
//! halfway through their first message) from many loopback addresses, kept
//! up while valid clients do their exchange, and the figures each run
//! prints (valid-client latency under attack against a baseline taken in
//! the same run).
//!
//! Linux routes all of 127.0.0.0/8 to loopback, so attackers bind
//! 127.0.0.2 and up: the per-source caps see many sources, and the valid
//! client (127.0.0.1) is one more.
//!
//! Environment:
//! - `VIGIL_ABUSE_SEED=N` replays a run (which sockets are idle or partial,
//!   from which source, how long an attacker waits before coming back).
//! - `VIGIL_ABUSE_LONG=1` runs ten times as many valid exchanges, with the
//!   attack held all along.
//!
//! Nothing here is asserted on time: latencies are printed, not checked.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::{
    io::AsyncReadExt,
    io::AsyncWriteExt,
    net::{TcpSocket, TcpStream},
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// True when `VIGIL_ABUSE_LONG` asks for a long run.
pub fn long_run() -> bool {
    std::env::var("VIGIL_ABUSE_LONG").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The seed of this run (`VIGIL_ABUSE_SEED`, else random), printed.
pub fn seeded_rng(listener: &str) -> (u64, StdRng) {
    let seed = std::env::var("VIGIL_ABUSE_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(rand::random);
    println!("abuse {listener}: seed {seed} (VIGIL_ABUSE_SEED={seed} replays it)");
    (seed, StdRng::seed_from_u64(seed))
}

/// The shape of a flood.
#[derive(Debug, Clone)]
pub struct Flood {
    /// Sockets that connect and send nothing.
    pub idle: usize,
    /// Sockets that send the first bytes of a message and stop (half a TLS
    /// ClientHello, half a frame, half an HTTP header).
    pub partial: usize,
    /// What a partial socket sends.
    pub partial_bytes: Vec<u8>,
    /// Attackers come from 127.0.0.2 to 127.0.0.(1 + sources).
    pub sources: u8,
}

/// The bytes a half-done TLS handshake sends: a record header announcing a
/// ClientHello, and the first byte of it.
pub const HALF_CLIENT_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01];

/// A flood in progress: each attacker holds its socket until the server
/// closes it, then comes back after a short, seeded pause.
#[derive(Debug)]
pub struct Attack {
    stop: CancellationToken,
    tracker: TaskTracker,
    /// Connections opened (first ones and comebacks).
    pub opened: Arc<AtomicU64>,
    /// Of those, closed by the server.
    pub closed_by_server: Arc<AtomicU64>,
}

impl Attack {
    /// Starts `flood` against `target`; returns once every attacker made
    /// its first connection attempt.
    pub async fn start(target: SocketAddr, flood: &Flood, rng: &mut StdRng) -> Self {
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let opened = Arc::new(AtomicU64::new(0));
        let closed_by_server = Arc::new(AtomicU64::new(0));
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(64);
        for i in 0..flood.idle + flood.partial {
            let source = SocketAddr::from(([127, 0, 0, 2 + rng.random_range(0..flood.sources)], 0));
            let bytes = if i < flood.idle {
                Vec::new()
            } else {
                flood.partial_bytes.clone()
            };
            let comeback = Duration::from_millis(rng.random_range(50..250));
            let (stop, opened, closed, ready) = (
                stop.clone(),
                opened.clone(),
                closed_by_server.clone(),
                ready_tx.clone(),
            );
            tracker.spawn(async move {
                let mut ready = Some(ready);
                loop {
                    let conn = connect_from(source, target).await;
                    opened.fetch_add(1, Ordering::Relaxed);
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(()).await;
                    }
                    if let Ok(mut stream) = conn {
                        if !bytes.is_empty() {
                            let _ = stream.write_all(&bytes).await;
                        }
                        let mut sink = [0u8; 512];
                        // Hold until the server closes (skipping any alert
                        // or error page it sends first) or the attack ends.
                        let held = async {
                            loop {
                                match stream.read(&mut sink).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(_) => {}
                                }
                            }
                        };
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = held => { closed.fetch_add(1, Ordering::Relaxed); }
                        }
                    }
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(comeback) => {}
                    }
                }
            });
        }
        drop(ready_tx);
        // Every attacker reports once, then drops its sender.
        while ready_rx.recv().await.is_some() {}
        Self {
            stop,
            tracker,
            opened,
            closed_by_server,
        }
    }

    /// Ends the flood and closes every attacker's socket.
    pub async fn stop(self) -> (u64, u64) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        (
            self.opened.load(Ordering::Relaxed),
            self.closed_by_server.load(Ordering::Relaxed),
        )
    }
}

async fn connect_from(source: SocketAddr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(source)?;
    socket.connect(target).await
}

/// Latencies of valid exchanges.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    pub ok: Vec<Duration>,
    pub failed: Vec<String>,
    /// Attempts that failed before their exchange succeeded.
    pub retried: Vec<String>,
}

impl Latencies {
    fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.ok.clone();
        sorted.sort();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    pub fn p50(&self) -> Duration {
        self.quantile(0.5)
    }

    pub fn p99(&self) -> Duration {
        self.quantile(0.99)
    }
}

/// Attempts a valid client makes at one exchange.
const ATTEMPTS: usize = 3;

/// Runs `exchange` `n` times in a row, timing each; every attempt must
/// finish within `limit` (a hang is a failure, recorded, not a timing
/// figure).
pub async fn measure<F, Fut>(n: usize, limit: Duration, mut exchange: F) -> Latencies
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut out = Latencies::default();
    for i in 0..n {
        let start = Instant::now();
        // A valid client retries a connection that was reset, as a panel
        // or a camera does; the latency counts from its first attempt. A
        // connection still in its handshake when the attackers' sockets
        // churn past it can be the oldest unauthenticated one and be shed
        // (on a starved machine that happens); every retry is reported.
        let mut errors = Vec::new();
        for _ in 0..ATTEMPTS {
            match tokio::time::timeout(limit, exchange(i)).await {
                Ok(Ok(())) => break,
                Ok(Err(e)) => errors.push(e),
                Err(_) => errors.push(format!("no answer within {limit:?}")),
            }
        }
        if errors.len() == ATTEMPTS {
            out.failed.push(errors.join("; "));
        } else {
            out.ok.push(start.elapsed());
            out.retried.extend(errors);
        }
    }
    out
}

/// One line of figures, in the fault suite's style.
pub fn report(
    listener: &str,
    flood: &Flood,
    baseline: &Latencies,
    attacked: &Latencies,
    attack: (u64, u64),
    server: &str,
) {
    let ratio = |a: Duration, b: Duration| {
        if b.is_zero() {
            0.0
        } else {
            a.as_secs_f64() / b.as_secs_f64()
        }
    };
    println!(
        "abuse {listener}: flood idle={} partial={} sources={} opened={} closed_by_server={} | \
         baseline ok={}/{} p50={:.1?} p99={:.1?} | under attack ok={}/{} p50={:.1?} p99={:.1?} \
         retried={} | p99 ratio {:.2}x | server {server}",
        flood.idle,
        flood.partial,
        flood.sources,
        attack.0,
        attack.1,
        baseline.ok.len(),
        baseline.ok.len() + baseline.failed.len(),
        baseline.p50(),
        baseline.p99(),
        attacked.ok.len(),
        attacked.ok.len() + attacked.failed.len(),
        attacked.p50(),
        attacked.p99(),
        attacked.retried.len(),
        ratio(attacked.p99(), baseline.p99()),
    );
}

/// A plain HTTP/1.1 request on a new connection; the status code back.
pub async fn http_status(addr: SocketAddr, request: &str) -> Result<u16, String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&answer);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {:?}", text.get(..40)))
}
