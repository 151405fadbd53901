//! Who is connected, by identity, and what happens when an identity
//! connects twice.
//!
//! MQTT says a new session with a client id already in use takes the old
//! one's place. That is right for a gateway whose old connection died
//! unnoticed, and wrong for two gateways that share a certificate by
//! mistake: each reconnects as soon as it is knocked off, and the two take
//! turns for ever. So the first [`FREE_TAKEOVERS`] takeovers in a row are
//! allowed at once (a client that reconnects while the broker still holds
//! its dead connection takes over too); after that, within
//! [`FIGHT_WINDOW`] of the last one, the next must wait a backoff that
//! doubles each time (1 s, 2 s, 4 s, … up to [`MAX_BACKOFF`]), and a CONNECT
//! that comes earlier is refused ("server busy"). The connected session
//! keeps running meanwhile. Every takeover and every refusal is logged with
//! the identity and counted.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

/// Takeovers in a row allowed without a wait.
pub(crate) const FREE_TAKEOVERS: u32 = 3;
/// Takeovers closer together than this count as a fight.
pub(crate) const FIGHT_WINDOW: Duration = Duration::from_secs(120);
/// The wait after the second takeover of a fight.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between two takeovers.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Messages the front holds for one post's session (receipts, commands).
/// When full, new ones are dropped and counted: a post that does not read
/// for this long gets the next receipt, which covers the dropped ones, and
/// its gateway re-sends whatever stays unreceipted.
pub(crate) const MAILBOX: usize = 256;

/// A receipt or command on its way to a post, delivered by the front.
#[derive(Debug)]
pub(crate) struct Direct {
    pub(crate) topic: Bytes,
    pub(crate) payload: Bytes,
}

/// What became of a [`Direct`] message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    Queued,
    /// The post is not connected.
    Absent,
    /// The post's mailbox is full.
    Full,
}

/// The connected sessions.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    // std Mutex: held for a map operation only, never across an await.
    inner: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug)]
struct Entry {
    /// The connected session, if any.
    session: Option<Live>,
    /// The last takeover of this identity, and how many came in a row
    /// (each within `FIGHT_WINDOW` of the one before).
    last_takeover: Option<Instant>,
    strikes: u32,
}

#[derive(Debug)]
struct Live {
    id: u64,
    kick: CancellationToken,
    /// Where messages for this session go (posts only).
    mailbox: Option<mpsc::Sender<Direct>>,
}

/// What [`Registry::claim`] decided.
#[derive(Debug)]
pub(crate) enum Claim {
    /// The identity was free.
    Fresh(Session),
    /// An older session was told to end; this one replaces it.
    TookOver(Session),
    /// Too soon after the last takeover: refuse, and say when to try.
    Refused { retry_in: Duration },
}

/// A registered session. Dropping it frees the identity, unless another
/// session has taken it over meanwhile.
#[derive(Debug)]
pub(crate) struct Session {
    registry: Arc<Registry>,
    identity: String,
    id: u64,
    /// Cancelled when a newer session takes this one's place.
    pub(crate) kicked: CancellationToken,
}

impl Registry {
    /// Registers a session for `identity`, taking over from a connected one
    /// if the fight rules allow it.
    pub(crate) fn claim(
        self: &Arc<Self>,
        identity: &str,
        id: u64,
        now: Instant,
        mailbox: Option<mpsc::Sender<Direct>>,
    ) -> Claim {
        let mut map = self.inner.lock().expect("registry lock");
        let entry = map.entry(identity.to_owned()).or_insert(Entry {
            session: None,
            last_takeover: None,
            strikes: 0,
        });
        let took_over = if let Some(live) = &entry.session {
            let in_fight = entry
                .last_takeover
                .is_some_and(|at| now.duration_since(at) < FIGHT_WINDOW);
            if in_fight {
                let wait = backoff(entry.strikes);
                let since = now.duration_since(entry.last_takeover.expect("in a fight"));
                if since < wait {
                    return Claim::Refused {
                        retry_in: wait - since,
                    };
                }
                entry.strikes += 1;
            } else {
                entry.strikes = 1;
            }
            entry.last_takeover = Some(now);
            live.kick.cancel();
            true
        } else {
            false
        };
        let kicked = CancellationToken::new();
        entry.session = Some(Live {
            id,
            kick: kicked.clone(),
            mailbox,
        });
        let session = Session {
            registry: self.clone(),
            identity: identity.to_owned(),
            id,
            kicked,
        };
        if took_over {
            Claim::TookOver(session)
        } else {
            Claim::Fresh(session)
        }
    }

    /// Hands `message` to `identity`'s session, if it is connected and
    /// reading.
    pub(crate) fn deliver(&self, identity: &str, message: Direct) -> Delivery {
        let map = self.inner.lock().expect("registry lock");
        let Some(mailbox) = map
            .get(identity)
            .and_then(|e| e.session.as_ref())
            .and_then(|s| s.mailbox.as_ref())
        else {
            return Delivery::Absent;
        };
        match mailbox.try_send(message) {
            Ok(()) => Delivery::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => Delivery::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Absent,
        }
    }

    /// How many identities have a connected session.
    #[cfg(test)]
    fn connected(&self) -> usize {
        let map = self.inner.lock().expect("registry lock");
        map.values().filter(|e| e.session.is_some()).count()
    }
}

impl Session {
    /// Whether a newer session has replaced this one.
    #[cfg(test)]
    fn is_kicked(&self) -> bool {
        self.kicked.is_cancelled()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let Ok(mut map) = self.registry.inner.lock() else {
            return;
        };
        if let Some(entry) = map.get_mut(&self.identity) {
            if entry.session.as_ref().is_some_and(|s| s.id == self.id) {
                entry.session = None;
            }
            // Forget identities with nothing left to remember, so the map
            // holds connected identities and recent fights only.
            let fight_over = entry
                .last_takeover
                .is_none_or(|at| at.elapsed() >= FIGHT_WINDOW);
            if entry.session.is_none() && fight_over {
                map.remove(&self.identity);
            }
        }
    }
}

/// The wait required before the takeover that follows `strikes` takeovers
/// in a row.
fn backoff(strikes: u32) -> Duration {
    if strikes < FREE_TAKEOVERS {
        return Duration::ZERO;
    }
    FIRST_BACKOFF
        .saturating_mul(1 << (strikes - FREE_TAKEOVERS).min(16))
        .min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(claim: Claim) -> Session {
        match claim {
            Claim::Fresh(s) | Claim::TookOver(s) => s,
            Claim::Refused { retry_in } => panic!("refused, retry in {retry_in:?}"),
        }
    }

    #[test]
    fn a_free_identity_is_claimed_and_freed() {
        let registry = Arc::new(Registry::default());
        let now = Instant::now();
        let a = registry.claim("p-1", 1, now, None);
        assert!(matches!(a, Claim::Fresh(_)));
        assert_eq!(registry.connected(), 1);
        drop(a);
        assert_eq!(registry.connected(), 0);
        assert!(matches!(
            registry.claim("p-1", 2, now, None),
            Claim::Fresh(_)
        ));
    }

    #[test]
    fn the_first_takeover_is_immediate_and_kicks_the_old_session() {
        let registry = Arc::new(Registry::default());
        let now = Instant::now();
        let old = session(registry.claim("p-1", 1, now, None));
        let new = registry.claim("p-1", 2, now, None);
        assert!(matches!(new, Claim::TookOver(_)));
        assert!(old.is_kicked());
        // The old session ending does not free the identity of the new one.
        drop(old);
        assert_eq!(registry.connected(), 1);
    }

    #[test]
    fn fighting_sessions_are_backed_off() {
        let registry = Arc::new(Registry::default());
        let start = Instant::now();
        let mut current = session(registry.claim("p-1", 0, start, None));
        // Two clients that reconnect every 100 ms for 20 s.
        let mut takeovers = 0;
        let mut refused = 0;
        for step in 1..=200u64 {
            let now = start + Duration::from_millis(100 * step);
            match registry.claim("p-1", step, now, None) {
                Claim::TookOver(s) => {
                    takeovers += 1;
                    current = s;
                }
                Claim::Refused { retry_in } => {
                    assert!(retry_in <= MAX_BACKOFF);
                    refused += 1;
                }
                Claim::Fresh(_) => panic!("the identity is connected"),
            }
        }
        assert!(!current.is_kicked());
        // Three at once (0.1, 0.2, 0.3 s), then waits of 1, 2, 4 and 8 s:
        // seven takeovers in 20 s rather than 200.
        assert_eq!(takeovers, 7, "refused {refused}");
    }

    #[test]
    fn messages_reach_a_connected_post_only() {
        let registry = Arc::new(Registry::default());
        let direct = |n: u8| Direct {
            topic: Bytes::from_static(b"vigil/v1/posts/p-1/receipts"),
            payload: Bytes::from(vec![n]),
        };
        assert_eq!(registry.deliver("p-1", direct(0)), Delivery::Absent);
        let (tx, mut rx) = mpsc::channel(2);
        let _s = session(registry.claim("p-1", 1, Instant::now(), Some(tx)));
        assert_eq!(registry.deliver("p-1", direct(1)), Delivery::Queued);
        assert_eq!(registry.deliver("p-1", direct(2)), Delivery::Queued);
        assert_eq!(registry.deliver("p-1", direct(3)), Delivery::Full);
        assert_eq!(rx.try_recv().unwrap().payload[..], [1]);
        assert_eq!(registry.deliver("p-2", direct(4)), Delivery::Absent);
    }

    #[test]
    fn a_quiet_period_ends_the_fight() {
        let registry = Arc::new(Registry::default());
        let start = Instant::now();
        let mut sessions = vec![session(registry.claim("p-1", 0, start, None))];
        for id in 1..=FREE_TAKEOVERS {
            sessions.push(session(registry.claim("p-1", u64::from(id), start, None)));
        }
        // Within the window, one more takeover must wait.
        assert!(matches!(
            registry.claim("p-1", 9, start + Duration::from_millis(10), None),
            Claim::Refused { .. }
        ));
        // Well after it, the next takeover is immediate again.
        let later = start + FIGHT_WINDOW + Duration::from_secs(1);
        let c = registry.claim("p-1", 4, later, None);
        assert!(matches!(c, Claim::TookOver(_)));
        let d = registry.claim("p-1", 5, later + Duration::from_secs(1), None);
        assert!(matches!(d, Claim::TookOver(_)));
    }
}
