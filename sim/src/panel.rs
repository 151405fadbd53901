//! The panel simulator: a SIA DC-09 dialler that behaves like the IP
//! transmitter of an alarm panel, for `vigil simulate panel`, `vigil dev`,
//! the benchmark and the fault tests.
//!
//! A [`Scenario`] produces the panel's messages (alarms and their restores,
//! troubles, openings and closings, test reports, `NULL` link tests) with
//! sequence numbers 0001-9999, wrapping. A [`Panel`] sends them one at a
//! time over one reused TCP connection or as UDP datagrams, and waits for
//! the receiver's answer the way a panel does:
//!
//! * `ACK` with the message's sequence number: delivered.
//! * `NAK`: the receiver rejected the timestamp (or does not know the
//!   account). The panel adopts the receiver's clock from the NAK and sends
//!   the same event again with a fresh timestamp.
//! * `DUH`: the receiver does not support the message. Retrying cannot
//!   help, so the event is reported as unsupported and not retried.
//! * No answer within the timeout, or the connection closed: drop the
//!   connection, reconnect and retransmit the same message (same sequence
//!   number, fresh timestamp and pad).
//!
//! [`Panel::with_messages`] sends the caller's own messages instead of a
//! scenario. Many panels can run in one process: each [`Panel::run`] is
//! an ordinary `Send` future.
//!
//! Each event gets at most `1 + retries` transmissions; then it is reported
//! as failed. The [`Summary`] counts what happened and lists every event's
//! [`EventOutcome`], so a caller can compare what the panel believes was
//! delivered ([`Summary::acked_events`]) with what the operations center
//! stored.
//!
//! All DC-09 framing, encryption and payload formatting is done by
//! [`vigil_dc09`]; this module only composes messages and moves bytes.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use thiserror::Error;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use vigil_dc09::{
    self as dc09, ContactId, EncodeError, Framer, Key, KeyLookup, Message, Qualifier, Token,
};

/// How long a panel waits for an answer unless told otherwise. DC-09 panels
/// typically wait 20-30 s; a simulator wants to notice trouble sooner.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Retransmissions of one event after the first attempt, unless told
/// otherwise.
pub const DEFAULT_RETRIES: u32 = 3;

/// Pause before reconnecting after a timeout, a closed connection or a
/// failed connect, so a receiver that is down is not hammered.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_secs(1);

/// In the mixed scenario, every this many messages is a `NULL` link test.
const NULL_EVERY: u64 = 10;

/// In the mixed scenario, every this many messages is a periodic test
/// report (Contact ID 602 / SIA `RP`).
const TEST_EVERY: u64 = 25;

/// Largest datagram or read accepted from the receiver: one maximal frame.
const READ_BUF: usize = dc09::DEFAULT_MAX_FRAME;

/// Transport to the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// One TCP connection, reused for every message and reopened when it
    /// closes or an answer times out.
    #[default]
    Tcp,
    /// One UDP datagram per message.
    Udp,
}

/// Event payload format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// `SIA-DCS` messages with SIA DC-03 codes (`Nri1/BA005`).
    #[default]
    Sia,
    /// `ADM-CID` messages with Contact ID events (`1130 01 005`).
    Cid,
}

/// What the panel reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScenarioKind {
    /// Burglary, fire and panic alarms each followed later by their restore,
    /// AC-loss and low-battery troubles with restores, openings and
    /// closings, periodic test reports and `NULL` link tests.
    #[default]
    Mixed,
    /// `NULL` link tests only (a quiet, supervised panel).
    Null,
    /// A site on an ordinary day, as `vigil dev` shows it: mostly openings,
    /// closings, test reports and link tests; now and then an AC-loss or
    /// low-battery trouble; a burglary alarm about once in 40 messages; fire
    /// and panic rarer still. Every alarm and trouble is restored later.
    Quiet,
}

/// Everything a simulated panel needs. Build with [`PanelConfig::new`] and
/// adjust the public fields.
#[derive(Debug, Clone)]
pub struct PanelConfig {
    /// Receiver address, `HOST:PORT`.
    pub server: String,
    /// TCP or UDP.
    pub transport: Transport,
    /// Account number, 3-16 hex digits.
    pub account: String,
    /// AES key for encrypted reporting; `None` for clear text.
    pub key: Option<Key>,
    /// Receiver number (`R...`), 1-6 hex digits, if the panel sends one.
    pub receiver: Option<String>,
    /// Account prefix (`L...`), 1-6 hex digits.
    pub line: String,
    /// `SIA-DCS` or `ADM-CID` payloads.
    pub protocol: Protocol,
    /// Which sequence of events to send.
    pub scenario: ScenarioKind,
    /// Stop after this many messages (`None`: no limit).
    pub count: Option<u64>,
    /// Stop starting new messages after this long (`None`: no limit).
    pub duration: Option<Duration>,
    /// Time between the starts of consecutive messages. A message waits for
    /// the previous one's answer, so this is a lower bound.
    pub interval: Duration,
    /// How long to wait for an answer to one transmission (and for a TCP
    /// connect).
    pub ack_timeout: Duration,
    /// Retransmissions of one event after its first transmission.
    pub retries: u32,
    /// Pause before a retransmission that follows a timeout, a closed
    /// connection or a failed connect. (A NAK is answered at once.)
    pub retry_backoff: Duration,
    /// Sequence number of the first message, 1-9999.
    pub first_seq: u16,
    /// Seed for the scenario's choices (zones, users, order); `None` picks
    /// one at random. Pad bytes always come from the OS random source.
    pub seed: Option<u64>,
    /// Keep an [`EventOutcome`] per message in the [`Summary`]. Turn off for
    /// long runs that only need the counts.
    pub record_outcomes: bool,
}

impl PanelConfig {
    /// A clear-text TCP panel for `account` reporting the mixed SIA scenario
    /// to `server` once a second until shut down, with the default timeout,
    /// retries and backoff.
    pub fn new(server: impl Into<String>, account: impl Into<String>) -> Self {
        Self {
            server: server.into(),
            transport: Transport::Tcp,
            account: account.into(),
            key: None,
            receiver: None,
            line: "0".to_owned(),
            protocol: Protocol::Sia,
            scenario: ScenarioKind::Mixed,
            count: None,
            duration: None,
            interval: Duration::from_secs(1),
            ack_timeout: DEFAULT_ACK_TIMEOUT,
            retries: DEFAULT_RETRIES,
            retry_backoff: DEFAULT_RETRY_BACKOFF,
            first_seq: 1,
            seed: None,
            record_outcomes: true,
        }
    }

    /// The header every message of this panel carries: encryption flag,
    /// receiver, line and account. Token, sequence and data are filled in
    /// per message.
    pub fn header(&self) -> Message {
        Message {
            encrypted: self.key.is_some(),
            receiver: self.receiver.clone(),
            line: self.line.clone(),
            ..Message::new(Token::Null, self.account.clone())
        }
    }
}

/// Why a simulated panel could not run.
#[derive(Debug, Error)]
pub enum SimError {
    /// A configuration value is out of range.
    #[error("invalid panel configuration: {0}")]
    Config(String),
    /// The panel's header does not form a valid DC-09 message.
    #[error("invalid panel configuration: {0}")]
    Header(#[from] EncodeError),
    /// A message given to [`Panel::with_messages`] cannot be encoded.
    #[error("cannot encode message {seq:04}: {source}")]
    Encode {
        /// Its sequence number.
        seq: u16,
        /// Why.
        source: EncodeError,
    },
    /// The server address did not resolve.
    #[error("cannot resolve {server}: {source}")]
    Resolve {
        /// The address as given.
        server: String,
        /// The resolver's error.
        source: io::Error,
    },
}

/// The identity of one sent event: what the receiver should have stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventId {
    /// Account number.
    pub account: String,
    /// Sequence number (the same across retransmissions).
    pub seq: u16,
    /// `SIA-DCS`, `ADM-CID` or `NULL`.
    pub token: Token,
    /// The data block payload without the `#acct|` prefix, e.g.
    /// `1130 01 005` or `Nri1/BA005`; empty for `NULL`.
    pub payload: String,
}

impl EventId {
    /// The identity of `msg`.
    pub fn of(msg: &Message) -> Self {
        Self {
            account: msg.account.clone(),
            seq: msg.seq,
            token: msg.token.clone(),
            payload: msg.payload().to_owned(),
        }
    }
}

/// Why an event was given up on (the last failure seen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// The receiver kept answering NAK.
    Nak,
    /// No answer within the timeout.
    Timeout,
    /// The connection closed (or the datagram was refused) before an answer.
    Closed,
    /// The TCP connection could not be opened.
    Connect,
}

impl fmt::Display for FailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Nak => "NAK",
            Self::Timeout => "no answer",
            Self::Closed => "connection closed",
            Self::Connect => "cannot connect",
        })
    }
}

/// How one event ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The receiver answered ACK.
    Acked,
    /// The receiver answered DUH: it does not support this message.
    Unsupported,
    /// Retries exhausted.
    Failed(FailReason),
    /// Shutdown came while the event was in flight.
    Cancelled,
}

/// One event and how its delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventOutcome {
    /// What was sent.
    pub id: EventId,
    /// How it ended.
    pub delivery: Delivery,
    /// Transmissions made (1 when the first one was answered).
    pub attempts: u32,
    /// Time from the last transmission to its ACK.
    pub ack_latency: Option<Duration>,
}

/// Running counts, published while the panel runs (see [`Panel::progress`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Events started.
    pub attempted: u64,
    /// Events answered with ACK.
    pub acked: u64,
    /// NAK answers received (an event may collect several).
    pub naks: u64,
    /// Retransmissions (after a NAK, a timeout or a closed connection).
    pub retries: u64,
    /// Events given up on after the last retry.
    pub failed: u64,
    /// Events answered with DUH.
    pub unsupported: u64,
    /// Events in flight when shutdown came.
    pub cancelled: u64,
    /// TCP connections opened (UDP: sockets opened).
    pub connects: u64,
}

/// What a panel run achieved.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// The final counts.
    pub counts: Progress,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// ACK latency of every ACKed event, in send order.
    pub latencies: Vec<Duration>,
    /// Every event in send order, if [`PanelConfig::record_outcomes`].
    pub outcomes: Vec<EventOutcome>,
}

impl Summary {
    /// The events the receiver ACKed: what the panel believes is delivered.
    pub fn acked_events(&self) -> impl Iterator<Item = &EventId> + '_ {
        self.outcomes
            .iter()
            .filter(|o| o.delivery == Delivery::Acked)
            .map(|o| &o.id)
    }

    /// The ACK latency at quantile `q` (0.0-1.0, nearest rank), if any
    /// event was ACKed.
    pub fn latency_quantile(&self, q: f64) -> Option<Duration> {
        if self.latencies.is_empty() {
            return None;
        }
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        // Nearest-rank: the smallest sample with at least q of all samples
        // at or below it. The cast is exact for any realistic sample count.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let rank = ((q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize).max(1);
        Some(sorted[rank - 1])
    }

    /// Median ACK latency.
    pub fn p50(&self) -> Option<Duration> {
        self.latency_quantile(0.50)
    }

    /// 99th percentile ACK latency.
    pub fn p99(&self) -> Option<Duration> {
        self.latency_quantile(0.99)
    }

    /// Largest ACK latency.
    pub fn max_latency(&self) -> Option<Duration> {
        self.latencies.iter().max().copied()
    }
}

impl fmt::Display for Summary {
    /// One line: `attempted 100 acked 99 nak 0 retries 2 failed 1 ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        let ms = |d: Option<Duration>| {
            d.map_or_else(
                || "-".to_owned(),
                |d| format!("{:.1}ms", d.as_secs_f64() * 1e3),
            )
        };
        write!(
            f,
            "attempted {} acked {} nak {} retries {} failed {} unsupported {} cancelled {} \
             connects {} elapsed {:.1}s ack p50 {} p99 {} max {}",
            c.attempted,
            c.acked,
            c.naks,
            c.retries,
            c.failed,
            c.unsupported,
            c.cancelled,
            c.connects,
            self.elapsed.as_secs_f64(),
            ms(self.p50()),
            ms(self.p99()),
            ms(self.max_latency()),
        )
    }
}

/// One reportable condition, in both payload formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Signal {
    qualifier: Qualifier,
    /// Contact ID event code.
    cid: u16,
    /// SIA two-letter code.
    sia: &'static str,
    partition: u8,
    /// Zone or user number.
    number: u16,
}

impl Signal {
    const fn new(
        qualifier: Qualifier,
        cid: u16,
        sia: &'static str,
        partition: u8,
        number: u16,
    ) -> Self {
        Self {
            qualifier,
            cid,
            sia,
            partition,
            number,
        }
    }

    fn payload(&self, protocol: Protocol) -> String {
        match protocol {
            Protocol::Cid => ContactId {
                qualifier: self.qualifier,
                event: self.cid,
                partition: self.partition,
                zone_or_user: self.number,
            }
            .to_string(),
            Protocol::Sia if self.partition == 0 => format!("N{}{:03}", self.sia, self.number),
            Protocol::Sia => format!("Nri{}/{}{:03}", self.partition, self.sia, self.number),
        }
    }
}

/// A restore waiting for its turn.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// Index of the first message at which it may be sent.
    due: u64,
    signal: Signal,
}

/// An endless stream of a panel's messages, without timestamps (the sender
/// stamps each transmission with its clock).
///
/// Sequence numbers run from the first one given up to 9999, then wrap
/// to 0001. The scenario's choices come from a seeded generator, so the
/// same seed gives the same messages.
#[derive(Debug, Clone)]
pub struct Scenario {
    kind: ScenarioKind,
    protocol: Protocol,
    header: Message,
    rng: StdRng,
    next_seq: u16,
    produced: u64,
    /// Restores not yet sent, oldest first: one per open alarm or trouble.
    /// A condition is not raised again while open, and nothing new is
    /// raised while [`MAX_OPEN`] are open, so this stays small.
    pending: VecDeque<Pending>,
    armed: bool,
}

/// Most alarms and troubles open at once in the mixed scenario.
const MAX_OPEN: usize = 4;

impl Scenario {
    /// A scenario whose messages carry `header`'s encryption flag, receiver,
    /// line and account, starting at sequence number `first_seq` (0 and
    /// values above 9999 start at 1).
    pub fn new(
        kind: ScenarioKind,
        protocol: Protocol,
        header: Message,
        first_seq: u16,
        seed: u64,
    ) -> Self {
        Self {
            kind,
            protocol,
            header,
            rng: StdRng::seed_from_u64(seed),
            next_seq: if (1..=9999).contains(&first_seq) {
                first_seq
            } else {
                1
            },
            produced: 0,
            pending: VecDeque::new(),
            armed: true,
        }
    }

    /// The scenario a [`Panel`] with this configuration sends.
    pub fn for_panel(config: &PanelConfig) -> Self {
        let seed = config.seed.unwrap_or_else(|| rand::rng().random());
        Self::new(
            config.scenario,
            config.protocol,
            config.header(),
            config.first_seq,
            seed,
        )
    }

    fn take_seq(&mut self) -> u16 {
        let seq = self.next_seq;
        self.next_seq = if seq >= 9999 { 1 } else { seq + 1 };
        seq
    }

    /// The next condition of the mixed scenario, `None` for a `NULL`.
    fn next_signal(&mut self, n: u64) -> Option<Signal> {
        use Qualifier::{New, Restore};
        if self.kind == ScenarioKind::Null || n % NULL_EVERY == NULL_EVERY - 1 {
            return None;
        }
        if n % TEST_EVERY == TEST_EVERY - 1 {
            return Some(Signal::new(New, 602, "RP", 0, 0));
        }
        if let Some(i) = self.pending.iter().position(|p| p.due <= n) {
            return self.pending.remove(i).map(|p| p.signal);
        }
        let open = self.pending.len() < MAX_OPEN;
        // Per mille: the mixed scenario exercises every path; the quiet one
        // is what a watched site sends.
        let (burglary, fire, panic, ac, battery) = match self.kind {
            ScenarioKind::Quiet => (25, 5, 3, 15, 15),
            _ => (300, 100, 50, 70, 60),
        };
        let roll = self.rng.random_range(0..1000u32);
        let pick = [burglary, fire, panic, ac, battery]
            .iter()
            .scan(0, |upto, w| {
                *upto += w;
                Some(*upto)
            })
            .position(|upto| roll < upto);
        let rng = &mut self.rng;
        let (alarm, restore, delay) = match pick {
            Some(0) if open => {
                let zone = rng.random_range(1..=16);
                (
                    Signal::new(New, 130, "BA", 1, zone),
                    Signal::new(Restore, 130, "BH", 1, zone),
                    rng.random_range(2..=6),
                )
            }
            Some(1) if open => {
                let zone = rng.random_range(17..=24);
                (
                    Signal::new(New, 110, "FA", 1, zone),
                    Signal::new(Restore, 110, "FH", 1, zone),
                    rng.random_range(3..=8),
                )
            }
            Some(2) if open => {
                let zone = rng.random_range(25..=28);
                (
                    Signal::new(New, 120, "PA", 1, zone),
                    Signal::new(Restore, 120, "PH", 1, zone),
                    rng.random_range(2..=5),
                )
            }
            Some(3) if open => (
                Signal::new(New, 301, "AT", 0, 0),
                Signal::new(Restore, 301, "AR", 0, 0),
                rng.random_range(4..=10),
            ),
            Some(4) if open => (
                Signal::new(New, 302, "YT", 0, 0),
                Signal::new(Restore, 302, "YR", 0, 0),
                rng.random_range(4..=10),
            ),
            _ => return Some(self.open_close()),
        };
        if self.pending.iter().any(|p| p.signal == restore) {
            // Already open (the zone is still in alarm): a panel reports a
            // condition once, until it restores.
            return Some(self.open_close());
        }
        self.pending.push_back(Pending {
            due: n + delay,
            signal: restore,
        });
        Some(alarm)
    }
}

impl Scenario {
    /// An opening (disarm) or closing (arm), alternating.
    fn open_close(&mut self) -> Signal {
        let user = self.rng.random_range(1..=8);
        self.armed = !self.armed;
        if self.armed {
            Signal::new(Qualifier::Restore, 401, "CL", 1, user)
        } else {
            Signal::new(Qualifier::New, 401, "OP", 1, user)
        }
    }
}

impl Iterator for Scenario {
    type Item = Message;

    /// Never returns `None`.
    fn next(&mut self) -> Option<Message> {
        let n = self.produced;
        self.produced += 1;
        let signal = self.next_signal(n);
        let seq = self.take_seq();
        let (token, data) = match signal {
            None => (Token::Null, String::new()),
            Some(s) => (
                match self.protocol {
                    Protocol::Sia => Token::SiaDcs,
                    Protocol::Cid => Token::AdmCid,
                },
                format!("#{}|{}", self.header.account, s.payload(self.protocol)),
            ),
        };
        Some(Message {
            token,
            seq,
            data,
            timestamp: None,
            ..self.header.clone()
        })
    }
}

/// The receiver's answer to one transmission.
#[derive(Debug)]
enum Answer {
    Ack(Duration),
    Nak(Option<OffsetDateTime>),
    Duh,
}

/// The connection to the receiver, opened lazily and dropped on trouble.
#[derive(Debug)]
enum Link {
    Tcp {
        stream: Option<TcpStream>,
        framer: Framer,
    },
    Udp {
        socket: Option<UdpSocket>,
    },
}

impl Link {
    fn new(transport: Transport) -> Self {
        match transport {
            Transport::Tcp => Self::Tcp {
                stream: None,
                framer: Framer::default(),
            },
            Transport::Udp => Self::Udp { socket: None },
        }
    }

    /// Opens the connection if it is not open; true if it was opened now.
    async fn ensure(&mut self, server: SocketAddr, timeout: Duration) -> io::Result<bool> {
        match self {
            Self::Tcp {
                stream: Some(_), ..
            }
            | Self::Udp { socket: Some(_) } => Ok(false),
            Self::Tcp { stream, framer } => {
                let s = tokio::time::timeout(timeout, TcpStream::connect(server))
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
                s.set_nodelay(true)?;
                *stream = Some(s);
                *framer = Framer::default();
                Ok(true)
            }
            Self::Udp { socket } => {
                let local: SocketAddr = if server.is_ipv4() {
                    (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let s = UdpSocket::bind(local).await?;
                s.connect(server).await?;
                *socket = Some(s);
                Ok(true)
            }
        }
    }

    fn reset(&mut self) {
        match self {
            Self::Tcp { stream, .. } => *stream = None,
            Self::Udp { socket } => *socket = None,
        }
    }

    async fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        match self {
            Self::Tcp {
                stream: Some(s), ..
            } => s.write_all(frame).await,
            Self::Udp { socket: Some(s) } => s.send(frame).await.map(drop),
            _ => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// The next frame from the receiver; `None` when the connection closed.
    /// Cancel safe: a partial frame stays buffered.
    async fn next_frame(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut buf = vec![0u8; READ_BUF];
        match self {
            Self::Tcp {
                stream: Some(s),
                framer,
            } => loop {
                while let Some(next) = framer.next_frame() {
                    match next {
                        Ok(frame) => return Ok(Some(frame)),
                        Err(e) => debug!(error = %e, "garbage from receiver"),
                    }
                }
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    return Ok(None);
                }
                framer.push(&buf[..n]);
            },
            Self::Udp { socket: Some(s) } => {
                let n = s.recv(&mut buf).await?;
                buf.truncate(n);
                Ok(Some(buf))
            }
            _ => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

/// The messages a panel sends: a [`Scenario`] or the caller's own.
struct Messages(Box<dyn Iterator<Item = Message> + Send>);

impl fmt::Debug for Messages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Messages(..)")
    }
}

/// A simulated alarm panel. [`run`] is the short way to use one.
#[derive(Debug)]
pub struct Panel {
    config: PanelConfig,
    messages: Messages,
    link: Link,
    /// Pad bytes for encrypted messages (seeded from the OS).
    pad: StdRng,
    /// Correction to the system clock, learned from a NAK's timestamp.
    clock_offset: time::Duration,
    progress: watch::Sender<Progress>,
}

/// Sends `config`'s scenario until its count or duration is reached or
/// `shutdown` is cancelled, and reports what happened.
pub async fn run(config: PanelConfig, shutdown: CancellationToken) -> Result<Summary, SimError> {
    Panel::new(config)?.run(shutdown).await
}

impl Panel {
    /// A panel sending its configured [`Scenario`]. Checks the
    /// configuration; nothing is opened yet.
    pub fn new(config: PanelConfig) -> Result<Self, SimError> {
        let scenario = Scenario::for_panel(&config);
        Self::with_messages(config, scenario)
    }

    /// A panel sending exactly `messages` (then stopping), for tests that
    /// need particular events. Each message is sent as given, except that
    /// every transmission gets a fresh timestamp; its encryption flag must
    /// match whether `config` has a key. The scenario fields of `config`
    /// are ignored.
    pub fn with_messages(
        config: PanelConfig,
        messages: impl IntoIterator<Item = Message, IntoIter: Send + 'static>,
    ) -> Result<Self, SimError> {
        if !(1..=9999).contains(&config.first_seq) {
            return Err(SimError::Config(format!(
                "first sequence number {} is outside 1-9999",
                config.first_seq
            )));
        }
        if config.ack_timeout.is_zero() {
            return Err(SimError::Config(
                "the answer timeout must be above zero".into(),
            ));
        }
        // Let the codec check account, line and receiver: encode a probe
        // NULL with this panel's header.
        let probe = Message {
            timestamp: Some(OffsetDateTime::now_utc()),
            ..config.header()
        };
        dc09::encode(&probe, config.key.as_ref(), &mut |b: &mut [u8]| {
            b.fill(b'0')
        })?;

        Ok(Self {
            link: Link::new(config.transport),
            messages: Messages(Box::new(messages.into_iter())),
            pad: StdRng::from_os_rng(),
            clock_offset: time::Duration::ZERO,
            progress: watch::Sender::new(Progress::default()),
            config,
        })
    }

    /// Live counts, updated after every event.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Runs the panel; see [`run`].
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<Summary, SimError> {
        let span =
            info_span!("panel", account = %self.config.account, server = %self.config.server);
        async move {
            let server = resolve(&self.config.server).await?;
            let start = Instant::now();
            let stop_at = self.config.duration.map(|d| start + d);
            let mut summary = Summary::default();
            let mut next_start = start;
            loop {
                if self
                    .config
                    .count
                    .is_some_and(|c| summary.counts.attempted >= c)
                    || shutdown.is_cancelled()
                {
                    break;
                }
                let wake = stop_at.map_or(next_start, |s| s.min(next_start));
                if wake > Instant::now() {
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep_until(wake) => {}
                    }
                }
                if stop_at.is_some_and(|s| Instant::now() >= s) {
                    break;
                }
                next_start = Instant::now() + self.config.interval;

                let Some(msg) = self.messages.0.next() else {
                    break;
                };
                summary.counts.attempted += 1;
                let result = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => None,
                    r = self.deliver(server, &msg, &mut summary.counts) => Some(r),
                };
                let (delivery, attempts, latency) = match result {
                    None => (Delivery::Cancelled, 0, None),
                    Some(r) => r?,
                };
                let c = &mut summary.counts;
                match delivery {
                    Delivery::Acked => c.acked += 1,
                    Delivery::Unsupported => c.unsupported += 1,
                    Delivery::Failed(reason) => {
                        c.failed += 1;
                        warn!(seq = msg.seq, %reason, "event not delivered");
                    }
                    Delivery::Cancelled => c.cancelled += 1,
                }
                summary.latencies.extend(latency);
                if self.config.record_outcomes {
                    summary.outcomes.push(EventOutcome {
                        id: EventId::of(&msg),
                        delivery,
                        attempts,
                        ack_latency: latency,
                    });
                }
                self.progress.send_replace(summary.counts);
            }
            summary.elapsed = start.elapsed();
            Ok(summary)
        }
        .instrument(span)
        .await
    }

    /// Sends one event until it is answered or its retries run out.
    async fn deliver(
        &mut self,
        server: SocketAddr,
        msg: &Message,
        counts: &mut Progress,
    ) -> Result<(Delivery, u32, Option<Duration>), SimError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let failure = match self.attempt(server, msg, counts).await? {
                Ok(Answer::Ack(latency)) => return Ok((Delivery::Acked, attempts, Some(latency))),
                Ok(Answer::Duh) => {
                    warn!(
                        seq = msg.seq,
                        "receiver does not support this message (DUH)"
                    );
                    return Ok((Delivery::Unsupported, attempts, None));
                }
                Ok(Answer::Nak(receiver_time)) => {
                    counts.naks += 1;
                    if let Some(t) = receiver_time {
                        // Like a panel that syncs its clock to the NAK.
                        self.clock_offset = t - OffsetDateTime::now_utc();
                    }
                    debug!(seq = msg.seq, offset = %self.clock_offset, "NAK");
                    FailReason::Nak
                }
                Err(reason) => {
                    debug!(seq = msg.seq, %reason, "transmission failed");
                    self.link.reset();
                    reason
                }
            };
            if attempts > self.config.retries {
                return Ok((Delivery::Failed(failure), attempts, None));
            }
            counts.retries += 1;
            if failure != FailReason::Nak {
                tokio::time::sleep(self.config.retry_backoff).await;
            }
        }
    }

    /// One transmission of `msg` and the wait for its answer. The outer
    /// error is fatal; the inner one is a reason to retry.
    async fn attempt(
        &mut self,
        server: SocketAddr,
        msg: &Message,
        counts: &mut Progress,
    ) -> Result<Result<Answer, FailReason>, SimError> {
        match self.link.ensure(server, self.config.ack_timeout).await {
            Ok(true) => counts.connects += 1,
            Ok(false) => {}
            Err(e) => {
                debug!(error = %e, "connect failed");
                return Ok(Err(FailReason::Connect));
            }
        }
        let stamped = Message {
            timestamp: Some(OffsetDateTime::now_utc() + self.clock_offset),
            ..msg.clone()
        };
        let pad = &mut self.pad;
        let frame = dc09::encode(&stamped, self.config.key.as_ref(), &mut |b: &mut [u8]| {
            pad.fill_bytes(b);
        })
        .map_err(|source| SimError::Encode {
            seq: msg.seq,
            source,
        })?;
        if let Err(e) = self.link.send(&frame).await {
            debug!(error = %e, "send failed");
            return Ok(Err(FailReason::Closed));
        }
        let sent = Instant::now();
        let deadline = sent + self.config.ack_timeout;

        let account = &self.config.account;
        let key = &self.config.key;
        let lookup = |acct: &str| {
            if acct.eq_ignore_ascii_case(account) {
                KeyLookup::from(key.clone())
            } else {
                KeyLookup::UnknownAccount
            }
        };
        loop {
            let frame = match tokio::time::timeout_at(deadline, self.link.next_frame()).await {
                Err(_) => return Ok(Err(FailReason::Timeout)),
                Ok(Ok(Some(frame))) => frame,
                Ok(Ok(None) | Err(_)) => return Ok(Err(FailReason::Closed)),
            };
            let answer = match dc09::decode(&frame, &lookup) {
                Ok(answer) => answer,
                Err(e) => {
                    warn!(error = %e, "undecodable answer ignored");
                    continue;
                }
            };
            let ours = answer.seq == msg.seq && answer.account.eq_ignore_ascii_case(account);
            match answer.token {
                Token::Ack if ours => return Ok(Ok(Answer::Ack(sent.elapsed()))),
                Token::Duh if ours => return Ok(Ok(Answer::Duh)),
                Token::Nak => return Ok(Ok(Answer::Nak(answer.timestamp))),
                _ => debug!(
                    token = answer.token.as_str(),
                    seq = answer.seq,
                    "stray answer ignored"
                ),
            }
        }
    }
}

async fn resolve(server: &str) -> Result<SocketAddr, SimError> {
    let resolve_err = |source| SimError::Resolve {
        server: server.to_owned(),
        source,
    };
    tokio::net::lookup_host(server)
        .await
        .map_err(resolve_err)?
        .next()
        .ok_or_else(|| resolve_err(io::Error::new(io::ErrorKind::NotFound, "no address")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_dc09::parse_sia_dcs;

    fn header(account: &str) -> Message {
        PanelConfig::new("127.0.0.1:7000", account).header()
    }

    #[test]
    fn sequence_numbers_wrap_to_one() {
        let s = Scenario::new(ScenarioKind::Null, Protocol::Sia, header("1234"), 9998, 1);
        let seqs: Vec<u16> = s.take(4).map(|m| m.seq).collect();
        assert_eq!(seqs, [9998, 9999, 1, 2]);
    }

    #[test]
    fn mixed_cid_scenario_is_valid_and_restores_what_it_raises() {
        let s = Scenario::new(ScenarioKind::Mixed, Protocol::Cid, header("12AB"), 1, 7);
        let mut open = std::collections::HashSet::new();
        let (mut nulls, mut tests, mut alarms) = (0, 0, 0);
        for msg in s.take(500) {
            // Every message encodes.
            dc09::encode(
                &Message {
                    timestamp: Some(OffsetDateTime::now_utc()),
                    ..msg.clone()
                },
                None,
                &mut |_: &mut [u8]| {},
            )
            .unwrap();
            match msg.token {
                Token::Null => nulls += 1,
                Token::AdmCid => {
                    assert!(msg.data.starts_with("#12AB|"), "{}", msg.data);
                    let cid = ContactId::parse(&msg.data).unwrap();
                    let key = (cid.event, cid.partition, cid.zone_or_user);
                    match (cid.event, cid.qualifier) {
                        (602, _) => tests += 1,
                        (401, _) => {}
                        (_, Qualifier::New) => {
                            alarms += 1;
                            open.insert(key);
                        }
                        (_, Qualifier::Restore) => {
                            assert!(open.remove(&key), "restore without alarm: {cid}");
                        }
                        (_, Qualifier::Status) => panic!("unexpected status report"),
                    }
                }
                other => panic!("unexpected token {other:?}"),
            }
        }
        assert_eq!(nulls, 50);
        // Every 25th message, except where a NULL link test falls.
        assert_eq!(tests, 10);
        assert!(alarms > 50, "{alarms} alarms");
        assert!(open.len() <= MAX_OPEN);
    }

    #[test]
    fn quiet_scenario_raises_alarms_rarely_and_restores_them() {
        // Alarms (burglary, fire, panic) and troubles among 2,000 messages.
        let count = |kind| {
            let (mut alarms, mut troubles, mut open) = (0, 0, 0i32);
            for msg in Scenario::new(kind, Protocol::Cid, header("12AB"), 1, 11).take(2000) {
                let Ok(cid) = ContactId::parse(&msg.data) else {
                    continue;
                };
                match (cid.event, cid.qualifier) {
                    (110 | 120 | 130, Qualifier::New) => alarms += 1,
                    (301 | 302, Qualifier::New) => troubles += 1,
                    _ => {}
                }
                match (cid.event, cid.qualifier) {
                    (401 | 602, _) => {}
                    (_, Qualifier::New) => open += 1,
                    (_, Qualifier::Restore) => open -= 1,
                    _ => {}
                }
                assert!((0..=MAX_OPEN as i32).contains(&open));
            }
            (alarms, troubles)
        };
        let (quiet_alarms, quiet_troubles) = count(ScenarioKind::Quiet);
        let (mixed_alarms, _) = count(ScenarioKind::Mixed);
        // About 3 % of the messages that are neither NULL nor test report.
        assert!((20..=110).contains(&quiet_alarms), "{quiet_alarms}");
        assert!(quiet_troubles > 0, "troubles happen too");
        assert!(
            mixed_alarms > 5 * quiet_alarms,
            "{mixed_alarms} vs {quiet_alarms}"
        );
    }

    #[test]
    fn sia_payloads_parse_and_same_seed_repeats() {
        let a: Vec<Message> =
            Scenario::new(ScenarioKind::Mixed, Protocol::Sia, header("1234"), 1, 3)
                .take(100)
                .collect();
        let b: Vec<Message> =
            Scenario::new(ScenarioKind::Mixed, Protocol::Sia, header("1234"), 1, 3)
                .take(100)
                .collect();
        assert_eq!(a, b);
        for msg in a.iter().filter(|m| m.token == Token::SiaDcs) {
            let events = parse_sia_dcs(&msg.data).unwrap();
            assert_eq!(events.len(), 1, "{}", msg.data);
            let class = events[0].classify();
            assert!(
                !matches!(
                    class.category,
                    dc09::EventCategory::Other | dc09::EventCategory::Unspecified
                ),
                "{}",
                msg.data
            );
        }
    }

    #[test]
    fn latency_quantiles() {
        let summary = Summary {
            latencies: (1..=100).rev().map(Duration::from_millis).collect(),
            ..Summary::default()
        };
        assert_eq!(summary.p50(), Some(Duration::from_millis(50)));
        assert_eq!(summary.p99(), Some(Duration::from_millis(99)));
        assert_eq!(summary.max_latency(), Some(Duration::from_millis(100)));
        assert_eq!(Summary::default().p50(), None);
    }

    #[test]
    fn bad_header_is_rejected_before_running() {
        let bad = PanelConfig::new("127.0.0.1:7000", "12");
        assert!(matches!(Panel::new(bad), Err(SimError::Header(_))));
        let mut bad = PanelConfig::new("127.0.0.1:7000", "1234");
        bad.line = "XY".into();
        assert!(matches!(Panel::new(bad), Err(SimError::Header(_))));
        let mut bad = PanelConfig::new("127.0.0.1:7000", "1234");
        bad.first_seq = 0;
        assert!(matches!(Panel::new(bad), Err(SimError::Config(_))));
    }
}
