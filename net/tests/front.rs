//! The plumbing against real sockets on loopback: deadlines, caps,
//! shedding, TLS, HTTP/1. Attackers bind 127.0.0.2 so per-source caps can
//! tell them from the valid client on 127.0.0.1.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpSocket, TcpStream},
    task::JoinHandle,
};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;
use vigil_net::{Conn, Front, Limits};
use vigil_pki::{Identity, Role, TlsConfig, authority};

/// Longest any expectation waits; a hang fails the test instead.
const WAIT: Duration = Duration::from_secs(20);

fn limits(total: usize, per_source: usize, preauth_ms: u64) -> Limits {
    Limits {
        max_connections: total,
        max_per_source: per_source,
        preauth_deadline: Duration::from_millis(preauth_ms),
        idle_timeout: Some(Duration::from_secs(30)),
        grace: Duration::from_secs(2),
    }
}

/// A line protocol: `HELLO` authenticates and is answered `OK`; then every
/// line is echoed. Anything else before `HELLO` is ignored.
async fn hello<S: AsyncRead + AsyncWrite + Unpin>(conn: Conn<S>) {
    let auth = conn.authenticator();
    let mut lines = BufReader::new(conn);
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let reply = if line.trim() == "HELLO" {
            auth.authenticated();
            "OK\n".to_owned()
        } else if auth.is_authenticated() {
            line.clone()
        } else {
            continue;
        };
        if lines.get_mut().write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

struct Running {
    addr: SocketAddr,
    front: Front,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

async fn plain(limits: Limits) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let front = Front::new("test", limits);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (front, shutdown) = (front.clone(), shutdown.clone());
        async move { front.serve(listener, shutdown, hello).await }
    });
    Running {
        addr,
        front,
        shutdown,
        task,
    }
}

async fn connect_from(source: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    socket.connect(to).await.unwrap()
}

/// Says HELLO and checks the echo of one line.
async fn valid_exchange<S: AsyncRead + AsyncWrite + Unpin>(stream: S) -> std::io::Result<()> {
    let mut lines = BufReader::new(stream);
    lines.get_mut().write_all(b"HELLO\nping\n").await?;
    let mut got = String::new();
    lines.read_line(&mut got).await?;
    assert_eq!(got, "OK\n");
    got.clear();
    lines.read_line(&mut got).await?;
    assert_eq!(got, "ping\n");
    Ok(())
}

/// Waits until the peer closes `stream` (EOF or reset), skipping what it
/// sends first (a TLS alert, say).
async fn closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    let until_closed = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(WAIT, until_closed).await.is_ok()
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn silent_connections_are_closed_at_the_preauth_deadline_authenticated_ones_stay() {
    let server = plain(limits(16, 16, 300)).await;
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut good = BufReader::new(TcpStream::connect(server.addr).await.unwrap());
    good.get_mut().write_all(b"HELLO\n").await.unwrap();
    let mut line = String::new();
    good.read_line(&mut line).await.unwrap();
    assert_eq!(line, "OK\n");
    assert!(closed(&mut silent).await, "the silent socket is closed");
    // The authenticated one outlives the deadline and still answers.
    good.get_mut().write_all(b"after\n").await.unwrap();
    line.clear();
    good.read_line(&mut line).await.unwrap();
    assert_eq!(line, "after\n");
    let stats = server.front.stats().snapshot();
    assert_eq!((stats.preauth_timeouts, stats.authenticated), (1, 1));
    server.stop().await;
}

#[tokio::test]
async fn at_the_cap_the_oldest_unauthenticated_connection_makes_room() {
    let server = plain(limits(4, 4, 60_000)).await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(connect_from([127, 0, 0, 2], server.addr).await);
    }
    let stats = server.front.stats();
    eventually("four admitted", || stats.snapshot().open == 4).await;
    // The newcomer is admitted and served; the oldest idle socket goes.
    let valid = TcpStream::connect(server.addr).await.unwrap();
    valid_exchange(valid).await.unwrap();
    assert!(
        closed(&mut idle[0]).await,
        "the oldest idle socket was shed"
    );
    assert_eq!(stats.snapshot().shed, 1);
    server.stop().await;
}

#[tokio::test]
async fn a_source_at_its_cap_sheds_its_own_and_spares_others() {
    let server = plain(limits(64, 3, 60_000)).await;
    let stats = server.front.stats();
    // An authenticated peer from the attacker's address range is not touched.
    let mut attackers = Vec::new();
    for _ in 0..3 {
        attackers.push(connect_from([127, 0, 0, 2], server.addr).await);
    }
    eventually("three admitted", || stats.snapshot().open == 3).await;
    let mut fourth = connect_from([127, 0, 0, 2], server.addr).await;
    assert!(closed(&mut attackers[0]).await, "its own oldest was shed");
    valid_exchange(TcpStream::connect(server.addr).await.unwrap())
        .await
        .unwrap();
    // The fourth is still open: a line after HELLO is echoed.
    valid_exchange(&mut fourth).await.unwrap();
    let s = stats.snapshot();
    assert_eq!((s.shed, s.refused_source, s.refused_full), (1, 0, 0));
    server.stop().await;
}

#[tokio::test]
async fn when_everyone_is_authenticated_the_newcomer_is_refused() {
    let server = plain(limits(2, 2, 60_000)).await;
    let mut a = TcpStream::connect(server.addr).await.unwrap();
    let mut b = TcpStream::connect(server.addr).await.unwrap();
    valid_exchange(&mut a).await.unwrap();
    valid_exchange(&mut b).await.unwrap();
    let mut c = TcpStream::connect(server.addr).await.unwrap();
    assert!(closed(&mut c).await);
    assert_eq!(server.front.stats().snapshot().refused_source, 1);
    drop(a);
    let stats = server.front.stats();
    eventually("a's slot freed", || stats.snapshot().open == 1).await;
    valid_exchange(TcpStream::connect(server.addr).await.unwrap())
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn authenticated_peers_fall_to_the_idle_timeout() {
    let server = plain(Limits {
        idle_timeout: Some(Duration::from_millis(400)),
        ..limits(8, 8, 100)
    })
    .await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    valid_exchange(&mut conn).await.unwrap();
    assert!(closed(&mut conn).await);
    assert_eq!(server.front.stats().snapshot().idle_timeouts, 1);
    server.stop().await;
}

struct Pki {
    _dir: tempfile::TempDir,
    acceptor: TlsAcceptor,
    connector: TlsConnector,
}

fn pki() -> Pki {
    vigil_pki::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    authority::init(p, "test CA").unwrap();
    let id = |s| Identity::new(s).unwrap();
    authority::issue(p, Role::Ops, &id("ops-1"), &["127.0.0.1".into()], 1, false).unwrap();
    authority::issue(p, Role::Analyst, &id("alice"), &[], 1, false).unwrap();
    let load = |name: &str| {
        TlsConfig {
            ca: p.join("ca.pem"),
            cert: p.join(format!("{name}.pem")),
            key: p.join(format!("{name}.key")),
            crl: None,
        }
        .load()
        .unwrap()
    };
    Pki {
        acceptor: TlsAcceptor::from(Arc::new(load("ops-1").server_config().unwrap())),
        connector: TlsConnector::from(Arc::new(load("alice").client_config().unwrap())),
        _dir: dir,
    }
}

#[tokio::test]
async fn half_done_tls_handshakes_neither_block_nor_outlive_the_deadline() {
    let pki = pki();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let front = Front::new("tls", limits(8, 4, 500));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (front, shutdown, acceptor) = (front.clone(), shutdown.clone(), pki.acceptor.clone());
        async move {
            front
                .serve_tls(listener, acceptor, shutdown, |conn| async move {
                    // Mutual TLS done: that is authentication here.
                    conn.authenticated();
                    hello(conn).await;
                })
                .await;
        }
    });
    // Six attackers send a ClientHello's first bytes and stop: more than
    // the per-source cap of 4.
    let mut attackers = Vec::new();
    for _ in 0..6 {
        let mut s = connect_from([127, 0, 0, 2], addr).await;
        s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
            .await
            .unwrap();
        attackers.push(s);
    }
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tls = pki.connector.connect(name, tcp).await.unwrap();
    valid_exchange(tls).await.unwrap();
    for s in &mut attackers {
        assert!(closed(s).await, "every half-done handshake ends");
    }
    let stats = front.stats().snapshot();
    assert_eq!(stats.authenticated, 1);
    assert_eq!(stats.shed + stats.preauth_timeouts, 6, "{stats:?}");
    // A client with garbage instead of a ClientHello is counted.
    let mut junk = TcpStream::connect(addr).await.unwrap();
    junk.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert!(closed(&mut junk).await);
    eventually("tls failure counted", || {
        front.stats().snapshot().tls_failures == 1
    })
    .await;
    shutdown.cancel();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn http1_serves_requests_past_idle_sockets_and_sheds_them() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let front = Front::new("http", limits(4, 4, 60_000));
    let shutdown = CancellationToken::new();
    let service = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
        let path = req.uri().path().to_owned();
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(path))))
    });
    let task = tokio::spawn({
        let (front, shutdown) = (front.clone(), shutdown.clone());
        async move { vigil_net::http::serve(&front, listener, shutdown, service).await }
    });
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(connect_from([127, 0, 0, 2], addr).await);
    }
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    for path in ["/a", "/b"] {
        let req = Request::get(path).body(Empty::<Bytes>::new()).unwrap();
        let resp = send.send_request(req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, path.as_bytes());
    }
    let stats = front.stats().snapshot();
    assert_eq!(stats.authenticated, 1);
    assert!(stats.shed >= 5, "{stats:?}");
    assert!(closed(&mut idle[0]).await);
    shutdown.cancel();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_lets_handlers_finish_then_drops_the_stuck_ones() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let front = Front::new(
        "stuck",
        Limits {
            grace: Duration::from_millis(200),
            ..limits(8, 8, 60_000)
        },
    );
    let shutdown = CancellationToken::new();
    let (polite_done_tx, mut polite_done) = tokio::sync::mpsc::channel::<()>(1);
    let task = tokio::spawn({
        let (front, shutdown) = (front.clone(), shutdown.clone());
        async move {
            front
                .serve(listener, shutdown, move |mut conn| {
                    let done = polite_done_tx.clone();
                    async move {
                        let mut first = [0u8; 1];
                        if conn.read_exact(&mut first).await.is_err() {
                            return;
                        }
                        conn.authenticated();
                        if first[0] == b'p' {
                            // Polite: finishes its message on shutdown.
                            conn.shutdown().cancelled().await;
                            let _ = conn.write_all(b"bye").await;
                            let _ = done.send(()).await;
                        } else {
                            // Stuck: ignores shutdown altogether.
                            std::future::pending::<()>().await;
                        }
                    }
                })
                .await;
        }
    });
    let mut polite = TcpStream::connect(addr).await.unwrap();
    let mut stuck = TcpStream::connect(addr).await.unwrap();
    polite.write_all(b"p").await.unwrap();
    stuck.write_all(b"s").await.unwrap();
    let stats = front.stats();
    eventually("both authenticated", || stats.snapshot().authenticated == 2).await;
    shutdown.cancel();
    let mut bye = [0u8; 3];
    polite.read_exact(&mut bye).await.unwrap();
    assert_eq!(&bye, b"bye");
    assert!(polite_done.recv().await.is_some());
    // serve returns once the grace period is over, the stuck handler dropped.
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    assert!(closed(&mut stuck).await);
    assert_eq!(stats.snapshot().open, 0);
}

#[tokio::test]
async fn a_handshake_of_the_servers_own_runs_per_connection_and_its_failures_count() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let front = Front::new("own-handshake", limits(8, 8, 5_000));
    let shutdown = CancellationToken::new();
    // The server's own "handshake": the first line must be `v1`; anything
    // else fails it (and the handler never runs).
    let handshake = |tcp: TcpStream| async move {
        let mut tcp = BufReader::new(tcp);
        let mut line = String::new();
        tcp.read_line(&mut line).await?;
        if line.trim() != "v1" {
            return Err(std::io::Error::other("unknown version"));
        }
        Ok(tcp)
    };
    let task = tokio::spawn({
        let (front, shutdown) = (front.clone(), shutdown.clone());
        async move {
            front
                .serve_with_handshake(listener, shutdown, handshake, hello)
                .await
        }
    });
    // An idle socket stuck in its handshake delays nobody.
    let _idle = connect_from([127, 0, 0, 2], addr).await;
    let mut bad = TcpStream::connect(addr).await.unwrap();
    bad.write_all(b"v0\nHELLO\n").await.unwrap();
    assert!(closed(&mut bad).await, "a failed handshake closes");
    let mut good = TcpStream::connect(addr).await.unwrap();
    good.write_all(b"v1\n").await.unwrap();
    valid_exchange(good).await.unwrap();
    let s = front.stats().snapshot();
    assert_eq!((s.tls_failures, s.authenticated), (1, 1), "{s:?}");
    shutdown.cancel();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}
