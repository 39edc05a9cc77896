//! The incidents' notices on their way to the main loop, which hands them to the sinks: a bounded
//! channel that never waits (a notice is sent from synchronous code, even from a `Drop`, and the
//! main loop that reads them also drains the ring buffer).
//!
//! At the bound, what goes first is what costs least: an incident reserves, when it opens, the
//! slot its `resolved` notice will take, so that notice is never lost while the daemon runs; its
//! `opened` notice takes a free slot if there is one, and otherwise is folded into the `resolved`
//! one, which carries everything it said (counted). Only an incident opened with every slot
//! reserved (more than [`CAPACITY`] open at once: the dispatcher opens at most 1024) can lose its
//! `resolved` notice, counted and logged with its id.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use tokio::sync::mpsc::{self, OwnedPermit, Receiver, Sender, error::TrySendError};

use super::Notice;

/// Notices queued or reserved at most.
pub(crate) const CAPACITY: usize = 4096;

/// Where incidents send their notices.
#[derive(Clone)]
pub(crate) struct Outbox {
    tx: Sender<Notice>,
    dropped: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    opened: AtomicU64,
    resolved: AtomicU64,
}

/// Notices that did not go out on their own, since the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Dropped {
    /// `opened` notices folded into their incident's `resolved` one: the queue was full.
    pub opened: u64,
    /// `resolved` notices lost: the queue was full and the incident had no slot reserved.
    pub resolved: u64,
}

/// A slot reserved for an incident's `resolved` notice.
pub(crate) struct Slot(OwnedPermit<Notice>);

impl Outbox {
    /// The outbox and the main loop's end of it, holding at most `capacity` notices.
    #[must_use]
    pub(crate) fn new(capacity: usize) -> (Self, Receiver<Notice>) {
        let (tx, rx) = mpsc::channel(capacity);
        let outbox = Self {
            tx,
            dropped: Arc::default(),
        };
        (outbox, rx)
    }

    /// A slot for a `resolved` notice, if one is free.
    pub(crate) fn reserve(&self) -> Option<Slot> {
        self.tx.clone().try_reserve_owned().ok().map(Slot)
    }

    /// Sends an `opened` notice if a slot is free; false when full (the caller folds it into
    /// the `resolved` one). A closed channel (the daemon stopping) takes it: nobody reads it.
    pub(crate) fn try_opened(&self, notice: Notice) -> bool {
        !matches!(self.tx.try_send(notice), Err(TrySendError::Full(_)))
    }

    /// Counts an `opened` notice folded into its `resolved` one.
    pub(crate) fn folded(&self) {
        self.dropped.opened.fetch_add(1, Ordering::Relaxed);
    }

    /// Sends a `resolved` notice in its reserved slot, or in a free one.
    pub(crate) fn resolved(&self, slot: Option<Slot>, notice: Notice) {
        if let Some(Slot(permit)) = slot {
            permit.send(notice);
            return;
        }
        if let Err(TrySendError::Full(notice)) = self.tx.try_send(notice) {
            let lost = self.dropped.resolved.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::error!(
                id = %notice.incident.id,
                unit = %notice.incident.unit,
                lost,
                "an incident's notice was lost: {CAPACITY} notices were waiting for the sinks"
            );
        }
    }

    /// What was dropped since the start.
    #[must_use]
    pub(crate) fn dropped(&self) -> Dropped {
        Dropped {
            opened: self.dropped.opened.load(Ordering::Relaxed),
            resolved: self.dropped.resolved.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Dropped, Outbox};
    use crate::incident::{Incident, Phase, Progress};

    fn progress(out: &Outbox, unit: &str) -> Progress {
        let incident = Incident::without_death(
            unit,
            None,
            ("signal".to_owned(), "test".to_owned()),
            1,
            "2026-01-01T00:00:00Z".to_owned(),
        );
        Progress::new(incident, out.clone())
    }

    /// Two slots, both reserved by open incidents: their `opened` notices are folded into their
    /// `resolved` ones, which still go out; a third incident, with no slot left, loses its
    /// `resolved` notice only while the queue stays full. A discarded incident frees its slot.
    #[test]
    fn at_the_bound_opened_notices_fold_and_resolved_ones_keep_their_slot() {
        let (out, mut rx) = Outbox::new(2);
        let a = progress(&out, "a.service");
        let b = progress(&out, "b.service");
        a.opened();
        a.finish();
        let got = rx.try_recv().expect("a's resolved");
        assert_eq!(
            (got.phase, got.incident.unit.as_str()),
            (Phase::Resolved, "a.service")
        );
        assert_eq!(
            out.dropped(),
            Dropped {
                opened: 1,
                resolved: 0
            }
        );
        // a's slot is free again: c reserves it; b's is still held.
        let c = progress(&out, "c.service");
        let d = progress(&out, "d.service");
        d.finish();
        assert_eq!(
            out.dropped(),
            Dropped {
                opened: 2,
                resolved: 1
            }
        );
        assert!(c.discard().is_some());
        // With c's slot back, b's opened goes out on its own, then its resolved.
        b.opened();
        b.finish();
        let phases: Vec<Phase> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|n| n.phase)
            .collect();
        assert_eq!(phases, [Phase::Opened, Phase::Resolved]);
        assert_eq!(
            out.dropped(),
            Dropped {
                opened: 2,
                resolved: 1
            }
        );
    }
}
