//! The DC-09 receiver: TCP and UDP on one port.
//!
//! Every frame is answered only after its fate is certain: `ACK` once its
//! events are durable in the outbox (a retransmission that is already stored
//! is ACKed again), `NAK` when it cannot be accepted now (stale or future
//! timestamp, unknown account, undecryptable, outbox full — the panel keeps
//! the alarm and retries), `DUH` for what we do not support, and nothing for
//! frames damaged in transit (bad CRC or length), which are only counted.
//!
//! TCP connections come through the shared listener plumbing
//! (`vigil_net::Front`): each is its own task, capped in total and per
//! source address, and must send a valid frame (good CRC, configured
//! account, decryptable) within the pre-authentication deadline, a few
//! seconds; after that the idle timeout applies. At the total cap the
//! oldest connection that never sent a valid frame is dropped for the
//! newcomer, so a flood of silent sockets cannot lock panels out. Frames
//! are bounded in size. Each UDP datagram is handled in its own task too
//! (bounded), so a commit in progress does not hold up other panels'
//! datagrams.
//!
//! An account with `require_timestamp` gets NAK for a clear-text frame
//! without a timestamp, so its replay window always applies (encrypted
//! frames always carry one).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use time::OffsetDateTime;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::Semaphore,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, debug, info, info_span, warn};
use vigil_net::{Conn, Front};

use vigil_dc09::{
    DecodeError, Framer, KeyLookup, Message, Reply, Token, ack_for, check_window, decode, duh_for,
    encode, nak,
};
use vigil_telemetry::log_limit::{LogLimiter, PEER_ERROR_INTERVAL};

use crate::{
    config::Account,
    outbox::{Outbox, OutboxError},
    signals::events_from_message,
    supervision::Supervisor,
};

/// UDP datagrams being handled at once; beyond it a datagram is dropped
/// (and counted): the panel gets no answer and retries, as it would after
/// a lost datagram.
const MAX_UDP_IN_FLIGHT: usize = 256;
/// Largest UDP datagram read.
const UDP_BUFFER: usize = 8 * 1024;
/// Pause after a UDP receive error before receiving again.
const UDP_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Counters of the receiver.
#[derive(Debug, Default)]
pub struct Dc09Metrics {
    /// From a frame in hand to its ACK ready: decode, checks and the
    /// outbox's durable append (fsync, group commit) — what a panel waits.
    pub ack_latency: vigil_telemetry::Histogram,
    pub frames: AtomicU64,
    pub acked: AtomicU64,
    pub duplicates: AtomicU64,
    pub events_stored: AtomicU64,
    pub nak_stale: AtomicU64,
    pub nak_unknown_account: AtomicU64,
    pub nak_undecryptable: AtomicU64,
    pub nak_storage: AtomicU64,
    /// Clear-text frames without a timestamp from an account that
    /// requires one.
    pub nak_untimed: AtomicU64,
    pub duh: AtomicU64,
    pub dropped_damaged: AtomicU64,
    pub dropped_garbage_bytes: AtomicU64,
    pub dropped_udp_busy: AtomicU64,
    /// The TCP listener's counters: connections, caps, shedding, deadlines.
    pub listener: Arc<vigil_net::Stats>,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Limits of the listeners.
#[derive(Debug, Clone)]
pub struct ReceiverLimits {
    pub max_connections: usize,
    /// TCP connections at once from one IP address.
    pub max_connections_per_source: usize,
    /// A TCP connection must send a valid frame within this long.
    pub preauth_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_frame_bytes: usize,
}

impl ReceiverLimits {
    /// The TCP listener's limits for `vigil_net`.
    pub fn tcp(&self) -> vigil_net::Limits {
        vigil_net::Limits {
            max_connections: self.max_connections,
            max_per_source: self.max_connections_per_source,
            preauth_deadline: self.preauth_timeout,
            idle_timeout: Some(self.idle_timeout),
            // A frame in hand is stored and answered; that takes a commit.
            grace: Duration::from_secs(5),
        }
    }
}

/// The answer to one frame, and whether the frame proved its sender.
#[derive(Debug)]
pub struct Answer {
    /// What to send back (`None`: stay silent).
    pub reply: Option<Vec<u8>>,
    /// The frame was whole and for a configured account (whatever the
    /// answer): the connection is a panel's.
    pub valid: bool,
}

/// Turns frames into answers; shared by every connection.
#[derive(Debug)]
pub struct Receiver {
    accounts: HashMap<String, Account>,
    outbox: Outbox,
    supervisor: Arc<Supervisor>,
    metrics: Arc<Dc09Metrics>,
}

impl Receiver {
    pub fn new(
        accounts: Vec<Account>,
        outbox: Outbox,
        supervisor: Arc<Supervisor>,
        metrics: Arc<Dc09Metrics>,
    ) -> Self {
        Self {
            accounts: accounts
                .into_iter()
                .map(|a| (a.account.to_ascii_uppercase(), a))
                .collect(),
            outbox,
            supervisor,
            metrics,
        }
    }

    fn account(&self, account: &str) -> Option<&Account> {
        self.accounts.get(&account.to_ascii_uppercase())
    }

    /// The answer to one frame (`None`: stay silent).
    pub async fn handle_frame(&self, frame: &[u8], peer: SocketAddr) -> Option<Vec<u8>> {
        self.answer_frame(frame, peer).await.reply
    }

    /// [`Receiver::handle_frame`], saying also whether the frame was valid.
    pub async fn answer_frame(&self, frame: &[u8], peer: SocketAddr) -> Answer {
        bump(&self.metrics.frames);
        let mut valid = false;
        let reply = self.reply(frame, peer, &mut valid).await;
        Answer { reply, valid }
    }

    /// Sets `valid` once the frame decoded.
    async fn reply(&self, frame: &[u8], peer: SocketAddr, valid: &mut bool) -> Option<Vec<u8>> {
        let started = std::time::Instant::now();
        let now = OffsetDateTime::now_utc();
        let lookup = |account: &str| match self.account(account) {
            None => KeyLookup::UnknownAccount,
            Some(a) => a.key.clone().into(),
        };
        let msg = match decode(frame, &lookup) {
            Ok(msg) => msg,
            Err(err) => return self.refuse(&err, now, peer),
        };
        *valid = true;
        if msg.token.is_response() || matches!(msg.token, Token::Unknown(_)) {
            bump(&self.metrics.duh);
            if let Some(count) = LOG_DUH.hit() {
                warn!(%peer, count, account = %msg.account, token = msg.token.as_str(), "unsupported token: DUH");
            }
            return self.answer(&duh_for(&msg), None);
        }
        // decode() only admits configured accounts.
        let account = self.account(&msg.account)?;
        if account.require_timestamp && msg.timestamp.is_none() && !msg.encrypted {
            bump(&self.metrics.nak_untimed);
            warn!(%peer, account = %msg.account, seq = msg.seq, "clear-text frame without a timestamp, account requires one: NAK");
            return self.answer(&nak(now), None);
        }
        if let Some(ts) = msg.timestamp
            && let Err(e) = check_window(ts, now, account.window_behind, account.window_ahead)
        {
            bump(&self.metrics.nak_stale);
            if let Some(count) = LOG_STALE.hit() {
                warn!(%peer, count, account = %msg.account, seq = msg.seq, error = %e, "timestamp outside window: NAK");
            }
            return self.answer(&nak(now), None);
        }
        self.supervisor.heard_from(&account.account).await;

        let events = match events_from_message(&msg, now) {
            Ok(events) => events,
            Err(e) => {
                bump(&self.metrics.duh);
                if let Some(count) = LOG_DUH.hit() {
                    warn!(%peer, count, account = %msg.account, seq = msg.seq, error = %e, "unsupported payload: DUH");
                }
                return self.answer(&duh_for(&msg), None);
            }
        };
        if !events.is_empty() {
            match self.outbox.append(events).await {
                Ok(results) => {
                    let stored = results
                        .iter()
                        .filter(|r| matches!(r, crate::outbox::Appended::Stored(_)))
                        .count() as u64;
                    self.metrics
                        .events_stored
                        .fetch_add(stored, Ordering::Relaxed);
                    if stored == 0 {
                        bump(&self.metrics.duplicates);
                        debug!(%peer, account = %msg.account, seq = msg.seq, "retransmission of a stored message");
                    }
                    self.supervisor.storage_ok().await;
                }
                Err(e) => {
                    bump(&self.metrics.nak_storage);
                    warn!(%peer, account = %msg.account, seq = msg.seq, error = %e, "cannot store: NAK");
                    if let OutboxError::Full(reason) | OutboxError::Storage(reason) = &e {
                        self.supervisor.storage_failed(reason);
                    }
                    return self.answer(&nak(now), None);
                }
            }
        }
        bump(&self.metrics.acked);
        let ack = self.answer(&ack_for(&msg, now), account.key.as_ref());
        self.metrics.ack_latency.record(started.elapsed());
        ack
    }

    fn refuse(&self, err: &DecodeError, now: OffsetDateTime, peer: SocketAddr) -> Option<Vec<u8>> {
        match err.reply() {
            Reply::None => {
                bump(&self.metrics.dropped_damaged);
                if let Some(count) = LOG_DAMAGED.hit() {
                    warn!(%peer, count, error = %err, "damaged frame dropped");
                }
                None
            }
            Reply::Nak => {
                let counter = match err {
                    DecodeError::UnknownAccount(_) => &self.metrics.nak_unknown_account,
                    _ => &self.metrics.nak_undecryptable,
                };
                bump(counter);
                if let Some(count) = LOG_REFUSED.hit() {
                    warn!(%peer, count, error = %err, "frame refused: NAK");
                }
                self.answer(&nak(now), None)
            }
            Reply::Duh(header) => {
                bump(&self.metrics.duh);
                if let Some(count) = LOG_DUH.hit() {
                    warn!(%peer, count, error = %err, "frame not understood: DUH");
                }
                self.answer(&duh_for(header), None)
            }
        }
    }

    fn answer(&self, reply: &Message, key: Option<&vigil_dc09::Key>) -> Option<Vec<u8>> {
        let key = if reply.encrypted { key } else { None };
        match encode(reply, key, &mut |pad: &mut [u8]| rand::fill(pad)) {
            Ok(frame) => Some(frame),
            Err(e) => {
                warn!(error = %e, "cannot encode the answer");
                None
            }
        }
    }
}

// Peer errors are logged at most once per interval per kind, with the count
// since the previous line: a peer sending garbage as fast as it can must not
// fill the disk with log lines (every occurrence is still counted in the
// metrics).
static LOG_DAMAGED: LogLimiter = LogLimiter::new(PEER_ERROR_INTERVAL);
static LOG_REFUSED: LogLimiter = LogLimiter::new(PEER_ERROR_INTERVAL);
static LOG_DUH: LogLimiter = LogLimiter::new(PEER_ERROR_INTERVAL);
static LOG_STALE: LogLimiter = LogLimiter::new(PEER_ERROR_INTERVAL);
static LOG_GARBAGE: LogLimiter = LogLimiter::new(PEER_ERROR_INTERVAL);

/// Serves panels on `tcp` and `udp` until `shutdown`, then waits for the
/// connections in progress to finish their current frame.
pub async fn serve(
    receiver: Arc<Receiver>,
    tcp: TcpListener,
    udp: UdpSocket,
    limits: ReceiverLimits,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let addr = tcp.local_addr().ok();
    if let Some(addr) = addr {
        info!(listen = %addr, "DC-09 receiver listening (TCP and UDP)");
    }
    tracker.spawn(serve_udp(receiver.clone(), udp, shutdown.clone()));
    let front = Front::with_stats("dc09", limits.tcp(), receiver.metrics.listener.clone());
    let max_frame = limits.max_frame_bytes;
    front
        .serve(tcp, shutdown, move |conn| {
            let receiver = receiver.clone();
            async move { handle_tcp(&receiver, conn, max_frame).await }
        })
        .await;
    tracker.close();
    tracker.wait().await;
}

/// One panel connection. Silence is the front's business (deadline before
/// the first valid frame, idle timeout after).
async fn handle_tcp(receiver: &Receiver, mut conn: Conn<TcpStream>, max_frame_bytes: usize) {
    let peer = conn.peer_addr();
    let shutdown = conn.shutdown().clone();
    let mut framer = Framer::new(max_frame_bytes);
    let mut buf = vec![0u8; 4096];
    loop {
        let read = tokio::select! {
            _ = shutdown.cancelled() => return,
            read = conn.read(&mut buf) => read,
        };
        let n = match read {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) => {
                debug!(error = %e, "read failed");
                return;
            }
        };
        framer.push(&buf[..n]);
        while let Some(frame) = framer.next_frame() {
            match frame {
                Ok(frame) => {
                    // The frame is handled to the end even during shutdown:
                    // once stored, the panel must get its ACK.
                    let answer = receiver.answer_frame(&frame, peer).await;
                    if answer.valid {
                        conn.authenticated();
                    }
                    if let Some(reply) = answer.reply
                        && let Err(e) = conn.write_all(&reply).await
                    {
                        debug!(error = %e, "write failed");
                        return;
                    }
                }
                Err(e) => {
                    receiver
                        .metrics
                        .dropped_garbage_bytes
                        .fetch_add(discarded(&e), Ordering::Relaxed);
                    if let Some(count) = LOG_GARBAGE.hit() {
                        warn!(count, error = %e, "discarded bytes from panel");
                    }
                }
            }
        }
    }
}

fn discarded(e: &vigil_dc09::FramerError) -> u64 {
    match e {
        vigil_dc09::FramerError::Garbage { discarded }
        | vigil_dc09::FramerError::Oversize { discarded } => *discarded as u64,
    }
}

async fn serve_udp(receiver: Arc<Receiver>, udp: UdpSocket, shutdown: CancellationToken) {
    let udp = Arc::new(udp);
    let tracker = TaskTracker::new();
    let in_flight = Arc::new(Semaphore::new(MAX_UDP_IN_FLIGHT));
    let mut buf = vec![0u8; UDP_BUFFER];
    loop {
        let (n, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            got = udp.recv_from(&mut buf) => match got {
                Ok(got) => got,
                Err(e) => {
                    warn!(error = %e, "UDP receive failed");
                    tokio::time::sleep(UDP_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            bump(&receiver.metrics.dropped_udp_busy);
            continue;
        };
        let frame = buf[..n].to_vec();
        let receiver = receiver.clone();
        let udp = udp.clone();
        tracker.spawn(
            async move {
                if let Some(answer) = receiver.handle_frame(&frame, peer).await
                    && let Err(e) = udp.send_to(&answer, peer).await
                {
                    debug!(error = %e, "UDP send failed");
                }
                drop(permit);
            }
            .instrument(info_span!("dc09_udp", peer.addr = %peer)),
        );
    }
    tracker.close();
    tracker.wait().await;
}

/// Binds TCP and UDP on the same address. With port 0, the TCP port the
/// system picks is reused for UDP (retrying a few times if that UDP port
/// happens to be taken).
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, UdpSocket)> {
    let mut last_err = None;
    for _ in 0..16 {
        let tcp = TcpListener::bind(addr).await?;
        let local = tcp.local_addr()?;
        match UdpSocket::bind(local).await {
            Ok(udp) => return Ok((tcp, udp)),
            Err(e) if addr.port() == 0 => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| std::io::Error::other("no free port for TCP and UDP")))
}
