//! Emergency mode (issue #17): for a limited time, the whole region or a
//! list of posts keeps only its most urgent incidents in the queue.
//!
//! While it covers a post, a new incident of that post less urgent than
//! `emergency_keep_priority` (P2 by default: P1 and P2 stay queued) is
//! *logged*: stored, visible and correlated as usual, but with no
//! acknowledgment deadline, so it never escalates by itself, and marked
//! `logged` so that the live queue can leave it out. If a logged incident
//! later becomes urgent enough (a more urgent event joins it) it is queued
//! again with a deadline. Ending the mode changes no incident: what was
//! logged stays logged, and is listed as such.
//!
//! Starting needs a reason and a duration of at most
//! `max_emergency_secs`; the mode ends by itself at its time, or earlier
//! when someone ends it. Start and end are audited (region-wide entries
//! have an empty `post_id`). The mode is stored with the commit
//! (`store::Changes::emergency`) and read back at start, so a restart or a
//! failover keeps it.

use std::time::{Duration, SystemTime};

use vigil_proto::v1::{AuditAction, EmergencyMode, Priority};

use super::{
    Actor, Engine, post_audit, time,
    workflow::{WorkflowError, check_note, human_secs},
};
use crate::store::Changes;

fn priority_name(p: i32) -> String {
    Priority::try_from(p)
        .unwrap_or(Priority::Unspecified)
        .as_str_name()
        .trim_start_matches("PRIORITY_")
        .to_owned()
}

fn scope(mode: &EmergencyMode) -> String {
    if mode.post_ids.is_empty() {
        "the whole region".into()
    } else {
        format!("posts {}", mode.post_ids.join(", "))
    }
}

impl Engine {
    /// Emergency mode, if it is on at `now`.
    pub fn emergency(&self, now: SystemTime) -> Option<&EmergencyMode> {
        self.emergency
            .as_ref()
            .filter(|m| m.until.is_some_and(|u| time(u) > now))
    }

    /// Whether a new incident of `post` at `priority` is to be logged.
    pub(super) fn logs(&self, post: &str, priority: i32, now: SystemTime) -> bool {
        let Some(mode) = self.emergency(now) else {
            return false;
        };
        let covered = mode.post_ids.is_empty() || mode.post_ids.iter().any(|p| p == post);
        let rank = |p: i32| if p == 0 { i32::MAX } else { p };
        covered && rank(priority) > rank(mode.keep_priority)
    }

    /// Starts emergency mode for `duration` over `posts` (empty: the whole
    /// region), replacing one that is on, or ends it when `duration` is
    /// zero. Returns the mode now on.
    #[allow(clippy::too_many_arguments)]
    pub fn set_emergency(
        &mut self,
        duration: Duration,
        posts: &[String],
        reason: &str,
        actor: &Actor,
        now: SystemTime,
        out: &mut Changes,
    ) -> Result<Option<EmergencyMode>, WorkflowError> {
        if !duration.is_zero() && reason.trim().is_empty() {
            return Err(WorkflowError::InvalidArgument(
                "emergency mode needs a reason".into(),
            ));
        }
        check_note(reason, true)?;
        if duration.is_zero() {
            if let Some(mode) = self.emergency(now).cloned() {
                self.emergency = None;
                out.emergency = Some(None);
                let mut detail = format!("emergency mode ended early ({})", scope(&mode));
                if !reason.trim().is_empty() {
                    detail = format!("{detail}: {reason}");
                }
                out.audit.push(post_audit(
                    "",
                    AuditAction::EmergencyEnded,
                    actor,
                    now,
                    detail,
                ));
            }
            return Ok(None);
        }
        for post in posts {
            vigil_pki::Identity::new(post)
                .map_err(|e| WorkflowError::InvalidArgument(format!("post {post:?}: {e}")))?;
        }
        let cap = self.cfg.max_emergency_secs;
        if duration > Duration::from_secs(cap) {
            return Err(WorkflowError::InvalidArgument(format!(
                "emergency mode lasts at most {} (max_emergency_secs = {cap}); asked for {}",
                human_secs(cap),
                human_secs(duration.as_secs())
            )));
        }
        let mut post_ids = posts.to_vec();
        post_ids.sort();
        post_ids.dedup();
        let mode = EmergencyMode {
            post_ids,
            started_at: Some(now.into()),
            until: Some((now + duration).into()),
            reason: reason.trim().to_owned(),
            started_by: actor.id.clone(),
            keep_priority: self.cfg.emergency_keep_priority as i32,
        };
        let detail = format!(
            "emergency mode for {} over {}: incidents less urgent than {} are logged, not queued: {}",
            human_secs(duration.as_secs()),
            scope(&mode),
            priority_name(mode.keep_priority),
            mode.reason
        );
        out.audit.push(post_audit(
            "",
            AuditAction::EmergencyStarted,
            actor,
            now,
            detail,
        ));
        out.emergency = Some(Some(mode.clone()));
        self.emergency = Some(mode.clone());
        Ok(Some(mode))
    }

    /// Ends emergency mode when its time is up.
    pub(super) fn tick_emergency(&mut self, now: SystemTime, out: &mut Changes) {
        let Some(mode) = &self.emergency else {
            return;
        };
        if mode.until.is_some_and(|u| time(u) > now) {
            return;
        }
        let detail = format!("emergency mode ended: its time was up ({})", scope(mode));
        self.emergency = None;
        out.emergency = Some(None);
        out.audit.push(post_audit(
            "",
            AuditAction::EmergencyEnded,
            &Actor::system(),
            now,
            detail,
        ));
    }
}
