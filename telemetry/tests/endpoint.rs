//! The endpoint over a real socket: what a scraper sees.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;
use vigil_telemetry::{Exposition, serve};

async fn request(addr: std::net::SocketAddr, method: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        s.read_to_string(&mut out),
    )
    .await
    .expect("answer in time")
    .unwrap();
    out
}

#[tokio::test]
async fn scrapes_see_current_values_and_other_requests_are_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counter = Arc::new(AtomicU64::new(0));
    let render = {
        let counter = counter.clone();
        Arc::new(move || {
            let mut e = Exposition::new();
            e.counter("demo_total", "A demo.", counter.load(Ordering::Relaxed));
            e.render()
        })
    };
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(listener, render, shutdown.clone()));

    counter.store(7, Ordering::Relaxed);
    let first = request(addr, "GET", "/metrics").await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(first.contains("text/plain; version=0.0.4"), "{first}");
    assert!(
        first.contains(
            "\r\n\r\n# HELP demo_total A demo.\n# TYPE demo_total counter\ndemo_total 7\n"
        ),
        "{first}"
    );

    counter.store(9, Ordering::Relaxed);
    assert!(
        request(addr, "GET", "/metrics")
            .await
            .contains("demo_total 9\n")
    );
    assert!(request(addr, "GET", "/").await.starts_with("HTTP/1.1 404"));
    assert!(
        request(addr, "POST", "/metrics")
            .await
            .starts_with("HTTP/1.1 405")
    );

    shutdown.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .expect("server stops on shutdown")
        .unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still listening after shutdown"
    );
}
