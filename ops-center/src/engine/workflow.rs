//! Workflow: what people do to incidents, and test mode.
//!
//! open → acknowledged → resolved (with a disposition), and resolved → open
//! again (reopen, by a person or by a new alarm). Assign, escalate and notes
//! work on any incident that is not resolved (notes on any). Every action
//! names the version the caller last saw and fails with
//! [`WorkflowError::VersionMismatch`] (carrying the current incident) if the
//! incident changed since; every accepted action is one audited version step.
//! Role checks belong to the API layer, which knows the caller.

use std::time::{Duration, SystemTime};

use vigil_proto::v1::{AuditAction, Disposition, Incident, IncidentState, Note};

use super::{Engine, SYSTEM, post_audit, record};
use crate::store::{Changes, TestModeWrite};

/// Longest note, in characters.
pub const MAX_NOTE_CHARS: usize = 4000;

/// Who acts: certificate CN and OU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub id: String,
    pub role: String,
}

impl Actor {
    pub fn new(id: impl Into<String>, role: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            role: role.into(),
        }
    }

    /// The engine itself.
    pub fn system() -> Self {
        Self::new(SYSTEM, SYSTEM)
    }
}

/// A change a person asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open → acknowledged, with an optional note.
    Acknowledge {
        note: String,
    },
    /// Assign to an identity; empty = the actor ("take").
    Assign {
        assignee: String,
    },
    /// Raise the escalation level by one.
    Escalate {
        reason: String,
    },
    /// Acknowledged → resolved.
    Resolve {
        disposition: Disposition,
        note: String,
    },
    /// Resolved → open.
    Reopen {
        reason: String,
    },
    AddNote {
        text: String,
    },
    /// Check off (or skip, saying why) step `step` (from 1) of the
    /// incident's action plan; `summary` names the step for the audit line.
    Step {
        step: u32,
        skipped: bool,
        summary: String,
        note: String,
    },
}

impl Action {
    fn name(&self) -> &'static str {
        match self {
            Action::Acknowledge { .. } => "acknowledge",
            Action::Assign { .. } => "assign",
            Action::Escalate { .. } => "escalate",
            Action::Resolve { .. } => "resolve",
            Action::Reopen { .. } => "reopen",
            Action::AddNote { .. } => "add a note to",
            Action::Step { .. } => "mark a step of",
        }
    }
}

/// Why a workflow action was refused. Nothing was changed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WorkflowError {
    #[error("no incident {0}")]
    NotFound(String),
    #[error(
        "incident {} changed: it is at version {}, not the version you saw",
        current.id, current.version
    )]
    VersionMismatch { current: Box<Incident> },
    #[error("cannot {action} incident {id} while it is {state}: {hint}")]
    InvalidTransition {
        id: String,
        action: &'static str,
        state: &'static str,
        hint: &'static str,
    },
    #[error("{0}")]
    InvalidArgument(String),
    /// The action does not fit the incident as it is, in the words of the
    /// leading replica that refused it (an action forwarded by a standby).
    #[error("{0}")]
    Refused(String),
    /// The store failed or the ops-center is shutting down; the action may
    /// or may not have been applied only if this comes after the commit.
    #[error("operations center unavailable: {0}")]
    Unavailable(String),
}

fn state_name(state: i32) -> &'static str {
    match IncidentState::try_from(state) {
        Ok(IncidentState::Open) => "open",
        Ok(IncidentState::Acknowledged) => "acknowledged",
        Ok(IncidentState::Resolved) => "resolved",
        _ => "in an unknown state",
    }
}

/// Puts a resolved incident back to open, needing a fresh acknowledgment.
pub(super) fn reopen(inc: &mut Incident, ack_deadline: Duration, now: SystemTime) {
    inc.state = IncidentState::Open as i32;
    inc.reopen_count += 1;
    inc.acknowledged_at = None;
    inc.acknowledged_by.clear();
    inc.resolved_at = None;
    inc.resolved_by.clear();
    inc.disposition = Disposition::Unspecified as i32;
    // A logged incident (emergency mode) stays out of the queue: no
    // deadline, so it never escalates by itself.
    inc.ack_deadline = (!inc.logged).then(|| (now + ack_deadline).into());
}

impl Engine {
    /// Applies `action` to incident `id` if it is still at
    /// `expected_version`. `stored` is the incident as the store has it, for
    /// incidents the engine no longer keeps in memory (long resolved); the
    /// engine's own copy wins when it has one.
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &mut self,
        id: &str,
        stored: Option<Incident>,
        expected_version: u64,
        action: &Action,
        actor: &Actor,
        now: SystemTime,
        out: &mut Changes,
    ) -> Result<Incident, WorkflowError> {
        let current = match self.incidents.get(id) {
            Some(inc) => inc.clone(),
            None => stored.ok_or_else(|| WorkflowError::NotFound(id.to_owned()))?,
        };
        if current.version != expected_version {
            return Err(WorkflowError::VersionMismatch {
                current: Box::new(current),
            });
        }
        let state = IncidentState::try_from(current.state).unwrap_or(IncidentState::Unspecified);
        let invalid = |hint: &'static str| WorkflowError::InvalidTransition {
            id: id.to_owned(),
            action: action.name(),
            state: state_name(current.state),
            hint,
        };
        let mut inc = current.clone();
        let mut note = None;
        let (audit, detail) = match action {
            Action::Acknowledge { note: text } => {
                if state != IncidentState::Open {
                    return Err(invalid("only an open incident can be acknowledged"));
                }
                check_note(text, true)?;
                inc.state = IncidentState::Acknowledged as i32;
                inc.acknowledged_at = Some(now.into());
                inc.acknowledged_by.clone_from(&actor.id);
                inc.ack_deadline = None;
                note = Some(text.clone());
                (AuditAction::Acknowledged, String::new())
            }
            Action::Assign { assignee } => {
                if state == IncidentState::Resolved {
                    return Err(invalid("reopen it first"));
                }
                let who = if assignee.is_empty() {
                    actor.id.clone()
                } else {
                    assignee.clone()
                };
                vigil_pki::Identity::new(&who)
                    .map_err(|e| WorkflowError::InvalidArgument(format!("assignee: {e}")))?;
                if inc.assignee == who {
                    return Err(WorkflowError::InvalidArgument(format!(
                        "incident {id} is already assigned to {who}"
                    )));
                }
                let detail = if inc.assignee.is_empty() {
                    format!("assigned to {who}")
                } else {
                    format!("assigned to {who} (was {})", inc.assignee)
                };
                inc.assignee = who;
                (AuditAction::Assigned, detail)
            }
            Action::Escalate { reason } => {
                if state == IncidentState::Resolved {
                    return Err(invalid("reopen it first"));
                }
                check_note(reason, true)?;
                inc.escalation_level += 1;
                let mut detail = format!("escalation level {}", inc.escalation_level);
                if !reason.is_empty() {
                    detail = format!("{detail}: {reason}");
                }
                (AuditAction::Escalated, detail)
            }
            Action::Resolve {
                disposition,
                note: text,
            } => {
                if state != IncidentState::Acknowledged {
                    return Err(invalid("acknowledge it first"));
                }
                if *disposition == Disposition::Unspecified {
                    return Err(WorkflowError::InvalidArgument(
                        "a disposition is required to resolve".into(),
                    ));
                }
                check_note(text, true)?;
                inc.state = IncidentState::Resolved as i32;
                inc.resolved_at = Some(now.into());
                inc.resolved_by.clone_from(&actor.id);
                inc.disposition = *disposition as i32;
                note = Some(text.clone());
                (
                    AuditAction::Resolved,
                    format!("disposition {}", disposition_name(*disposition)),
                )
            }
            Action::Reopen { reason } => {
                if state != IncidentState::Resolved {
                    return Err(invalid("only a resolved incident can be reopened"));
                }
                check_note(reason, true)?;
                let deadline = self.cfg.ack_deadline(inc.priority);
                reopen(&mut inc, deadline, now);
                (AuditAction::Reopened, reason.clone())
            }
            Action::AddNote { text } => {
                check_note(text, false)?;
                note = Some(text.clone());
                (AuditAction::NoteAdded, String::new())
            }
            Action::Step {
                step,
                skipped,
                summary,
                note: text,
            } => {
                if state == IncidentState::Resolved {
                    return Err(invalid("reopen it first"));
                }
                if *step == 0 {
                    return Err(WorkflowError::InvalidArgument(
                        "steps are numbered from 1".into(),
                    ));
                }
                // A skipped step must say why.
                check_note(text, !*skipped)?;
                note = Some(text.clone());
                let (action, word) = if *skipped {
                    (AuditAction::StepSkipped, "skipped")
                } else {
                    (AuditAction::StepDone, "done")
                };
                (action, format!("step {step} {word}: {summary}"))
            }
        };
        let detail = match note.as_deref() {
            Some(text) if !text.is_empty() => {
                out.notes.push(Note {
                    incident_id: inc.id.clone(),
                    author: actor.id.clone(),
                    at: Some(now.into()),
                    text: text.to_owned(),
                });
                // The note's words in the audit line too: an audit trail
                // read on its own must say what was written, not that
                // something was.
                if detail.is_empty() {
                    format!("note: {text}")
                } else {
                    format!("{detail}; note: {text}")
                }
            }
            _ => detail,
        };
        record(&mut inc, audit, actor, now, detail, out);
        if let (Action::Step { step, summary, .. }, Some(entry)) = (action, out.audit.last_mut()) {
            entry.step = *step;
            entry.step_summary.clone_from(summary);
        }
        out.put_incident(inc.clone(), Some(current.version));
        self.latest
            .entry((inc.post_id.clone(), inc.subject.clone()))
            .and_modify(|latest| {
                // A reopened old incident becomes its subject's newest again
                // only if no newer incident took over the subject.
                if crate::store::incident_number(latest) < crate::store::incident_number(&inc.id) {
                    latest.clone_from(&inc.id);
                }
            })
            .or_insert_with(|| inc.id.clone());
        self.incidents.insert(inc.id.clone(), inc.clone());
        Ok(inc)
    }

    /// Puts `post` into test mode for `duration` (at most
    /// `max_test_mode_secs`: a longer one is refused, naming the cap, so
    /// nobody believes a post is quiet for longer than it is), or ends it
    /// when `duration` is zero. Returns until when test mode now lasts.
    pub fn set_test_mode(
        &mut self,
        post: &str,
        duration: Duration,
        reason: &str,
        actor: &Actor,
        now: SystemTime,
        out: &mut Changes,
    ) -> Result<Option<SystemTime>, WorkflowError> {
        vigil_pki::Identity::new(post)
            .map_err(|e| WorkflowError::InvalidArgument(format!("post: {e}")))?;
        check_note(reason, true)?;
        if duration.is_zero() {
            if self.test_modes.remove(post).is_some() {
                out.test_modes.push(TestModeWrite {
                    post_id: post.to_owned(),
                    until: None,
                });
                let detail = if reason.is_empty() {
                    "test mode ended".to_owned()
                } else {
                    format!("test mode ended: {reason}")
                };
                out.audit.push(post_audit(
                    post,
                    AuditAction::TestModeEnded,
                    actor,
                    now,
                    detail,
                ));
            }
            return Ok(None);
        }
        let cap = self.cfg.max_test_mode_secs;
        if duration > Duration::from_secs(cap) {
            return Err(WorkflowError::InvalidArgument(format!(
                "test mode lasts at most {} (max_test_mode_secs = {cap}); asked for {}",
                human_secs(cap),
                human_secs(duration.as_secs())
            )));
        }
        let until = now + duration;
        self.test_modes.insert(post.to_owned(), until);
        out.test_modes.push(TestModeWrite {
            post_id: post.to_owned(),
            until: Some(until),
        });
        let mut detail = format!("test mode for {} s", duration.as_secs());
        if !reason.is_empty() {
            detail = format!("{detail}: {reason}");
        }
        out.audit.push(post_audit(
            post,
            AuditAction::TestModeStarted,
            actor,
            now,
            detail,
        ));
        Ok(Some(until))
    }
}

pub(super) fn check_note(text: &str, may_be_empty: bool) -> Result<(), WorkflowError> {
    if !may_be_empty && text.trim().is_empty() {
        return Err(WorkflowError::InvalidArgument("the note is empty".into()));
    }
    if text.chars().count() > MAX_NOTE_CHARS {
        return Err(WorkflowError::InvalidArgument(format!(
            "the text is longer than {MAX_NOTE_CHARS} characters"
        )));
    }
    Ok(())
}

/// `600` → `10m`, `5400` → `1h30m`, `45` → `45s`.
pub(super) fn human_secs(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

fn disposition_name(d: Disposition) -> &'static str {
    d.as_str_name().trim_start_matches("DISPOSITION_")
}
