//! The panel simulator against a tiny DC-09 receiver built from the codec,
//! on loopback. The receiver's answer to each frame is scripted per test.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use vigil_dc09::{
    ContactId, Framer, Key, KeyLookup, Message, Token, ack_for, decode, duh_for, encode, nak,
};
use vigil_sim::panel::{
    self as simulator, Delivery, EventId, FailReason, PanelConfig, Protocol, ScenarioKind, Summary,
    Transport,
};

const ACCOUNT: &str = "1234";
const K128: &str = "000102030405060708090A0B0C0D0E0F";
const K256: &str = "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F";

/// What the test receiver does with the n-th frame it decodes (0-based,
/// counted over all connections).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    Ack,
    /// NAK carrying the receiver time shifted by this many seconds.
    Nak(i64),
    Duh,
    /// Say nothing, keep the connection open.
    Silent,
    /// Say nothing and close the connection (TCP only).
    Close,
}

type Policy = Arc<dyn Fn(usize) -> Act + Send + Sync>;

/// A receiver on 127.0.0.1:0 that records every frame it decoded.
struct Receiver {
    addr: SocketAddr,
    frames: Arc<Mutex<Vec<Message>>>,
}

impl Receiver {
    fn frames(&self) -> Vec<Message> {
        self.frames.lock().unwrap().clone()
    }

    /// Decodes `frame`, records it and returns the bytes to answer with.
    fn handle(
        frame: &[u8],
        key: Option<&Key>,
        frames: &Mutex<Vec<Message>>,
        policy: &Policy,
    ) -> (Act, Option<Vec<u8>>) {
        let lookup = |acct: &str| {
            if acct == ACCOUNT {
                KeyLookup::from(key.cloned())
            } else {
                KeyLookup::UnknownAccount
            }
        };
        let msg = decode(frame, &lookup).expect("simulator sent a valid frame");
        let index = {
            let mut frames = frames.lock().unwrap();
            frames.push(msg.clone());
            frames.len() - 1
        };
        let now = OffsetDateTime::now_utc();
        let act = policy(index);
        let answer = match act {
            Act::Ack => ack_for(&msg, now),
            Act::Nak(shift) => nak(now + time::Duration::seconds(shift)),
            Act::Duh => duh_for(&msg),
            Act::Silent | Act::Close => return (act, None),
        };
        let answer_key = if answer.encrypted { key } else { None };
        let bytes = encode(&answer, answer_key, &mut |b: &mut [u8]| b.fill(b'7')).unwrap();
        (act, Some(bytes))
    }

    async fn tcp(key: Option<Key>, policy: impl Fn(usize) -> Act + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frames = Arc::new(Mutex::new(Vec::new()));
        let policy: Policy = Arc::new(policy);
        let shared = frames.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let (key, frames, policy) = (key.clone(), shared.clone(), policy.clone());
                tokio::spawn(async move {
                    let mut framer = Framer::default();
                    let mut buf = [0u8; 4096];
                    loop {
                        let n = match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        framer.push(&buf[..n]);
                        while let Some(frame) = framer.next_frame() {
                            let frame = frame.expect("no garbage from the simulator");
                            match Self::handle(&frame, key.as_ref(), &frames, &policy) {
                                (Act::Close, _) => return,
                                (_, Some(answer)) => conn.write_all(&answer).await.unwrap(),
                                (_, None) => {}
                            }
                        }
                    }
                });
            }
        });
        Self { addr, frames }
    }

    async fn udp(key: Option<Key>, policy: impl Fn(usize) -> Act + Send + Sync + 'static) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let frames = Arc::new(Mutex::new(Vec::new()));
        let policy: Policy = Arc::new(policy);
        let shared = frames.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4200];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                if let (_, Some(answer)) = Self::handle(&buf[..n], key.as_ref(), &shared, &policy) {
                    socket.send_to(&answer, peer).await.unwrap();
                }
            }
        });
        Self { addr, frames }
    }
}

fn config(receiver: &Receiver, count: u64) -> PanelConfig {
    let mut config = PanelConfig::new(receiver.addr.to_string(), ACCOUNT);
    config.count = Some(count);
    config.interval = Duration::ZERO;
    config.retry_backoff = Duration::from_millis(100);
    config.seed = Some(42);
    config
}

async fn run(config: PanelConfig) -> Summary {
    simulator::run(config, CancellationToken::new())
        .await
        .unwrap()
}

/// Every outcome is ACKed after one attempt, and the receiver stored exactly
/// the events the panel believes were delivered.
fn assert_all_acked(summary: &Summary, frames: &[Message], count: u64) {
    let c = summary.counts;
    assert_eq!(
        (c.attempted, c.acked, c.naks, c.retries, c.failed),
        (count, count, 0, 0, 0),
        "{summary}"
    );
    assert_eq!(summary.latencies.len(), usize::try_from(count).unwrap());
    let sent: Vec<EventId> = frames.iter().map(EventId::of).collect();
    let acked: Vec<EventId> = summary.acked_events().cloned().collect();
    assert_eq!(acked, sent);
    for (i, frame) in frames.iter().enumerate() {
        assert_eq!(frame.account, ACCOUNT);
        assert_eq!(usize::from(frame.seq), i + 1);
        assert!(frame.timestamp.is_some());
    }
}

#[tokio::test]
async fn tcp_acked_messages_are_reported_with_correct_frames() {
    let receiver = Receiver::tcp(None, |_| Act::Ack).await;
    let summary = run(config(&receiver, 12)).await;
    let frames = receiver.frames();
    assert_all_acked(&summary, &frames, 12);
    // One connection for all twelve messages.
    assert_eq!(summary.counts.connects, 1);
    assert!(frames.iter().all(|m| !m.encrypted));
    // The mixed scenario: SIA events with one NULL link test in ten.
    assert_eq!(frames[9].token, Token::Null);
    assert!(
        frames
            .iter()
            .filter(|m| m.token != Token::Null)
            .all(|m| m.token == Token::SiaDcs && m.data.starts_with("#1234|N"))
    );
}

#[tokio::test]
async fn udp_contact_id_messages_are_acked() {
    let receiver = Receiver::udp(None, |_| Act::Ack).await;
    let mut config = config(&receiver, 8);
    config.transport = Transport::Udp;
    config.protocol = Protocol::Cid;
    config.receiver = Some("2A".into());
    config.line = "3".into();
    let summary = run(config).await;
    let frames = receiver.frames();
    assert_all_acked(&summary, &frames, 8);
    for m in &frames {
        assert_eq!(m.token, Token::AdmCid);
        assert_eq!((m.receiver.as_deref(), m.line.as_str()), (Some("2A"), "3"));
        ContactId::parse(&m.data).unwrap();
    }
}

#[tokio::test]
async fn encrypted_messages_round_trip_with_128_and_256_bit_keys() {
    for hex_key in [K128, K256] {
        let key = Key::from_hex(hex_key).unwrap();
        let receiver = Receiver::tcp(Some(key.clone()), |_| Act::Ack).await;
        let mut config = config(&receiver, 11);
        config.key = Some(key);
        // An encrypted ACK the panel could not decrypt would time out and
        // show up as retries; all-ACKed-first-time proves it decrypted.
        let summary = run(config).await;
        let frames = receiver.frames();
        assert_all_acked(&summary, &frames, 11);
        assert!(frames.iter().all(|m| m.encrypted));
        assert_eq!(frames[9].token, Token::Null);
    }
}

#[tokio::test]
async fn nak_makes_the_panel_resend_with_the_receivers_clock() {
    // The first frame gets a NAK whose receiver time is an hour ahead.
    let receiver = Receiver::tcp(None, |i| if i == 0 { Act::Nak(3600) } else { Act::Ack }).await;
    let summary = run(config(&receiver, 3)).await;
    let c = summary.counts;
    assert_eq!(
        (c.attempted, c.acked, c.naks, c.retries, c.failed),
        (3, 3, 1, 1, 0)
    );
    let frames = receiver.frames();
    assert_eq!(frames.len(), 4);
    // The same event again, stamped with the corrected clock.
    assert_eq!(EventId::of(&frames[0]), EventId::of(&frames[1]));
    let ahead = frames[1].timestamp.unwrap() - OffsetDateTime::now_utc();
    assert!(ahead > time::Duration::minutes(50), "{ahead}");
    assert_eq!(summary.outcomes[0].attempts, 2);
    assert_eq!(summary.outcomes[1].attempts, 1);
}

#[tokio::test(start_paused = true)]
async fn silent_receiver_gets_the_same_sequence_after_the_timeout() {
    let receiver = Receiver::tcp(None, |i| if i == 0 { Act::Silent } else { Act::Ack }).await;
    let mut config = config(&receiver, 2);
    config.ack_timeout = Duration::from_secs(5);
    let summary = run(config).await;
    let c = summary.counts;
    assert_eq!(
        (c.attempted, c.acked, c.retries, c.failed, c.connects),
        (2, 2, 1, 0, 2),
        "{summary}"
    );
    let frames = receiver.frames();
    assert_eq!(frames.len(), 3);
    assert_eq!(EventId::of(&frames[0]), EventId::of(&frames[1]));
    assert_eq!(frames[1].seq, 1);
    assert_eq!(frames[2].seq, 2);
}

#[tokio::test(start_paused = true)]
async fn closed_connection_reconnects_and_retransmits() {
    let receiver = Receiver::tcp(None, |i| if i == 0 { Act::Close } else { Act::Ack }).await;
    let summary = run(config(&receiver, 2)).await;
    let c = summary.counts;
    assert_eq!((c.acked, c.retries, c.connects), (2, 1, 2), "{summary}");
    let frames = receiver.frames();
    assert_eq!(frames.iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 1, 2]);
}

#[tokio::test(start_paused = true)]
async fn udp_retransmits_after_the_timeout() {
    let receiver = Receiver::udp(None, |i| if i == 0 { Act::Silent } else { Act::Ack }).await;
    let mut config = config(&receiver, 1);
    config.transport = Transport::Udp;
    let summary = run(config).await;
    assert_eq!((summary.counts.acked, summary.counts.retries), (1, 1));
    let frames = receiver.frames();
    assert_eq!(frames.len(), 2);
    assert_eq!(EventId::of(&frames[0]), EventId::of(&frames[1]));
}

#[tokio::test(start_paused = true)]
async fn exhausted_retries_report_the_event_failed() {
    let receiver = Receiver::tcp(None, |_| Act::Silent).await;
    let mut config = config(&receiver, 1);
    config.retries = 2;
    let summary = run(config).await;
    let c = summary.counts;
    assert_eq!((c.acked, c.retries, c.failed), (0, 2, 1));
    assert_eq!(
        summary.outcomes[0].delivery,
        Delivery::Failed(FailReason::Timeout)
    );
    assert_eq!(summary.outcomes[0].attempts, 3);
    assert_eq!(summary.acked_events().count(), 0);
    let frames = receiver.frames();
    assert_eq!(frames.len(), 3);
    assert!(frames.iter().all(|m| m.seq == 1));
}

#[tokio::test]
async fn duh_is_reported_unsupported_and_not_retried() {
    let receiver = Receiver::tcp(None, |_| Act::Duh).await;
    let summary = run(config(&receiver, 3)).await;
    let c = summary.counts;
    assert_eq!(
        (c.attempted, c.acked, c.unsupported, c.retries, c.failed),
        (3, 0, 3, 0, 0)
    );
    assert_eq!(receiver.frames().len(), 3);
    assert!(
        summary
            .outcomes
            .iter()
            .all(|o| o.delivery == Delivery::Unsupported && o.attempts == 1)
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_a_panel_without_a_limit() {
    let receiver = Receiver::tcp(None, |_| Act::Ack).await;
    let mut config = config(&receiver, 0);
    config.count = None;
    config.interval = Duration::from_secs(1);
    config.scenario = ScenarioKind::Null;
    let shutdown = CancellationToken::new();
    let panel = simulator::Panel::new(config).unwrap();
    let mut progress = panel.progress();
    let task = tokio::spawn(panel.run(shutdown.clone()));
    // Wait until three link tests were ACKed, then stop.
    progress.wait_for(|p| p.acked >= 3).await.unwrap();
    shutdown.cancel();
    let summary = task.await.unwrap().unwrap();
    assert!(summary.counts.acked >= 3);
    assert_eq!(summary.counts.failed, 0);
    assert!(receiver.frames().iter().all(|m| m.token == Token::Null));
}

#[tokio::test]
async fn a_panel_sends_exactly_the_messages_it_is_given() {
    let receiver = Receiver::udp(None, |_| Act::Ack).await;
    let mut config = config(&receiver, 0);
    config.count = None;
    config.transport = Transport::Udp;
    let header = config.header();
    let messages: Vec<Message> = [(41, "1130 02 007"), (42, "3130 02 007")]
        .into_iter()
        .map(|(seq, cid)| Message {
            token: Token::AdmCid,
            seq,
            data: format!("#{ACCOUNT}|{cid}"),
            ..header.clone()
        })
        .collect();
    let panel = simulator::Panel::with_messages(config, messages.clone()).unwrap();
    let summary = panel.run(CancellationToken::new()).await.unwrap();
    assert_eq!((summary.counts.attempted, summary.counts.acked), (2, 2));
    let acked: Vec<EventId> = summary.acked_events().cloned().collect();
    assert_eq!(acked, messages.iter().map(EventId::of).collect::<Vec<_>>());
    assert_eq!(acked[0].payload, "1130 02 007");
    assert_eq!(
        receiver
            .frames()
            .iter()
            .map(EventId::of)
            .collect::<Vec<_>>(),
        acked
    );
}
