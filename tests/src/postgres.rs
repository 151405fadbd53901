//! A throwaway PostgreSQL server for tests: `initdb` into a temporary
//! folder, `postgres` listening only on a Unix socket in that folder (no TCP
//! port, so nothing collides), stopped and deleted on drop.
//!
//! The server binaries come from `VIGIL_PG_BIN` or Debian's
//! `/usr/lib/postgresql/N/bin` (the highest N). `initdb` refuses to run as
//! root, so as root the server runs as the `postgres` user (which Debian's
//! package creates) and the folder is handed to it.
//!
//! Without PostgreSQL, [`Postgres::start`] returns `None` and the test says
//! it skipped; with `VIGIL_REQUIRE_POSTGRES=1` (CI) it panics instead.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The port number: it only names the socket file, in a folder of ours.
const PORT: u16 = 5432;
/// The superuser `initdb` creates, and the user tests connect as.
pub const USER: &str = "vigil";

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// The `postgres` user's uid and gid, when running as root.
    run_as: Option<(u32, u32)>,
    child: Option<Child>,
    next_db: std::sync::atomic::AtomicU32,
    /// The loopback TCP port it also listens on, if asked for.
    tcp: Option<u16>,
    /// With TLS on TCP: the CA file its certificate chains to.
    ca: Option<PathBuf>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("socket_dir", &self.socket_dir())
            .finish_non_exhaustive()
    }
}

fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("VIGIL_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let n: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((n, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// Runs `f` on a thread of its own: the blocking client must not run on a
/// thread that drives async tasks (tests call this from `#[tokio::test]`).
fn own_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().expect("thread"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

fn uid_gid(user: &str) -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, user]).output().ok()?;
        std::str::from_utf8(&out.stdout).ok()?.trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

impl Postgres {
    /// Starts a fresh server, or `None` when PostgreSQL is not installed
    /// (panics instead when `VIGIL_REQUIRE_POSTGRES` is set).
    pub fn start() -> Option<Postgres> {
        Self::start_with(false, false)
    }

    /// [`Self::start_tcp`] with TLS on: a certificate for `127.0.0.1` from a
    /// CA of its own ([`Self::ca`]).
    pub fn start_tls() -> Option<Postgres> {
        Self::start_with(true, true)
    }

    /// The CA file of a server started with [`Self::start_tls`].
    pub fn ca(&self) -> &Path {
        self.ca.as_deref().expect("started with start_tls")
    }

    /// [`Self::start`], listening on a loopback TCP port as well (for a
    /// fault proxy in between: [`Self::tcp_addr`], [`Self::tcp_url`]).
    pub fn start_tcp() -> Option<Postgres> {
        Self::start_with(true, false)
    }

    fn start_with(tcp: bool, tls: bool) -> Option<Postgres> {
        let required = std::env::var_os("VIGIL_REQUIRE_POSTGRES").is_some();
        let Some(bin) = bin_dir() else {
            assert!(
                !required,
                "VIGIL_REQUIRE_POSTGRES is set but no PostgreSQL server was found \
                 (install Debian's postgresql, or set VIGIL_PG_BIN)"
            );
            eprintln!("skipped: no PostgreSQL server installed (Debian: apt install postgresql)");
            return None;
        };
        let run_as = is_root()
            .then(|| uid_gid("postgres").expect("the postgres user exists (Debian's package)"));
        let dir = tempfile::Builder::new()
            .prefix("vigil-pg")
            .tempdir()
            .expect("temporary folder");
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
        }
        let pg = Postgres {
            dir,
            bin,
            run_as,
            child: None,
            next_db: 0.into(),
            tcp: tcp.then(|| {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .expect("a free port")
                    .port()
            }),
            ca: None,
        };
        let status = pg
            .command("initdb")
            .args(["-D"])
            .arg(pg.data_dir())
            .args([
                "-U",
                USER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("run initdb");
        assert!(
            status.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        let mut pg = pg;
        if tls {
            pg.ca = Some(pg.certificate());
        }
        pg.run();
        Some(pg)
    }

    /// A server program, as the `postgres` user when we are root (as its
    /// direct child, so that killing and reaping it needs nobody between).
    /// A CA of its own and a certificate for 127.0.0.1 in the data folder
    /// (`server.crt`, `server.key`, the key readable by the server alone);
    /// returns the CA file.
    fn certificate(&self) -> PathBuf {
        use vigil_pki::{Identity, Role, authority};
        let pki = self.dir.path().join("pki");
        authority::init(&pki, "PostgreSQL test CA").expect("a CA");
        let sans = ["127.0.0.1".to_owned(), "localhost".to_owned()];
        let id = Identity::new("postgres-test").expect("identity");
        authority::issue(&pki, Role::Broker, &id, &sans, 30, false).expect("a certificate");
        let data = self.data_dir();
        for (from, to, mode) in [
            ("postgres-test.pem", "server.crt", 0o644),
            ("postgres-test.key", "server.key", 0o600),
        ] {
            let to = data.join(to);
            std::fs::copy(pki.join(from), &to).expect("copy the certificate");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode)).expect("chmod");
            if let Some((uid, gid)) = self.run_as {
                std::os::unix::fs::chown(&to, Some(uid), Some(gid)).expect("chown");
            }
        }
        pki.join("ca.pem")
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.run_as {
            use std::os::unix::process::CommandExt;
            c.uid(uid).gid(gid);
        }
        c
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The folder holding the server's socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the server process and waits until it accepts connections.
    fn run(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        // After a kill -9, the old server's backends may hold its shared
        // memory for a moment: the new one refuses to start until they
        // are gone, so it is started again until it stays up.
        loop {
            if self.run_once(deadline) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn run_once(&mut self, deadline: Instant) -> bool {
        let log = std::fs::File::create(self.dir.path().join("server.log")).expect("log file");
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(self.dir.path().join("server.log"), Some(uid), Some(gid))
                .expect("chown");
        }
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-k")
            .arg(self.socket_dir())
            .args(["-p", &self.port().to_string()])
            .args([
                "-c",
                if self.tcp.is_some() {
                    "listen_addresses=127.0.0.1"
                } else {
                    "listen_addresses="
                },
            ])
            .args(if self.ca.is_some() {
                ["-c", "ssl=on"]
            } else {
                ["-c", "ssl=off"]
            })
            // Tests kill processes, not machines: no fsync needed.
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=200"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        loop {
            if own_thread(|| {
                postgres::Client::connect(&self.url("postgres"), postgres::NoTls).map(drop)
            })
            .is_ok()
            {
                return true;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                assert!(
                    Instant::now() < deadline,
                    "postgres exited with {status}: {}",
                    std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
                );
                return false;
            }
            assert!(Instant::now() < deadline, "postgres did not start in 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The port: the TCP one when listening on TCP (it names the socket
    /// file too), otherwise a fixed number in a folder of our own.
    fn port(&self) -> u16 {
        self.tcp.unwrap_or(PORT)
    }

    /// The store URL of database `db`, as `[store] url` takes it.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgresql://{USER}@/{db}?host={}&port={}",
            self.socket_dir().display(),
            self.port()
        )
    }

    /// The loopback TCP address (after [`Self::start_tcp`]).
    pub fn tcp_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.tcp.expect("started with start_tcp")))
    }

    /// The store URL of database `db` reached over TCP at `addr` (the
    /// server's, or a proxy's in front of it).
    pub fn tcp_url(&self, db_url: &str, addr: std::net::SocketAddr) -> String {
        let db = db_url
            .split('/')
            .nth(3)
            .and_then(|rest| rest.split('?').next())
            .expect("a database URL from this server");
        format!("postgresql://{USER}@{addr}/{db}?sslmode=disable")
    }

    /// Like [`Self::tcp_url`], asking for TLS.
    pub fn tls_url(&self, db_url: &str, addr: std::net::SocketAddr) -> String {
        self.tcp_url(db_url, addr)
            .replace("sslmode=disable", "sslmode=require")
    }

    /// Creates a new, empty database and returns its URL.
    pub fn create_db(&self) -> String {
        let n = self
            .next_db
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("t{n}");
        own_thread(|| {
            let mut admin =
                postgres::Client::connect(&self.url("postgres"), postgres::NoTls).expect("connect");
            admin
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .expect("create database");
        });
        self.url(&name)
    }

    /// Kills the server with SIGKILL (as a crash would) and waits for it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same data (after [`Self::kill9`]:
    /// crash recovery runs first).
    pub fn restart(&mut self) {
        self.kill9();
        self.run();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Immediate shutdown; the folder goes with the TempDir.
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Every stored seq of `post` in the store at `url`, in order, read through
/// a reader of the PostgreSQL backend. Blocking: call it from a blocking
/// thread.
pub fn stored_seqs(url: &str, post: &str) -> Vec<u64> {
    use vigil_ops::store::Backend;
    let backend = vigil_ops::store::PostgresBackend::open(url).expect("open the store");
    let reader = backend.reader().expect("reader");
    reader
        .events(post, 1, 1_000_000)
        .expect("events")
        .into_iter()
        .map(|e| e.event.expect("event").seq)
        .collect()
}

/// The most incidents any one stored event joined (at most 1 when no
/// incident was opened twice). Blocking, likewise.
pub fn most_incidents_per_event(url: &str) -> i64 {
    let mut db = postgres::Client::connect(url, postgres::NoTls).expect("connect");
    db.query_one(
        "SELECT coalesce(max(n), 0) FROM
           (SELECT count(*) AS n FROM incident_events GROUP BY post_id, seq) c",
        &[],
    )
    .expect("count links")
    .get(0)
}
