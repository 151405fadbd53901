//! The gRPC client commands: `vigil watch | incidents | ack | assign |
//! escalate | resolve | reopen | note | step | posts | test-mode | replay |
//! site | history | report | emergency | notify`.
//!
//! Each command connects to the operations center's `vigil.v1.OpsCenter`
//! API over mutual TLS with the caller's own certificate (its OU is the role
//! the server authorises), makes its call, and prints for a person by
//! default or JSON for scripts (`--json`). Server refusals become one plain
//! line (exit status 1); missing or unreadable certificates and bad flag
//! values exit with status 64, like every other `vigil` command.
//!
//! Layout:
//! - `mod`: the command enum, the connection flags, gRPC statuses as messages.
//! - [`connect`]: the channel over our own rustls config (CA and CRL checks).
//! - [`render`]: lines for people and JSON for scripts; [`render::feed_line`]
//!   is the live-feed renderer that `watch` (and `vigil dev`) print with.
//! - [`query`]: `incidents`, `posts`.
//! - [`workflow`]: `ack`, `assign`, `escalate`, `resolve`, `reopen`, `note`,
//!   `step`, `test-mode`.
//! - [`watch`]: the live feed, resuming from its cursor after a disconnect.
//! - [`replay`]: stored events as JSON lines.
//! - [`site`]: `site import`, `site export`: post records and action plans.
//! - [`views`]: `history` (one post's incidents and events), `report`
//!   (per-post figures for a period).
//! - [`emergency`]: `emergency [start|end]`: emergency mode.
//! - [`notify`]: `notify list`, `notify retry`: outbound webhook notifications.

pub(crate) mod connect;
pub(crate) mod emergency;
pub(crate) mod notify;
pub(crate) mod query;
pub(crate) mod render;
pub(crate) mod replay;
pub(crate) mod site;
pub(crate) mod views;
pub(crate) mod watch;
pub(crate) mod workflow;

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use tonic::{Code, Status};

/// How long a unary call may take before the client gives up.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Subcommand)]
pub(crate) enum ClientCommand {
    /// Follow the live incident feed; resumes where it left off after a disconnect.
    Watch(watch::WatchArgs),
    /// List incidents, or show one with its events, notes and audit trail.
    Incidents(query::IncidentsArgs),
    /// Acknowledge an open incident.
    Ack(workflow::AckArgs),
    /// Assign an incident to yourself, or (supervisors) to someone else.
    Assign(workflow::AssignArgs),
    /// Escalate an incident one level.
    Escalate(workflow::EscalateArgs),
    /// Resolve an acknowledged incident with a disposition.
    Resolve(workflow::ResolveArgs),
    /// Reopen a resolved incident.
    Reopen(workflow::ReopenArgs),
    /// Add a note to an incident.
    Note(workflow::NoteArgs),
    /// Check off (--done) or skip (--skip --note WHY) a step of an incident's action plan.
    Step(workflow::StepArgs),
    /// Status of the posts: last seen, seqs stored, open incidents, test mode.
    Posts(query::PostsArgs),
    /// Put a post into test mode for a while, or end test mode.
    TestMode(workflow::TestModeArgs),
    /// Replay stored events as JSON lines (stdout or --to-file).
    Replay(replay::ReplayArgs),
    /// One post's incidents and events, newest first (analysts and up).
    History(views::HistoryArgs),
    /// Per-post figures for a period (CSV, --json): alarms, false-alarm rate, response times.
    Report(views::ReportArgs),
    /// Post records, contacts and action plans: import or export a site file (TOML).
    #[command(subcommand)]
    Site(site::SiteCommand),
    /// Emergency mode: show it, start it (--for, --reason, --posts) or end it.
    Emergency(emergency::EmergencyArgs),
    /// Outbound webhook notifications: list them (--failed) or send a failed one again.
    #[command(subcommand)]
    Notify(notify::NotifyCommand),
}

/// Where the API is and who we are; each flag also comes from the
/// environment.
#[derive(Debug, Clone, Args)]
pub(crate) struct Connection {
    /// The operations center's API, HOST:PORT; HOST must match its
    /// certificate. Several, separated by commas (replicas of one operations
    /// center): the first that answers; `watch` moves on to the next when
    /// its server goes away, resuming from its cursor.
    #[arg(long, env = "VIGIL_SERVER", default_value = "127.0.0.1:50051")]
    pub(crate) server: String,
    /// The region CA certificate (PEM).
    #[arg(long, env = "VIGIL_CA", value_name = "FILE")]
    pub(crate) ca: Option<PathBuf>,
    /// Your certificate (PEM); its OU is your role.
    #[arg(long, env = "VIGIL_CERT", value_name = "FILE")]
    pub(crate) cert: Option<PathBuf>,
    /// Your private key (PEM).
    #[arg(long, env = "VIGIL_KEY", value_name = "FILE")]
    pub(crate) key: Option<PathBuf>,
    /// The region CRL (PEM), to refuse a revoked server certificate.
    #[arg(long, env = "VIGIL_CRL", value_name = "FILE")]
    pub(crate) crl: Option<PathBuf>,
}

pub(crate) fn run(cmd: ClientCommand) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        match cmd {
            ClientCommand::Watch(a) => watch::run(a).await,
            ClientCommand::Incidents(a) => query::incidents(a).await,
            ClientCommand::Posts(a) => query::posts(a).await,
            ClientCommand::Ack(a) => workflow::ack(a).await,
            ClientCommand::Assign(a) => workflow::assign(a).await,
            ClientCommand::Escalate(a) => workflow::escalate(a).await,
            ClientCommand::Resolve(a) => workflow::resolve(a).await,
            ClientCommand::Reopen(a) => workflow::reopen(a).await,
            ClientCommand::Note(a) => workflow::note(a).await,
            ClientCommand::Step(a) => workflow::step(a).await,
            ClientCommand::TestMode(a) => workflow::test_mode(a).await,
            ClientCommand::Replay(a) => replay::run(a).await,
            ClientCommand::Site(c) => site::run(c).await,
            ClientCommand::History(a) => views::history(a).await,
            ClientCommand::Report(a) => views::report(a).await,
            ClientCommand::Emergency(a) => emergency::run(a).await,
            ClientCommand::Notify(c) => notify::run(c).await,
        }
    })
}

/// Runs one unary call under [`CALL_TIMEOUT`].
pub(crate) async fn unary<T>(
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no answer within {}s",
            CALL_TIMEOUT.as_secs()
        ))),
    }
}

/// A refused or failed call of `session` as one line a person can act on.
pub(crate) fn status_message(status: &Status, session: &connect::Session) -> String {
    let (me, server) = (&session.me, &session.server);
    let msg = status.message();
    match status.code() {
        Code::PermissionDenied => match msg.split_once(" may not ") {
            Some((_, what)) => format!(
                "permission denied: your certificate's role {} may not {what} (you are {})",
                me.role, me.identity
            ),
            None => format!(
                "permission denied for {} (role {}): {msg}",
                me.identity, me.role
            ),
        },
        Code::Unauthenticated => {
            format!("the operations center did not accept your certificate: {msg}")
        }
        Code::NotFound | Code::FailedPrecondition => msg.to_owned(),
        Code::InvalidArgument => format!("refused: {msg}"),
        Code::ResourceExhausted => format!("too much for one request: {msg}"),
        Code::DeadlineExceeded => format!("the operations center at {server}: {msg}"),
        Code::Unavailable | Code::Unknown | Code::Cancelled => match session.io_error.get() {
            Some((io, true)) => {
                format!("the operations center at {server} ended the connection: {io}")
            }
            Some((io, false)) => format!(
                "the operations center at {server} closed the connection without answering ({io}): \
                 it may have refused your certificate (revoked, expired or from another CA); \
                 its log says why"
            ),
            None => format!(
                "the operations center at {server} is unavailable: {}",
                root_cause(status).unwrap_or_else(|| msg.to_owned())
            ),
        },
        code => format!("{code:?}: {msg}"),
    }
}

/// A failed call of `session` as an error to exit with.
pub(crate) fn fail(session: &connect::Session, status: &Status) -> anyhow::Error {
    anyhow::anyhow!(status_message(status, session))
}

/// Whether a watch should reconnect after `status` (the server or the
/// network went away) rather than give up (we were refused).
pub(crate) fn transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Internal
            | Code::Aborted
            | Code::ResourceExhausted
    )
}

/// The innermost error message under `e`, if it has a source.
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = e.source()?;
    while let Some(next) = cur.source() {
        cur = next;
    }
    Some(cur.to_string())
}
