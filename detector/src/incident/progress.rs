//! An incident while its recovery runs: steps are added as they happen, from the journal's
//! answer and the recovery's actions (two futures of one task). Two notices go out, in order on
//! one bounded channel ([`Outbox`]): `opened` once the cause is known ([`Progress::opened`]),
//! `resolved` once, when done or when the daemon stops, in the slot the incident reserved when it
//! opened. An `opened` notice that finds the channel full is tried again just before the
//! `resolved` one, and folded into it if it is still full.

use std::sync::{Arc, Mutex, PoisonError};

use super::{
    Incident, Notice, Phase, Step,
    outbox::{Outbox, Slot},
};
use crate::kernel::clock::{self, Clock};

/// ns as ms, to the µs.
fn ms(ns: u64) -> f64 {
    (ns / 1000) as f64 / 1000.0
}

/// An incident while its recovery runs: steps are added as they happen. Dropped unfinished (the
/// daemon stopping mid-recovery), it still goes out, with an `interrupted` step: an incident is
/// never lost.
pub(crate) struct Progress {
    /// Behind a lock: the journal's answer and the recovery's steps come from two futures of the
    /// same task, and the notices must leave in order.
    state: Mutex<State>,
    out: Outbox,
}

struct State {
    /// None once sent or discarded.
    incident: Option<Incident>,
    /// The `opened` notice went out.
    announced: bool,
    /// Where the `resolved` notice goes; None when none was free at the start.
    slot: Option<Slot>,
}

impl Progress {
    #[must_use]
    pub(crate) fn new(incident: Incident, out: Outbox) -> Self {
        Self {
            state: Mutex::new(State {
                incident: Some(incident),
                announced: false,
                slot: out.reserve(),
            }),
            out,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the incident (if it is still open).
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut Incident) -> T) -> Option<T> {
        self.state().incident.as_mut().map(f)
    }

    /// Announces the incident as it is now: call it once its cause is known (the journal's
    /// account is in). Only the first call of an open incident sends anything.
    pub(crate) fn opened(&self) {
        let mut state = self.state();
        if state.announced {
            return;
        }
        if let Some(incident) = &state.incident {
            let notice = Notice {
                phase: Phase::Opened,
                incident: Arc::new(incident.clone()),
            };
            // Full: tried again before the `resolved` notice (see `send`).
            state.announced = self.out.try_opened(notice);
        }
    }

    /// Adds a step now.
    pub(crate) fn step(&self, step: &'static str, detail: Option<String>) {
        let _ = self.timed_step(step, detail);
    }

    /// Adds a step now; returns how long after the death it came, in ms.
    #[must_use]
    pub(crate) fn timed_step(&self, step: &'static str, detail: Option<String>) -> f64 {
        self.timed_step_at(clock::monotonic_ns(), step, detail)
    }

    /// Adds a step that happened at `now` (CLOCK_MONOTONIC ns); returns how long after the
    /// death it came, in ms.
    #[must_use]
    pub(crate) fn timed_step_at(
        &self,
        now: u64,
        step: &'static str,
        detail: Option<String>,
    ) -> f64 {
        self.with(|i| {
            i.timeline.push(Step {
                at: Clock::now().rfc3339(now),
                step,
                detail,
            });
            ms(now.saturating_sub(i.died_ns))
        })
        .unwrap_or_default()
    }

    /// Sends the incident.
    pub(crate) fn finish(&self) {
        self.send(None);
    }

    /// Drops the incident (the death did not fail its unit, or another incident took it over);
    /// returns it as it was.
    pub(crate) fn discard(&self) -> Option<Incident> {
        self.take()
    }

    /// Sends the incident as far as it got, marked `interrupted` (the daemon is stopping).
    pub(crate) fn interrupt(&self) {
        self.send(Some("interrupted"));
    }

    /// Whether the incident is still open (not sent, not discarded).
    pub(crate) fn is_open(&self) -> bool {
        self.with(|_| ()).is_some()
    }

    fn take(&self) -> Option<Incident> {
        let mut state = self.state();
        // A discarded incident gives its slot back.
        state.slot = None;
        state.incident.take()
    }

    /// Sends the incident if it is still open, after a last step if one is given. One never
    /// announced (the daemon stopped before the journal answered) is announced first, so that
    /// every sink hears both notices in order.
    fn send(&self, last: Option<&'static str>) {
        if let Some(step) = last {
            self.step(
                step,
                Some("detector stopped before the recovery ended".to_owned()),
            );
        }
        self.opened();
        let mut state = self.state();
        let Some(incident) = state.incident.take() else {
            return;
        };
        if !state.announced {
            self.out.folded();
        }
        let slot = state.slot.take();
        drop(state);
        self.out.resolved(
            slot,
            Notice {
                phase: Phase::Resolved,
                incident: Arc::new(incident),
            },
        );
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.send(Some("interrupted"));
    }
}
