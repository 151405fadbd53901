//! Per-post budgets: how much one post may make the operations center store.
//!
//! Every post has two token buckets, one counting events and one counting
//! their encoded bytes. Each refills at its rate (`events_per_sec`,
//! `bytes_per_sec`) up to its burst (`burst_events`, `burst_bytes`). Ingest
//! takes from a post's buckets before it queues the post's batch for the
//! writer: the events that fit (a prefix of the batch, in seq order) are
//! stored; the rest are *deferred*: not stored, not receipted, and counted.
//! The gateway keeps every event no receipt covers and sends it again later
//! (`resend_after_secs`), so nothing is lost; a post that sends faster than
//! its budget just waits for its receipts. Other posts have their own
//! buckets, so one noisy post cannot fill the disk or starve them.
//!
//! Buckets of posts that have been quiet long enough to be full again are
//! forgotten (a full bucket and no bucket mean the same), so the table holds
//! only posts that sent recently.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

/// The `[budget]` table of the ops config: what one post may make the
/// operations center store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetConfig {
    /// Events per second one post may have stored, sustained.
    pub events_per_sec: u64,
    /// Events one post may have stored at once after a quiet spell.
    pub burst_events: u64,
    /// Encoded event bytes per second one post may have stored, sustained.
    pub bytes_per_sec: u64,
    /// Encoded event bytes one post may have stored at once.
    pub burst_bytes: u64,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            events_per_sec: 500,
            burst_events: 10_000,
            bytes_per_sec: 512 * 1024,
            burst_bytes: 8 * 1024 * 1024,
        }
    }
}

impl BudgetConfig {
    /// Checks values; returns the offending key (under `budget.`) and why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (key, v) in [
            ("events_per_sec", self.events_per_sec),
            ("burst_events", self.burst_events),
            ("bytes_per_sec", self.bytes_per_sec),
            ("burst_bytes", self.burst_bytes),
        ] {
            if v == 0 {
                return Err((format!("budget.{key}"), "must be at least 1".into()));
            }
        }
        Ok(())
    }
}

/// A token bucket.
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant, rate: u64, burst: u64) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate as f64).min(burst as f64);
        self.at = now;
    }
}

/// What [`Budgets::admit`] decided for one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// How many events of the batch (a prefix) fit the budget.
    pub events: usize,
    /// How many did not: deferred, neither stored nor receipted.
    pub deferred: usize,
}

/// Every post's buckets. Owned by ingest (one task): no locking.
#[derive(Debug)]
pub struct Budgets {
    cfg: BudgetConfig,
    /// post → (events bucket, bytes bucket).
    posts: HashMap<String, (Bucket, Bucket)>,
    last_sweep: Instant,
}

/// How often buckets that are full again are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

impl Budgets {
    pub fn new(cfg: BudgetConfig) -> Self {
        Self {
            cfg,
            posts: HashMap::new(),
            last_sweep: Instant::now(),
        }
    }

    /// Takes what fits of a batch of one post's events (their encoded sizes,
    /// in seq order) from the post's budget at `now`.
    pub fn admit(
        &mut self,
        post: &str,
        sizes: impl ExactSizeIterator<Item = usize>,
        now: Instant,
    ) -> Admitted {
        self.sweep(now);
        let cfg = &self.cfg;
        let (ev, by) = self.posts.entry(post.to_owned()).or_insert_with(|| {
            let full = |burst: u64| Bucket {
                tokens: burst as f64,
                at: now,
            };
            (full(cfg.burst_events), full(cfg.burst_bytes))
        });
        ev.refill(now, cfg.events_per_sec, cfg.burst_events);
        by.refill(now, cfg.bytes_per_sec, cfg.burst_bytes);
        let total = sizes.len();
        let mut fit = 0;
        for size in sizes {
            let bytes = size as f64;
            if ev.tokens < 1.0 || by.tokens < bytes {
                break;
            }
            ev.tokens -= 1.0;
            by.tokens -= bytes;
            fit += 1;
        }
        Admitted {
            events: fit,
            deferred: total - fit,
        }
    }

    /// Number of posts with a bucket that is not full.
    pub fn tracked(&self) -> usize {
        self.posts.len()
    }

    fn sweep(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last_sweep) < SWEEP_EVERY {
            return;
        }
        self.last_sweep = now;
        let cfg = &self.cfg;
        self.posts.retain(|_, (ev, by)| {
            ev.refill(now, cfg.events_per_sec, cfg.burst_events);
            by.refill(now, cfg.bytes_per_sec, cfg.burst_bytes);
            ev.tokens < cfg.burst_events as f64 || by.tokens < cfg.burst_bytes as f64
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use vigil_proto::v1::Event;

    /// Encoded sizes of `n` events carrying `text`.
    fn events(n: usize, text: &str) -> std::vec::IntoIter<usize> {
        (1..=n as u64)
            .map(|seq| {
                Event {
                    post_id: "p-1".into(),
                    seq,
                    description: text.into(),
                    ..Default::default()
                }
                .encoded_len()
            })
            .collect::<Vec<_>>()
            .into_iter()
    }

    fn cfg() -> BudgetConfig {
        BudgetConfig {
            events_per_sec: 10,
            burst_events: 100,
            bytes_per_sec: 1_000_000,
            burst_bytes: 1_000_000,
        }
    }

    #[test]
    fn a_post_gets_its_burst_then_its_rate_and_others_are_untouched() {
        let mut b = Budgets::new(cfg());
        let t0 = Instant::now();
        let a = b.admit("p-1", events(150, "x"), t0);
        assert_eq!(
            a,
            Admitted {
                events: 100,
                deferred: 50
            }
        );
        assert_eq!(b.admit("p-1", events(5, "x"), t0).events, 0);
        // Another post has its own budget.
        assert_eq!(b.admit("p-2", events(100, "x"), t0).deferred, 0);
        // Two seconds later: 20 more.
        let a = b.admit("p-1", events(50, "x"), t0 + Duration::from_secs(2));
        assert_eq!(
            a,
            Admitted {
                events: 20,
                deferred: 30
            }
        );
        // Never more than the burst, however long the quiet.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(b.admit("p-1", events(500, "x"), later).events, 100);
    }

    #[test]
    fn bytes_are_budgeted_too() {
        let mut b = Budgets::new(BudgetConfig {
            bytes_per_sec: 1024,
            burst_bytes: 4096,
            ..cfg()
        });
        let big = events(10, &"y".repeat(1000));
        let a = b.admit("p-1", big, Instant::now());
        assert_eq!(a.events, 4, "about 1 kB each, 4 kB of burst");
        assert_eq!(a.deferred, 6);
    }

    #[test]
    fn quiet_posts_are_forgotten() {
        let mut b = Budgets::new(cfg());
        let t0 = Instant::now();
        for n in 0..50 {
            b.admit(&format!("p-{n}"), events(1, "x"), t0);
        }
        assert_eq!(b.tracked(), 50);
        // After the sweep interval every bucket is full again (1 event at 10/s).
        b.admit(
            "p-0",
            events(1, "x"),
            t0 + SWEEP_EVERY + Duration::from_secs(1),
        );
        assert_eq!(b.tracked(), 1);
    }

    #[test]
    fn bad_values_are_refused() {
        let mut c = cfg();
        c.events_per_sec = 0;
        assert_eq!(c.validate().unwrap_err().0, "budget.events_per_sec");
        let mut c = cfg();
        c.burst_bytes = 0;
        assert_eq!(c.validate().unwrap_err().0, "budget.burst_bytes");
    }
}
