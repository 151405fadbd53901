//! The DC-09 receiver on real loopback sockets, fed frames built with the
//! codec: what each kind of frame gets back, and what reaches the outbox.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use time::OffsetDateTime;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
};
use tokio_util::sync::CancellationToken;
use vigil_dc09::{Key, KeyLookup, Message, Token, decode, encode};
use vigil_gateway::{
    config::Account,
    outbox::{Outbox, OutboxLimits},
    receiver::{self, Dc09Metrics, Receiver, ReceiverLimits},
    supervision::Supervisor,
};
use vigil_tests::gateway::stored;

const KEY128: &str = "000102030405060708090a0b0c0d0e0f";
const KEY256: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

struct Harness {
    addr: SocketAddr,
    outbox: Outbox,
    metrics: Arc<Dc09Metrics>,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn account(name: &str, key: Option<&str>) -> Account {
    Account {
        account: name.into(),
        key: key.map(|k| Key::from_hex(k).unwrap()),
        window_behind: Duration::from_secs(40),
        window_ahead: Duration::from_secs(20),
        supervision: None,
        require_timestamp: false,
    }
}

async fn start(limits: OutboxLimits, idle: Duration) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(&dir.path().join("outbox.db"), "p-017", limits).unwrap();
    let accounts = vec![
        account("1234", None),
        account("AB12", Some(KEY128)),
        account("CD34", Some(KEY256)),
        Account {
            require_timestamp: true,
            ..account("5678", None)
        },
    ];
    let supervisor = Supervisor::new(&accounts, outbox.clone());
    let metrics = Arc::new(Dc09Metrics::default());
    let receiver = Arc::new(Receiver::new(
        accounts,
        outbox.clone(),
        supervisor,
        metrics.clone(),
    ));
    let (tcp, udp) = receiver::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = tcp.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let limits = ReceiverLimits {
        max_connections: 8,
        max_connections_per_source: 8,
        preauth_timeout: idle,
        idle_timeout: idle,
        max_frame_bytes: 4105,
    };
    tokio::spawn(receiver::serve(
        receiver,
        tcp,
        udp,
        limits,
        shutdown.clone(),
    ));
    Harness {
        addr,
        outbox,
        metrics,
        shutdown,
        _dir: dir,
    }
}

fn message(
    token: Token,
    account: &str,
    seq: u16,
    data: &str,
    at: OffsetDateTime,
    encrypted: bool,
) -> Message {
    Message {
        encrypted,
        seq,
        receiver: Some("1".into()),
        data: data.into(),
        timestamp: Some(at),
        ..Message::new(token, account)
    }
}

fn frame(msg: &Message, key: Option<&str>) -> Vec<u8> {
    let key = key.map(|k| Key::from_hex(k).unwrap());
    encode(msg, key.as_ref(), &mut |pad: &mut [u8]| pad.fill(7)).unwrap()
}

/// Sends one frame on a TCP connection and reads one answer (or `None`
/// when nothing comes within a second).
async fn exchange(stream: &mut TcpStream, frame: &[u8]) -> Option<Vec<u8>> {
    stream.write_all(frame).await.unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut byte)).await {
            Err(_) => return None,
            Ok(Ok(0)) => return None,
            Ok(Ok(_)) => {
                buf.push(byte[0]);
                if byte[0] == b'\r' {
                    return Some(buf);
                }
            }
            Ok(Err(e)) => panic!("read: {e}"),
        }
    }
}

fn answer(bytes: &[u8], key: Option<&str>) -> Message {
    let lookup = |_: &str| match key {
        Some(k) => KeyLookup::Key(Key::from_hex(k).unwrap()),
        None => KeyLookup::Plaintext,
    };
    decode(bytes, &lookup).unwrap_or_else(|e| panic!("undecodable answer {bytes:?}: {e}"))
}

#[tokio::test]
async fn alarm_is_stored_before_it_is_acked() {
    let h = start(OutboxLimits::default(), Duration::from_secs(30)).await;
    let mut tcp = TcpStream::connect(h.addr).await.unwrap();
    let now = OffsetDateTime::now_utc();
    let msg = message(Token::AdmCid, "1234", 7, "#1234|1130 01 015", now, false);
    let ack = answer(&exchange(&mut tcp, &frame(&msg, None)).await.unwrap(), None);
    assert_eq!(
        (ack.token, ack.seq, ack.account.as_str()),
        (Token::Ack, 7, "1234")
    );
    // The ACK was sent after the commit: the event is there now.
    let events = stored(&h.outbox).await;
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].post_id.as_str(), events[0].seq), ("p-017", 1));
    assert!(
        events[0].description.contains("zone 15"),
        "{}",
        events[0].description
    );

    // Several frames on one connection, including a SIA block of two events.
    let sia = message(
        Token::SiaDcs,
        "1234",
        8,
        "#1234|Nri1/BA015/FA002",
        now,
        false,
    );
    let null = message(Token::Null, "1234", 9, "", now, false);
    for (m, seq) in [(&sia, 8), (&null, 9)] {
        let ack = answer(&exchange(&mut tcp, &frame(m, None)).await.unwrap(), None);
        assert_eq!((ack.token, ack.seq), (Token::Ack, seq));
    }
    let seqs: Vec<_> = stored(&h.outbox).await.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3], "NULL stores nothing");
    // Every ACK went through the latency histogram.
    assert_eq!(h.metrics.ack_latency.count(), 3);
}

#[tokio::test]
async fn retransmission_is_acked_again_but_stored_once() {
    let h = start(OutboxLimits::default(), Duration::from_secs(30)).await;
    let mut tcp = TcpStream::connect(h.addr).await.unwrap();
    let now = OffsetDateTime::now_utc();
    let first = message(Token::AdmCid, "1234", 21, "#1234|1130 01 003", now, false);
    // The panel refreshes the timestamp when it retries.
    let retry = message(
        Token::AdmCid,
        "1234",
        21,
        "#1234|1130 01 003",
        now + Duration::from_secs(5),
        false,
    );
    for m in [&first, &retry] {
        let ack = answer(&exchange(&mut tcp, &frame(m, None)).await.unwrap(), None);
        assert_eq!((ack.token, ack.seq), (Token::Ack, 21));
    }
    assert_eq!(stored(&h.outbox).await.len(), 1);
    assert_eq!(
        h.metrics
            .duplicates
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn refusals_get_their_protocol_answer() {
    let h = start(OutboxLimits::default(), Duration::from_secs(30)).await;
    let mut tcp = TcpStream::connect(h.addr).await.unwrap();
    let now = OffsetDateTime::now_utc();

    // Stale by 41 s (window 40 s behind): NAK with the receiver's time.
    let stale = message(
        Token::AdmCid,
        "1234",
        1,
        "#1234|1130 01 001",
        now - Duration::from_secs(41),
        false,
    );
    let nak = answer(
        &exchange(&mut tcp, &frame(&stale, None)).await.unwrap(),
        None,
    );
    assert_eq!(nak.token, Token::Nak);
    let skew = (nak.timestamp.unwrap() - OffsetDateTime::now_utc()).abs();
    assert!(skew < time::Duration::seconds(3), "{skew}");
    // 21 s in the future (window 20 s ahead): NAK.
    let future = message(
        Token::AdmCid,
        "1234",
        2,
        "#1234|1130 01 001",
        now + Duration::from_secs(21),
        false,
    );
    assert_eq!(
        answer(
            &exchange(&mut tcp, &frame(&future, None)).await.unwrap(),
            None
        )
        .token,
        Token::Nak
    );
    // Unknown account: NAK.
    let unknown = message(Token::AdmCid, "9999", 3, "#9999|1130 01 001", now, false);
    assert_eq!(
        answer(
            &exchange(&mut tcp, &frame(&unknown, None)).await.unwrap(),
            None
        )
        .token,
        Token::Nak
    );
    // Clear text from an account configured for encryption: NAK.
    let clear = message(Token::AdmCid, "AB12", 4, "#AB12|1130 01 001", now, false);
    assert_eq!(
        answer(
            &exchange(&mut tcp, &frame(&clear, None)).await.unwrap(),
            None
        )
        .token,
        Token::Nak
    );
    // Encrypted with the wrong key: NAK.
    let wrong = message(Token::AdmCid, "AB12", 5, "#AB12|1130 01 001", now, true);
    let bytes = frame(&wrong, Some("ffffffffffffffffffffffffffffffff"));
    assert_eq!(
        answer(&exchange(&mut tcp, &bytes).await.unwrap(), None).token,
        Token::Nak
    );
    // A token we do not support: DUH.
    let odd = message(Token::Unknown("RSP".into()), "1234", 6, "", now, false);
    assert_eq!(
        answer(&exchange(&mut tcp, &frame(&odd, None)).await.unwrap(), None).token,
        Token::Duh
    );
    // A Contact ID block that does not parse: DUH.
    let bad_cid = message(Token::AdmCid, "1234", 7, "#1234|9130 01 001", now, false);
    assert_eq!(
        answer(
            &exchange(&mut tcp, &frame(&bad_cid, None)).await.unwrap(),
            None
        )
        .token,
        Token::Duh
    );
    // Damaged in transit (bad CRC): silence, and the connection still works.
    let mut damaged = frame(
        &message(Token::AdmCid, "1234", 8, "#1234|1130 01 001", now, false),
        None,
    );
    damaged[1] = if damaged[1] == b'0' { b'1' } else { b'0' };
    assert_eq!(exchange(&mut tcp, &damaged).await, None);
    let good = message(Token::AdmCid, "1234", 9, "#1234|1130 01 001", now, false);
    assert_eq!(
        answer(
            &exchange(&mut tcp, &frame(&good, None)).await.unwrap(),
            None
        )
        .token,
        Token::Ack
    );

    assert_eq!(
        stored(&h.outbox).await.len(),
        1,
        "only the good frame is stored"
    );
    let m = &h.metrics;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(load(&m.nak_stale), 2);
    assert_eq!(load(&m.nak_unknown_account), 1);
    assert_eq!(load(&m.nak_undecryptable), 2);
    assert_eq!(load(&m.duh), 2);
    assert_eq!(load(&m.dropped_damaged), 1);
}

#[tokio::test]
async fn encrypted_panels_get_encrypted_acks_over_tcp_and_udp() {
    let h = start(OutboxLimits::default(), Duration::from_secs(30)).await;
    let now = OffsetDateTime::now_utc();
    let mut tcp = TcpStream::connect(h.addr).await.unwrap();
    let m = message(Token::AdmCid, "AB12", 11, "#AB12|1110 01 004", now, true);
    let reply = exchange(&mut tcp, &frame(&m, Some(KEY128))).await.unwrap();
    assert!(
        reply.starts_with(b"\n") && reply.windows(6).any(|w| w == b"\"*ACK\""),
        "{reply:?}"
    );
    let ack = answer(&reply, Some(KEY128));
    assert_eq!((ack.token, ack.encrypted, ack.seq), (Token::Ack, true, 11));

    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let m = message(Token::SiaDcs, "CD34", 12, "#CD34|Nri1/PA001", now, true);
    udp.send_to(&frame(&m, Some(KEY256)), h.addr).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), udp.recv_from(&mut buf))
        .await
        .expect("UDP answer")
        .unwrap();
    let ack = answer(&buf[..n], Some(KEY256));
    assert_eq!((ack.token, ack.encrypted, ack.seq), (Token::Ack, true, 12));

    let events = stored(&h.outbox).await;
    let sources: Vec<_> = events
        .iter()
        .map(|e| e.source.as_ref().unwrap().device_id.as_str())
        .collect();
    assert_eq!(sources, vec!["AB12", "CD34"]);
}

#[tokio::test]
async fn a_full_outbox_naks_and_stores_nothing() {
    let limits = OutboxLimits {
        max_events: 1,
        ..Default::default()
    };
    let h = start(limits, Duration::from_secs(30)).await;
    let mut tcp = TcpStream::connect(h.addr).await.unwrap();
    let now = OffsetDateTime::now_utc();
    let a = message(Token::AdmCid, "1234", 1, "#1234|1130 01 001", now, false);
    let b = message(Token::AdmCid, "1234", 2, "#1234|1130 01 002", now, false);
    assert_eq!(
        answer(&exchange(&mut tcp, &frame(&a, None)).await.unwrap(), None).token,
        Token::Ack
    );
    assert_eq!(
        answer(&exchange(&mut tcp, &frame(&b, None)).await.unwrap(), None).token,
        Token::Nak
    );
    assert_eq!(stored(&h.outbox).await.len(), 1);
    // Once receipted, the panel's retry is accepted.
    h.outbox.receipt(1).await.unwrap();
    assert_eq!(
        answer(&exchange(&mut tcp, &frame(&b, None)).await.unwrap(), None).token,
        Token::Ack
    );
}

#[tokio::test]
async fn idle_and_silent_connections_do_not_delay_other_panels() {
    let h = start(OutboxLimits::default(), Duration::from_millis(300)).await;
    // Seven silent sockets (one below the cap) and one sending half a frame.
    let mut idle = Vec::new();
    for _ in 0..6 {
        idle.push(TcpStream::connect(h.addr).await.unwrap());
    }
    let mut partial = TcpStream::connect(h.addr).await.unwrap();
    partial.write_all(b"\n1234").await.unwrap();

    let now = OffsetDateTime::now_utc();
    let mut tcp = TcpStream::connect(h.addr).await.unwrap();
    let m = message(Token::AdmCid, "1234", 1, "#1234|1130 01 001", now, false);
    assert_eq!(
        answer(&exchange(&mut tcp, &frame(&m, None)).await.unwrap(), None).token,
        Token::Ack
    );

    // The idle ones are closed by the receiver after the idle timeout.
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(5), partial.read(&mut byte)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
}

#[tokio::test]
async fn an_account_that_requires_timestamps_naks_untimed_clear_frames() {
    let h = start(OutboxLimits::default(), Duration::from_secs(30)).await;
    let mut tcp = TcpStream::connect(h.addr).await.unwrap();
    let now = OffsetDateTime::now_utc();
    let untimed = |account: &str, seq| Message {
        timestamp: None,
        ..message(Token::AdmCid, account, seq, "#5678|1130 01 001", now, false)
    };
    // The account that requires one: NAK, nothing stored.
    let reply = exchange(&mut tcp, &frame(&untimed("5678", 1), None))
        .await
        .unwrap();
    assert_eq!(answer(&reply, None).token, Token::Nak);
    assert_eq!(h.metrics.nak_untimed.load(Ordering::Relaxed), 1);
    assert_eq!(h.outbox.state().last_seq, 0);
    // The same account with a timestamp: ACK.
    let timed = message(Token::AdmCid, "5678", 2, "#5678|1130 01 001", now, false);
    let reply = exchange(&mut tcp, &frame(&timed, None)).await.unwrap();
    assert_eq!(answer(&reply, None).token, Token::Ack);
    // An account without the option still takes untimed frames.
    let reply = exchange(&mut tcp, &frame(&untimed("1234", 3), None))
        .await
        .unwrap();
    assert_eq!(answer(&reply, None).token, Token::Ack);
}

#[tokio::test]
async fn bytes_that_never_make_a_valid_frame_do_not_keep_a_connection() {
    let h = start(OutboxLimits::default(), Duration::from_millis(500)).await;
    // A talker that keeps sending garbage: traffic, but never a valid frame.
    let mut talker = TcpStream::connect(h.addr).await.unwrap();
    let mut panel = TcpStream::connect(h.addr).await.unwrap();
    let now = OffsetDateTime::now_utc();
    let m = message(Token::AdmCid, "1234", 1, "#1234|1130 01 001", now, false);
    let reply = exchange(&mut panel, &frame(&m, None)).await.unwrap();
    assert_eq!(answer(&reply, None).token, Token::Ack);
    let mut byte = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if talker.write_all(b"garbage garbage\r\n").await.is_err() {
                return;
            }
            // Between writes, a short look for the server's close.
            let read = tokio::time::timeout(Duration::from_millis(50), talker.read(&mut byte));
            if let Ok(Ok(0) | Err(_)) = read.await {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the garbage talker is closed");
    let stats = h.metrics.listener.snapshot();
    assert_eq!(stats.preauth_timeouts, 1, "{stats:?}");
    assert_eq!(stats.authenticated, 1, "{stats:?}");
}

/// Captured log output of the current thread (see `garbage_...` below).
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// Current-thread runtime: the receiver's tasks log on this thread, into the
// thread-local subscriber; other tests of this binary are not captured.
#[tokio::test]
async fn garbage_datagrams_are_counted_each_but_logged_once_per_interval() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let c = captured.clone();
            move || c.clone()
        })
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let h = start(OutboxLimits::default(), Duration::from_secs(30)).await;
    let began = std::time::Instant::now();
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // Frames with a bad CRC: dropped without an answer.
    let garbage = b"\nFFFF0030\"SIA-DCS\"0001L0#1234[#1234|Nri1/BA01]\r";
    const SENT: u64 = 2000;
    for _ in 0..SENT {
        udp.send_to(garbage, h.addr).await.unwrap();
    }
    let counted = || {
        h.metrics
            .dropped_damaged
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    // Bounded wait; loopback may shed a few datagrams, the receiver none.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while counted() < SENT / 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} counted",
            counted()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("damaged frame dropped"))
        .collect();
    // At most one line per 10 s interval (the process-wide limiter may
    // already have spent its line on another test of this binary: zero is
    // fine too), against thousands of datagrams.
    let intervals = began.elapsed().as_secs() / 10 + 1;
    assert!(
        lines.len() as u64 <= intervals,
        "{} datagrams counted, {} lines: {lines:?}",
        counted(),
        lines.len()
    );
}
