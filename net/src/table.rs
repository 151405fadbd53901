//! Connection caps, and the table of open connections that enforces them.
//!
//! Admission happens in the accept loop, before a task is spawned, so a
//! refused connection costs one `accept` and one `close`:
//!
//! 1. A source (IP address) at [`Limits::max_per_source`] first loses its
//!    own oldest unauthenticated connection to the newcomer; when all of
//!    its connections are authenticated, the newcomer is closed.
//! 2. At [`Limits::max_connections`] the oldest unauthenticated connection
//!    of any source is shed; when every connection is authenticated, the
//!    newcomer is closed.
//!
//! Shedding the oldest rather than refusing the newest is what keeps a
//! flood of idle or half-handshaken sockets from locking valid peers out:
//! an attacker must keep opening connections faster than valid peers
//! finish their handshake to hold the door, and the per-source cap bounds
//! what one address can hold at all. Authenticated peers are never shed.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use tokio_util::sync::CancellationToken;

use crate::stats::{Stats, bump};

/// Caps and deadlines of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once, authenticated or not.
    pub max_connections: usize,
    /// Connections open at once from one IP address.
    pub max_per_source: usize,
    /// From accept until the handler marks the connection authenticated
    /// (TLS handshake and first valid message or frame).
    pub preauth_deadline: Duration,
    /// An authenticated connection with no byte read or written for this
    /// long is closed. `None`: the protocol keeps its own (gRPC keep-alive).
    pub idle_timeout: Option<Duration>,
    /// On shutdown, how long handlers get to finish before their tasks are
    /// dropped.
    pub grace: Duration,
}

impl Default for Limits {
    /// Caps fit for a small daemon; servers set their own.
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_per_source: 256,
            preauth_deadline: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(300)),
            grace: Duration::from_secs(5),
        }
    }
}

/// Why a set of [`Limits`] cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitsError {
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error("max_per_source ({per_source}) is above max_connections ({total})")]
    PerSourceAboveTotal { per_source: usize, total: usize },
}

impl Limits {
    /// Checks the limits make sense (config validation calls this).
    pub fn validate(&self) -> Result<(), LimitsError> {
        if self.max_connections == 0 {
            return Err(LimitsError::Zero("max_connections"));
        }
        if self.max_per_source == 0 {
            return Err(LimitsError::Zero("max_per_source"));
        }
        if self.max_per_source > self.max_connections {
            return Err(LimitsError::PerSourceAboveTotal {
                per_source: self.max_per_source,
                total: self.max_connections,
            });
        }
        if self.preauth_deadline.is_zero() {
            return Err(LimitsError::Zero("preauth_deadline"));
        }
        if self.idle_timeout.is_some_and(|d| d.is_zero()) {
            return Err(LimitsError::Zero("idle_timeout"));
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Entry {
    source: IpAddr,
    authenticated: bool,
    /// Cancelled when the connection is shed.
    kill: CancellationToken,
}

#[derive(Debug, Default)]
struct Source {
    open: usize,
    /// Ids of this source's unauthenticated connections; the first is the
    /// oldest (ids grow with time).
    unauthenticated: BTreeSet<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    entries: HashMap<u64, Entry>,
    sources: HashMap<IpAddr, Source>,
    /// Every unauthenticated connection, oldest first.
    unauthenticated: BTreeSet<u64>,
}

impl Inner {
    /// Removes `id`; true when it was there.
    fn remove(&mut self, id: u64, stats: &Stats) -> bool {
        let Some(entry) = self.entries.remove(&id) else {
            return false;
        };
        stats
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if !entry.authenticated {
            self.unauthenticated.remove(&id);
            stats
                .unauthenticated
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(source) = self.sources.get_mut(&entry.source) {
            source.open -= 1;
            source.unauthenticated.remove(&id);
            if source.open == 0 {
                self.sources.remove(&entry.source);
            }
        }
        true
    }

    fn shed(&mut self, id: u64, stats: &Stats) {
        if let Some(entry) = self.entries.get(&id) {
            entry.kill.cancel();
        }
        if self.remove(id, stats) {
            bump(&stats.shed);
        }
    }
}

/// The open connections of one listener.
#[derive(Debug)]
pub(crate) struct Table {
    limits: Limits,
    stats: Arc<Stats>,
    inner: Mutex<Inner>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    Source,
    Full,
}

/// A connection's place in the [`Table`]; leaving it (drop) frees the place.
#[derive(Debug)]
pub(crate) struct Slot {
    table: Arc<Table>,
    id: u64,
    kill: CancellationToken,
}

impl Table {
    pub(crate) fn new(limits: Limits, stats: Arc<Stats>) -> Arc<Self> {
        Arc::new(Self {
            limits,
            stats,
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Held for a few map operations, never across an await.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a connection from `source`, shedding an older unauthenticated
    /// one when a cap is reached (see the module documentation).
    pub(crate) fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Slot, Refused> {
        let source = source.to_canonical();
        let stats = &self.stats;
        let mut inner = self.lock();
        let (open, oldest) = inner
            .sources
            .get(&source)
            .map_or((0, None), |s| (s.open, s.unauthenticated.first().copied()));
        if open >= self.limits.max_per_source {
            match oldest {
                Some(id) => inner.shed(id, stats),
                None => {
                    bump(&stats.refused_source);
                    return Err(Refused::Source);
                }
            }
        }
        if inner.entries.len() >= self.limits.max_connections {
            match inner.unauthenticated.first().copied() {
                Some(id) => inner.shed(id, stats),
                None => {
                    bump(&stats.refused_full);
                    return Err(Refused::Full);
                }
            }
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let kill = CancellationToken::new();
        inner.entries.insert(
            id,
            Entry {
                source,
                authenticated: false,
                kill: kill.clone(),
            },
        );
        inner.unauthenticated.insert(id);
        let s = inner.sources.entry(source).or_default();
        s.open += 1;
        s.unauthenticated.insert(id);
        drop(inner);
        bump(&stats.accepted);
        bump(&stats.open);
        bump(&stats.unauthenticated);
        Ok(Slot {
            table: self.clone(),
            id,
            kill,
        })
    }

    pub(crate) fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }
}

impl Slot {
    pub(crate) fn table(&self) -> &Arc<Table> {
        &self.table
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// See [`Table::authenticate`].
    #[cfg(test)]
    fn authenticate(&self) -> bool {
        self.table.authenticate(self.id)
    }

    /// Cancelled when this connection is shed for a newcomer.
    pub(crate) fn killed(&self) -> &CancellationToken {
        &self.kill
    }
}

impl Table {
    /// Marks connection `id` authenticated: it is never shed from now on.
    /// True the first time.
    pub(crate) fn authenticate(&self, id: u64) -> bool {
        let mut inner = self.lock();
        let Some(entry) = inner.entries.get_mut(&id) else {
            return false; // already shed
        };
        if entry.authenticated {
            return false;
        }
        entry.authenticated = true;
        let source = entry.source;
        inner.unauthenticated.remove(&id);
        if let Some(s) = inner.sources.get_mut(&source) {
            s.unauthenticated.remove(&id);
        }
        drop(inner);
        self.stats
            .unauthenticated
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        bump(&self.stats.authenticated);
        true
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let stats = self.table.stats.clone();
        self.table.lock().remove(self.id, &stats);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(total: usize, per_source: usize) -> Arc<Table> {
        let limits = Limits {
            max_connections: total,
            max_per_source: per_source,
            ..Limits::default()
        };
        Table::new(limits, Arc::default())
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn full_table_sheds_the_oldest_unauthenticated() {
        let t = table(3, 3);
        let a = t.admit(ip(1)).unwrap();
        let b = t.admit(ip(2)).unwrap();
        let c = t.admit(ip(3)).unwrap();
        assert!(a.authenticate());
        let d = t.admit(ip(4)).unwrap();
        // `a` is authenticated, so `b` (the oldest of the others) goes.
        assert!(!a.killed().is_cancelled());
        assert!(b.killed().is_cancelled());
        assert!(!c.killed().is_cancelled());
        assert!(c.authenticate() && d.authenticate());
        // Everyone authenticated: the newcomer is refused.
        assert_eq!(t.admit(ip(5)).unwrap_err(), Refused::Full);
        let s = t.stats().snapshot();
        assert_eq!(
            (s.open, s.shed, s.refused_full, s.unauthenticated),
            (3, 1, 1, 0)
        );
        // A shed slot dropping later frees nothing twice.
        drop(b);
        assert_eq!(t.stats().snapshot().open, 3);
        drop(a);
        assert!(t.admit(ip(5)).is_ok());
    }

    #[test]
    fn a_source_at_its_cap_loses_its_own_oldest_first() {
        let t = table(10, 2);
        let a1 = t.admit(ip(1)).unwrap();
        let b1 = t.admit(ip(2)).unwrap();
        let a2 = t.admit(ip(1)).unwrap();
        let a3 = t.admit(ip(1)).unwrap();
        assert!(a1.killed().is_cancelled(), "a1 was source 1's oldest");
        assert!(!b1.killed().is_cancelled(), "other sources are untouched");
        assert!(a2.authenticate() && a3.authenticate());
        assert_eq!(t.admit(ip(1)).unwrap_err(), Refused::Source);
        assert!(t.admit(ip(2)).is_ok());
        let s = t.stats().snapshot();
        assert_eq!((s.shed, s.refused_source), (1, 1));
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_their_ipv4_source() {
        let t = table(10, 1);
        let _a = t.admit(ip(1)).unwrap();
        let mapped = IpAddr::V6(std::net::Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped());
        let _b = t.admit(mapped).unwrap();
        assert_eq!(t.stats().snapshot().shed, 1);
    }

    #[test]
    fn limits_are_validated() {
        let ok = Limits::default();
        assert_eq!(ok.validate(), Ok(()));
        let bad = Limits {
            max_per_source: 2000,
            ..ok
        };
        assert!(matches!(
            bad.validate(),
            Err(LimitsError::PerSourceAboveTotal { .. })
        ));
        let zero = Limits {
            preauth_deadline: Duration::ZERO,
            ..ok
        };
        assert_eq!(zero.validate(), Err(LimitsError::Zero("preauth_deadline")));
    }
}
