//! The store on PostgreSQL: the same tables as SQLite's, for a region that
//! runs several operations-center replicas on one database server, or that
//! wants PostgreSQL's own replication and backups.
//!
//! The client is `postgres`, the blocking face of `tokio-postgres`: the
//! store's interface is synchronous (the writer is a thread of its own and
//! API reads run on the blocking pool), and each connection drives its own
//! small runtime. A Unix socket (`?host=/run/postgresql`) needs no TLS; a TCP
//! host takes TLS (rustls on ring, the server's certificate checked against
//! `[store] ca` and its name), or `sslmode=disable` on a network trusted.
//!
//! Schema migrations are numbered and applied in order, each in its own
//! transaction under a transaction-scoped advisory lock, so replicas that
//! start together migrate once. Events are inserted a batch at a time
//! (`unnest` of arrays, `ON CONFLICT DO NOTHING`): one round trip per batch,
//! not per event. Commits are durable when they return
//! (`synchronous_commit` as the server has it; `on` by default).

use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap},
    path::Path,
    str::FromStr,
    time::{Duration, SystemTime},
};

use postgres::{Client, GenericClient, NoTls, Row, Statement, Transaction, config::Host};
use prost::Message;
use vigil_proto::v1::{
    ActionPlan, AuditEntry, EmergencyMode, Event, Incident, IncidentState, Note, PostInfo,
    PostRecord, PostStatus, SiteDocument, StoredEvent,
};

use super::{
    Backend, Changes, CommitResult, EngineSnapshot, HistoryFilter, IncidentFilter, OpenedFilter,
    Received, ReceivedFilter, ReceivedKey, SeqFilter, Store, StoreError, StoreTx, StoreWriter,
    TimeKey, incident_id, incident_number,
    notify::{self, Notification, NotifyState},
    shapes::{self, Param, Query},
    sites,
    sqlite::{from_millis, millis},
    watermark::SeqWatermark,
};

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Numbered migrations; the position in this list is the version.
const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE posts (
    post_id         TEXT PRIMARY KEY,
    durable_through BIGINT NOT NULL DEFAULT 0,
    last_seq        BIGINT NOT NULL DEFAULT 0,
    last_seen       BIGINT,
    status          BYTEA,
    test_mode_until BIGINT
);
CREATE TABLE events (
    post_id     TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    received_at BIGINT,
    stored_at   BIGINT NOT NULL,
    body        BYTEA NOT NULL,
    PRIMARY KEY (post_id, seq)
);
CREATE INDEX events_received ON events (received_at);
CREATE TABLE incidents (
    number      BIGINT PRIMARY KEY,
    post_id     TEXT NOT NULL,
    state       INTEGER NOT NULL,
    version     BIGINT NOT NULL,
    resolved_at BIGINT,
    body        BYTEA NOT NULL
);
CREATE INDEX incidents_state ON incidents (state, number);
CREATE INDEX incidents_post ON incidents (post_id, state);
CREATE TABLE incident_events (
    number  BIGINT NOT NULL,
    post_id TEXT NOT NULL,
    seq     BIGINT NOT NULL,
    PRIMARY KEY (number, post_id, seq)
);
CREATE INDEX incident_events_event ON incident_events (post_id, seq);
CREATE TABLE audit (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    number  BIGINT,
    post_id TEXT NOT NULL,
    body    BYTEA NOT NULL
);
CREATE INDEX audit_incident ON audit (number);
CREATE INDEX audit_post ON audit (post_id) WHERE number IS NULL;
CREATE TABLE notes (
    id     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    number BIGINT NOT NULL,
    body   BYTEA NOT NULL
);
CREATE INDEX notes_incident ON notes (number);
",
    "
CREATE TABLE leader (
    id         SMALLINT PRIMARY KEY CHECK (id = 1),
    holder     TEXT NOT NULL,
    epoch      BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
",
    "
CREATE TABLE requests (
    id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    body     BYTEA NOT NULL,
    deadline TIMESTAMPTZ NOT NULL,
    answered BOOLEAN NOT NULL DEFAULT false,
    reply    BYTEA
);
CREATE INDEX requests_waiting ON requests (id) WHERE NOT answered;
",
    // 4 and 5: event kinds and one index per query shape (issue #19).
    super::migrations::V4_COLUMNS,
    super::migrations::V5_INDEXES,
    // 6: post records and action plans (issue #17).
    super::sites::POSTGRES_MIGRATION,
    // 7: when each incident opened, indexed (issue #17, `store::history`).
    super::history::POSTGRES_MIGRATION,
    // 8: timer state per post and emergency mode (issue #17: schedules,
    // fail-to-test, `store::timers`).
    super::timers::POSTGRES_MIGRATION,
    // 9: the outbound notification queue (issue #17, `store::notify`).
    super::notify::POSTGRES_MIGRATION,
];

/// The channel on which a standby announces a request it forwarded to the
/// leader (the payload is empty: the leader reads every waiting request).
pub const REQUEST_CHANNEL: &str = "vigil_requests";

/// The channel on which the leader announces commits that changed the
/// incident feed (the payload is the last audit position).
pub const FEED_CHANNEL: &str = "vigil_feed";

/// The right to run the incident engine: who holds it, in which epoch, and
/// for how long each renewal lasts. Every transaction of a fenced writer
/// renews it and fails if it no longer holds (a deposed leader's commit
/// fails; see [`PostgresBackend::try_lead`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub holder: String,
    pub epoch: u64,
    pub ttl: Duration,
}

/// Key of the advisory lock held while migrating (any constant of ours).
const MIGRATION_LOCK: i64 = 0x5649_4749_4c00_0001;

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        // No server error code: the connection itself failed (refused,
        // closed, timed out). Class 08 is "connection exception"; 57P01-03
        // are the server shutting down or crashing.
        let lost = match e.code() {
            None => true,
            Some(code) => {
                let c = code.code();
                c.starts_with("08") || c.starts_with("57P")
            }
        };
        if lost || e.is_closed() {
            StoreError::Unavailable(format!("postgresql: {e}"))
        } else {
            StoreError::Backend {
                backend: "postgresql",
                message: match e.as_db_error() {
                    Some(db) => format!("{} ({})", db.message(), db.code().code()),
                    None => e.to_string(),
                },
            }
        }
    }
}

/// A PostgreSQL database named by a `postgresql://` URL.
#[derive(Debug, Clone)]
pub struct PostgresBackend {
    config: postgres::Config,
    location: String,
    /// TLS to the server, when the URL names a TCP host without
    /// `sslmode=disable`.
    tls: Option<rustls::ClientConfig>,
}

impl PostgresBackend {
    /// Parses `url`, connects once and brings the schema up to date.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with_ca(url, None)
    }

    /// [`Self::open`], with `ca` (PEM) the certificates a TCP server's
    /// certificate must chain to.
    pub fn open_with_ca(url: &str, ca: Option<&Path>) -> Result<Self, StoreError> {
        let mut config = postgres::Config::from_str(url).map_err(|e| StoreError::Backend {
            backend: "postgresql",
            message: format!("store url: {e}"),
        })?;
        config.connect_timeout(CONNECT_TIMEOUT);
        config.application_name("vigil-ops");
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        let tcp = config.get_hosts().iter().any(|h| matches!(h, Host::Tcp(_)));
        let tls = if tcp && config.get_ssl_mode() != postgres::config::SslMode::Disable {
            let Some(ca) = ca else {
                return Err(StoreError::Backend {
                    backend: "postgresql",
                    message: "store url: a TCP host needs TLS: give [store] ca (the server \
                              certificate's CA), or sslmode=disable on a network you trust"
                        .into(),
                });
            };
            // Whatever the URL says short of `disable`, TLS is required and
            // the server's certificate checked: never plain text by chance.
            config.ssl_mode(postgres::config::SslMode::Require);
            Some(tls_config(ca)?)
        } else {
            None
        };
        let location = format!(
            "postgresql://{}@{}/{} (port {})",
            config.get_user().unwrap_or(""),
            hosts.join(","),
            config.get_dbname().unwrap_or(""),
            config
                .get_ports()
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
        let backend = Self {
            config,
            location,
            tls,
        };
        off_runtime(|| migrate(&mut backend.connect()?))?;
        Ok(backend)
    }

    fn connect(&self) -> Result<Client, StoreError> {
        Ok(off_runtime(|| match &self.tls {
            Some(tls) => self
                .config
                .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls.clone())),
            None => self.config.connect(NoTls),
        })?)
    }

    /// Takes the leader lease for `holder` if it is free (never taken,
    /// expired, or `holder`'s own from before a restart): returns the new
    /// epoch, or `None` while another replica holds it. Times are the
    /// database server's, so replicas' clocks do not matter.
    pub fn try_lead(&self, holder: &str, ttl: Duration) -> Result<Option<Fence>, StoreError> {
        let secs = ttl.as_secs_f64();
        let row = off_runtime(|| -> Result<_, StoreError> {
            let mut client = self.connect()?;
            Ok(client.query_opt(
                "INSERT INTO leader (id, holder, epoch, expires_at)
                 VALUES (1, $1, 1, now() + make_interval(secs => $2))
                 ON CONFLICT (id) DO UPDATE SET
                   holder = excluded.holder,
                   epoch = leader.epoch + 1,
                   expires_at = excluded.expires_at
                 WHERE leader.expires_at < now() OR leader.holder = excluded.holder
                 RETURNING epoch",
                &[&holder, &secs],
            )?)
        })?;
        Ok(row.map(|r| Fence {
            holder: holder.to_owned(),
            epoch: r.get::<_, i64>(0) as u64,
            ttl,
        }))
    }

    /// Who leads, in which epoch, and whether the lease is still live.
    pub fn leader(&self) -> Result<Option<(String, u64, bool)>, StoreError> {
        off_runtime(|| -> Result<_, StoreError> {
            let mut client = self.connect()?;
            Ok(client
                .query_opt(
                    "SELECT holder, epoch, expires_at > now() FROM leader WHERE id = 1",
                    &[],
                )?
                .map(|r| (r.get(0), r.get::<_, i64>(1) as u64, r.get(2))))
        })
    }

    /// The writer's connection under `fence`: every transaction renews the
    /// lease and fails with [`StoreError::NotLeader`] once it is lost.
    pub fn fenced_writer(&self, fence: Fence) -> Result<Box<dyn StoreWriter>, StoreError> {
        let mut client = self.connect()?;
        let marks = off_runtime(|| load_marks(&mut client))?;
        Ok(Box::new(PostgresStore {
            client: RefCell::new(Some(client)),
            stmts: RefCell::default(),
            marks: Some(marks),
            backend: self.clone(),
            fence: Some(fence),
        }))
    }

    /// A connection that listens for the leader's feed announcements.
    pub fn listen_feed(&self) -> Result<FeedListener, StoreError> {
        let mut client = self.connect()?;
        off_runtime(|| client.batch_execute(&format!("LISTEN {FEED_CHANNEL}")))?;
        Ok(FeedListener {
            client: Some(client),
        })
    }

    /// A connection to the request mailbox: standbys forward actions
    /// through it to the leader, and the leader reads them from it.
    pub fn mailbox(&self) -> Result<Mailbox, StoreError> {
        Ok(Mailbox {
            client: Some(self.connect()?),
        })
    }
}

/// The request mailbox (table `requests`): how a standby replica has the
/// leader carry out an analyst's action. The standby posts the request with
/// a deadline and waits; the leader's writer claims it, applies it and
/// stores the answer in the same transaction; the standby reads the answer,
/// or, once the deadline has passed, gives the request up, which succeeds
/// only if the leader has not claimed it: an action is applied and
/// answered, or neither.
pub struct Mailbox {
    /// `Some` until dropped.
    client: Option<Client>,
}

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailbox").finish_non_exhaustive()
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            off_runtime(move || drop(client));
        }
    }
}

impl Mailbox {
    fn client(&mut self) -> &mut Client {
        self.client.as_mut().expect("open until dropped")
    }

    /// Posts a request that the leader may take until `within` from now (on
    /// the database's clock) and wakes the leader. Returns its id.
    pub fn post(&mut self, body: &[u8], within: Duration) -> Result<u64, StoreError> {
        let row = self.client().query_one(
            "WITH posted AS (
                 INSERT INTO requests (body, deadline)
                 VALUES ($1, now() + make_interval(secs => $2))
                 RETURNING id
             )
             SELECT id, pg_notify('vigil_requests', '')::text FROM posted",
            &[&body, &within.as_secs_f64()],
        )?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// The answer to request `id`, once the leader has committed one.
    pub fn answer(&mut self, id: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let row = self.client().query_opt(
            "SELECT reply FROM requests WHERE id = $1 AND answered AND reply IS NOT NULL",
            &[&(id as i64)],
        )?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Gives request `id` up: `None` if the leader had not claimed it (it
    /// never will now), else the answer it committed meanwhile.
    pub fn give_up(&mut self, id: u64) -> Result<Option<Vec<u8>>, StoreError> {
        // Waits for a leader's transaction that claimed the row to end.
        let given_up = self.client().execute(
            "UPDATE requests SET answered = true WHERE id = $1 AND NOT answered",
            &[&(id as i64)],
        )?;
        if given_up == 1 {
            return Ok(None);
        }
        self.answer(id)
    }

    /// Removes request `id` (answered or given up).
    pub fn forget(&mut self, id: u64) -> Result<(), StoreError> {
        self.client()
            .execute("DELETE FROM requests WHERE id = $1", &[&(id as i64)])?;
        Ok(())
    }

    /// Starts listening for new requests on this connection (the leader).
    pub fn listen(&mut self) -> Result<(), StoreError> {
        self.client()
            .batch_execute(&format!("LISTEN {REQUEST_CHANNEL}"))?;
        Ok(())
    }

    /// Blocks until a new request is announced (true) or `timeout` passes.
    pub fn wait(&mut self, timeout: Duration) -> Result<bool, StoreError> {
        wait_notification(self.client(), timeout)
    }

    /// Up to `limit` requests still waiting for the leader, oldest first.
    pub fn waiting(&mut self, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let rows = self.client().query(
            "SELECT id, body FROM requests
             WHERE NOT answered AND deadline > now() ORDER BY id LIMIT $1",
            &[&(limit as i64)],
        )?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, i64>(0) as u64, r.get(1)))
            .collect())
    }

    /// Answers request `id` at once, without a change (a request the
    /// leader cannot read). False if it was no longer waiting.
    pub fn refuse(&mut self, id: u64, reply: &[u8]) -> Result<bool, StoreError> {
        Ok(self.client().execute(
            "UPDATE requests SET answered = true, reply = $2 WHERE id = $1 AND NOT answered",
            &[&(id as i64), &reply],
        )? == 1)
    }

    /// Deletes requests whose sender has long stopped waiting (a standby
    /// that died before it could clean up).
    pub fn sweep(&mut self) -> Result<u64, StoreError> {
        Ok(self.client().execute(
            "DELETE FROM requests WHERE deadline < now() - interval '10 minutes'",
            &[],
        )?)
    }
}

/// Blocks until a notification arrives on `client` (true) or `timeout`
/// passes (false); takes every other one already queued with it.
fn wait_notification(client: &mut Client, timeout: Duration) -> Result<bool, StoreError> {
    use postgres::fallible_iterator::FallibleIterator;
    let mut notes = client.notifications();
    let heard = notes.timeout_iter(timeout).next()?.is_some();
    // Others already queued are taken at once: one read covers them.
    let mut queued = notes.iter();
    while queued.next()?.is_some() {}
    Ok(heard)
}

impl Backend for PostgresBackend {
    fn name(&self) -> &'static str {
        "postgresql"
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    fn writer(&self) -> Result<Box<dyn StoreWriter>, StoreError> {
        let mut client = self.connect()?;
        let marks = off_runtime(|| load_marks(&mut client))?;
        Ok(Box::new(PostgresStore {
            client: RefCell::new(Some(client)),
            stmts: RefCell::default(),
            marks: Some(marks),
            backend: self.clone(),
            fence: None,
        }))
    }

    fn as_postgres(&self) -> Option<&PostgresBackend> {
        Some(self)
    }

    fn pruner(&self) -> Result<Box<dyn super::retention::PruneConn>, StoreError> {
        Ok(Box::new(super::retention::PostgresPrune::new(
            self.connect()?,
        )))
    }

    fn reader(&self) -> Result<Box<dyn Store>, StoreError> {
        let client = self.connect()?;
        Ok(Box::new(PostgresStore {
            client: RefCell::new(Some(client)),
            stmts: RefCell::default(),
            marks: None,
            backend: self.clone(),
            fence: None,
        }))
    }
}

/// A TLS client config that trusts the certificates in `ca` (PEM).
fn tls_config(ca: &Path) -> Result<rustls::ClientConfig, StoreError> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let bad = |message: String| StoreError::Backend {
        backend: "postgresql",
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .map_err(|e| bad(format!("store ca {}: {e}", ca.display())))?;
    for cert in certs {
        let cert = cert.map_err(|e| bad(format!("store ca {}: {e}", ca.display())))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("store ca {}: {e}", ca.display())))?;
    }
    if roots.is_empty() {
        return Err(bad(format!(
            "store ca {}: no certificate in it",
            ca.display()
        )));
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Runs `f` on a thread of its own when called from inside an async
/// runtime: each `postgres` call blocks on a runtime of its connection,
/// which a thread already driving tasks must not do. (The writer thread and
/// the blocking pool, where the store normally runs, need no detour.)
pub(crate) fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| s.spawn(f).join().expect("store thread panicked"))
}

/// Applies every migration the database has not had yet.
fn migrate(client: &mut Client) -> Result<(), StoreError> {
    // Under the lock too: replicas starting together on an empty database
    // would otherwise race to create the table (PostgreSQL's `IF NOT
    // EXISTS` does not make two concurrent creations safe) or insert two
    // version rows.
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS vigil_schema (version INTEGER NOT NULL);
         INSERT INTO vigil_schema (version)
           SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM vigil_schema);",
    )?;
    tx.commit()?;
    let supported = MIGRATIONS.len() as i64;
    loop {
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
        let found: i32 = tx
            .query_one("SELECT version FROM vigil_schema", &[])?
            .get(0);
        let found = i64::from(found);
        if found > supported {
            return Err(StoreError::SchemaTooNew { found, supported });
        }
        if found == supported {
            return Ok(());
        }
        tx.batch_execute(MIGRATIONS[found as usize])?;
        super::migrations::after(&mut tx, found as usize + 1)?;
        if MIGRATIONS[found as usize] == super::history::POSTGRES_MIGRATION {
            super::history::postgres_after(&mut tx)?;
        }
        tx.execute(
            "UPDATE vigil_schema SET version = $1",
            &[&(found as i32 + 1)],
        )?;
        tx.commit()?;
        tracing::info!(version = found + 1, "postgresql schema migrated");
    }
}

/// One connection: the writer's (with the watermarks in memory) or a
/// reader's.
pub struct PostgresStore {
    /// Always `Some` until dropped (see the `Drop` impl).
    client: RefCell<Option<Client>>,
    /// Prepared statements of this connection, by their text.
    stmts: RefCell<Statements>,
    marks: Option<HashMap<String, SeqWatermark>>,
    /// Where to connect again.
    backend: PostgresBackend,
    /// The leader lease this writer works under, if any.
    fence: Option<Fence>,
}

/// Waits for the leader's announcements on [`FEED_CHANNEL`].
pub struct FeedListener {
    /// `Some` until dropped.
    client: Option<Client>,
}

impl std::fmt::Debug for FeedListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedListener").finish_non_exhaustive()
    }
}

impl FeedListener {
    /// Blocks until an announcement arrives (true) or `timeout` passes
    /// (false). Call from a blocking thread.
    pub fn wait(&mut self, timeout: Duration) -> Result<bool, StoreError> {
        wait_notification(self.client.as_mut().expect("open until dropped"), timeout)
    }
}

impl Drop for FeedListener {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            off_runtime(move || drop(client));
        }
    }
}

type Statements = HashMap<&'static str, Statement>;

/// The prepared form of `sql` on this connection, prepared on first use.
fn prepared(
    client: &mut impl GenericClient,
    stmts: &RefCell<Statements>,
    sql: &'static str,
) -> Result<Statement, StoreError> {
    if let Some(stmt) = stmts.borrow().get(sql) {
        return Ok(stmt.clone());
    }
    let stmt = client.prepare(sql)?;
    stmts.borrow_mut().insert(sql, stmt.clone());
    Ok(stmt)
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("writer", &self.marks.is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // Closing blocks on the connection's runtime: not on a thread that
        // drives async tasks (a pool dropped by an async task, say).
        if let Some(client) = self.client.get_mut().take() {
            off_runtime(move || drop(client));
        }
    }
}

impl PostgresStore {
    fn client(&self) -> std::cell::RefMut<'_, Client> {
        std::cell::RefMut::map(self.client.borrow_mut(), |c| {
            c.as_mut().expect("open until dropped")
        })
    }

    fn query(
        &self,
        sql: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let mut client = self.client();
        let stmt = prepared(&mut *client, &self.stmts, sql)?;
        Ok(client.query(&stmt, params)?)
    }

    /// Runs a query built per request (`store::shapes`); unprepared, so
    /// the statement cache holds only fixed texts.
    fn query_built(&self, q: &Query) -> Result<Vec<Row>, StoreError> {
        let params: Vec<&(dyn postgres::types::ToSql + Sync)> = q
            .params
            .iter()
            .map(|p| match p {
                Param::Int(i) => i as &(dyn postgres::types::ToSql + Sync),
                Param::Text(t) => t as &(dyn postgres::types::ToSql + Sync),
            })
            .collect();
        Ok(self.client().query(q.sql.as_str(), &params)?)
    }

    fn bodies<M: Message + Default>(
        &self,
        sql: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<M>, StoreError> {
        self.query(sql, params)?
            .iter()
            .map(|r| decode::<M>(r.get::<_, &[u8]>(0)))
            .collect()
    }

    fn stored_events(
        &self,
        sql: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.query(sql, params)?.iter().map(stored_event).collect()
    }

    /// Incidents of a query whose columns are body, opened_at, number.
    fn timed_incidents(&self, q: &shapes::Query) -> Result<Vec<(TimeKey, Incident)>, StoreError> {
        self.query_built(q)?
            .iter()
            .map(|r| {
                Ok((
                    TimeKey {
                        ms: r.get(1),
                        key: r.get::<_, i64>(2) as u64,
                    },
                    decode::<Incident>(r.get::<_, &[u8]>(0))?,
                ))
            })
            .collect()
    }

    fn post_info(&self, row: &Row) -> Result<PostInfo, StoreError> {
        let post_id: String = row.get(0);
        let durable: i64 = row.get(4);
        let above: Vec<u64> = self
            .query(shapes::POST_EVENTS_ABOVE, &[&post_id, &durable])?
            .iter()
            .map(|r| r.get::<_, i64>(0) as u64)
            .collect();
        let open: i64 = self.query(shapes::POST_OPEN_INCIDENTS, &[&post_id])?[0].get(0);
        post_info(row, above, open)
    }
}

/// A post's figures from its `posts` row, its stored seqs above the
/// watermark and its count of unresolved incidents.
fn post_info(row: &Row, above: Vec<u64>, open: i64) -> Result<PostInfo, StoreError> {
    let post_id: String = row.get(0);
    let durable: i64 = row.get(4);
    let mark = SeqWatermark::restore(durable as u64, above);
    let status = match row.get::<_, Option<&[u8]>>(2) {
        Some(bytes) => Some(decode::<PostStatus>(bytes)?),
        None => None,
    };
    Ok(PostInfo {
        post_id,
        status,
        last_seen: row
            .get::<_, Option<i64>>(1)
            .map(|ms| from_millis(ms).into()),
        last_seq: mark.last_seq(),
        durable_through_seq: mark.durable_through(),
        missing_events: mark.missing(),
        test_mode_until: row
            .get::<_, Option<i64>>(3)
            .map(|ms| from_millis(ms).into()),
        open_incidents: u32::try_from(open).unwrap_or(u32::MAX),
    })
}

/// Every listed post's stored seqs above its watermark: one primary-key
/// range per post (`$1` the posts, `$2` their `durable_through`).
pub const POSTS_EVENTS_ABOVE: &str = "SELECT e.post_id, e.seq
    FROM unnest($1::text[], $2::int8[]) AS w(post_id, durable)
    JOIN events e ON e.post_id = w.post_id AND e.seq > w.durable";

/// Selects posts, then `$tail`.
macro_rules! post_query {
    ($tail:literal) => {
        concat!(
            "SELECT post_id, last_seen, status, test_mode_until, durable_through FROM posts ",
            $tail
        )
    };
}

fn stored_event(row: &Row) -> Result<StoredEvent, StoreError> {
    let number: Option<i64> = row.get(2);
    Ok(StoredEvent {
        event: Some(decode::<Event>(row.get::<_, &[u8]>(0))?),
        stored_at: Some(from_millis(row.get(1)).into()),
        incident_id: number.map(|n| incident_id(n as u64)).unwrap_or_default(),
    })
}

fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl Store for PostgresStore {
    fn durable_through(&self, post_id: &str) -> Result<u64, StoreError> {
        if let Some(marks) = &self.marks {
            return Ok(marks.get(post_id).map_or(0, SeqWatermark::durable_through));
        }
        Ok(self
            .query(
                "SELECT durable_through FROM posts WHERE post_id = $1",
                &[&post_id],
            )?
            .first()
            .map_or(0, |r| r.get::<_, i64>(0) as u64))
    }

    fn event(&self, post_id: &str, seq: u64) -> Result<Option<StoredEvent>, StoreError> {
        Ok(self
            .stored_events(shapes::EVENT_BY_KEY, &[&post_id, &(seq as i64)])?
            .pop())
    }

    fn event_bytes(&self, post_id: &str, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .query(
                "SELECT body FROM events WHERE post_id = $1 AND seq = $2",
                &[&post_id, &(seq as i64)],
            )?
            .first()
            .map(|r| r.get::<_, Vec<u8>>(0)))
    }

    fn events(
        &self,
        post_id: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let filter = SeqFilter {
            post_id: post_id.to_owned(),
            from_seq,
            ..Default::default()
        };
        self.events_by_seq(&filter, limit)
    }

    fn events_by_seq(
        &self,
        filter: &SeqFilter,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let q = shapes::events_by_seq(filter, limit, shapes::Dialect::Postgres)?;
        self.query_built(&q)?.iter().map(stored_event).collect()
    }

    fn event_count(&self) -> Result<u64, StoreError> {
        let n: i64 = self.query("SELECT count(*) FROM events", &[])?[0].get(0);
        Ok(n as u64)
    }

    fn incident(&self, id: &str) -> Result<Option<Incident>, StoreError> {
        let Some(number) = incident_number(id) else {
            return Ok(None);
        };
        Ok(self
            .bodies(
                "SELECT body FROM incidents WHERE number = $1",
                &[&(number as i64)],
            )?
            .pop())
    }

    fn incidents(&self, filter: &IncidentFilter) -> Result<Vec<Incident>, StoreError> {
        let q = shapes::incidents(filter)?;
        self.query_built(&q)?
            .iter()
            .map(|r| decode::<Incident>(r.get::<_, &[u8]>(0)))
            .collect()
    }

    fn incident_events(&self, id: &str) -> Result<Vec<StoredEvent>, StoreError> {
        let Some(number) = incident_number(id) else {
            return Ok(Vec::new());
        };
        self.stored_events(shapes::INCIDENT_EVENTS, &[&(number as i64)])
    }

    fn audit(&self, incident_id: &str) -> Result<Vec<AuditEntry>, StoreError> {
        let Some(number) = incident_number(incident_id) else {
            return Ok(Vec::new());
        };
        self.bodies(shapes::AUDIT_OF_INCIDENT, &[&(number as i64)])
    }

    fn post_audit(&self, post_id: &str) -> Result<Vec<AuditEntry>, StoreError> {
        self.bodies(shapes::AUDIT_OF_POST, &[&post_id])
    }

    fn notes(&self, incident_id: &str) -> Result<Vec<Note>, StoreError> {
        let Some(number) = incident_number(incident_id) else {
            return Ok(Vec::new());
        };
        self.bodies(shapes::NOTES_OF_INCIDENT, &[&(number as i64)])
    }

    fn post(&self, post_id: &str) -> Result<Option<PostInfo>, StoreError> {
        let sql = post_query!("WHERE post_id = $1");
        match self.query(sql, &[&post_id])?.first() {
            Some(row) => Ok(Some(self.post_info(row)?)),
            None => Ok(None),
        }
    }

    fn posts(&self) -> Result<Vec<PostInfo>, StoreError> {
        // Three statements in all, not two per post: over a network each
        // round trip counts (1,000 posts took 220 ms one by one).
        let rows = self.query(post_query!("ORDER BY post_id"), &[])?;
        let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let durables: Vec<i64> = rows.iter().map(|r| r.get(4)).collect();
        let mut above: HashMap<String, Vec<u64>> = HashMap::new();
        for r in self.query(POSTS_EVENTS_ABOVE, &[&ids, &durables])? {
            above
                .entry(r.get(0))
                .or_default()
                .push(r.get::<_, i64>(1) as u64);
        }
        let open: HashMap<String, i64> = self
            .query(shapes::OPEN_INCIDENTS_BY_POST, &[])?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        rows.iter()
            .map(|row| {
                let id: &str = row.get(0);
                let seqs = above.remove(id).unwrap_or_default();
                post_info(row, seqs, open.get(id).copied().unwrap_or(0))
            })
            .collect()
    }

    fn emergency(&self) -> Result<Option<EmergencyMode>, StoreError> {
        Ok(self
            .bodies(super::timers::EMERGENCY_SELECT, &[])?
            .into_iter()
            .next())
    }

    fn site(&self) -> Result<SiteDocument, StoreError> {
        Ok(SiteDocument {
            posts: self.bodies(sites::SELECT_POSTS, &[])?,
            plans: self.bodies(sites::SELECT_PLANS, &[])?,
        })
    }

    fn plans(&self) -> Result<Vec<ActionPlan>, StoreError> {
        self.bodies(sites::SELECT_PLANS, &[])
    }

    fn post_record(&self, post_id: &str) -> Result<Option<PostRecord>, StoreError> {
        Ok(self
            .bodies(sites::postgres::SELECT_POST, &[&post_id])?
            .pop())
    }

    fn notifications_due(
        &self,
        webhook: &str,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<Notification>, StoreError> {
        notification_rows(&self.query(
            notify::DUE,
            &[
                &(NotifyState::Pending as i64),
                &webhook,
                &millis(now),
                &(limit as i64),
            ],
        )?)
    }

    fn notifications(
        &self,
        state: NotifyState,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Notification>, StoreError> {
        let before = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
        notification_rows(&self.query(
            notify::BY_STATE,
            &[&(state as i64), &before, &(limit as i64)],
        )?)
    }

    fn notification(&self, id: u64) -> Result<Option<Notification>, StoreError> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(None);
        };
        Ok(notification_rows(&self.query(notify::ONE, &[&id])?)?.pop())
    }

    fn notification_count(&self, state: NotifyState) -> Result<u64, StoreError> {
        let n: i64 = self.query(notify::COUNT, &[&(state as i64)])?[0].get(0);
        Ok(n as u64)
    }

    fn last_audit_position(&self) -> Result<u64, StoreError> {
        let n: Option<i64> = self.query("SELECT max(id) FROM audit", &[])?[0].get(0);
        Ok(n.unwrap_or(0) as u64)
    }

    fn audit_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, AuditEntry)>, StoreError> {
        self.query(shapes::AUDIT_AFTER, &[&(after as i64), &(limit as i64)])?
            .iter()
            .map(|r| Ok((r.get::<_, i64>(0) as u64, decode(r.get::<_, &[u8]>(1))?)))
            .collect()
    }

    fn events_received(
        &self,
        filter: &ReceivedFilter,
        after: Option<&ReceivedKey>,
        limit: usize,
    ) -> Result<Vec<(ReceivedKey, StoredEvent)>, StoreError> {
        let rows = self.query_built(&shapes::events_received(filter, after, limit)?)?;
        rows.iter()
            .map(|r| {
                Ok((
                    ReceivedKey {
                        received_ms: r.get(3),
                        post_id: r.get(4),
                        seq: r.get::<_, i64>(5) as u64,
                    },
                    stored_event(r)?,
                ))
            })
            .collect()
    }

    fn history_events(
        &self,
        filter: &HistoryFilter,
        limit: usize,
    ) -> Result<Vec<(TimeKey, StoredEvent)>, StoreError> {
        let q = shapes::history_events(filter, limit, shapes::Dialect::Postgres)?;
        self.query_built(&q)?
            .iter()
            .map(|r| {
                Ok((
                    TimeKey {
                        ms: r.get(3),
                        key: r.get::<_, i64>(5) as u64,
                    },
                    stored_event(r)?,
                ))
            })
            .collect()
    }

    fn history_incidents(
        &self,
        filter: &HistoryFilter,
        limit: usize,
    ) -> Result<Vec<(TimeKey, Incident)>, StoreError> {
        self.timed_incidents(&shapes::history_incidents(filter, limit))
    }

    fn incidents_opened(
        &self,
        filter: &OpenedFilter,
        after: Option<TimeKey>,
        limit: usize,
    ) -> Result<Vec<(TimeKey, Incident)>, StoreError> {
        self.timed_incidents(&shapes::incidents_opened(filter, after, limit)?)
    }

    fn engine_snapshot(&self, resolved_since: SystemTime) -> Result<EngineSnapshot, StoreError> {
        let incidents = self.bodies(
            "SELECT body FROM incidents WHERE state <> $1 OR resolved_at >= $2 ORDER BY number",
            &[&(IncidentState::Resolved as i32), &millis(resolved_since)],
        )?;
        let test_modes = self
            .query(
                "SELECT post_id, test_mode_until FROM posts WHERE test_mode_until IS NOT NULL",
                &[],
            )?
            .iter()
            .map(|r| (r.get::<_, String>(0), from_millis(r.get(1))))
            .collect();
        let last: Option<i64> = self.query("SELECT max(number) FROM incidents", &[])?[0].get(0);
        let statuses = self.bodies("SELECT status FROM posts WHERE status IS NOT NULL", &[])?;
        let timers = self
            .query(super::timers::SELECT_ALL, &[])?
            .iter()
            .map(|r| {
                let post: String = r.get(0);
                let state = super::PostTimers::decode(&post, r.get(1))?;
                Ok((post, state))
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(EngineSnapshot {
            incidents,
            test_modes,
            last_incident_number: last.unwrap_or(0) as u64,
            statuses,
            site_posts: self.bodies(sites::SELECT_POSTS, &[])?,
            timers,
            emergency: self.emergency()?,
        })
    }
}

impl StoreWriter for PostgresStore {
    fn reconnect(&mut self) -> Result<(), StoreError> {
        let mut client = self.backend.connect()?;
        let marks = off_runtime(|| load_marks(&mut client))?;
        if let Some(old) = self.client.get_mut().replace(client) {
            off_runtime(move || drop(old));
        }
        self.stmts.get_mut().clear();
        self.marks = Some(marks);
        Ok(())
    }

    fn begin(&mut self) -> Result<Box<dyn StoreTx + '_>, StoreError> {
        let Some(marks) = self.marks.as_mut() else {
            return Err(StoreError::Backend {
                backend: "postgresql",
                message: "a reader's connection cannot write".into(),
            });
        };
        let mut tx = self
            .client
            .get_mut()
            .as_mut()
            .expect("open until dropped")
            .transaction()?;
        if let Some(fence) = &self.fence {
            // Renew and check in one: the row stays locked until this
            // transaction ends, so a replica taking the lease over waits for
            // it, and a deposed leader's transaction fails here.
            let renewed = tx.execute(
                "UPDATE leader SET expires_at = now() + make_interval(secs => $3)
                 WHERE id = 1 AND holder = $1 AND epoch = $2 AND expires_at > now()",
                &[
                    &fence.holder,
                    &(fence.epoch as i64),
                    &fence.ttl.as_secs_f64(),
                ],
            )?;
            if renewed != 1 {
                return Err(StoreError::NotLeader(format!(
                    "{} lost the leader lease of epoch {}",
                    fence.holder, fence.epoch
                )));
            }
        }
        Ok(Box::new(PostgresTx {
            tx,
            pending: Pending::default(),
            stmts: &self.stmts,
            marks,
            work: BTreeMap::new(),
            inserted: 0,
            duplicates: 0,
        }))
    }
}

/// New events waiting for [`PostgresTx::flush`], as columns.
#[derive(Default)]
struct Pending {
    posts: Vec<String>,
    seqs: Vec<i64>,
    received: Vec<Option<i64>>,
    stored: Vec<i64>,
    bodies: Vec<bytes::Bytes>,
    kinds: Vec<i16>,
    at: Vec<i64>,
}

struct PostgresTx<'a> {
    tx: Transaction<'a>,
    pending: Pending,
    stmts: &'a RefCell<Statements>,
    marks: &'a mut HashMap<String, SeqWatermark>,
    /// Working copies of the watermarks this transaction touches, with the
    /// time their post was last heard from.
    work: BTreeMap<String, (SeqWatermark, SystemTime)>,
    inserted: u64,
    duplicates: u64,
}

impl PostgresTx<'_> {
    /// Inserts the queued events in one statement. Every one must be new:
    /// if the database already had one, something wrote beside this writer
    /// (or a commit it did not hear of went through), so the transaction
    /// fails as UNAVAILABLE, and the writer reconnects and re-reads its
    /// watermarks before trying the group again.
    fn flush(&mut self) -> Result<(), StoreError> {
        if self.pending.seqs.is_empty() {
            return Ok(());
        }
        let p = std::mem::take(&mut self.pending);
        let bodies: Vec<&[u8]> = p.bodies.iter().map(|b| &b[..]).collect();
        let inserted = self.exec(
            "INSERT INTO events (post_id, seq, received_at, stored_at, body, kind, at)
             SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::bytea[],
                                  $6::int2[], $7::int8[])
             ON CONFLICT (post_id, seq) DO NOTHING",
            &[
                &p.posts,
                &p.seqs,
                &p.received,
                &p.stored,
                &bodies,
                &p.kinds,
                &p.at,
            ],
        )?;
        if inserted != p.seqs.len() as u64 {
            return Err(StoreError::Unavailable(format!(
                "{} of {} events were stored already: watermarks out of date",
                p.seqs.len() as u64 - inserted,
                p.seqs.len()
            )));
        }
        Ok(())
    }

    fn exec(
        &mut self,
        sql: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let stmt = prepared(&mut self.tx, self.stmts, sql)?;
        Ok(self.tx.execute(&stmt, params)?)
    }

    fn rows(
        &mut self,
        sql: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let stmt = prepared(&mut self.tx, self.stmts, sql)?;
        Ok(self.tx.query(&stmt, params)?)
    }
}

impl StoreTx for PostgresTx<'_> {
    fn insert_events(
        &mut self,
        post_id: &str,
        events: &[Received],
        stored_at: SystemTime,
    ) -> Result<Vec<bool>, StoreError> {
        if !self.work.contains_key(post_id) {
            let mark = self.marks.get(post_id).cloned().unwrap_or_default();
            self.work.insert(post_id.to_owned(), (mark, stored_at));
        }
        let (mark, seen) = self.work.get_mut(post_id).expect("inserted above");
        *seen = stored_at;
        // The writer's watermark knows every stored seq of this post (it
        // is the only writer: the lease fences any other), so it decides
        // what is new without asking the database; new events are queued
        // and go in with every other post's in one statement at the end
        // of the group (see `flush`).
        let stored_ms = millis(stored_at);
        let mut out = Vec::with_capacity(events.len());
        for Received { event, raw } in events {
            if mark.contains(event.seq) {
                self.duplicates += 1;
                out.push(false);
                continue;
            }
            mark.add(event.seq);
            self.inserted += 1;
            out.push(true);
            self.pending.posts.push(post_id.to_owned());
            self.pending.seqs.push(event.seq as i64);
            let received = event
                .received_at
                .and_then(|t| SystemTime::try_from(t).ok())
                .map(millis);
            self.pending.received.push(received);
            self.pending.kinds.push(shapes::kind_of(event) as i16);
            self.pending.at.push(received.unwrap_or(stored_ms));
            self.pending.stored.push(stored_ms);
            self.pending.bodies.push(raw.clone());
        }
        Ok(out)
    }

    fn apply(&mut self, changes: &Changes) -> Result<Vec<u64>, StoreError> {
        for (post, state) in &changes.timers {
            self.exec(super::timers::UPSERT, &[post, &state.encode()])?;
        }
        match &changes.emergency {
            Some(Some(mode)) => {
                self.exec(super::timers::EMERGENCY_UPSERT, &[&mode.encode_to_vec()])?;
            }
            Some(None) => {
                self.exec(super::timers::EMERGENCY_CLEAR, &[])?;
            }
            None => {}
        }
        self.flush()?;
        if let Some(site) = &changes.site {
            let (posts, plans) = sites::rows(site);
            self.exec(sites::CLEAR_POSTS, &[])?;
            self.exec(sites::CLEAR_PLANS, &[])?;
            for r in posts {
                self.exec(
                    sites::postgres::INSERT_POST,
                    &[&r.post_id, &r.position, &r.body],
                )?;
            }
            for r in plans {
                self.exec(
                    sites::postgres::INSERT_PLAN,
                    &[&r.position, &r.category, &r.post_id, &r.body],
                )?;
            }
        }
        for write in changes.incidents() {
            let inc = &write.incident;
            let number = incident_number(&inc.id)
                .ok_or_else(|| StoreError::Corrupt(format!("bad incident id {:?}", inc.id)))?
                as i64;
            let resolved_at = inc
                .resolved_at
                .filter(|_| inc.state == IncidentState::Resolved as i32)
                .and_then(|t| SystemTime::try_from(t).ok())
                .map(millis);
            let body = inc.encode_to_vec();
            // Set once: an incident's opening time never changes.
            let opened_at = super::history::opened_ms(inc);
            let changed = match write.prev_version {
                None => self.exec(
                    "INSERT INTO incidents (number, post_id, state, version, resolved_at, body, opened_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (number) DO NOTHING",
                    &[
                        &number,
                        &inc.post_id,
                        &inc.state,
                        &(inc.version as i64),
                        &resolved_at,
                        &body,
                        &opened_at,
                    ],
                )?,
                Some(prev) => self.exec(
                    "UPDATE incidents SET state = $2, version = $3, resolved_at = $4, body = $5
                     WHERE number = $1 AND version = $6",
                    &[
                        &number,
                        &inc.state,
                        &(inc.version as i64),
                        &resolved_at,
                        &body,
                        &(prev as i64),
                    ],
                )?,
            };
            if changed != 1 {
                let found = self
                    .rows(
                        "SELECT version FROM incidents WHERE number = $1",
                        &[&number],
                    )?
                    .first()
                    .map(|r| r.get::<_, i64>(0) as u64);
                return Err(StoreError::VersionConflict {
                    id: inc.id.clone(),
                    expected: write.prev_version.unwrap_or(0),
                    found,
                });
            }
        }
        for n in &changes.notifications {
            self.exec(
                notify::INSERT,
                &[
                    &n.delivery,
                    &n.webhook,
                    &n.event,
                    &n.incident.encode_to_vec(),
                    &millis(n.at),
                    &millis(n.at),
                ],
            )?;
        }
        for u in &changes.notify_updates {
            self.exec(
                notify::UPDATE,
                &[
                    &(u.state as i64),
                    &i64::from(u.attempts),
                    &millis(u.next_at),
                    &u.last_error,
                    &i64::try_from(u.id).unwrap_or(-1),
                    &(u.only_if as i64),
                ],
            )?;
        }
        if let Some(before) = changes.notify_prune_before {
            let ids: Vec<i64> = self
                .rows(
                    notify::PRUNABLE,
                    &[
                        &(NotifyState::Delivered as i64),
                        &millis(before),
                        &notify::PRUNE_BATCH,
                    ],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            for id in ids {
                self.exec(notify::DELETE, &[&id])?;
            }
        }
        let mut positions = Vec::with_capacity(changes.audit.len());
        if !changes.audit.is_empty() {
            // Positions are taken from the sequence first (ascending, in
            // one statement), then given to the entries in their order:
            // the feed pairs each entry with its position.
            let n = changes.audit.len() as i64;
            positions.extend(
                self.rows(
                    "SELECT nextval(pg_get_serial_sequence('audit', 'id'))
                     FROM generate_series(1, $1::int8)",
                    &[&n],
                )?
                .iter()
                .map(|r| r.get::<_, i64>(0)),
            );
            positions.sort_unstable();
            let numbers: Vec<Option<i64>> = changes
                .audit
                .iter()
                .map(|e| incident_number(&e.incident_id).map(|n| n as i64))
                .collect();
            let posts: Vec<&str> = changes.audit.iter().map(|e| e.post_id.as_str()).collect();
            let bodies: Vec<Vec<u8>> = changes.audit.iter().map(Message::encode_to_vec).collect();
            self.exec(
                "INSERT INTO audit (id, number, post_id, body) OVERRIDING SYSTEM VALUE
                 SELECT * FROM unnest($1::int8[], $2::int8[], $3::text[], $4::bytea[])",
                &[&positions, &numbers, &posts, &bodies],
            )?;
            // Replicas following the feed hear of it when this commits.
            let last = positions.last().map(i64::to_string).unwrap_or_default();
            self.exec("SELECT pg_notify('vigil_feed', $1)", &[&last])?;
        }
        for note in &changes.notes {
            let number = incident_number(&note.incident_id).ok_or_else(|| {
                StoreError::Corrupt(format!("note for bad incident id {:?}", note.incident_id))
            })? as i64;
            self.exec(
                "INSERT INTO notes (number, body) VALUES ($1, $2)",
                &[&number, &note.encode_to_vec()],
            )?;
        }
        for link in &changes.links {
            let number = incident_number(&link.incident_id).ok_or_else(|| {
                StoreError::Corrupt(format!("link to bad incident id {:?}", link.incident_id))
            })? as i64;
            self.exec(
                "INSERT INTO incident_events (number, post_id, seq) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &[&number, &link.post_id, &(link.seq as i64)],
            )?;
        }
        for (status, seen) in &changes.statuses {
            self.exec(
                "INSERT INTO posts (post_id, last_seen, status) VALUES ($1, $2, $3)
                 ON CONFLICT (post_id) DO UPDATE SET
                   last_seen = greatest(coalesce(posts.last_seen, 0), excluded.last_seen),
                   status = excluded.status",
                &[&status.post_id, &millis(*seen), &status.encode_to_vec()],
            )?;
        }
        for tm in &changes.test_modes {
            self.exec(
                "INSERT INTO posts (post_id, test_mode_until) VALUES ($1, $2)
                 ON CONFLICT (post_id) DO UPDATE SET test_mode_until = excluded.test_mode_until",
                &[&tm.post_id, &tm.until.map(millis)],
            )?;
        }
        Ok(positions.into_iter().map(|p| p as u64).collect())
    }

    fn claim_request(&mut self, id: u64) -> Result<bool, StoreError> {
        Ok(self.exec(
            "UPDATE requests SET answered = true
             WHERE id = $1 AND NOT answered AND deadline > now()",
            &[&(id as i64)],
        )? == 1)
    }

    fn answer_request(&mut self, id: u64, reply: &[u8]) -> Result<(), StoreError> {
        self.exec(
            "UPDATE requests SET reply = $2 WHERE id = $1",
            &[&(id as i64), &reply],
        )?;
        Ok(())
    }

    fn commit(self: Box<Self>) -> Result<CommitResult, StoreError> {
        let mut this = *self;
        this.flush()?;
        if !this.work.is_empty() {
            let posts: Vec<String> = this.work.keys().cloned().collect();
            let durable: Vec<i64> = this
                .work
                .values()
                .map(|(m, _)| m.durable_through() as i64)
                .collect();
            let last: Vec<i64> = this
                .work
                .values()
                .map(|(m, _)| m.last_seq() as i64)
                .collect();
            let seen: Vec<i64> = this.work.values().map(|(_, s)| millis(*s)).collect();
            this.exec(
                "INSERT INTO posts (post_id, durable_through, last_seq, last_seen)
                 SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[])
                 ON CONFLICT (post_id) DO UPDATE SET
                   durable_through = excluded.durable_through,
                   last_seq = excluded.last_seq,
                   last_seen = greatest(coalesce(posts.last_seen, 0), excluded.last_seen)",
                &[&posts, &durable, &last, &seen],
            )?;
        }
        this.tx.commit()?;
        let mut durable = Vec::with_capacity(this.work.len());
        for (post, (mark, _)) in this.work {
            durable.push((post.clone(), mark.durable_through()));
            this.marks.insert(post, mark);
        }
        Ok(CommitResult {
            durable,
            inserted: this.inserted,
            duplicates: this.duplicates,
        })
    }
}

fn load_marks(client: &mut Client) -> Result<HashMap<String, SeqWatermark>, StoreError> {
    let mut durable: HashMap<String, u64> = HashMap::new();
    for row in client.query("SELECT post_id, durable_through FROM posts", &[])? {
        durable.insert(row.get(0), row.get::<_, i64>(1) as u64);
    }
    // Events stored above a post's watermark: those waiting for a gap to
    // fill. Normally none.
    let mut above: HashMap<String, Vec<u64>> = HashMap::new();
    for row in client.query(
        "SELECT e.post_id, e.seq FROM posts p JOIN events e
         ON e.post_id = p.post_id AND e.seq > p.durable_through",
        &[],
    )? {
        above
            .entry(row.get(0))
            .or_default()
            .push(row.get::<_, i64>(1) as u64);
    }
    Ok(durable
        .into_iter()
        .map(|(post, d)| {
            let mark = SeqWatermark::restore(d, above.remove(&post).unwrap_or_default());
            (post, mark)
        })
        .collect())
}

/// What [`PostgresBackend::import_sqlite`] copied.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Imported {
    pub posts: u64,
    pub events: u64,
    pub incidents: u64,
    pub links: u64,
    pub audit: u64,
    pub notes: u64,
    /// Post records and action plans (the site document).
    pub site_records: u64,
    /// Outbound notifications, in whatever state.
    pub notifications: u64,
}

impl std::fmt::Display for Imported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} posts, {} events, {} incidents, {} event links, {} audit entries, {} notes, \
             {} post records and plans, {} notifications",
            self.posts,
            self.events,
            self.incidents,
            self.links,
            self.audit,
            self.notes,
            self.site_records,
            self.notifications
        )
    }
}

/// Rows copied per statement.
const IMPORT_CHUNK: usize = 5000;

impl PostgresBackend {
    /// Copies a SQLite store (`data_dir/ops.db`, as the embedded backend
    /// writes it) into this database, in one transaction: every table with
    /// its keys, audit positions (the feed's cursors) and the bytes of every
    /// event as they were. Refused when this database already holds
    /// anything, or while an operations center holds the leader lease:
    /// stop every operations center first.
    pub fn import_sqlite(&self, data_dir: &Path) -> Result<Imported, StoreError> {
        let path = data_dir.join(super::sqlite::DB_FILE);
        if !path.is_file() {
            return Err(StoreError::Io {
                path,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no SQLite store here"),
            });
        }
        // Open it as its own backend does: the schema version is checked
        // and an older store migrated (so its events carry their kind).
        drop(super::SqliteBackend::open(data_dir)?);
        off_runtime(|| {
            let src = rusqlite::Connection::open_with_flags(
                &path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )?;
            let mut client = self.connect()?;
            let mut tx = client.transaction()?;
            let busy: i64 = tx
                .query_one(
                    "SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM incidents)
                          + (SELECT count(*) FROM audit) + (SELECT count(*) FROM posts)
                          + (SELECT count(*) FROM site_posts) + (SELECT count(*) FROM site_plans)",
                    &[],
                )?
                .get(0);
            if busy > 0 {
                return Err(StoreError::Backend {
                    backend: "postgresql",
                    message: "the PostgreSQL store is not empty: import only into a new database"
                        .into(),
                });
            }
            let leading: bool = tx
                .query_one(
                    "SELECT exists (SELECT 1 FROM leader WHERE expires_at > now())",
                    &[],
                )?
                .get(0);
            if leading {
                return Err(StoreError::Backend {
                    backend: "postgresql",
                    message: "an operations center holds the leader lease: stop it first".into(),
                });
            }
            let posts = copy(
                &src,
                &mut tx,
                "SELECT post_id, durable_through, last_seq, last_seen, status, test_mode_until FROM posts",
                "INSERT INTO posts (post_id, durable_through, last_seq, last_seen, status, test_mode_until)
                 SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::bytea[], $6::int8[])",
                &[Col::Text, Col::Int, Col::Int, Col::OptInt, Col::OptBytes, Col::OptInt],
            )?;
            let events = copy(
                &src,
                &mut tx,
                "SELECT post_id, seq, received_at, stored_at, body, kind, at FROM events",
                "INSERT INTO events (post_id, seq, received_at, stored_at, body, kind, at)
                 SELECT p, s, r, st, b, k::int2, a
                 FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::bytea[],
                             $6::int8[], $7::int8[]) AS u(p, s, r, st, b, k, a)",
                &[
                    Col::Text,
                    Col::Int,
                    Col::OptInt,
                    Col::Int,
                    Col::OptBytes,
                    Col::Int,
                    Col::Int,
                ],
            )?;
            let incidents = copy(
                &src,
                &mut tx,
                "SELECT number, post_id, state, version, resolved_at, body, opened_at FROM incidents",
                "INSERT INTO incidents (number, post_id, state, version, resolved_at, body, opened_at)
                 SELECT n, p, s::int4, v, r, b, o
                 FROM unnest($1::int8[], $2::text[], $3::int8[], $4::int8[], $5::int8[], $6::bytea[],
                             $7::int8[])
                   AS u(n, p, s, v, r, b, o)",
                &[
                    Col::Int,
                    Col::Text,
                    Col::Int,
                    Col::Int,
                    Col::OptInt,
                    Col::OptBytes,
                    Col::Int,
                ],
            )?;
            let links = copy(
                &src,
                &mut tx,
                "SELECT number, post_id, seq FROM incident_events",
                "INSERT INTO incident_events (number, post_id, seq)
                 SELECT * FROM unnest($1::int8[], $2::text[], $3::int8[])",
                &[Col::Int, Col::Text, Col::Int],
            )?;
            let audit = copy(
                &src,
                &mut tx,
                "SELECT id, number, post_id, body FROM audit ORDER BY id",
                "INSERT INTO audit (id, number, post_id, body) OVERRIDING SYSTEM VALUE
                 SELECT * FROM unnest($1::int8[], $2::int8[], $3::text[], $4::bytea[])",
                &[Col::Int, Col::OptInt, Col::Text, Col::OptBytes],
            )?;
            let notes = copy(
                &src,
                &mut tx,
                "SELECT id, number, body FROM notes ORDER BY id",
                "INSERT INTO notes (id, number, body) OVERRIDING SYSTEM VALUE
                 SELECT * FROM unnest($1::int8[], $2::int8[], $3::bytea[])",
                &[Col::Int, Col::Int, Col::OptBytes],
            )?;
            let site_records = copy(
                &src,
                &mut tx,
                "SELECT post_id, position, body FROM site_posts",
                "INSERT INTO site_posts (post_id, position, body)
                 SELECT * FROM unnest($1::text[], $2::int8[], $3::bytea[])",
                &[Col::Text, Col::Int, Col::OptBytes],
            )? + copy(
                &src,
                &mut tx,
                "SELECT position, category, post_id, body FROM site_plans",
                "INSERT INTO site_plans (position, category, post_id, body)
                 SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::bytea[])",
                &[Col::Int, Col::Text, Col::Text, Col::OptBytes],
            )?;
            let notifications = copy(
                &src,
                &mut tx,
                "SELECT id, delivery, webhook, event, incident, at, state, attempts, next_at, last_error
                 FROM notifications ORDER BY id",
                "INSERT INTO notifications (id, delivery, webhook, event, incident, at, state, attempts,
                   next_at, last_error) OVERRIDING SYSTEM VALUE
                 SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::bytea[],
                   $6::int8[], $7::int8[], $8::int8[], $9::int8[], $10::text[])",
                &[
                    Col::Int,
                    Col::Text,
                    Col::Text,
                    Col::Text,
                    Col::OptBytes,
                    Col::Int,
                    Col::Int,
                    Col::Int,
                    Col::Int,
                    Col::Text,
                ],
            )?;
            // New positions and note and notification ids continue after
            // the imported ones.
            tx.batch_execute(
                "SELECT setval(pg_get_serial_sequence('audit', 'id'),
                               coalesce((SELECT max(id) FROM audit), 0) + 1, false);
                 SELECT setval(pg_get_serial_sequence('notes', 'id'),
                               coalesce((SELECT max(id) FROM notes), 0) + 1, false);
                 SELECT setval(pg_get_serial_sequence('notifications', 'id'),
                               coalesce((SELECT max(id) FROM notifications), 0) + 1, false);",
            )?;
            tx.commit()?;
            Ok(Imported {
                posts,
                events,
                incidents,
                links,
                audit,
                notes,
                site_records,
                notifications,
            })
        })
    }
}

/// How a column is read from SQLite and bound as a PostgreSQL array.
#[derive(Clone, Copy)]
enum Col {
    Text,
    Int,
    OptInt,
    OptBytes,
}

enum Column {
    Text(Vec<String>),
    Int(Vec<i64>),
    OptInt(Vec<Option<i64>>),
    OptBytes(Vec<Option<Vec<u8>>>),
}

impl Column {
    fn new(c: Col) -> Self {
        match c {
            Col::Text => Column::Text(Vec::new()),
            Col::Int => Column::Int(Vec::new()),
            Col::OptInt => Column::OptInt(Vec::new()),
            Col::OptBytes => Column::OptBytes(Vec::new()),
        }
    }

    fn push(&mut self, row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<()> {
        match self {
            Column::Text(v) => v.push(row.get(i)?),
            Column::Int(v) => v.push(row.get(i)?),
            Column::OptInt(v) => v.push(row.get(i)?),
            Column::OptBytes(v) => v.push(row.get(i)?),
        }
        Ok(())
    }

    fn param(&self) -> &(dyn postgres::types::ToSql + Sync) {
        match self {
            Column::Text(v) => v,
            Column::Int(v) => v,
            Column::OptInt(v) => v,
            Column::OptBytes(v) => v,
        }
    }
}

/// Copies every row `select` gives into `insert` (which takes one array
/// per column), [`IMPORT_CHUNK`] rows at a time. Returns the row count.
fn copy(
    src: &rusqlite::Connection,
    tx: &mut Transaction<'_>,
    select: &str,
    insert: &str,
    cols: &[Col],
) -> Result<u64, StoreError> {
    let insert = tx.prepare(insert)?;
    let mut stmt = src.prepare(select)?;
    let mut rows = stmt.query([])?;
    let mut total = 0u64;
    loop {
        let mut columns: Vec<Column> = cols.iter().map(|&c| Column::new(c)).collect();
        let mut n = 0;
        while n < IMPORT_CHUNK {
            let Some(row) = rows.next()? else { break };
            for (i, col) in columns.iter_mut().enumerate() {
                col.push(row, i)?;
            }
            n += 1;
        }
        if n == 0 {
            return Ok(total);
        }
        let params: Vec<&(dyn postgres::types::ToSql + Sync)> =
            columns.iter().map(Column::param).collect();
        tx.execute(&insert, &params)?;
        total += n as u64;
    }
}

/// Notifications from rows of [`notify::DUE`], [`notify::BY_STATE`] or
/// [`notify::ONE`].
fn notification_rows(rows: &[Row]) -> Result<Vec<Notification>, StoreError> {
    rows.iter()
        .map(|r| {
            notify::Row {
                id: r.get(0),
                delivery: r.get(1),
                webhook: r.get(2),
                event: r.get(3),
                incident: r.get(4),
                at: r.get(5),
                state: r.get(6),
                attempts: r.get(7),
                next_at: r.get(8),
                last_error: r.get(9),
            }
            .decode()
        })
        .collect()
}
