//! Actions on a standby replica, carried out by the leader.
//!
//! With several replicas on one PostgreSQL database, only the leader runs
//! the incident engine, and every change to an incident goes through it (the
//! engine holds the open incidents; a second writer would leave it stale).
//! A standby still serves the whole API: an analyst's acknowledge, assign,
//! escalate, resolve, reopen, note or test-mode call is posted to the
//! request mailbox in the database ([`Mailbox`]), the leader's writer claims
//! it, applies it with compare-and-set on the incident version like any
//! other action, and commits the answer in the same transaction; the standby
//! reads the answer and replies. No address of the leader is needed, and a
//! request posted during a failover is taken by the next leader. A site
//! import (post records and plans) goes the same way, the whole validated
//! document in the request.
//!
//! A request that no leader claims before its deadline is given up by the
//! standby, which succeeds only if no leader holds it: the caller then gets
//! UNAVAILABLE and nothing was changed. Either the action is applied and
//! answered, or neither.

use std::{
    collections::HashMap,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use vigil_proto::v1::{Disposition, EmergencyMode, Incident, SiteDocument};

use crate::{
    engine::{Action, Actor, WorkflowError},
    store::{PostgresBackend, StoreError, postgres::Mailbox},
    writer::Job,
};

/// An action as posted to the mailbox (internal to the replicas of one
/// version; never seen by clients).
#[derive(Clone, PartialEq, prost::Message)]
struct Request {
    #[prost(string, tag = "1")]
    actor_id: String,
    #[prost(string, tag = "2")]
    actor_role: String,
    /// When the caller asked, in microseconds since the Unix epoch.
    #[prost(int64, tag = "3")]
    at_micros: i64,
    /// `acknowledge`, `assign`, `escalate`, `resolve`, `reopen`, `note`,
    /// `step_done`, `step_skipped`, `test_mode`, `site` or `emergency`.
    #[prost(string, tag = "4")]
    action: String,
    /// The incident, or the post for `test_mode`.
    #[prost(string, tag = "5")]
    target: String,
    #[prost(uint64, tag = "6")]
    expected_version: u64,
    /// The note, assignee, reason or text the action takes.
    #[prost(string, tag = "7")]
    text: String,
    #[prost(enumeration = "Disposition", tag = "8")]
    disposition: i32,
    #[prost(uint64, tag = "9")]
    duration_ms: u64,
    /// `step_done` and `step_skipped`: the step (from 1) and what it says.
    #[prost(uint32, tag = "10")]
    step: u32,
    #[prost(string, tag = "11")]
    summary: String,
    /// `site`: the document that replaces the stored one (validated by the
    /// standby that took the call).
    #[prost(message, optional, tag = "12")]
    site: Option<SiteDocument>,
    /// `emergency`: the posts (empty: the region).
    #[prost(string, repeated, tag = "13")]
    post_ids: Vec<String>,
}

/// What became of a forwarded action.
#[derive(Clone, PartialEq, prost::Message)]
struct Answer {
    #[prost(enumeration = "Outcome", tag = "1")]
    outcome: i32,
    /// The incident after the action; for a version mismatch, as it is.
    #[prost(message, optional, tag = "2")]
    incident: Option<Incident>,
    /// The refusal's own words.
    #[prost(string, tag = "3")]
    message: String,
    /// Test mode: until when (microseconds since the epoch), if started.
    #[prost(int64, optional, tag = "4")]
    until_micros: Option<i64>,
    /// Site import: what changed, one line each.
    #[prost(string, repeated, tag = "5")]
    changes: Vec<String>,
    /// Emergency mode: as it is now (unset: off).
    #[prost(message, optional, tag = "6")]
    emergency: Option<EmergencyMode>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
enum Outcome {
    Done = 0,
    NotFound = 1,
    VersionMismatch = 2,
    Refused = 3,
    InvalidArgument = 4,
    Unavailable = 5,
}

fn micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    }
}

fn from_micros(us: i64) -> SystemTime {
    if us >= 0 {
        UNIX_EPOCH + Duration::from_micros(us as u64)
    } else {
        UNIX_EPOCH - Duration::from_micros(us.unsigned_abs())
    }
}

/// The mailbox form of an action job; `None` for other jobs.
fn request(job: &Job) -> Option<Request> {
    let (actor, at) = match job {
        Job::Workflow { actor, at, .. }
        | Job::TestMode { actor, at, .. }
        | Job::Site { actor, at, .. }
        | Job::Emergency { actor, at, .. } => (actor, *at),
        _ => return None,
    };
    let mut r = Request {
        actor_id: actor.id.clone(),
        actor_role: actor.role.clone(),
        at_micros: micros(at),
        ..Request::default()
    };
    match job {
        Job::Workflow {
            incident_id,
            expected_version,
            action,
            ..
        } => {
            r.target = incident_id.clone();
            r.expected_version = *expected_version;
            let (name, text) = match action {
                Action::Acknowledge { note } => ("acknowledge", note.clone()),
                Action::Assign { assignee } => ("assign", assignee.clone()),
                Action::Escalate { reason } => ("escalate", reason.clone()),
                Action::Resolve { disposition, note } => {
                    r.disposition = *disposition as i32;
                    ("resolve", note.clone())
                }
                Action::Reopen { reason } => ("reopen", reason.clone()),
                Action::AddNote { text } => ("note", text.clone()),
                Action::Step {
                    step,
                    skipped,
                    summary,
                    note,
                } => {
                    r.step = *step;
                    r.summary.clone_from(summary);
                    let name = if *skipped {
                        "step_skipped"
                    } else {
                        "step_done"
                    };
                    (name, note.clone())
                }
            };
            r.action = name.into();
            r.text = text;
        }
        Job::TestMode {
            post_id,
            duration,
            reason,
            ..
        } => {
            r.action = "test_mode".into();
            r.target = post_id.clone();
            r.duration_ms = duration.as_millis() as u64;
            r.text = reason.clone();
        }
        Job::Site { site, .. } => {
            r.action = "site".into();
            r.site = Some(site.clone());
        }
        Job::Emergency {
            duration,
            post_ids,
            reason,
            ..
        } => {
            r.action = "emergency".into();
            r.duration_ms = duration.as_millis() as u64;
            r.post_ids.clone_from(post_ids);
            r.text.clone_from(reason);
        }
        _ => return None,
    }
    Some(r)
}

/// The job a mailbox request asks for; its reply goes nowhere (the answer
/// is committed to the mailbox by the writer).
fn job(r: Request) -> Result<Job, String> {
    let actor = Actor::new(r.actor_id, r.actor_role);
    let at = from_micros(r.at_micros);
    let action = match r.action.as_str() {
        "test_mode" => {
            return Ok(Job::TestMode {
                post_id: r.target,
                duration: Duration::from_millis(r.duration_ms),
                reason: r.text,
                actor,
                at,
                reply: oneshot::channel().0,
            });
        }
        "emergency" => {
            return Ok(Job::Emergency {
                duration: Duration::from_millis(r.duration_ms),
                post_ids: r.post_ids,
                reason: r.text,
                actor,
                at,
                reply: oneshot::channel().0,
            });
        }
        "site" => {
            return Ok(Job::Site {
                site: r.site.unwrap_or_default(),
                actor,
                at,
                reply: oneshot::channel().0,
            });
        }
        "acknowledge" => Action::Acknowledge { note: r.text },
        "assign" => Action::Assign { assignee: r.text },
        "escalate" => Action::Escalate { reason: r.text },
        "resolve" => Action::Resolve {
            disposition: Disposition::try_from(r.disposition)
                .map_err(|_| format!("unknown disposition {}", r.disposition))?,
            note: r.text,
        },
        "reopen" => Action::Reopen { reason: r.text },
        "note" => Action::AddNote { text: r.text },
        "step_done" | "step_skipped" => Action::Step {
            step: r.step,
            skipped: r.action == "step_skipped",
            summary: r.summary,
            note: r.text,
        },
        other => return Err(format!("unknown action {other:?}")),
    };
    Ok(Job::Workflow {
        incident_id: r.target,
        expected_version: r.expected_version,
        action,
        actor,
        at,
        reply: oneshot::channel().0,
    })
}

fn refusal(e: &WorkflowError) -> Answer {
    let (outcome, incident) = match e {
        WorkflowError::NotFound(_) => (Outcome::NotFound, None),
        WorkflowError::VersionMismatch { current } => {
            (Outcome::VersionMismatch, Some((**current).clone()))
        }
        WorkflowError::InvalidTransition { .. } | WorkflowError::Refused(_) => {
            (Outcome::Refused, None)
        }
        WorkflowError::InvalidArgument(_) => (Outcome::InvalidArgument, None),
        WorkflowError::Unavailable(_) => (Outcome::Unavailable, None),
    };
    Answer {
        outcome: outcome as i32,
        incident,
        message: e.to_string(),
        ..Answer::default()
    }
}

/// The answer to a workflow action, as the writer commits it.
pub fn workflow_answer(result: &Result<Incident, WorkflowError>) -> Vec<u8> {
    match result {
        Ok(incident) => Answer {
            outcome: Outcome::Done as i32,
            incident: Some(incident.clone()),
            ..Answer::default()
        },
        Err(e) => refusal(e),
    }
    .encode_to_vec()
}

/// The answer to a test-mode request, as the writer commits it.
pub fn test_mode_answer(result: &Result<Option<SystemTime>, WorkflowError>) -> Vec<u8> {
    match result {
        Ok(until) => Answer {
            outcome: Outcome::Done as i32,
            until_micros: until.map(micros),
            ..Answer::default()
        },
        Err(e) => refusal(e),
    }
    .encode_to_vec()
}

/// The answer to a site import, as the writer commits it.
pub fn site_answer(result: &Result<Vec<String>, WorkflowError>) -> Vec<u8> {
    match result {
        Ok(changes) => Answer {
            outcome: Outcome::Done as i32,
            changes: changes.clone(),
            ..Answer::default()
        },
        Err(e) => refusal(e),
    }
    .encode_to_vec()
}

/// The answer to an emergency-mode request, as the writer commits it.
pub fn emergency_answer(result: &Result<Option<EmergencyMode>, WorkflowError>) -> Vec<u8> {
    match result {
        Ok(mode) => Answer {
            outcome: Outcome::Done as i32,
            emergency: mode.clone(),
            ..Answer::default()
        },
        Err(e) => refusal(e),
    }
    .encode_to_vec()
}

fn error(answer: Answer, target: &str) -> WorkflowError {
    match Outcome::try_from(answer.outcome) {
        Ok(Outcome::NotFound) => WorkflowError::NotFound(target.to_owned()),
        Ok(Outcome::VersionMismatch) => match answer.incident {
            Some(current) => WorkflowError::VersionMismatch {
                current: Box::new(current),
            },
            None => WorkflowError::Refused(answer.message),
        },
        Ok(Outcome::InvalidArgument) => WorkflowError::InvalidArgument(answer.message),
        Ok(Outcome::Unavailable) => WorkflowError::Unavailable(answer.message),
        Ok(Outcome::Refused | Outcome::Done) | Err(_) => WorkflowError::Refused(answer.message),
    }
}

/// Most actions one standby has in the mailbox at once: each holds a
/// database connection while it waits, so a burst (or a client that never
/// stops) must not take every connection of the server from the others.
pub const MAX_IN_FLIGHT: usize = 16;

/// Answers `job` at once with UNAVAILABLE: the standby has
/// [`MAX_IN_FLIGHT`] actions waiting already.
pub fn refuse_busy(job: Job) {
    let why = || {
        WorkflowError::Unavailable(format!(
            "this standby has {MAX_IN_FLIGHT} actions waiting for the leader already"
        ))
    };
    match job {
        Job::Workflow { reply, .. } => drop(reply.send(Err(why()))),
        Job::TestMode { reply, .. } => drop(reply.send(Err(why()))),
        Job::Site { reply, .. } => drop(reply.send(Err(why()))),
        Job::Emergency { reply, .. } => drop(reply.send(Err(why()))),
        _ => {}
    }
}

/// How long a standby waits for the leader to take an action: one lease
/// for a failover to finish, one more for the new leader to start, and a
/// margin.
pub fn patience(lease: Duration) -> Duration {
    lease * 2 + Duration::from_secs(2)
}

/// Has the leader carry out `job` (an action a standby received) and
/// answers its caller: posts it to the mailbox, waits for the answer until
/// `patience`, then gives up (UNAVAILABLE, nothing changed). Other jobs
/// are dropped.
pub async fn forward(backend: PostgresBackend, job: Job, patience: Duration) {
    if let Job::Notify { reply, .. } = job {
        // The sender runs on the leader only; a retry asked of a standby
        // is asked again of the leading replica.
        let _ = reply.send(Err(WorkflowError::Unavailable(
            "notifications are retried on the leading replica; try again there".into(),
        )));
        return;
    }
    let Some(req) = request(&job) else { return };
    let body = req.encode_to_vec();
    let target = req.target.clone();
    let answer = tokio::task::spawn_blocking(move || -> Result<Option<Answer>, StoreError> {
        let mut mailbox = backend.mailbox()?;
        let id = mailbox.post(&body, patience)?;
        let started = Instant::now();
        let mut pause = Duration::from_millis(5);
        let bytes = loop {
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
            if let Some(bytes) = mailbox.answer(id)? {
                break Some(bytes);
            }
            if started.elapsed() >= patience {
                break mailbox.give_up(id)?;
            }
        };
        // Best effort: the leader sweeps what is left behind.
        let _ = mailbox.forget(id);
        bytes
            .map(|b| Answer::decode(&b[..]).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    })
    .await;
    let result = match answer {
        Ok(Ok(Some(answer))) => Ok(answer),
        Ok(Ok(None)) => Err(WorkflowError::Unavailable(format!(
            "no leading replica took the action within {} s; nothing was changed",
            patience.as_secs()
        ))),
        // The cause is for the log; the caller learns what it means.
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "forwarding an action: the database failed");
            Err(WorkflowError::Unavailable(
                "the database failed while the action was passed to the leading replica; \
                 look at the incident before trying again"
                    .into(),
            ))
        }
        Err(_) => {
            tracing::error!("forwarding an action panicked");
            Err(WorkflowError::Unavailable(
                "the action could not be passed to the leading replica; \
                 look at the incident before trying again"
                    .into(),
            ))
        }
    };
    match job {
        Job::Workflow { reply, .. } => {
            let result = result.and_then(|a| {
                if a.outcome == Outcome::Done as i32 {
                    a.incident.ok_or_else(|| {
                        WorkflowError::Refused("the leader's answer is empty".into())
                    })
                } else {
                    Err(error(a, &target))
                }
            });
            let _ = reply.send(result);
        }
        Job::TestMode { reply, .. } => {
            let result = result.and_then(|a| {
                if a.outcome == Outcome::Done as i32 {
                    Ok(a.until_micros.map(from_micros))
                } else {
                    Err(error(a, &target))
                }
            });
            let _ = reply.send(result);
        }
        Job::Site { reply, .. } => {
            let result = result.and_then(|a| {
                if a.outcome == Outcome::Done as i32 {
                    Ok(a.changes)
                } else {
                    Err(error(a, "site"))
                }
            });
            let _ = reply.send(result);
        }
        Job::Emergency { reply, .. } => {
            let result = result.and_then(|a| {
                if a.outcome == Outcome::Done as i32 {
                    Ok(a.emergency)
                } else {
                    Err(error(a, "emergency"))
                }
            });
            let _ = reply.send(result);
        }
        _ => {}
    }
}

/// How long the leader leaves a request it passed to the writer before
/// passing it again (the group that held it failed and dropped it).
const IN_FLIGHT: Duration = Duration::from_secs(5);

/// The leader's side: reads waiting requests from the mailbox (woken by
/// their announcements, and every second regardless) and passes each to
/// the writer as a [`Job::Forwarded`], until `stop` or the writer's queue
/// closes. Runs on a thread of its own; connects again after failures.
pub fn serve(backend: &PostgresBackend, jobs: &mpsc::Sender<Job>, stop: &CancellationToken) {
    let mut passed: HashMap<u64, Instant> = HashMap::new();
    let mut swept = Instant::now();
    while !stop.is_cancelled() {
        let mut mailbox = match backend.mailbox().and_then(|mut m| {
            m.listen()?;
            Ok(m)
        }) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "request mailbox: cannot connect");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        while !stop.is_cancelled() {
            match pass_waiting(&mut mailbox, jobs, &mut passed) {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "request mailbox: read failed; connecting again");
                    break;
                }
            }
            if swept.elapsed() > Duration::from_secs(60) {
                swept = Instant::now();
                if let Err(e) = mailbox.sweep() {
                    tracing::debug!(error = %e, "request mailbox: sweep failed");
                }
            }
            if let Err(e) = mailbox.wait(Duration::from_secs(1)) {
                tracing::debug!(error = %e, "request mailbox: listening failed; connecting again");
                break;
            }
        }
    }
}

/// Passes every waiting request to the writer once; false when the
/// writer's queue has closed.
fn pass_waiting(
    mailbox: &mut Mailbox,
    jobs: &mpsc::Sender<Job>,
    passed: &mut HashMap<u64, Instant>,
) -> Result<bool, StoreError> {
    passed.retain(|_, at| at.elapsed() < IN_FLIGHT);
    for (id, body) in mailbox.waiting(256)? {
        if passed.contains_key(&id) {
            continue;
        }
        let decoded = Request::decode(&body[..])
            .map_err(|e| e.to_string())
            .and_then(job);
        match decoded {
            Ok(job) => {
                passed.insert(id, Instant::now());
                let forwarded = Job::Forwarded {
                    id,
                    job: Box::new(job),
                };
                if jobs.blocking_send(forwarded).is_err() {
                    return Ok(false);
                }
            }
            Err(why) => {
                tracing::warn!(request = id, %why, "request mailbox: unreadable request refused");
                let answer = refusal(&WorkflowError::InvalidArgument(format!(
                    "the leading replica cannot read this request ({why}); \
                     are the replicas of different versions?"
                )));
                mailbox.refuse(id, &answer.encode_to_vec())?;
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(job: &Job) -> Job {
        let r = request(job).expect("an action");
        job_of(Request::decode(&r.encode_to_vec()[..]).unwrap())
    }

    fn job_of(r: Request) -> Job {
        job(r).expect("readable")
    }

    #[test]
    fn every_action_survives_the_mailbox() {
        let at = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        let actions = [
            Action::Acknowledge {
                note: "seen".into(),
            },
            Action::Assign {
                assignee: "bob".into(),
            },
            Action::Escalate {
                reason: "no answer".into(),
            },
            Action::Resolve {
                disposition: Disposition::Environmental,
                note: "cat".into(),
            },
            Action::Reopen {
                reason: "again".into(),
            },
            Action::AddNote { text: "n".into() },
            Action::Step {
                step: 2,
                skipped: true,
                summary: "call guard: ask for a patrol".into(),
                note: "no answer".into(),
            },
        ];
        for action in actions {
            let job = Job::Workflow {
                incident_id: "inc-000007".into(),
                expected_version: 3,
                action: action.clone(),
                actor: Actor::new("alice", "analyst"),
                at,
                reply: oneshot::channel().0,
            };
            match round_trip(&job) {
                Job::Workflow {
                    incident_id,
                    expected_version,
                    action: back,
                    actor,
                    at: back_at,
                    ..
                } => {
                    assert_eq!(incident_id, "inc-000007");
                    assert_eq!(expected_version, 3);
                    assert_eq!(back, action);
                    assert_eq!(actor, Actor::new("alice", "analyst"));
                    assert_eq!(back_at, at);
                }
                other => panic!("not a workflow job: {other:?}"),
            }
        }
        let test_mode = Job::TestMode {
            post_id: "p-1".into(),
            duration: Duration::from_secs(600),
            reason: "drill".into(),
            actor: Actor::new("sam", "supervisor"),
            at,
            reply: oneshot::channel().0,
        };
        match round_trip(&test_mode) {
            Job::TestMode {
                post_id,
                duration,
                reason,
                ..
            } => {
                assert_eq!(
                    (post_id.as_str(), duration, reason.as_str()),
                    ("p-1", Duration::from_secs(600), "drill")
                );
            }
            other => panic!("not a test-mode job: {other:?}"),
        }
        let site = SiteDocument {
            posts: vec![vigil_proto::v1::PostRecord {
                post_id: "p-1".into(),
                name: "Embassy".into(),
                duress_words: vec!["bluebird".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        let import = Job::Site {
            site: site.clone(),
            actor: Actor::new("ada", "admin"),
            at,
            reply: oneshot::channel().0,
        };
        match round_trip(&import) {
            Job::Site {
                site: back,
                actor,
                at: back_at,
                ..
            } => {
                assert_eq!(back, site);
                assert_eq!((actor, back_at), (Actor::new("ada", "admin"), at));
            }
            other => panic!("not a site job: {other:?}"),
        }
        let emergency = Job::Emergency {
            duration: Duration::from_secs(7200),
            post_ids: vec!["p-1".into(), "p-2".into()],
            reason: "storm".into(),
            actor: Actor::new("sam", "supervisor"),
            at,
            reply: oneshot::channel().0,
        };
        match round_trip(&emergency) {
            Job::Emergency {
                duration,
                post_ids,
                reason,
                actor,
                ..
            } => {
                assert_eq!(duration, Duration::from_secs(7200));
                assert_eq!(post_ids, ["p-1", "p-2"]);
                assert_eq!(reason, "storm");
                assert_eq!(actor, Actor::new("sam", "supervisor"));
            }
            other => panic!("not an emergency job: {other:?}"),
        }
    }

    #[test]
    fn refusals_keep_their_kind() {
        let current = Incident {
            id: "inc-000001".into(),
            version: 4,
            ..Incident::default()
        };
        let answer =
            |e: WorkflowError| Answer::decode(&workflow_answer(&Err(e))[..]).expect("decodes");
        match error(
            answer(WorkflowError::VersionMismatch {
                current: Box::new(current.clone()),
            }),
            "inc-000001",
        ) {
            WorkflowError::VersionMismatch { current: c } => assert_eq!(*c, current),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            error(answer(WorkflowError::NotFound("inc-000009".into())), "inc-000009"),
            WorkflowError::NotFound(id) if id == "inc-000009"
        ));
        assert!(matches!(
            error(answer(WorkflowError::InvalidArgument("long".into())), "x"),
            WorkflowError::InvalidArgument(m) if m == "long"
        ));
        assert!(matches!(
            error(answer(WorkflowError::Refused("resolved".into())), "x"),
            WorkflowError::Refused(m) if m == "resolved"
        ));
        let until = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let a = Answer::decode(&test_mode_answer(&Ok(Some(until)))[..]).unwrap();
        assert_eq!(a.until_micros.map(from_micros), Some(until));
        let a = Answer::decode(&site_answer(&Ok(vec!["post p-1 added".into()]))[..]).unwrap();
        assert_eq!(a.changes, ["post p-1 added"]);
    }

    #[test]
    fn an_unknown_action_is_refused_by_name() {
        let r = Request {
            action: "launch".into(),
            ..Request::default()
        };
        assert_eq!(job(r).unwrap_err(), "unknown action \"launch\"");
    }
}
