//! Reading a secret from the controlling terminal with echo off.
//!
//! The terminal is `/dev/tty`, not stdin: a passphrase prompt must reach
//! the person even when stdin or stdout is a pipe. Echo is turned off with
//! termios through rustix (safe bindings, already in the tree) and turned
//! back on before returning, whatever the read gave.

use std::{
    fs::OpenOptions,
    io::{self, BufRead, BufReader, Write},
};

use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};

/// Writes `prompt` to the terminal and reads one line without echo.
/// `Ok(None)` when the process has no terminal (a timer, a pipe-only
/// script): the caller says where else a secret can come from.
pub(crate) fn read_hidden(prompt: &str) -> io::Result<Option<String>> {
    let tty = match OpenOptions::new().read(true).write(true).open("/dev/tty") {
        Ok(tty) => tty,
        // ENXIO: no controlling terminal; absent on some containers.
        Err(e) if e.raw_os_error() == Some(6) || e.kind() == io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let saved = match tcgetattr(&tty) {
        Ok(saved) => saved,
        // Not a terminal after all.
        Err(_) => return Ok(None),
    };
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    (&tty).write_all(prompt.as_bytes())?;
    (&tty).flush()?;
    tcsetattr(&tty, OptionalActions::Flush, &quiet)?;
    let mut line = String::new();
    let read = BufReader::new(&tty).read_line(&mut line);
    let restored = tcsetattr(&tty, OptionalActions::Now, &saved);
    // The Enter the person typed was not echoed either.
    let _ = (&tty).write_all(b"\n");
    read?;
    restored?;
    while line.ends_with(['\n', '\r']) {
        line.pop();
    }
    Ok(Some(line))
}
