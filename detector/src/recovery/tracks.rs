//! What the recovery keeps per unit across failures: the crash-loop history, the runs an open
//! incident owns, the open worker incident, the runs whose worker deaths are no longer
//! incidents, and which runs had an incident at all. Bounded: idle units are forgotten past
//! [`MAX_UNITS`].

use std::{
    sync::{Arc, PoisonError},
    time::Duration,
};

use tokio::{sync::watch, time::Instant};

use super::{Coalesced, Recovery, policy::History, workers};
use crate::{death::record::ExitRecord, incident::Progress};

/// Per-unit state kept across failures.
#[derive(Default)]
pub(super) struct Track {
    history: History,
    /// Bumped at each failure, so that a recovery still running for the last one stops.
    deaths: Option<watch::Sender<u64>>,
    /// Runs an open incident owns (a main process died, detector restarted or killed them):
    /// every later death in them is part of that incident. Closed ones are dropped as found.
    owned: Vec<(Option<String>, Arc<Progress>)>,
    /// The latest incident opened by a worker's death, while it is open.
    group: Option<workers::Group>,
    /// A run whose workers' deaths are no longer incidents: its respawn loop was reported or
    /// given up, or detector restarted it.
    quiet: Option<Run>,
    /// The latest runs that had an incident, open or done: systemd's account of their failure
    /// (the state watcher) is part of it, not another.
    had_incident: std::collections::VecDeque<(Run, Instant)>,
}

/// A run of a unit, by its invocation id (None: not known).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Run(Option<String>);

/// Most runs a unit's track remembers as owned, or as having had an incident; the oldest goes
/// first.
const MAX_OWNED: usize = 8;

/// How long an incident of an unknown run covers the unit's next failed state.
const UNKNOWN_RUN: Duration = Duration::from_secs(5);
/// Most units tracked; past it, idle tracks are dropped.
const MAX_UNITS: usize = 4096;
/// A track without a restart this long is idle.
const IDLE: Duration = Duration::from_hours(1);

impl Track {
    /// An incident of this unit is open.
    fn busy(&mut self) -> bool {
        self.owned.retain(|(_, p)| p.is_open());
        !self.owned.is_empty() || self.group.as_ref().is_some_and(workers::Group::is_open)
    }

    fn remember(&mut self, invocation: Option<&str>) {
        let run = Run(invocation.map(str::to_owned));
        if !self.had_incident.iter().any(|(r, _)| *r == run) {
            if self.had_incident.len() >= MAX_OWNED {
                self.had_incident.pop_front();
            }
            self.had_incident.push_back((run, Instant::now()));
        }
    }
}

impl Recovery {
    /// Lets go of the finished incidents the tracks still hold: each is a whole incident,
    /// journal lines and all, and a unit that never fails again (a template's instance) would
    /// keep its last one until its track goes. Called each second by the main loop; the same
    /// as what each use of a track does first.
    pub(crate) fn sweep(&self) {
        let mut units = self.units.lock().unwrap_or_else(PoisonError::into_inner);
        for track in units.values_mut() {
            track.owned.retain(|(_, p)| p.is_open());
        }
    }

    fn with_track<T>(&self, unit: &str, f: impl FnOnce(&mut Track) -> T) -> T {
        let mut units = self.units.lock().unwrap_or_else(PoisonError::into_inner);
        if units.len() >= MAX_UNITS && !units.contains_key(unit) {
            // A track with nothing open and no recent restart can go: forgetting it loses only
            // which of its runs had incidents long ago.
            let now = Instant::now();
            units.retain(|_, t| t.busy() || t.history.recent(now, IDLE) > 0);
        }
        f(units.entry(unit.to_owned()).or_default())
    }

    /// Notes a failure of `unit`: a recovery still running for an earlier one stops. Returns
    /// what this failure's recovery watches for the next.
    pub(crate) fn failed(&self, unit: &str) -> watch::Receiver<u64> {
        self.with_track(unit, |track| {
            let sender = track.deaths.get_or_insert_with(|| watch::channel(0).0);
            sender.send_modify(|n| *n += 1);
            let mut receiver = sender.subscribe();
            receiver.borrow_and_update();
            receiver
        })
    }

    pub(crate) fn restarted(&self, unit: &str) {
        self.with_track(unit, |track| track.history.restarted(Instant::now()));
    }

    /// From now on, every death in `unit`'s run `invocation` is part of `progress`'s incident.
    pub(crate) fn own_run(&self, unit: &str, invocation: Option<&str>, progress: &Arc<Progress>) {
        self.with_track(unit, |track| {
            track.owned.retain(|(_, p)| p.is_open());
            if track.owned.len() >= MAX_OWNED {
                track.owned.remove(0);
            }
            track
                .owned
                .push((invocation.map(str::to_owned), Arc::clone(progress)));
            track.remember(invocation);
        });
    }

    /// Whether `unit`'s run `invocation` had an incident (and whether a death was ever seen in
    /// `unit` at all, with `invocation` None: then any of its runs).
    pub(crate) fn had_incident(&self, unit: &str, invocation: Option<&str>) -> bool {
        let units = self.units.lock().unwrap_or_else(PoisonError::into_inner);
        // A death whose run could not be read (its cgroup gone first, in a storm) covers the
        // unit's failure seen on the bus just after it.
        units.get(unit).is_some_and(|t| {
            t.had_incident.iter().any(|(r, at)| {
                r.0.as_deref() == invocation || (r.0.is_none() && at.elapsed() < UNKNOWN_RUN)
            })
        })
    }

    /// Whether a death was ever seen in `unit`.
    pub(crate) fn knows(&self, unit: &str) -> bool {
        let units = self.units.lock().unwrap_or_else(PoisonError::into_inner);
        units.contains_key(unit)
    }

    /// The open incident that owns `unit`'s run `invocation`, if any.
    pub(crate) fn owner(&self, unit: &str, invocation: Option<&str>) -> Option<Arc<Progress>> {
        self.with_track(unit, |track| {
            track.owned.retain(|(_, p)| p.is_open());
            track
                .owned
                .iter()
                .rev()
                .find(|(run, _)| run.as_deref() == invocation)
                .map(|(_, p)| Arc::clone(p))
        })
    }

    /// The newest open incident of `unit` (one owning a run, else its worker incident): where a
    /// death that may not open its own is counted.
    pub(crate) fn newest_open(&self, unit: &str) -> Option<Arc<Progress>> {
        self.with_track(unit, |track| {
            track.owned.retain(|(_, p)| p.is_open());
            track.owned.last().map(|(_, p)| Arc::clone(p)).or_else(|| {
                track
                    .group
                    .as_ref()
                    .filter(|g| g.is_open())
                    .map(|g| Arc::clone(&g.progress))
            })
        })
    }

    /// A failure of `unit` (a death, with its `record`, or a failed run systemd reported) that
    /// may not open an incident of its own (`why`: a bound was reached): counted in the unit's
    /// newest open incident if there is one, and in [`Coalesced`] either way; said now and then.
    pub(crate) fn coalesce(&self, unit: &str, record: Option<&ExitRecord>, why: &str) {
        let open = self.newest_open(unit);
        if let (Some(open), Some(record)) = (&open, record) {
            open.with(|i| i.add_death(record));
            // Its run's failure, as systemd then reports it, is in that incident too: the state
            // watcher opens none for it.
            self.with_track(unit, |track| {
                track.remember(record.invocation_id.as_deref());
            });
        }
        let total = {
            let mut coalesced = self
                .coalesced
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if open.is_some() {
                coalesced.folded += 1;
            } else {
                coalesced.unopened += 1;
            }
            *coalesced
        };
        let sum = total.folded + total.unopened;
        if sum == 1 || sum.is_multiple_of(1000) {
            tracing::warn!(
                folded = total.folded,
                unopened = total.unopened,
                unit,
                "too many {why}; failures past the bound open no incident of their own (counted \
                 in their unit's open incident, or only in their records)"
            );
        }
    }

    /// Failures that opened no incident of their own, since the start.
    pub(crate) fn coalesced(&self) -> Coalesced {
        *self
            .coalesced
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether an incident of `unit` is open (a recovery, or a burst of worker deaths).
    pub(crate) fn busy(&self, unit: &str) -> bool {
        self.with_track(unit, Track::busy)
    }

    /// Worker deaths in `unit`'s run `invocation` are no longer incidents.
    pub(crate) fn quiet(&self, unit: &str, invocation: Option<&str>) {
        self.with_track(unit, |track| {
            track.quiet = Some(Run(invocation.map(str::to_owned)));
        });
    }

    pub(crate) fn is_quiet(&self, unit: &str, invocation: Option<&str>) -> bool {
        self.with_track(unit, |track| {
            track
                .quiet
                .as_ref()
                .is_some_and(|run| run.0.as_deref() == invocation)
        })
    }

    /// The open worker incident of `unit`'s run `invocation`, to count one more death in.
    pub(crate) fn group(&self, unit: &str, invocation: Option<&str>) -> Option<workers::Group> {
        self.with_track(unit, |track| {
            track
                .group
                .as_ref()
                .filter(|g| g.is_open() && g.invocation.as_deref() == invocation)
                .cloned()
        })
    }

    /// Takes the open worker incident of `unit`, if any (a main process's death takes it over).
    pub(crate) fn take_group(&self, unit: &str) -> Option<workers::Group> {
        self.with_track(unit, |track| {
            track.group.take().filter(workers::Group::is_open)
        })
    }

    pub(crate) fn set_group(&self, unit: &str, group: workers::Group) {
        self.with_track(unit, |track| {
            track.remember(group.invocation.as_deref());
            track.group = Some(group);
        });
    }

    /// At shutdown, once no task runs any more: every incident still open goes out as far as it
    /// got, marked `interrupted` (the tasks that held them are gone, but the tracks still do).
    pub(crate) fn interrupt_all(&self) {
        let mut units = self.units.lock().unwrap_or_else(PoisonError::into_inner);
        for track in units.values_mut() {
            for (_, progress) in track.owned.drain(..) {
                progress.interrupt();
            }
            if let Some(group) = track.group.take() {
                group.progress.interrupt();
            }
        }
    }

    pub(crate) fn recent(&self, unit: &str, window: Duration) -> usize {
        self.with_track(unit, |track| track.history.recent(Instant::now(), window))
    }
}
