//! Rate-limited logging of repeated peer errors.
//!
//! A hostile or broken peer can make a server hit the same error thousands
//! of times a second (garbage datagrams, refused connections, malformed
//! messages). Logging each one fills the disk faster than any useful
//! message could be read. A [`LogLimiter`] lets through at most one line per
//! interval for one kind of error, and tells that line how many times the
//! error happened since the previous line, so nothing goes uncounted:
//!
//! ```
//! use std::time::Duration;
//! use vigil_telemetry::log_limit::LogLimiter;
//!
//! static GARBAGE: LogLimiter = LogLimiter::new(Duration::from_secs(10));
//!
//! fn on_garbage(peer: std::net::SocketAddr) {
//!     if let Some(count) = GARBAGE.hit() {
//!         tracing::warn!(%peer, count, "garbage datagram dropped");
//!     }
//! }
//! # on_garbage(([127, 0, 0, 1], 9).into());
//! ```
//!
//! One limiter per kind of error, not per peer: a table keyed by peer would
//! grow with the attacker's address space. The line carries the peer of the
//! occurrence that was let through. Occurrences after the last line of a
//! burst are reported, with their count, by the next line of that kind.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// The interval servers use for peer errors: at most one line per kind of
/// error per this long.
pub const PEER_ERROR_INTERVAL: Duration = Duration::from_secs(10);

/// Lets one log line through per interval; counts the rest. See the module
/// docs.
#[derive(Debug)]
pub struct LogLimiter {
    interval: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// When a line was last let through.
    last: Option<Instant>,
    /// Occurrences since then, not yet reported.
    held: u64,
}

impl LogLimiter {
    /// A limiter that lets through one line per `interval`.
    pub const fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new(State {
                last: None,
                held: 0,
            }),
        }
    }

    /// Records one occurrence now. Returns `Some(count)` when a line should
    /// be written, `count` being the occurrences since the previous line
    /// (this one included); `None` when the line is held back and counted.
    pub fn hit(&self) -> Option<u64> {
        self.hit_at(Instant::now())
    }

    /// [`hit`](Self::hit) at a given instant (for tests and for callers that
    /// already read the clock).
    pub fn hit_at(&self, now: Instant) -> Option<u64> {
        // A poisoned lock only means another thread panicked while counting;
        // the counts are still usable.
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.held += 1;
        let due = s
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
        if !due {
            return None;
        }
        s.last = Some(now);
        Some(std::mem::take(&mut s.held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_of_what_was_held_back() {
        let limiter = LogLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(limiter.hit_at(at(0)), Some(1), "the first line goes out");
        let mut lines = 0;
        for n in 1..10_000 {
            if limiter.hit_at(at(n)).is_some() {
                lines += 1;
            }
        }
        // 10,000 occurrences within the first 10 s: one line.
        assert_eq!(lines, 0);
        // The first one after the interval reports all that were held back.
        assert_eq!(limiter.hit_at(at(10_000)), Some(10_000));
        assert_eq!(limiter.hit_at(at(10_001)), None);
        assert_eq!(limiter.hit_at(at(25_000)), Some(2));
    }

    #[test]
    fn a_clock_that_seems_to_go_back_holds_lines_back_without_panicking() {
        let limiter = LogLimiter::new(Duration::from_secs(1));
        let t0 = Instant::now() + Duration::from_secs(5);
        assert_eq!(limiter.hit_at(t0), Some(1));
        assert_eq!(limiter.hit_at(t0 - Duration::from_secs(3)), None);
        assert_eq!(limiter.hit_at(t0 + Duration::from_secs(1)), Some(2));
    }

    #[test]
    fn threads_share_one_count() {
        let limiter = std::sync::Arc::new(LogLimiter::new(Duration::from_secs(3600)));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let l = limiter.clone();
                std::thread::spawn(move || (0..1000).filter(|_| l.hit().is_some()).count())
            })
            .collect();
        let lines: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(lines, 1);
        // 3,999 were held back; a line after the interval would report them.
        let later = Instant::now() + Duration::from_secs(3600);
        assert_eq!(limiter.hit_at(later), Some(4000));
    }
}
