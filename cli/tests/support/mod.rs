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
