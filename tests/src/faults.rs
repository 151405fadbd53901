//! Tools for the fault suite: a TCP fault proxy, tolerant simulated panels,
//! seeded randomness, child processes that can be `kill -9`ed, and the
//! Jepsen-style accounting every fault scenario ends with.
//!
//! The accounting compares what the panels believe (each message the
//! gateway answered with ACK) with what the operations center stored. A
//! panel message is identified by its DC-09 account, sequence number and
//! data block; every scenario gives each panel its own account and keeps its
//! sequence numbers below the 9999 wrap, so that triple names one message.
//!
//! Environment:
//! - `VIGIL_FAULT_SEED=N` replays a run: every random choice of a scenario
//!   (fault points, durations, panel scenarios) comes from this seed. Each
//!   run prints the seed it used.
//! - `VIGIL_FAULT_LONG=1` runs more iterations and more messages (minutes
//!   instead of seconds).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use rand::{SeedableRng, rngs::StdRng};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, tcp::OwnedReadHalf, tcp::OwnedWriteHalf},
    sync::watch,
};
use tokio_util::sync::CancellationToken;
use vigil_dc09::Token;
use vigil_ops::store::Store;
use vigil_proto::v1::event;
use vigil_sim::panel::{self as simulator, Delivery, PanelConfig, Protocol, Summary, Transport};

/// True when `VIGIL_FAULT_LONG` asks for long runs.
pub fn long_run() -> bool {
    std::env::var("VIGIL_FAULT_LONG").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// `short` in CI, `long` when [`long_run`].
pub fn iterations(short: u64, long: u64) -> u64 {
    if long_run() { long } else { short }
}

/// The seed of this run (from `VIGIL_FAULT_SEED`, else random), printed
/// with the scenario's name so a failure can be replayed.
pub fn seeded_rng(scenario: &str) -> (u64, StdRng) {
    let seed = match std::env::var("VIGIL_FAULT_SEED") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("VIGIL_FAULT_SEED={text:?} is not an unsigned integer")),
        Err(_) => rand::random(),
    };
    eprintln!(
        "fault scenario {scenario}: seed {seed} (replay with VIGIL_FAULT_SEED={seed}){}",
        if long_run() { ", long run" } else { "" }
    );
    (seed, StdRng::seed_from_u64(seed))
}

/// Polls `check` every 50 ms until it is true; fails the test after `limit`.
pub async fn eventually_within(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// Panels

/// `[[dc09.accounts]]` tables for `accounts` (the harness already configures
/// `1234`), to append to a gateway config.
pub fn accounts_toml(accounts: &[&str]) -> String {
    accounts
        .iter()
        .filter(|a| **a != "1234")
        .map(|a| format!("\n[[dc09.accounts]]\naccount = \"{a}\"\n"))
        .collect()
}

/// A panel that keeps trying through faults: short answer timeout, quick
/// and many retransmissions, so an event is given up only after several
/// seconds of trouble. Sends the mixed scenario (alarms, restores,
/// troubles, openings, test reports and `NULL` link tests).
pub fn fault_panel(
    dc09: SocketAddr,
    account: &str,
    count: u64,
    interval: Duration,
    seed: u64,
) -> PanelConfig {
    assert!(count < 9000, "sequence numbers must not wrap within a run");
    let mut config = PanelConfig::new(dc09.to_string(), account);
    config.count = Some(count);
    config.interval = interval;
    config.ack_timeout = Duration::from_secs(2);
    config.retries = 15;
    config.retry_backoff = Duration::from_millis(150);
    config.seed = Some(seed);
    config
}

/// Variety across a fleet: panel `i` uses TCP or UDP, SIA or Contact ID.
pub fn vary(mut config: PanelConfig, i: usize) -> PanelConfig {
    config.protocol = if i.is_multiple_of(2) {
        Protocol::Sia
    } else {
        Protocol::Cid
    };
    config.transport = if i % 3 == 2 {
        Transport::Udp
    } else {
        Transport::Tcp
    };
    config
}

/// A random time in `range` milliseconds (a panel's interval, a pause).
pub fn ms(rng: &mut impl rand::Rng, range: std::ops::Range<u64>) -> Duration {
    Duration::from_millis(rng.random_range(range))
}

/// Starts one [`fault_panel`] per account against `dc09`, each sending
/// `count` messages at an interval drawn from `interval_ms`, varied
/// ([`vary`]) from fleet index `first` on; `adjust(i, config)` may change
/// panel `i` before it starts.
pub fn spawn_fleet(
    dc09: SocketAddr,
    accounts: &[&str],
    count: u64,
    interval_ms: std::ops::Range<u64>,
    first: usize,
    rng: &mut impl rand::Rng,
    adjust: impl Fn(usize, &mut PanelConfig),
) -> Vec<tokio::task::JoinHandle<Summary>> {
    accounts
        .iter()
        .enumerate()
        .map(|(i, account)| {
            let interval = ms(rng, interval_ms.clone());
            let mut config = fault_panel(dc09, account, count, interval, rng.random());
            adjust(i, &mut config);
            spawn_panel(vary(config, first + i))
        })
        .collect()
}

/// Starts a panel; its task ends with its summary.
pub fn spawn_panel(config: PanelConfig) -> tokio::task::JoinHandle<Summary> {
    tokio::spawn(async move {
        simulator::run(config, CancellationToken::new())
            .await
            .expect("panel configuration")
    })
}

/// Waits (bounded) for panels started with [`spawn_panel`].
pub async fn join_panels(panels: Vec<tokio::task::JoinHandle<Summary>>) -> Vec<Summary> {
    let mut out = Vec::with_capacity(panels.len());
    for panel in panels {
        let summary = tokio::time::timeout(Duration::from_secs(300), panel)
            .await
            .expect("panel ends in time")
            .expect("panel task");
        eprintln!("  panel: {summary}");
        out.push(summary);
    }
    out
}

// ---------------------------------------------------------------------------
// Accounting

/// One panel message: DC-09 account, sequence number, data block payload.
type MessageId = (String, u16, String);

/// What happened to the messages of a run, Jepsen style.
#[derive(Debug, Default, Clone)]
pub struct Accounting {
    pub scenario: String,
    pub seed: u64,
    /// Alarm messages the panels tried to deliver (`NULL` link tests are
    /// not events and are left out).
    pub attempted: u64,
    /// Of those, answered ACK by the gateway.
    pub acked: u64,
    /// Of those, given up by the panel (NAKs, timeouts).
    pub not_acked: u64,
    /// Panel messages found in the operations center's store.
    pub stored: u64,
    /// ACKed and not stored: must be 0.
    pub lost: u64,
    /// Stored more than once (one panel message under several post seqs),
    /// plus duplicate rows for one `(post, seq)`: must be 0.
    pub duplicated: u64,
    /// Transmissions the panels repeated (after a timeout, a closed
    /// connection or a NAK): each one a chance to store a message twice.
    pub retransmissions: u64,
    /// Given up by the panel yet stored (the ACK was lost on the way, or
    /// the panel gave up while the gateway had it): allowed.
    pub unacked_stored: u64,
    /// Stored alarms no panel of the run sent: must be 0.
    pub unknown: u64,
    /// Stored events that are not alarms (health events of the gateway).
    pub other_events: u64,
    /// Posts whose stored seqs are not exactly `1..=last` or whose
    /// durable-through mark lags: must be empty.
    pub seq_problems: Vec<String>,
    /// A few of the lost messages, for the report.
    pub lost_examples: Vec<String>,
    /// A few of the duplicated messages, for the report.
    pub duplicate_examples: Vec<String>,
    /// Free-form figures of the scenario (faults injected, NAKs, ...).
    pub notes: Vec<String>,
}

impl Accounting {
    pub fn new(scenario: &str, seed: u64) -> Self {
        Self {
            scenario: scenario.to_owned(),
            seed,
            ..Self::default()
        }
    }

    /// Adds a line to the report.
    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    /// Accounts for `post`: the panels that reported to its gateway and the
    /// store of the (stopped) operations center. `last_seq`, when known, is
    /// the gateway outbox's last seq: the store must hold exactly `1..=it`.
    pub fn add_post(
        &mut self,
        store: &dyn Store,
        post: &str,
        panels: &[Summary],
        last_seq: Option<u64>,
    ) {
        let mut sent: BTreeMap<MessageId, bool> = BTreeMap::new();
        for summary in panels {
            self.retransmissions += summary.counts.retries;
            for outcome in &summary.outcomes {
                if outcome.id.token == Token::Null {
                    continue;
                }
                let id = (
                    outcome.id.account.clone(),
                    outcome.id.seq,
                    outcome.id.payload.clone(),
                );
                let acked = outcome.delivery == Delivery::Acked;
                assert!(
                    sent.insert(id.clone(), acked).is_none(),
                    "panel message {id:?} sent twice in one run: the accounting cannot tell them apart"
                );
                self.attempted += 1;
                if acked {
                    self.acked += 1;
                } else {
                    self.not_acked += 1;
                }
            }
        }

        let rows = store.events(post, 0, usize::MAX >> 1).expect("read store");
        let mut seqs = Vec::with_capacity(rows.len());
        let mut seen: BTreeMap<MessageId, Vec<u64>> = BTreeMap::new();
        for row in rows {
            let event = row.event.expect("stored row has an event");
            seqs.push(event.seq);
            match &event.body {
                Some(event::Body::Alarm(alarm)) => {
                    let payload = alarm
                        .raw_data
                        .split_once('|')
                        .map_or(alarm.raw_data.as_str(), |(_, p)| p);
                    let id = (
                        alarm.account.clone(),
                        u16::try_from(alarm.dc09_sequence).unwrap_or(u16::MAX),
                        payload.to_owned(),
                    );
                    seen.entry(id).or_default().push(event.seq);
                }
                _ => self.other_events += 1,
            }
        }

        for (id, post_seqs) in &seen {
            match sent.get(id) {
                None => self.unknown += 1,
                Some(acked) => {
                    self.stored += 1;
                    if !acked {
                        self.unacked_stored += 1;
                    }
                }
            }
            if post_seqs.len() > 1 {
                self.duplicated += (post_seqs.len() - 1) as u64;
                if self.duplicate_examples.len() < 5 {
                    self.duplicate_examples
                        .push(format!("{post}: {id:?} stored as seqs {post_seqs:?}"));
                }
            }
        }
        for (id, acked) in &sent {
            if *acked && !seen.contains_key(id) {
                self.lost += 1;
                if self.lost_examples.len() < 5 {
                    self.lost_examples.push(format!("{post}: {id:?}"));
                }
            }
        }

        // The outbox numbers events gap-free; the store holds each once.
        let distinct: BTreeSet<u64> = seqs.iter().copied().collect();
        let rows_duplicated = (seqs.len() - distinct.len()) as u64;
        if rows_duplicated > 0 {
            self.duplicated += rows_duplicated;
            self.duplicate_examples.push(format!(
                "{post}: {rows_duplicated} duplicate (post, seq) rows"
            ));
        }
        let max = distinct.iter().next_back().copied().unwrap_or(0);
        let expected_last = last_seq.unwrap_or(max);
        if distinct.len() as u64 != expected_last || max != expected_last {
            self.seq_problems.push(format!(
                "{post}: {} distinct seqs stored, highest {max}, gateway's last {expected_last}",
                distinct.len()
            ));
        }
        let durable = store.durable_through(post).expect("durable_through");
        if durable != expected_last {
            self.seq_problems.push(format!(
                "{post}: durable_through {durable}, expected {expected_last}"
            ));
        }
    }

    /// Prints the report and fails the test unless nothing was lost or
    /// duplicated (and the run did exercise something).
    pub fn check(&self) {
        eprintln!("{self}");
        assert!(
            self.acked > 0,
            "no message was ACKed: the run proves nothing"
        );
        assert_eq!(
            self.lost, 0,
            "ACKed messages lost: {:?}",
            self.lost_examples
        );
        assert_eq!(
            self.duplicated, 0,
            "messages stored twice: {:?}",
            self.duplicate_examples
        );
        assert_eq!(self.unknown, 0, "stored alarms that no panel sent");
        assert!(self.seq_problems.is_empty(), "{:?}", self.seq_problems);
    }
}

impl fmt::Display for Accounting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "==== fault accounting: {} (seed {}) ====",
            self.scenario, self.seed
        )?;
        for note in &self.notes {
            writeln!(f, "  {note}")?;
        }
        let rows = [
            ("attempted", self.attempted),
            ("acked by gateway", self.acked),
            ("not acked (panel gave up)", self.not_acked),
            ("panel retransmissions", self.retransmissions),
            ("stored at ops center", self.stored),
            ("LOST (acked, not stored)", self.lost),
            ("DUPLICATED", self.duplicated),
            ("unacked but stored (ok)", self.unacked_stored),
            ("stored, sent by nobody", self.unknown),
            ("other stored events (health)", self.other_events),
        ];
        for (name, value) in rows {
            writeln!(f, "  {name:<30} {value:>7}")?;
        }
        if self.seq_problems.is_empty() {
            write!(
                f,
                "  post seqs gap-free, each stored once, receipted through the last"
            )
        } else {
            write!(f, "  SEQ PROBLEMS: {:?}", self.seq_problems)
        }
    }
}

// ---------------------------------------------------------------------------
// Fault proxy

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMode {
    /// Forward both ways.
    Pass,
    /// Close every new connection as soon as it is accepted; open ones go
    /// on (call [`FaultProxy::cut`] too to drop them).
    Refuse,
    /// Stall: accept connections but move no byte either way (nor connect
    /// upstream) until the mode changes, like a link that silently drops
    /// every packet. Endpoints notice only through their own timeouts.
    Blackhole,
}

#[derive(Debug, Clone, Copy)]
struct LinkState {
    mode: LinkMode,
    /// Bumped by [`FaultProxy::cut`]: connections of older epochs close.
    epoch: u64,
}

/// A TCP proxy on `127.0.0.1:0` in front of `upstream`, with faults on
/// command. Stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<watch::Sender<LinkState>>,
    stop: CancellationToken,
    open: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (state, _) = watch::channel(LinkState {
            mode: LinkMode::Pass,
            epoch: 0,
        });
        let proxy = Self {
            addr,
            state: Arc::new(state),
            stop: CancellationToken::new(),
            open: Arc::new(AtomicU64::new(0)),
            accepted: Arc::new(AtomicU64::new(0)),
        };
        tokio::spawn(accept_loop(
            listener,
            upstream,
            proxy.state.clone(),
            proxy.stop.clone(),
            proxy.open.clone(),
            proxy.accepted.clone(),
        ));
        proxy
    }

    /// Where clients connect instead of `upstream`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set(&self, mode: LinkMode) {
        self.state.send_modify(|s| s.mode = mode);
    }

    pub fn mode(&self) -> LinkMode {
        self.state.borrow().mode
    }

    /// Closes every open connection at once (both sides see the close).
    pub fn cut(&self) {
        self.state.send_modify(|s| s.epoch += 1);
    }

    /// Connections forwarding now.
    pub fn open_connections(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections accepted so far (refused ones included).
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    state: Arc<watch::Sender<LinkState>>,
    stop: CancellationToken,
    open: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
) {
    loop {
        let socket = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((socket, _)) => socket,
                Err(e) => {
                    eprintln!("fault proxy: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        accepted.fetch_add(1, Ordering::Relaxed);
        let now = *state.borrow();
        if now.mode == LinkMode::Refuse {
            drop(socket);
            continue;
        }
        tokio::spawn(forward(
            socket,
            upstream,
            state.subscribe(),
            now.epoch,
            stop.clone(),
            open.clone(),
        ));
    }
}

/// Decrements the open-connection count when a connection ends.
struct OpenGuard(Arc<AtomicU64>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn forward(
    client: TcpStream,
    upstream: SocketAddr,
    state: watch::Receiver<LinkState>,
    epoch: u64,
    stop: CancellationToken,
    open: Arc<AtomicU64>,
) {
    let cut = {
        let mut state = state.clone();
        async move {
            let _ = state.wait_for(|s| s.epoch != epoch).await;
        }
    };
    let session = async {
        // A blackholed link does not even let the connect through.
        if !flowing(&mut state.clone()).await {
            return;
        }
        if state.borrow().mode == LinkMode::Refuse {
            return;
        }
        let Ok(Ok(server)) =
            tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(upstream)).await
        else {
            return;
        };
        open.fetch_add(1, Ordering::Relaxed);
        let _guard = OpenGuard(open.clone());
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (cr, cw) = client.into_split();
        let (sr, sw) = server.into_split();
        tokio::select! {
            _ = pump(cr, sw, state.clone()) => {}
            _ = pump(sr, cw, state.clone()) => {}
        }
    };
    tokio::select! {
        _ = stop.cancelled() => {}
        () = cut => {}
        () = session => {}
    }
}

/// Waits until the link is not blackholed; false if the proxy is gone.
async fn flowing(state: &mut watch::Receiver<LinkState>) -> bool {
    state
        .wait_for(|s| s.mode != LinkMode::Blackhole)
        .await
        .is_ok()
}

/// Copies one direction, holding bytes back while the link is blackholed.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut state: watch::Receiver<LinkState>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !flowing(&mut state).await {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !flowing(&mut state).await {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// Child processes

/// A `vigil` daemon run as a child process, killed (SIGKILL) and reaped
/// when dropped, however the test ends.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
}

impl Daemon {
    /// Runs `bin SUBCOMMAND --config CONFIG` with warnings on stderr.
    pub fn spawn(bin: &Path, subcommand: &str, config: &Path) -> Self {
        let child = Command::new(bin)
            .arg(subcommand)
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {} {subcommand}: {e}", bin.display()));
        Self { child }
    }

    /// `kill -9`, then reap.
    pub fn kill9(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `(last_seq, unreceipted events)` of a gateway's outbox, read from its
/// file (works while the gateway runs: WAL readers do not block it).
pub fn outbox_on_disk(data_dir: &Path) -> Option<(u64, u64)> {
    let conn = rusqlite::Connection::open_with_flags(
        data_dir.join("outbox.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .ok()?;
    let depth: i64 = conn
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .ok()?;
    let last: Option<i64> = conn
        .query_row("SELECT value FROM meta WHERE key = 'last_seq'", [], |r| {
            r.get(0)
        })
        .ok();
    Some((
        u64::try_from(last.unwrap_or(0)).ok()?,
        u64::try_from(depth).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = socket.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, text: &[u8]) -> std::io::Result<Vec<u8>> {
        stream.write_all(text).await?;
        let mut buf = vec![0u8; text.len()];
        stream.read_exact(&mut buf).await?;
        Ok(buf)
    }

    const LIMIT: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn passes_cuts_refuses_and_stalls() {
        let proxy = FaultProxy::start(echo().await).await;
        let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut a, b"hello").await.unwrap(), b"hello");

        // Cut: the open connection ends.
        proxy.cut();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(LIMIT, a.read(&mut buf))
            .await
            .expect("closed in time");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");

        // Refuse: a new connection is closed at once.
        proxy.set(LinkMode::Refuse);
        let mut b = TcpStream::connect(proxy.addr()).await.unwrap();
        let r = tokio::time::timeout(LIMIT, round_trip(&mut b, b"x"))
            .await
            .expect("refused in time");
        assert!(r.is_err(), "{r:?}");

        // Blackhole: bytes are held, then delivered when the link is back.
        proxy.set(LinkMode::Pass);
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut c, b"one").await.unwrap(), b"one");
        proxy.set(LinkMode::Blackhole);
        c.write_all(b"two").await.unwrap();
        let mut buf = [0u8; 3];
        assert!(
            tokio::time::timeout(Duration::from_millis(300), c.read_exact(&mut buf))
                .await
                .is_err(),
            "nothing crosses a blackhole"
        );
        proxy.set(LinkMode::Pass);
        tokio::time::timeout(LIMIT, c.read_exact(&mut buf))
            .await
            .expect("delivered once the link is back")
            .unwrap();
        assert_eq!(&buf, b"two");
        assert_eq!(proxy.open_connections(), 1);
    }
}

// ---------------------------------------------------------------------------
// A small disk to fill

/// A tmpfs mounted for the length of a test; unmounted when dropped.
#[derive(Debug)]
pub struct Tmpfs {
    dir: std::path::PathBuf,
    bytes: usize,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` on `dir`, or says why not (not root, no
    /// CAP_SYS_ADMIN): callers then print `SKIPPED …` and return.
    pub fn mount(dir: &std::path::Path, bytes: usize) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={}k,mode=0700", bytes >> 10),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if out.status.success() {
            Ok(Self {
                dir: dir.to_owned(),
                bytes,
            })
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }

    /// Fills the tmpfs with a ballast file until it is full; returns the
    /// file (remove it to free the disk).
    pub fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.dir.join("ballast");
        let mut file = std::fs::File::create(&path).expect("ballast");
        let chunk = vec![0u8; 16 * 1024];
        // Never more than twice the tmpfs: if the mount were not what we
        // think, this must not fill a real disk.
        let mut written = 0usize;
        while file
            .write_all(&chunk)
            .and_then(|()| file.sync_all())
            .is_ok()
        {
            written += chunk.len();
            assert!(
                written < 2 * self.bytes,
                "the tmpfs did not fill after {written} bytes"
            );
        }
        // Whatever is left is smaller than a chunk; take it byte-wise too.
        let small = [0u8; 512];
        while file
            .write_all(&small)
            .and_then(|()| file.sync_all())
            .is_ok()
        {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}
