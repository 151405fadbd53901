//! Running the `vigil` binary against a [`vigil_tests::center::Center`]
//! (the operations center the client tests share with the API's tests).

#![allow(dead_code, unreachable_pub)]

use std::process::{Command, Output};

pub use vigil_tests::center::{Center, WAIT, alarm, now_secs};

/// `vigil ARGS` with `env` set and no `VIGIL_*` inherited from the test's
/// own environment.
pub fn command<S: AsRef<std::ffi::OsStr>>(args: &[S], env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vigil"));
    for var in [
        "VIGIL_SERVER",
        "VIGIL_CA",
        "VIGIL_CERT",
        "VIGIL_KEY",
        "VIGIL_CRL",
    ] {
        cmd.env_remove(var);
    }
    cmd.args(args).envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

/// Runs `vigil ARGS` to completion off the async runtime (the ops center
/// in this process keeps serving meanwhile).
pub async fn run_vigil(args: Vec<String>, env: Vec<(String, String)>) -> Output {
    let out = tokio::time::timeout(
        WAIT,
        tokio::task::spawn_blocking(move || command(&args, &env).output().expect("run vigil")),
    )
    .await
    .expect("vigil finishes in time")
    .unwrap();
    eprintln!(
        "vigil exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
