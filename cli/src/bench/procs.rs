//! The daemons under test as child processes, and what the kernel says they
//! cost: CPU time from `/proc/PID/stat` (utime + stime), resident memory and
//! its peak from `/proc/PID/status` (VmRSS, VmHWM).

use std::{
    fs::File,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};

/// Clock ticks per second of `/proc/PID/stat` (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;
/// Longest a daemon gets to take connections after it starts.
const START_WAIT: Duration = Duration::from_secs(20);

/// A daemon started by the bench; killed when dropped.
#[derive(Debug)]
pub(crate) struct Daemon {
    pub(crate) name: String,
    child: Child,
    log: PathBuf,
}

/// CPU and memory of a process.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Usage {
    /// User plus system CPU seconds since the process started.
    pub(crate) cpu_s: f64,
    pub(crate) rss_kb: u64,
    pub(crate) peak_rss_kb: u64,
}

impl Daemon {
    /// Starts `program args`, its stdout and stderr going to `log`.
    pub(crate) fn spawn(name: &str, program: &Path, args: &[&str], log: &Path) -> Result<Self> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(program)
            .args(args)
            // The daemons log warnings only: a line per connection would
            // cost the broker more than the routing under test.
            .env("RUST_LOG", "warn,rumqttd=off")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    pub(crate) fn usage(&self) -> Result<Usage> {
        usage_of(&self.child.id().to_string())
    }

    /// Fails with the end of its log if the daemon has exited.
    pub(crate) fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "{} exited ({status}); its log {} ends:\n{}",
                self.name,
                self.log.display(),
                tail.join("\n")
            );
        }
        Ok(())
    }

    /// Waits until the daemon accepts TCP connections on `addr`.
    pub(crate) async fn wait_listening(&mut self, addr: SocketAddr) -> Result<()> {
        let deadline = Instant::now() + START_WAIT;
        loop {
            self.check_running()?;
            if TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} does not listen on {addr} after {START_WAIT:?}",
                    self.name
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, and reap.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// CPU and memory of this process (the load generator).
pub(crate) fn own_usage() -> Result<Usage> {
    usage_of("self")
}

fn usage_of(pid: &str) -> Result<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime 14 and stime 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("/proc stat format")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        Ok(fields
            .get(i - 3)
            .context("/proc stat format")?
            .parse::<u64>()? as f64)
    };
    let cpu_s = (ticks(14)? + ticks(15)?) / TICKS_PER_SEC;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kb = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(Usage {
        cpu_s,
        rss_kb: kb("VmRSS:"),
        peak_rss_kb: kb("VmHWM:"),
    })
}

/// A free loopback port (bound and released: the daemon binds it again).
pub(crate) fn free_port() -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?)
}

/// The value of the counter `name` on the Prometheus endpoint at `addr`.
pub(crate) async fn scrape(addr: SocketAddr, name: &str) -> Result<f64> {
    let fetch = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut body = String::new();
        stream.take(4 << 20).read_to_string(&mut body).await?;
        anyhow::Ok(body)
    };
    let body = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .context("metrics endpoint did not answer")??;
    body.lines()
        .find_map(|l| {
            let (key, value) = l.split_once(' ')?;
            (key == name).then(|| value.trim().parse().ok())?
        })
        .with_context(|| format!("no {name} on http://{addr}/metrics"))
}

/// Writes a Mosquitto config for `listen` with the region's TLS files in
/// `pki`: client certificates required, the certificate CN as the user
/// name, and an ACL with the topic rules of DESIGN.md. Returns its path.
pub(crate) fn mosquitto_config(dir: &Path, pki: &Path, listen: SocketAddr) -> Result<PathBuf> {
    let acl = dir.join("mosquitto.acl");
    // `%u` is the user name, here the CN; `ops` is the ops center's CN.
    // Mosquitto has no rule tying the client id to the CN, which our broker
    // also enforces; it does not change the load.
    std::fs::write(
        &acl,
        "user ops\n\
         topic read vigil/v1/posts/+/events\n\
         topic read vigil/v1/posts/+/status\n\
         topic write vigil/v1/posts/+/receipts\n\
         topic write vigil/v1/posts/+/commands\n\n\
         pattern write vigil/v1/posts/%u/events\n\
         pattern write vigil/v1/posts/%u/status\n\
         pattern read vigil/v1/posts/%u/receipts\n\
         pattern read vigil/v1/posts/%u/commands\n",
    )
    .with_context(|| format!("writing {}", acl.display()))?;
    let user = if own_uid()? == 0 {
        // As root, Mosquitto would switch to the `mosquitto` user, who may
        // not read the bench folder.
        "user root\n"
    } else {
        ""
    };
    let text = format!(
        "# Written by `vigil bench`.\n{user}per_listener_settings false\npersistence false\nallow_anonymous false\n\
         log_dest stderr\nlog_type error\nlog_type warning\nmax_queued_messages 100000\n\
         acl_file {acl}\n\nlistener {port} {ip}\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n\
         require_certificate true\nuse_identity_as_username true\nmax_connections -1\n",
        acl = acl.display(),
        port = listen.port(),
        ip = listen.ip(),
        ca = pki.join("ca.pem").display(),
        cert = pki.join("broker.pem").display(),
        key = pki.join("broker.key").display(),
    );
    let path = dir.join("mosquitto.conf");
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn own_uid() -> Result<u32> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no Uid in /proc/self/status")
}

/// The path of `mosquitto` if it is installed.
pub(crate) fn find_mosquitto() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("mosquitto"))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_usage_reads_proc() {
        let u = own_usage().expect("usage");
        assert!(u.rss_kb > 0);
        assert!(u.peak_rss_kb >= u.rss_kb);
    }
}
