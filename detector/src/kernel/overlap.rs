//! One death, two records: while a daemon of a new build takes over pinned programs of an old
//! one, both sets of programs are attached for a moment (the new ones first, so that no death
//! goes unseen), and a death in that moment is written to both rings. The old ring is read first;
//! the deaths it had in that moment are remembered, and the same death in the new ring is dropped.

use std::collections::HashSet;

use detector_common::DeathEvent;

/// Two programs read the kernel clock a few µs apart for the same death.
const SLACK_NS: u64 = 1_000_000;

/// The deaths an older ring had while both generations ran.
pub(crate) struct Overlap {
    from: u64,
    until: u64,
    seen: HashSet<(u32, u32, u32)>,
    /// Deaths of the new ring dropped as already written from the old one.
    pub dropped: u64,
}

fn key(event: &DeathEvent) -> (u32, u32, u32) {
    (event.pid, event.tid, event.wait_status)
}

impl Overlap {
    /// `window`: kernel time (ns) from the new programs' attaching to the old ones' detaching.
    #[must_use]
    pub(crate) fn new((from, until): (u64, u64)) -> Self {
        Self {
            from: from.saturating_sub(SLACK_NS),
            until: until.saturating_add(SLACK_NS),
            seen: HashSet::new(),
            dropped: 0,
        }
    }

    fn within(&self, event: &DeathEvent) -> bool {
        (self.from..=self.until).contains(&event.ktime_ns)
    }

    /// A death read from an older ring.
    pub(crate) fn note(&mut self, event: &DeathEvent) {
        if self.within(event) {
            self.seen.insert(key(event));
        }
    }

    /// A death read from our ring: false when the older ring already had it.
    pub(crate) fn is_new(&mut self, event: &DeathEvent) -> bool {
        if self.within(event) && self.seen.remove(&key(event)) {
            self.dropped += 1;
            return false;
        }
        true
    }

    /// Whether our ring can still hold a death of the window.
    #[must_use]
    pub(crate) fn open(&self, now_ns: u64) -> bool {
        !self.seen.is_empty() && now_ns <= self.until
    }
}

#[cfg(test)]
mod tests {
    use detector_common::DeathEvent;

    use super::Overlap;

    fn death(pid: u32, ktime_ns: u64) -> DeathEvent {
        // SAFETY: `DeathEvent` is plain integers; all zeros is a valid value.
        let mut event: DeathEvent = unsafe { std::mem::zeroed() };
        event.pid = pid;
        event.tid = pid;
        event.wait_status = 256;
        event.ktime_ns = ktime_ns;
        event
    }

    #[test]
    fn a_death_in_both_rings_is_written_once() {
        let mut overlap = Overlap::new((10_000_000, 20_000_000));
        overlap.note(&death(1, 15_000_000));
        overlap.note(&death(2, 1_000));
        assert!(
            !overlap.is_new(&death(1, 15_000_300)),
            "seen in the old ring"
        );
        assert!(overlap.is_new(&death(1, 15_000_300)), "only once");
        assert!(
            overlap.is_new(&death(2, 1_000)),
            "outside the window: not remembered"
        );
        assert!(
            overlap.is_new(&death(3, 15_000_000)),
            "only in the new ring"
        );
        assert_eq!(overlap.dropped, 1);
    }
}
