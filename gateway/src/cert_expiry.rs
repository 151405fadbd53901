//! The gateway's own certificate, watched for its coming expiry.
//!
//! A post whose certificate expires drops off the region without a word:
//! the broker refuses its next connection. So the gateway tells the
//! operations center beforehand, as a `PostHealth` event of kind
//! `CERTIFICATE_EXPIRY` through the outbox (so it arrives even if the link
//! is down when a threshold passes): a fault when [`STAGES`] days or fewer
//! are left (30, then 14, then 3: one event per stage reached, the most
//! urgent first if several are passed at once), and a restore once a
//! renewed certificate with more than 30 days is in use (the daemon follows
//! its files: `vigil pki renew` needs no restart). The ops center opens a
//! low-priority incident for analysts from the fault.
//!
//! What was reported is kept in memory: a gateway restarted inside a stage
//! reports that stage again, which the ops center folds into the incident
//! already open.

use std::{sync::Arc, time::Duration};

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use vigil_pki::reload::OwnCert;
use vigil_proto::v1::{HealthKind, HealthState, PostHealth, SourceKind};

use crate::{
    outbox::{NewEvent, Outbox},
    supervision::health_event,
};

/// Days left at which the expiry is reported, least urgent first.
pub const STAGES: [i64; 3] = [30, 14, 3];

/// How often the certificate's expiry is looked at (the certificate itself
/// is re-read at most every `vigil_pki::reload::CERT_CHECK_EVERY`).
pub const CHECK_EVERY: Duration = Duration::from_secs(10);

const DAY: i64 = 86_400;

/// The most urgent stage `days_left` has reached, if any.
fn stage(days_left: i64) -> Option<i64> {
    STAGES.iter().rev().copied().find(|&s| days_left <= s)
}

/// What has been reported, and the decision for each new look.
#[derive(Debug, Default)]
pub struct Watch {
    /// The stage last reported as a fault (None: none, or restored since).
    reported: Option<i64>,
}

impl Watch {
    /// The event to record for a certificate valid until `not_after` (Unix
    /// seconds), looked at `now`, if one is due.
    pub fn check(&mut self, not_after: i64, now: i64) -> Option<NewEvent> {
        let days_left = (not_after - now).div_euclid(DAY);
        match (stage(days_left), self.reported) {
            (Some(stage), reported) if reported.is_none_or(|r| stage < r) => {
                self.reported = Some(stage);
                warn!(
                    days_left,
                    not_after, "own certificate expires soon: renew it (vigil pki renew)"
                );
                Some(expiry_event(
                    HealthState::Fault,
                    format!(
                        "the post's certificate expires in {days_left} days ({})",
                        date(not_after)
                    ),
                    format!("Post certificate expires in {days_left} days"),
                ))
            }
            (None, Some(_)) => {
                self.reported = None;
                info!(not_after, "own certificate renewed");
                Some(expiry_event(
                    HealthState::Restored,
                    format!("renewed certificate valid until {}", date(not_after)),
                    "Post certificate renewed".to_owned(),
                ))
            }
            _ => None,
        }
    }
}

fn date(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!("[year]-[month]-[day]"))
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

fn expiry_event(state: HealthState, detail: String, description: String) -> NewEvent {
    health_event(
        "gateway",
        SourceKind::Gateway,
        PostHealth {
            kind: HealthKind::CertificateExpiry.into(),
            state: state.into(),
            detail,
            ..Default::default()
        },
        description,
    )
}

/// Looks at `own` now and every [`CHECK_EVERY`] until `shutdown`, and
/// records what [`Watch::check`] decides in `outbox`.
pub async fn run(own: Arc<OwnCert>, outbox: Outbox, shutdown: CancellationToken) {
    let mut watch = Watch::default();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = OffsetDateTime::now_utc().unix_timestamp();
        if let Some(event) = watch.check(own.not_after(), now)
            && let Err(e) = outbox.append(vec![event]).await
        {
            tracing::error!(error = %e, "cannot store the certificate expiry event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_proto::v1::event::Body;

    fn health(event: &NewEvent) -> (HealthKind, HealthState) {
        match &event.event.body {
            Some(Body::Health(h)) => (h.kind(), h.state()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stages_are_reported_once_each_and_a_renewal_restores() {
        let now = 1_800_000_000;
        let mut watch = Watch::default();
        let not_after = now + 45 * DAY;
        assert!(watch.check(not_after, now).is_none());
        // 30 days left: the first stage.
        let at = |days_left: i64| not_after - days_left * DAY;
        let ev = watch.check(not_after, at(30)).expect("30 days");
        assert_eq!(
            health(&ev),
            (HealthKind::CertificateExpiry, HealthState::Fault)
        );
        assert!(ev.event.description.contains("30 days"), "{ev:?}");
        assert!(watch.check(not_after, at(29)).is_none());
        assert!(watch.check(not_after, at(15)).is_none());
        assert!(watch.check(not_after, at(14)).is_some());
        assert!(watch.check(not_after, at(4)).is_none());
        assert!(watch.check(not_after, at(3)).is_some());
        assert!(watch.check(not_after, at(0)).is_none());
        // Renewed for a year: one restore, then quiet.
        let renewed = at(0) + 365 * DAY;
        let ev = watch.check(renewed, at(0)).expect("restore");
        assert_eq!(
            health(&ev),
            (HealthKind::CertificateExpiry, HealthState::Restored)
        );
        assert!(watch.check(renewed, at(0)).is_none());
    }

    #[test]
    fn a_start_inside_a_stage_reports_that_stage_once() {
        let now = 1_800_000_000;
        let mut watch = Watch::default();
        // Issued with --days 10: the 14-day stage, not three events.
        let ev = watch.check(now + 10 * DAY, now).expect("10 days");
        assert!(ev.event.description.contains("10 days"), "{ev:?}");
        assert!(watch.check(now + 10 * DAY, now + 60).is_none());
        // Renewed, but for 20 days only: still inside the 30-day stage,
        // less urgent than what was reported: nothing new.
        assert!(watch.check(now + 20 * DAY, now + 120).is_none());
        assert_eq!(stage(31), None);
        assert_eq!(stage(-1), Some(3));
    }
}
