//! `vigil ack | assign | escalate | resolve | reopen | note ID`,
//! `vigil step ID N --done | --skip`, and `vigil test-mode POST`.
//!
//! Every change to an incident names the version the analyst saw. With
//! `--version N` that is N; without it the incident is read first and its
//! current version is used (so the change applies to what is there now).
//! If someone changed the incident in between, the server refuses with
//! FAILED_PRECONDITION and the current incident; we print it and exit 1,
//! having changed nothing.

use anyhow::{Result, anyhow};
use clap::{Args, ValueEnum};
use tonic::Status;
use vigil_proto::v1::{
    AcknowledgeRequest, AddNoteRequest, AssignRequest, Disposition, EscalateRequest,
    GetIncidentRequest, Incident, MarkStepRequest, ReopenRequest, ResolveRequest,
    SetTestModeRequest, StepOutcome,
};

use super::{
    Connection,
    connect::{Session, connect},
    fail, render, unary,
};
use crate::Usage;

/// The incident a workflow command acts on.
#[derive(Debug, Args)]
pub(crate) struct Target {
    /// The incident, e.g. inc-000123.
    id: String,
    /// The version you saw (from `vigil incidents` or `watch`); without it,
    /// the incident's current version.
    #[arg(long)]
    version: Option<u64>,
    /// Print the incident after the change (or, on a conflict, as it is now)
    /// as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct AckArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(flatten)]
    target: Target,
    /// A note recorded with the acknowledgment.
    #[arg(long)]
    note: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct AssignArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(flatten)]
    target: Target,
    /// Whom to assign it to (an identity); default: yourself.
    #[arg(long, value_name = "IDENTITY")]
    to: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct EscalateArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(flatten)]
    target: Target,
    /// Why.
    #[arg(long)]
    reason: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ResolveArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(flatten)]
    target: Target,
    /// What it turned out to be.
    #[arg(long, value_enum)]
    disposition: DispositionArg,
    /// A closing note.
    #[arg(long)]
    note: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ReopenArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(flatten)]
    target: Target,
    /// Why.
    #[arg(long)]
    reason: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct NoteArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(flatten)]
    target: Target,
    /// The note.
    text: String,
}

#[derive(Debug, Args)]
pub(crate) struct StepArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(flatten)]
    target: Target,
    /// The step of the incident's plan, from 1 (as `vigil incidents ID` numbers them).
    step: u32,
    /// The step is done.
    #[arg(long, conflicts_with = "skip", required_unless_present = "skip")]
    done: bool,
    /// The step is skipped (say why with --note).
    #[arg(long)]
    skip: bool,
    /// A note: optional for a done step, required for a skipped one.
    #[arg(long)]
    note: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DispositionArg {
    /// A real event; response dispatched or handled.
    Genuine,
    /// Caused by a person on site.
    UserError,
    /// Caused by equipment.
    EquipmentFault,
    /// Caused by weather, animals.
    Environmental,
    /// A planned test or maintenance.
    Test,
    /// Could not be determined.
    Unknown,
    /// Duplicate of another incident.
    Duplicate,
}

impl From<DispositionArg> for Disposition {
    fn from(d: DispositionArg) -> Self {
        match d {
            DispositionArg::Genuine => Disposition::Genuine,
            DispositionArg::UserError => Disposition::UserError,
            DispositionArg::EquipmentFault => Disposition::EquipmentFault,
            DispositionArg::Environmental => Disposition::Environmental,
            DispositionArg::Test => Disposition::Test,
            DispositionArg::Unknown => Disposition::Unknown,
            DispositionArg::Duplicate => Disposition::Duplicate,
        }
    }
}

/// One workflow action, with what it carries.
enum Act {
    Ack {
        note: String,
    },
    Assign {
        to: String,
    },
    Escalate {
        reason: String,
    },
    Resolve {
        disposition: Disposition,
        note: String,
    },
    Reopen {
        reason: String,
    },
    Note {
        text: String,
    },
    Step {
        step: u32,
        skipped: bool,
        note: String,
    },
}

pub(crate) async fn ack(a: AckArgs) -> Result<()> {
    let note = a.note.unwrap_or_default();
    act(&a.conn, &a.target, Act::Ack { note }).await
}

pub(crate) async fn assign(a: AssignArgs) -> Result<()> {
    let to = a.to.unwrap_or_default();
    act(&a.conn, &a.target, Act::Assign { to }).await
}

pub(crate) async fn escalate(a: EscalateArgs) -> Result<()> {
    let reason = a.reason.unwrap_or_default();
    act(&a.conn, &a.target, Act::Escalate { reason }).await
}

pub(crate) async fn resolve(a: ResolveArgs) -> Result<()> {
    let act_ = Act::Resolve {
        disposition: a.disposition.into(),
        note: a.note.unwrap_or_default(),
    };
    act(&a.conn, &a.target, act_).await
}

pub(crate) async fn reopen(a: ReopenArgs) -> Result<()> {
    let reason = a.reason.unwrap_or_default();
    act(&a.conn, &a.target, Act::Reopen { reason }).await
}

pub(crate) async fn step(a: StepArgs) -> Result<()> {
    let note = a.note.unwrap_or_default();
    if a.skip && note.trim().is_empty() {
        return Err(Usage("--skip needs --note saying why".into()).into());
    }
    let act_ = Act::Step {
        step: a.step,
        skipped: a.skip,
        note,
    };
    act(&a.conn, &a.target, act_).await
}

pub(crate) async fn note(a: NoteArgs) -> Result<()> {
    act(&a.conn, &a.target, Act::Note { text: a.text }).await
}

async fn act(conn: &Connection, target: &Target, act: Act) -> Result<()> {
    if target.version == Some(0) {
        return Err(Usage("--version: versions start at 1".into()).into());
    }
    let mut s = connect(conn).await?;
    let id = target.id.clone();
    let version = match target.version {
        Some(v) => v,
        None => {
            let detail = unary(s.client.get_incident(GetIncidentRequest {
                incident_id: id.clone(),
            }))
            .await
            .map_err(|e| fail(&s, &e))?;
            detail.incident.map(|i| i.version).unwrap_or_default()
        }
    };
    let c = &mut s.client;
    let (result, done) = match act {
        Act::Ack { note } => (
            unary(c.acknowledge(AcknowledgeRequest {
                incident_id: id.clone(),
                expected_version: version,
                note,
            }))
            .await,
            "acknowledged".to_owned(),
        ),
        Act::Assign { to } => {
            let whom = if to.is_empty() {
                s.me.identity.to_string()
            } else {
                to.clone()
            };
            (
                unary(c.assign(AssignRequest {
                    incident_id: id.clone(),
                    expected_version: version,
                    assignee: to,
                }))
                .await,
                format!("assigned to {whom}"),
            )
        }
        Act::Escalate { reason } => (
            unary(c.escalate(EscalateRequest {
                incident_id: id.clone(),
                expected_version: version,
                reason,
            }))
            .await,
            "escalated".to_owned(),
        ),
        Act::Resolve { disposition, note } => (
            unary(c.resolve(ResolveRequest {
                incident_id: id.clone(),
                expected_version: version,
                disposition: disposition as i32,
                note,
            }))
            .await,
            "resolved".to_owned(),
        ),
        Act::Reopen { reason } => (
            unary(c.reopen(ReopenRequest {
                incident_id: id.clone(),
                expected_version: version,
                reason,
            }))
            .await,
            "reopened".to_owned(),
        ),
        Act::Note { text } => (
            unary(c.add_note(AddNoteRequest {
                incident_id: id.clone(),
                expected_version: version,
                text,
            }))
            .await,
            "note added".to_owned(),
        ),
        Act::Step {
            step,
            skipped,
            note,
        } => (
            unary(c.mark_step(MarkStepRequest {
                incident_id: id.clone(),
                expected_version: version,
                step,
                outcome: if skipped {
                    StepOutcome::Skipped
                } else {
                    StepOutcome::Done
                } as i32,
                note,
                // The number as the user gave it (no text to check).
                step_text: String::new(),
            }))
            .await,
            format!("step {step} {}", if skipped { "skipped" } else { "done" }),
        ),
    };
    match result {
        Ok(inc) => {
            if target.json {
                println!("{}", render::json(&inc, "Incident"));
            } else {
                println!("{id} {done} {}", render::incident_state(&inc));
            }
            Ok(())
        }
        Err(status) => Err(refused(&s, &status, &id, version, target.json)),
    }
}

/// The error for a refused action; a version conflict shows the incident as
/// it is now (and prints it as JSON for scripts).
fn refused(s: &Session, status: &Status, id: &str, version: u64, json: bool) -> anyhow::Error {
    let Some(current) = vigil_ops::api::current_incident(status) else {
        return fail(s, status);
    };
    if json {
        println!("{}", render::json(&current, "Incident"));
    }
    conflict(id, version, &current)
}

fn conflict(id: &str, version: u64, current: &Incident) -> anyhow::Error {
    anyhow!(
        "incident {id} changed since version {version}; nothing was done.\n  now: {}\n  check it, then run again with --version {} (or without --version)",
        render::incident_summary(current),
        current.version
    )
}

#[derive(Debug, Args)]
pub(crate) struct TestModeArgs {
    #[command(flatten)]
    conn: Connection,
    /// The post, e.g. p-017.
    post: String,
    /// How long: seconds, or with a unit: 90s, 30m, 8h; longer than the
    /// server's max_test_mode_secs is refused.
    #[arg(long = "for", value_name = "DURATION", required_unless_present = "end")]
    duration: Option<String>,
    /// End test mode now.
    #[arg(long, conflicts_with = "duration")]
    end: bool,
    /// Why (recorded in the audit trail).
    #[arg(long)]
    reason: Option<String>,
    /// Print the post's status after the change as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn test_mode(a: TestModeArgs) -> Result<()> {
    let duration_seconds = match (&a.duration, a.end) {
        (_, true) => 0,
        (Some(d), false) => parse_duration(d).map_err(|e| Usage(format!("--for {d:?}: {e}")))?,
        (None, false) => return Err(Usage("give --for DURATION or --end".into()).into()),
    };
    let mut s = connect(&a.conn).await?;
    let info = unary(s.client.set_test_mode(SetTestModeRequest {
        post_id: a.post.clone(),
        duration_seconds,
        reason: a.reason.unwrap_or_default(),
    }))
    .await
    .map_err(|e| fail(&s, &e))?;
    if a.json {
        println!("{}", render::json(&info, "PostInfo"));
    } else if info.test_mode_until.is_some() {
        println!(
            "{} in test mode until {}",
            a.post,
            render::when(info.test_mode_until.as_ref())
        );
    } else {
        println!("{}: test mode ended", a.post);
    }
    Ok(())
}

/// `90`, `90s`, `30m`, `8h` → seconds (at least 1).
pub(crate) fn parse_duration(s: &str) -> Result<u32, String> {
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u32 = digits
        .parse()
        .map_err(|_| "expected a number with an optional unit s, m or h".to_owned())?;
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("unknown unit {unit:?}: use s, m or h")),
    };
    match n.checked_mul(factor) {
        Some(0) => Err("must be more than zero (use --end to end test mode)".into()),
        Some(secs) => Ok(secs),
        None => Err("too long".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_seconds_minutes_and_hours() {
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("30m"), Ok(1800));
        assert_eq!(parse_duration("8h"), Ok(28_800));
        for bad in ["", "0", "m", "5d", "1.5h", "-3m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
