//! Per-partition settlement tracking: which offsets are handed out and which are settled, so
//! only the position below which *every* message is settled gets committed, whatever order
//! acks arrive in.

use std::collections::VecDeque;

/// Offsets of one partition from its committed position on.
#[derive(Debug, Clone)]
pub(crate) struct Tracker {
    /// Offsets read and not yet below the commit position, in order, with whether each is
    /// settled.
    pending: VecDeque<(i64, bool)>,
    /// The offset after the last one read.
    next: i64,
}

impl Tracker {
    /// A partition whose next message is at `position`.
    pub(crate) fn new(position: i64) -> Self {
        Self {
            pending: VecDeque::new(),
            next: position,
        }
    }

    /// Records a message read at `offset`. Returns false for an offset already read (a
    /// refetch), which must not be delivered again.
    pub(crate) fn read(&mut self, offset: i64) -> bool {
        if offset < self.next {
            return false;
        }
        self.pending.push_back((offset, false));
        self.next = offset + 1;
        true
    }

    /// Marks `offset` settled. Returns whether the commit position moved.
    pub(crate) fn settle(&mut self, offset: i64) -> bool {
        let Ok(i) = self.pending.binary_search_by_key(&offset, |(o, _)| *o) else {
            return false;
        };
        self.pending[i].1 = true;
        if i != 0 {
            return false;
        }
        while self.pending.front().is_some_and(|(_, settled)| *settled) {
            self.pending.pop_front();
        }
        true
    }

    /// The offset to commit: the first unsettled one, or the next to read if all are settled.
    pub(crate) fn position(&self) -> i64 {
        self.pending.front().map_or(self.next, |(o, _)| *o)
    }

    /// Read offsets not yet settled.
    #[cfg(test)]
    pub(crate) fn unsettled(&self) -> usize {
        self.pending.iter().filter(|(_, s)| !s).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn commit_position_waits_for_the_oldest_unsettled_offset() {
        let mut t = Tracker::new(10);
        for o in 10..15 {
            assert!(t.read(o));
        }
        assert_eq!(t.position(), 10);
        assert!(!t.settle(12));
        assert!(!t.settle(11));
        assert_eq!(t.position(), 10);
        assert!(t.settle(10));
        assert_eq!(t.position(), 13);
        assert!(t.settle(13));
        assert!(t.settle(14));
        assert_eq!(t.position(), 15);
        assert_eq!(t.unsettled(), 0);
    }

    #[test]
    fn gaps_and_refetches() {
        let mut t = Tracker::new(0);
        assert!(t.read(0));
        assert!(t.read(5)); // compacted or transaction markers between
        assert!(!t.read(5));
        assert!(!t.read(3));
        assert!(!t.settle(5), "position waits for 0");
        assert_eq!(t.position(), 0);
        assert!(t.settle(0));
        assert_eq!(t.position(), 6);
        assert!(!t.settle(42), "an offset never read changes nothing");
    }

    proptest! {
        /// Whatever order acks come in, the position never passes an unsettled offset and
        /// reaches the end once all are settled.
        #[test]
        fn never_commits_past_an_unsettled_offset(
            gaps in prop::collection::vec(1i64..4, 1..60),
            seed in any::<u64>(),
        ) {
            let mut offsets = Vec::new();
            let mut o = 100;
            for g in &gaps {
                offsets.push(o);
                o += g;
            }
            let mut t = Tracker::new(100);
            for &o in &offsets {
                prop_assert!(t.read(o));
            }
            // A deterministic shuffle from the seed.
            let mut acks = offsets.clone();
            let mut s = seed | 1;
            for i in (1..acks.len()).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                acks.swap(i, (s % (i as u64 + 1)) as usize);
            }
            let mut settled = std::collections::BTreeSet::new();
            for a in acks {
                t.settle(a);
                settled.insert(a);
                let first_unsettled = offsets.iter().find(|o| !settled.contains(o));
                match first_unsettled {
                    Some(&u) => prop_assert_eq!(t.position(), u),
                    None => prop_assert_eq!(t.position(), offsets.last().unwrap() + 1),
                }
            }
        }
    }
}
