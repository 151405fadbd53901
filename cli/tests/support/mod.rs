//! What the CLI tests share: running `vigil`, and stopping a daemon with
//! SIGTERM the way systemd does.

#![allow(dead_code, unreachable_pub)]

use std::{
    process::{Child, Command, ExitStatus},
    time::{Duration, Instant},
};

/// How long a daemon gets to stop after SIGTERM.
pub const STOP_WAIT: Duration = Duration::from_secs(30);

/// Runs `vigil ARGS` to completion.
pub fn vigil(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(args)
        .output()
        .expect("run vigil")
}

/// Sends SIGTERM to `child` and waits (bounded) for it to exit.
pub fn sigterm_and_wait(child: &mut Child) -> ExitStatus {
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(kill.success());
    let deadline = Instant::now() + STOP_WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("the daemon did not stop within {STOP_WAIT:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET /metrics` from a Prometheus endpoint; the body, or `None` when
/// nothing answers (yet).
pub fn scrape(addr: std::net::SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: vigil\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
}

/// The value of the sample `name` (with its labels, e.g.
/// `vigil_x_total{reason="a"}`) in a scrape.
pub fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}
