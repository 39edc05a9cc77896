//! The role of a dying process in its unit, from facts learned before the death: whether the
//! watched manager forked it itself (the kernel's `sched_process_fork` hook), not who its parent
//! was at the end (a supervisor's orphaned workers are reparented to the manager).

use crate::death::record::ExitRecord;

/// How roles are told on this host.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Roles {
    /// The watched manager's pid in our namespace, when known.
    pub manager_pid: Option<i32>,
    /// The kernel marks the manager's own children (the fork hook is attached).
    pub spawns_tracked: bool,
}

impl Roles {
    /// Sets `record.role` from its unit and what the kernel saw at its fork.
    pub(crate) fn assign(self, record: &mut ExitRecord) {
        let unit = record.user_unit.as_deref().or(record.unit.as_deref());
        record.role = match unit {
            None => None,
            Some(u) if !u.ends_with(".service") => Some("other"),
            // User units have their own manager, whose children we do not track.
            Some(_) if record.user_unit.is_some() => Some("other"),
            Some(_) if self.is_main(record) => Some("main"),
            Some(_) => Some("worker"),
        };
    }

    fn is_main(self, record: &ExitRecord) -> bool {
        if self.spawns_tracked {
            record.spawned
        } else {
            // Without the fork hook, the parent at death is all there is.
            self.manager_pid
                .is_some_and(|m| i64::from(record.ppid) == i64::from(m))
        }
    }
}
