//! Per-post `durable_through_seq`: the highest seq up to which every event
//! of the post is stored.
//!
//! Seqs at or below the watermark are all present, so they need no memory.
//! Seqs stored above it (a gap below them is still open) are kept in a set
//! until the gap fills; then the watermark walks over them. Each seq is added
//! and removed at most once, so the cost per event is O(log pending), and
//! pending is empty whenever a post's events arrive in order.

use std::collections::BTreeSet;

/// What is known to be stored for one post.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqWatermark {
    durable: u64,
    last: u64,
    above: BTreeSet<u64>,
}

impl SeqWatermark {
    /// A watermark restored from storage: `durable` and the seqs stored
    /// above it.
    pub fn restore(durable: u64, above: impl IntoIterator<Item = u64>) -> Self {
        let mut w = Self {
            durable,
            last: durable,
            above: BTreeSet::new(),
        };
        for seq in above {
            w.add(seq);
        }
        w
    }

    /// Every seq in `1..=durable_through()` is stored.
    pub fn durable_through(&self) -> u64 {
        self.durable
    }

    /// Highest seq stored.
    pub fn last_seq(&self) -> u64 {
        self.last
    }

    /// Seqs between the watermark and the last seq that are not stored.
    pub fn missing(&self) -> u64 {
        self.last - self.durable - self.above.len() as u64
    }

    /// Whether `seq` is known to be stored.
    pub fn contains(&self, seq: u64) -> bool {
        seq != 0 && (seq <= self.durable || self.above.contains(&seq))
    }

    /// Records that `seq` is stored. Returns false if it already was.
    pub fn add(&mut self, seq: u64) -> bool {
        if seq == 0 || self.contains(seq) {
            return false;
        }
        self.last = self.last.max(seq);
        if seq == self.durable + 1 {
            self.durable = seq;
            while self.above.remove(&(self.durable + 1)) {
                self.durable += 1;
            }
        } else {
            self.above.insert(seq);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_advances() {
        let mut w = SeqWatermark::default();
        for seq in 1..=5 {
            assert!(w.add(seq));
        }
        assert_eq!((w.durable_through(), w.last_seq(), w.missing()), (5, 5, 0));
        assert!(!w.add(3), "duplicate");
    }

    #[test]
    fn gaps_wait_until_filled() {
        let mut w = SeqWatermark::default();
        for seq in [1, 2, 5, 6, 9] {
            w.add(seq);
        }
        assert_eq!((w.durable_through(), w.last_seq(), w.missing()), (2, 9, 4));
        w.add(4);
        assert_eq!(w.durable_through(), 2);
        w.add(3);
        assert_eq!((w.durable_through(), w.missing()), (6, 2));
        w.add(8);
        w.add(7);
        assert_eq!((w.durable_through(), w.missing()), (9, 0));
        assert!(w.above.is_empty());
    }

    #[test]
    fn reverse_order_and_restore() {
        let mut w = SeqWatermark::default();
        for seq in (1..=100).rev() {
            w.add(seq);
        }
        assert_eq!(w.durable_through(), 100);
        let r = SeqWatermark::restore(10, [12, 13]);
        assert_eq!(
            (r.durable_through(), r.last_seq(), r.missing()),
            (10, 13, 1)
        );
        assert!(r.contains(13) && r.contains(1) && !r.contains(11) && !r.contains(0));
    }
}
