//! From a death in a service to its incident's task: opens the incident with the cause the death
//! alone tells, asks the journal thread for its account, and spawns the task that joins that
//! account with the recovery ([`super::handle`]). One task per death in a service, until its
//! incident is written.

use std::{path::Path, sync::Arc, time::Duration};

use tokio::{
    sync::{
        mpsc::{UnboundedReceiver, UnboundedSender},
        oneshot,
    },
    task::JoinSet,
};

use super::{Recovery, systemd::Systemd};
use crate::{
    config::{Config, UnitPolicy},
    death::record::ExitRecord,
    incident::{Incident, Progress},
    journal::{self, causes},
};

/// At shutdown, how long incidents still being written may take to finish (about one journal
/// wait); after that they go out as they are, marked `interrupted`.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Starts and tracks the incident of every death in a service.
pub(crate) struct Dispatcher {
    /// Deaths in services, to the journal thread, which tells unit failures from other deaths
    /// and gathers the failed run's lines.
    journal: std::sync::mpsc::Sender<journal::Request>,
    recovery: Arc<Recovery>,
    /// One task per death in a service, until its incident is written.
    tasks: JoinSet<()>,
    incidents: UnboundedSender<Incident>,
    /// The watched systemd's PID 1, in our pid namespace, when known.
    manager_pid: Option<i32>,
}

impl Dispatcher {
    #[must_use]
    pub(crate) fn new(
        journal: std::sync::mpsc::Sender<journal::Request>,
        recovery: Recovery,
        incidents: UnboundedSender<Incident>,
        manager_pid: Option<i32>,
    ) -> Self {
        Self {
            journal,
            recovery: Arc::new(recovery),
            tasks: JoinSet::new(),
            incidents,
            manager_pid,
        }
    }

    /// Starts the incident (and recovery) of a death in a service that may have failed it.
    /// Returns whether a recovery may act on it at once (the caller should not batch further
    /// records before letting it run).
    pub(crate) fn death(&mut self, record: &ExitRecord) -> bool {
        // The innermost unit: a user manager's service rather than its `user@UID.service`.
        let Some(unit) = record
            .user_unit
            .clone()
            .or_else(|| record.unit.clone())
            .filter(|u| u.ends_with(".service"))
        else {
            return false;
        };
        // A unit's main and control processes are the manager's children (daemons that fork
        // are reparented to it, PID 1 being their subreaper): with the manager's pid known, any
        // other death is a worker's, which does not fail the unit. User units have their own
        // manager, whose pid we do not track: the journal decides for them.
        let from_manager = record.user_unit.is_none()
            && self
                .manager_pid
                .is_some_and(|m| i64::from(record.ppid) == i64::from(m));
        if self.manager_pid.is_some() && record.user_unit.is_none() && !from_manager {
            return false;
        }
        let urgent = from_manager
            && self
                .recovery
                .config()
                .policy(&unit)
                .is_some_and(UnitPolicy::restarts);
        let incident = Incident::from_death(&unit, record, causes::from_death(record));
        let progress = Progress::new(incident, self.incidents.clone());
        let (answer, journaled) = oneshot::channel();
        // Sending fails only without a journal thread; the incident then goes out without lines.
        let _ = self.journal.send((unit.clone(), record.clone(), answer));
        self.tasks.spawn(super::handle(
            Arc::clone(&self.recovery),
            unit,
            record.clone(),
            journaled,
            from_manager,
            progress,
        ));
        urgent
    }

    /// The next finished incident task (pending forever while there is none); a task that failed
    /// is logged.
    pub(crate) async fn join_next(&mut self) {
        if self.tasks.is_empty() {
            std::future::pending::<()>().await;
        }
        if let Some(Err(e)) = self.tasks.join_next().await {
            tracing::error!(error = %e, "an incident's task failed");
        }
    }

    /// At shutdown: every incident begun still gets out, finished within [`SHUTDOWN_GRACE`] or
    /// as far as it got. Returns the incidents that were still in the channel.
    pub(crate) async fn finish(
        &mut self,
        incidents: &mut UnboundedReceiver<Incident>,
    ) -> Vec<Incident> {
        let finishing = async {
            while let Some(done) = self.tasks.join_next().await {
                if let Err(e) = done {
                    tracing::error!(error = %e, "an incident's task failed");
                }
            }
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, finishing)
            .await
            .is_err()
        {
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
        let mut left = Vec::new();
        while let Ok(incident) = incidents.try_recv() {
            left.push(incident);
        }
        left
    }
}

/// Connects to the watched systemd when the configuration asks for restarts, so that the first
/// restart does not wait for a connection, and checks that systemd knows every configured unit:
/// a typo there would otherwise only show when that unit fails. A bus that cannot be reached is
/// reported, not fatal: the recovery connects again when it needs to.
pub(crate) async fn check_units(root: &Path, config: &Config) -> Option<Systemd> {
    let listed: Vec<&str> = config
        .units
        .iter()
        .map(|p| p.name.as_str())
        .filter(|name| !name.contains("@."))
        .collect();
    let acting = config.units.iter().any(UnitPolicy::restarts);
    if listed.is_empty() && !acting {
        return None;
    }
    let bus = match Systemd::connect(root).await {
        Ok(bus) => bus,
        Err(e) => {
            tracing::warn!(
                "{e}; the configured units cannot be checked, and restarts will connect again"
            );
            return None;
        }
    };
    for unit in listed {
        match bus.unit(unit).await {
            Ok(state) if state.load_state == "not-found" => {
                tracing::warn!(unit, root = %root.display(), "the configuration names a unit systemd does not know");
            }
            Ok(state) => tracing::debug!(unit, active = state.active_state, "configured unit"),
            Err(e) => tracing::warn!("{e}"),
        }
    }
    Some(bus)
}
