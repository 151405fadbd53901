//! Supervision of the panels and of the gateway's own storage.
//!
//! A supervised panel must send something (an event or a `NULL` link test)
//! at least once per window. When it misses the window a `PostHealth`
//! fault event goes into the outbox; the next message from it raises the
//! restore. Windows start when the gateway starts, so a panel that never
//! reports is noticed too.
//!
//! When the outbox refuses events (disk full, quota), frames are NAKed and
//! an error is logged; the first frame stored again records the episode as
//! a fault (stamped with the time it began) and its restore, so the
//! operations center learns what happened once it can be told.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use time::OffsetDateTime;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use vigil_proto::v1::{
    Event, EventCategory, HealthKind, HealthState, PostHealth, Severity, Source, SourceKind, event,
};

use crate::{
    config::Account,
    outbox::{NewEvent, Outbox},
    signals::timestamp,
};

/// How often supervision deadlines are checked.
const TICK: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Panel {
    window: Duration,
    last_heard: Instant,
    faulted: bool,
}

#[derive(Debug, Default)]
struct StorageFault {
    since: Option<OffsetDateTime>,
    reason: String,
}

/// Tracks panel silence and storage faults; shared by the receiver.
#[derive(Debug)]
pub struct Supervisor {
    outbox: Outbox,
    panels: Mutex<HashMap<String, Panel>>,
    storage: Mutex<StorageFault>,
}

/// Locks a mutex whose data stays consistent even if a holder panicked
/// (every critical section here is a few field updates).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Supervisor {
    pub fn new(accounts: &[Account], outbox: Outbox) -> Arc<Self> {
        let now = Instant::now();
        let panels = accounts
            .iter()
            .filter_map(|a| {
                a.supervision.map(|window| {
                    (
                        a.account.clone(),
                        Panel {
                            window,
                            last_heard: now,
                            faulted: false,
                        },
                    )
                })
            })
            .collect();
        Arc::new(Self {
            outbox,
            panels: Mutex::new(panels),
            storage: Mutex::new(StorageFault::default()),
        })
    }

    /// A message from `account` arrived (any message, NULL included).
    pub async fn heard_from(&self, account: &str) {
        let restored = {
            let mut panels = lock(&self.panels);
            match panels.get_mut(account) {
                Some(panel) => {
                    panel.last_heard = Instant::now();
                    std::mem::replace(&mut panel.faulted, false)
                }
                None => false,
            }
        };
        if restored {
            info!(account, "panel supervision restored");
            self.record(vec![panel_event(
                account,
                HealthState::Restored,
                "panel reporting again".into(),
            )])
            .await;
        }
    }

    /// The outbox refused an event.
    pub fn storage_failed(&self, reason: &str) {
        let mut storage = lock(&self.storage);
        if storage.since.is_none() {
            storage.since = Some(OffsetDateTime::now_utc());
            error!(reason, "outbox is refusing events: panels are being NAKed");
        }
        storage.reason = reason.to_owned();
    }

    /// The outbox stored an event; closes a storage fault if one was open.
    pub async fn storage_ok(&self) {
        let episode = {
            let mut storage = lock(&self.storage);
            storage
                .since
                .take()
                .map(|since| (since, std::mem::take(&mut storage.reason)))
        };
        if let Some((since, reason)) = episode {
            info!("outbox accepting events again");
            let mut fault = storage_event(
                HealthState::Fault,
                format!("outbox refused events: {reason}"),
            );
            fault.event.occurred_at = Some(timestamp(since));
            let restore = storage_event(
                HealthState::Restored,
                "outbox accepting events again".into(),
            );
            self.record(vec![fault, restore]).await;
        }
    }

    /// Checks deadlines every second until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.check().await,
            }
        }
    }

    /// Raises a fault for every panel whose window ran out.
    pub async fn check(&self) {
        let now = Instant::now();
        let missed: Vec<_> = {
            let mut panels = lock(&self.panels);
            panels
                .iter_mut()
                .filter(|(_, p)| !p.faulted && now.duration_since(p.last_heard) > p.window)
                .map(|(account, p)| {
                    p.faulted = true;
                    (account.clone(), now.duration_since(p.last_heard))
                })
                .collect()
        };
        let events = missed
            .into_iter()
            .map(|(account, silent)| {
                warn!(account = %account, silent_secs = silent.as_secs(), "panel supervision lost");
                let detail = format!(
                    "no message from account {account} for {} s",
                    silent.as_secs()
                );
                panel_event(&account, HealthState::Fault, detail)
            })
            .collect::<Vec<_>>();
        if !events.is_empty() {
            self.record(events).await;
        }
    }

    async fn record(&self, events: Vec<NewEvent>) {
        if let Err(e) = self.outbox.append(events).await {
            error!(error = %e, "cannot store a health event");
        }
    }
}

pub(crate) fn health_event(
    device: &str,
    kind: SourceKind,
    health: PostHealth,
    description: String,
) -> NewEvent {
    let restored = health.state() == HealthState::Restored;
    NewEvent {
        event: Event {
            received_at: Some(timestamp(OffsetDateTime::now_utc())),
            source: Some(Source {
                device_id: device.to_owned(),
                kind: kind.into(),
            }),
            severity: if restored {
                Severity::Low
            } else {
                Severity::Medium
            }
            .into(),
            category: EventCategory::Supervisory.into(),
            restore: restored,
            description,
            body: Some(event::Body::Health(health)),
            ..Default::default()
        },
        dedup_key: None,
    }
}

fn panel_event(account: &str, state: HealthState, detail: String) -> NewEvent {
    let description = match state {
        HealthState::Fault => format!("Panel {account} silent"),
        _ => format!("Panel {account} reporting again"),
    };
    health_event(
        account,
        SourceKind::AlarmPanel,
        PostHealth {
            kind: HealthKind::PanelSupervision.into(),
            state: state.into(),
            subject: account.to_owned(),
            detail,
            ..Default::default()
        },
        description,
    )
}

fn storage_event(state: HealthState, detail: String) -> NewEvent {
    let description = match state {
        HealthState::Fault => "Gateway storage refusing events".to_owned(),
        _ => "Gateway storage accepting events again".to_owned(),
    };
    health_event(
        "gateway",
        SourceKind::Gateway,
        PostHealth {
            kind: HealthKind::Storage.into(),
            state: state.into(),
            detail,
            ..Default::default()
        },
        description,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::OutboxLimits;
    use vigil_proto::Message;

    fn account(name: &str, secs: u64) -> Account {
        Account {
            account: name.into(),
            key: None,
            window_behind: Duration::from_secs(40),
            window_ahead: Duration::from_secs(20),
            supervision: (secs > 0).then(|| Duration::from_secs(secs)),
            require_timestamp: false,
        }
    }

    async fn health(outbox: &Outbox) -> Vec<(String, HealthState)> {
        outbox
            .read_from(1, 100, usize::MAX)
            .await
            .unwrap()
            .iter()
            .map(|s| Event::decode(s.bytes.as_slice()).unwrap())
            .map(|e| match e.body {
                Some(event::Body::Health(h)) => (h.subject.clone(), h.state()),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn missed_window_raises_fault_and_message_restores() {
        let dir = tempfile::tempdir().unwrap();
        let outbox =
            Outbox::open(&dir.path().join("o.db"), "p-1", OutboxLimits::default()).unwrap();
        let sup = Supervisor::new(&[account("1234", 60), account("9999", 0)], outbox.clone());

        tokio::time::advance(Duration::from_secs(59)).await;
        sup.check().await;
        sup.heard_from("1234").await;
        tokio::time::advance(Duration::from_secs(60)).await;
        sup.check().await;
        assert!(health(&outbox).await.is_empty(), "within the window");

        tokio::time::advance(Duration::from_secs(1)).await;
        sup.check().await;
        sup.check().await; // raised once, not on every tick
        assert_eq!(
            health(&outbox).await,
            vec![("1234".into(), HealthState::Fault)]
        );

        sup.heard_from("1234").await;
        sup.heard_from("1234").await;
        sup.heard_from("9999").await; // unsupervised: nothing
        assert_eq!(
            health(&outbox).await,
            vec![
                ("1234".into(), HealthState::Fault),
                ("1234".into(), HealthState::Restored)
            ]
        );
    }

    #[tokio::test]
    async fn storage_episode_is_recorded_when_storage_works_again() {
        let dir = tempfile::tempdir().unwrap();
        let outbox =
            Outbox::open(&dir.path().join("o.db"), "p-1", OutboxLimits::default()).unwrap();
        let sup = Supervisor::new(&[], outbox.clone());
        sup.storage_ok().await;
        assert!(health(&outbox).await.is_empty());
        sup.storage_failed("disk full");
        sup.storage_failed("disk full");
        sup.storage_ok().await;
        assert_eq!(
            health(&outbox).await,
            vec![
                ("".into(), HealthState::Fault),
                ("".into(), HealthState::Restored)
            ]
        );
    }
}
