//! From a death in a service to its incident's task: opens the incident with the cause the death
//! alone tells, asks the journal thread for its account, and spawns the task that joins that
//! account with the recovery ([`super::handle`]). One task per death in a service, until its
//! incident is written.

use std::{path::Path, sync::Arc, time::Duration};

use tokio::{
    sync::{mpsc::Receiver, oneshot, watch},
    task::{JoinError, JoinSet},
};

use super::{Coalesced, Recovery, systemd::Systemd, workers};
use crate::{
    config::{Config, UnitPolicy},
    death::record::ExitRecord,
    incident::{Incident, Notice, Outbox, Progress},
    journal::{self, causes},
};

/// Most incidents open at once (each a task until it is written). Well below the notices'
/// [`crate::incident::outbox::CAPACITY`]: each open incident holds a slot there for its end.
const MAX_OPEN: usize = 1024;

/// At shutdown, how long incidents still being written may take to finish (about one journal
/// wait); after that they go out as they are, marked `interrupted`.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Starts and tracks the incident of every death in a service.
pub(crate) struct Dispatcher {
    /// Deaths in services, to the journal thread, which tells unit failures from other deaths
    /// and gathers the failed run's lines.
    journal: journal::Readers,
    recovery: Arc<Recovery>,
    /// One task per death in a service, until its incident is written; at most [`MAX_OPEN`].
    tasks: JoinSet<()>,
    /// Tasks that live as long as the daemon: one liveness task per unit that asks for it, and
    /// the watcher of systemd's unit states.
    watchers: JoinSet<()>,
    /// Says when the state watcher follows systemd's signals.
    following: Option<oneshot::Receiver<()>>,
    /// The watched systemd's PID 1, in our pid namespace, when known.
    manager_pid: Option<i32>,
    incidents: Outbox,
}

impl Dispatcher {
    #[must_use]
    pub(crate) fn new(
        journal: journal::Readers,
        recovery: Recovery,
        incidents: Outbox,
        manager_pid: Option<i32>,
    ) -> Self {
        let recovery = Arc::new(recovery);
        let mut watchers = super::liveness::spawn(&recovery, &incidents);
        let following = super::states::spawn(&mut watchers, &recovery, &incidents, &journal);
        Self {
            journal,
            recovery,
            tasks: JoinSet::new(),
            watchers,
            following,
            manager_pid,
            incidents,
        }
    }

    /// Lets go of what finished incidents left in the recovery's tracks (each second).
    pub(crate) fn sweep(&self) {
        self.recovery.sweep();
    }

    /// How many entries each of the recovery's caches holds, by name.
    #[must_use]
    pub(crate) fn cache_sizes(&self) -> [(&'static str, usize); 5] {
        self.recovery.cache_sizes()
    }

    /// SIGHUP: reads the configuration file again. A good one is in force for every later
    /// decision (policies, cause rules, journal lines), its units are checked against systemd,
    /// and the liveness and unit-state watchers start again if the units changed. A bad one
    /// changes nothing, and the error names the file and line.
    pub(crate) fn reload(&mut self, path: Option<&Path>) {
        let Some(path) = path else {
            tracing::warn!("SIGHUP: detector runs without --config; nothing to reload");
            return;
        };
        let before = self.recovery.config();
        match self.recovery.live().reload(path) {
            Ok(config) => {
                tracing::info!(
                    file = %path.display(),
                    units = config.units.len(),
                    rules = config.rules.len(),
                    "configuration reloaded"
                );
                if config.units != before.units {
                    self.watchers.abort_all();
                    self.watchers = super::liveness::spawn(&self.recovery, &self.incidents);
                    // Said ready already: nobody waits for the new watcher to follow.
                    drop(super::states::spawn(
                        &mut self.watchers,
                        &self.recovery,
                        &self.incidents,
                        &self.journal,
                    ));
                }
                let root = self.recovery.root().to_owned();
                self.tasks.spawn(async move {
                    let _ = check_units(&root, &config).await;
                });
            }
            Err(e) => tracing::error!("{e}; the configuration in force is kept"),
        }
    }

    /// Starts the incident (and recovery) of a death in a service that may have failed it, or
    /// counts it in the incident it belongs to. Returns whether a recovery may act on it at once
    /// (the caller should not batch further records before letting it run).
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
        let run = record.invocation_id.as_deref();
        // A run whose main process died, or that detector stopped: the rest of it dies with it.
        if let Some(owner) = self.recovery.owner(&unit, run) {
            owner.with(|i| i.add_death(record));
            return false;
        }
        // A storm across more units than this: the death keeps its record (and its metrics), but
        // opens no incident of its own until the open ones drain. It is counted in its unit's
        // newest open incident if there is one, and in `coalesced` either way; said.
        if self.tasks.len() >= MAX_OPEN {
            self.recovery
                .coalesce(&unit, Some(record), "incidents open at once");
            return false;
        }
        match record.role {
            Some("worker") => {
                self.worker(&unit, record);
                false
            }
            role => self.main(unit, record, role == Some("main")),
        }
    }

    /// The death of a unit's main (or control) process, or, with `known` false, of a process
    /// whose role we cannot tell: then the journal decides (PID 1's "Main process exited").
    fn main(&mut self, unit: String, record: &ExitRecord, known: bool) -> bool {
        // A main process systemd itself signalled: its stop (quiet), or a timeout (a failure).
        // Only PID 1's account tells which, so the journal decides before anything is done.
        let by_manager = record.killed_by.as_ref().is_some_and(|k| {
            !k.kernel
                && self
                    .manager_pid
                    .is_some_and(|m| i64::from(k.pid) == i64::from(m))
        });
        let fast = known && !by_manager;
        let urgent = fast
            && self
                .recovery
                .config()
                .policy(&unit)
                .is_some_and(UnitPolicy::restarts);
        let incident = Incident::from_death(&unit, record, causes::from_death(record));
        let progress = Arc::new(Progress::new(incident, self.incidents.clone()));
        if known {
            self.recovery
                .own_run(&unit, record.invocation_id.as_deref(), &progress);
            // Workers that died just before it (gunicorn's "Worker failed to boot") were the
            // start of this failure.
            if let Some(group) = self.recovery.take_group(&unit) {
                if let Some(task) = &group.task {
                    task.abort();
                }
                if let Some(earlier) = group.progress.discard() {
                    progress.with(|i| i.absorb(&earlier));
                }
            }
        }
        let (answer, journaled) = oneshot::channel();
        // Sending fails only without a journal thread; the incident then goes out without lines.
        self.journal.ask(journal::Request::Death {
            unit: unit.clone(),
            record: Box::new(record.clone()),
            answer,
        });
        self.tasks.spawn(super::handle(
            Arc::clone(&self.recovery),
            unit,
            record.clone(),
            journaled,
            fast,
            progress,
        ));
        urgent
    }

    /// A worker's death: counted in its run's open worker incident, or the first of a new one.
    fn worker(&mut self, unit: &str, record: &ExitRecord) {
        let run = record.invocation_id.as_deref();
        if terminated_on_request(record) || self.recovery.is_quiet(unit, run) {
            return;
        }
        if let Some(group) = self.recovery.group(unit, run) {
            group.progress.with(|i| i.add_death(record));
            group.deaths.send_modify(|n| *n += 1);
            return;
        }
        let incident = Incident::from_death(unit, record, causes::from_death(record));
        let mut group = workers::Group {
            invocation: record.invocation_id.clone(),
            progress: Arc::new(Progress::new(incident, self.incidents.clone())),
            deaths: Arc::new(watch::channel(1).0),
            task: None,
        };
        let (answer, journaled) = oneshot::channel();
        self.journal.ask(journal::Request::Death {
            unit: unit.to_owned(),
            record: Box::new(record.clone()),
            answer,
        });
        let failures = self.recovery.failed(unit);
        group.task = Some(self.tasks.spawn(workers::run(
            Arc::clone(&self.recovery),
            unit.to_owned(),
            group.clone(),
            journaled,
            failures,
        )));
        self.recovery.set_group(unit, group);
    }

    /// Waits (a few seconds at most) until systemd's unit states are followed, so that the
    /// daemon says it is ready only when a unit failing at once would be seen.
    pub(crate) async fn watching(&mut self) {
        if let Some(following) = self.following.take()
            && tokio::time::timeout(Duration::from_secs(5), following)
                .await
                .is_err()
        {
            tracing::warn!("systemd's unit states are not followed yet; going on without waiting");
        }
    }

    /// Failures that opened no incident of their own, since the start.
    #[must_use]
    pub(crate) fn coalesced(&self) -> Coalesced {
        self.recovery.coalesced()
    }

    /// The notices' channel, for what it dropped.
    #[must_use]
    pub(crate) fn outbox(&self) -> &Outbox {
        &self.incidents
    }

    /// The next finished task, an incident's or a watcher's (pending forever while there is
    /// none); one that panicked is logged.
    pub(crate) async fn join_next(&mut self) {
        tokio::select! {
            Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                report(done, "an incident's task");
            }
            Some(done) = self.watchers.join_next(), if !self.watchers.is_empty() => {
                report(done, "a watcher (liveness, unit states)");
            }
            else => std::future::pending::<()>().await,
        }
    }

    /// At shutdown: every incident begun still gets out, finished within [`SHUTDOWN_GRACE`] or
    /// as far as it got. Returns the notices that were still in the channel.
    pub(crate) async fn finish(&mut self, incidents: &mut Receiver<Notice>) -> Vec<Notice> {
        // An incident they have under way goes out `interrupted` (see `interrupt_all`).
        self.watchers.abort_all();
        while let Some(done) = self.watchers.join_next().await {
            report(done, "a watcher (liveness, unit states)");
        }
        let finishing = async {
            while let Some(done) = self.tasks.join_next().await {
                report(done, "an incident's task");
            }
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, finishing)
            .await
            .is_err()
        {
            self.tasks.abort_all();
            while let Some(done) = self.tasks.join_next().await {
                report(done, "an incident's task");
            }
        }
        self.recovery.interrupt_all();
        let mut left = Vec::new();
        while let Ok(notice) = incidents.try_recv() {
            left.push(notice);
        }
        left
    }
}

/// A finished task's end: a panic is an error in the log (its incident still goes out, from the
/// `Progress` it dropped); one aborted on purpose (a worker incident taken over, the shutdown) is
/// not.
pub(super) fn report(done: Result<(), JoinError>, what: &str) {
    match done {
        Ok(()) => {}
        Err(e) if e.is_cancelled() => tracing::debug!("{what} was cancelled"),
        Err(e) => tracing::error!(error = %e, "{what} failed"),
    }
}

/// A death by a signal a process asked for to end it (systemd's stop, a supervisor terminating or
/// reloading its workers): not a failure by itself. SIGKILL is not among them: uvicorn and
/// gunicorn send it to workers that stopped answering.
fn terminated_on_request(record: &ExitRecord) -> bool {
    matches!(
        record.signal.as_deref(),
        Some("SIGTERM" | "SIGINT" | "SIGHUP" | "SIGQUIT")
    ) && record.killed_by.as_ref().is_some_and(|k| !k.kernel)
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
