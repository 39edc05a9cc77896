//! Each watched unit's state as systemd last signalled it, kept by the unit-state watcher
//! ([`super::states`]) for the recoveries: a recovery waiting for systemd to handle a death
//! learns of it from the standing subscription, as soon as systemd says so, instead of
//! subscribing and reading after the death, when its calls queue behind systemd's own handling
//! of that death (1 to 4 ms on a small VM, measured in `restart-bench`).
//!
//! Only what a signal or the watcher's own reads said is here, and nothing once the watcher
//! lost its connection: a recovery that finds no state falls back to asking the bus.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard, PoisonError},
};

use tokio::sync::watch;

/// Most units kept: as many as the watcher keeps states for.
const MAX_UNITS: usize = 4096;

/// A unit's state as last signalled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UnitSeen {
    /// `ActiveState`.
    pub active: String,
    /// The run it is in (`InvocationID`, hex), when a signal or a read gave it.
    pub invocation: Option<String>,
}

/// The states, one watch channel per unit.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    units: Mutex<HashMap<String, watch::Sender<UnitSeen>>>,
}

impl Seen {
    /// What a signal (or a read) says of `unit`: its `ActiveState` and run, either missing when
    /// it did not say. A unit whose state was never said starts only with a state.
    pub(crate) fn publish(&self, unit: &str, active: Option<&str>, invocation: Option<&str>) {
        let mut units = self.units();
        if let Some(sender) = units.get(unit) {
            sender.send_if_modified(|seen| {
                let before = seen.clone();
                if let Some(active) = active {
                    active.clone_into(&mut seen.active);
                }
                if let Some(invocation) = invocation {
                    seen.invocation = Some(invocation.to_owned());
                }
                *seen != before
            });
            // At rest: nothing a recovery waits for, and no memory kept (a template's instances
            // come and go by the thousand). A waiting recovery has seen it first.
            if active == Some("inactive") {
                units.remove(unit);
            }
            return;
        }
        let Some(active) = active.filter(|a| *a != "inactive") else {
            return;
        };
        if units.len() >= MAX_UNITS {
            // Past the bound, forget them all: their recoveries ask the bus instead.
            units.clear();
        }
        let (sender, _) = watch::channel(UnitSeen {
            active: active.to_owned(),
            invocation: invocation.map(str::to_owned),
        });
        units.insert(unit.to_owned(), sender);
    }

    /// The unit's state as last signalled, and its changes; None when nothing is known of it.
    pub(crate) fn follow(&self, unit: &str) -> Option<watch::Receiver<UnitSeen>> {
        self.units().get(unit).map(watch::Sender::subscribe)
    }

    /// The watcher lost its connection: what it said may be stale from now on.
    pub(crate) fn forget(&self) {
        self.units().clear();
    }

    /// Units kept, for the metrics.
    pub(crate) fn len(&self) -> usize {
        self.units().len()
    }

    /// The table, even after a panic poisoned its lock: every entry is a whole state, and a
    /// stale one costs a recovery at most the wait before it asks the bus.
    fn units(&self) -> MutexGuard<'_, HashMap<String, watch::Sender<UnitSeen>>> {
        self.units.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_updates_what_followers_see_and_rest_forgets_the_unit() {
        let seen = Seen::default();
        // Nothing known until a state is said.
        seen.publish("a.service", None, Some("01"));
        assert!(seen.follow("a.service").is_none());
        seen.publish("a.service", Some("active"), Some("01"));
        let mut follower = seen.follow("a.service").expect("followed");
        assert_eq!(follower.borrow_and_update().active, "active");
        // A signal without the run keeps the run known.
        seen.publish("a.service", Some("deactivating"), None);
        assert!(follower.has_changed().expect("open"));
        let now = follower.borrow_and_update().clone();
        assert_eq!(
            (now.active.as_str(), now.invocation.as_deref()),
            ("deactivating", Some("01"))
        );
        // The same again is no change.
        seen.publish("a.service", Some("deactivating"), Some("01"));
        assert!(!follower.has_changed().expect("open"));
        // At rest: the follower sees it, then the unit is forgotten.
        seen.publish("a.service", Some("inactive"), None);
        assert_eq!(follower.borrow_and_update().active, "inactive");
        assert!(follower.has_changed().is_err(), "closed once forgotten");
        assert!(seen.follow("a.service").is_none());
        assert_eq!(seen.len(), 0);
    }

    #[test]
    fn a_lost_connection_forgets_every_unit() {
        let seen = Seen::default();
        seen.publish("a.service", Some("active"), None);
        let follower = seen.follow("a.service").expect("followed");
        seen.forget();
        assert!(follower.has_changed().is_err());
        assert!(seen.follow("a.service").is_none());
    }
}
