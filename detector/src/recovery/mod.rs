//! Stage 6, recovery: carries out the [`policy`] for a failed unit through systemd ([`systemd`],
//! over D-Bus) and the [`health`] check, writing each step into the incident's timeline.
//!
//! A death whose parent is the watched systemd itself (a unit's main or control process) is acted
//! on at once, while the journal thread is still gathering the run's lines: an `expedite` restart
//! is requested within milliseconds of the death. Other deaths wait for PID 1's "Main process
//! exited" in the journal, which tells a unit failure from a worker's death.
//!
//! - In: enriched [`ExitRecord`]s of deaths in services ([`dispatch`]), the journal's
//!   [`Account`], the configuration's unit policies.
//! - Out: calls to systemd, health checks, and steps in each open incident's [`Progress`]; the
//!   incidents themselves go to the sinks through the channel [`Progress`] holds.
//! - Must not know: the ring buffer and kernel records' layout, how incidents are written.

mod dispatch;
pub(crate) mod health;
mod liveness;
pub(crate) mod netns;
pub(crate) mod policy;
mod restart;
mod seen;
mod settle;
mod states;
pub(crate) mod systemd;
mod timer;
mod tracks;
mod workers;

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{oneshot, watch},
    time::Instant,
};

pub(crate) use self::dispatch::{Dispatcher, check_units};
use self::{
    policy::Plan,
    restart::give_up,
    systemd::{ActionError, Systemd},
};
use crate::{
    config::{Config, Live, RestartMode, UnitPolicy},
    death::record::ExitRecord,
    incident::{Action, Progress},
    journal::Account,
};

/// How long a unit may take to come back when neither its health check's deadline nor its
/// `RestartSec=` says.
pub(crate) const ACTIVE_WAIT: Duration = Duration::from_secs(30);
/// How long a restart or a watch waits for systemd to handle the death first: usually 1-3 ms.
/// A control process's death while the unit is starting does not wait at all (the unit is not
/// `active`); one while it stays active (a failed `ExecReload=`) waits this long.
const REAP_WAIT: Duration = Duration::from_secs(1);
/// Added to `RestartSec=` when watching systemd's own restart: its timer, then the start.
pub(crate) const WATCH_MARGIN: Duration = Duration::from_secs(30);

/// Each health-checked unit's last verdict (true: its check passed), from liveness polls and
/// the checks after a restart. Shared with whoever reports it (the metrics).
pub(crate) type HealthBoard = Arc<Mutex<BTreeMap<String, bool>>>;

/// Failures that opened no incident of their own because a bound was reached (the open
/// incidents, the unit-state watcher's runs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Coalesced {
    /// Counted in their unit's newest open incident (a death: in its `deaths`).
    pub folded: u64,
    /// In a unit with no incident open: only their records tell them.
    pub unopened: u64,
}

/// The recovery side of the daemon, shared by the tasks handling deaths.
pub(crate) struct Recovery {
    root: PathBuf,
    config: Arc<Live>,
    bus: tokio::sync::Mutex<Option<Arc<Systemd>>>,
    units: Mutex<HashMap<String, tracks::Track>>,
    /// Where health checks connect from: the watched systemd's network namespace.
    dialer: netns::Dialer,
    health: HealthBoard,
    coalesced: Mutex<Coalesced>,
    /// The state watcher's table sizes (units not at rest, last failures handled), for the
    /// metrics: every cache has a bound, and this shows it.
    states: (AtomicUsize, AtomicUsize),
    /// Each watched unit's state as systemd last signalled it, kept by the state watcher.
    seen: seen::Seen,
}

/// How a unit failed, for what recovering it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Its main process died: systemd stops the run (and may restart it by `Restart=`).
    Stopped,
    /// It runs, but its workers keep dying: systemd sees nothing to do.
    Running,
    /// It runs and does not answer: systemd sees nothing to do, and a stop would wait out
    /// `TimeoutStopSec=`.
    Hung,
}

/// A failure to recover from: the run that failed and how.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Failure<'a> {
    /// The failed run's invocation id, when known.
    pub old: Option<&'a str>,
    pub kind: Kind,
}

/// A recovery was cut short by the unit failing again.
pub(crate) struct DiedAgain;

impl Recovery {
    #[must_use]
    pub(crate) fn new(
        root: PathBuf,
        config: Arc<Live>,
        bus: Option<Systemd>,
        dialer: netns::Dialer,
    ) -> Self {
        Self {
            root,
            config,
            bus: tokio::sync::Mutex::new(bus.map(Arc::new)),
            units: Mutex::new(HashMap::new()),
            dialer,
            health: HealthBoard::default(),
            coalesced: Mutex::default(),
            states: (AtomicUsize::new(0), AtomicUsize::new(0)),
            seen: seen::Seen::default(),
        }
    }

    /// Each watched unit's state as systemd last signalled it (the state watcher writes it).
    pub(crate) fn seen(&self) -> &seen::Seen {
        &self.seen
    }

    /// The state watcher's table sizes, as it last said.
    pub(crate) fn note_states(&self, states: usize, handled: usize) {
        self.states.0.store(states, Ordering::Relaxed);
        self.states.1.store(handled, Ordering::Relaxed);
    }

    /// How many entries each of the recovery's caches holds, by name (each has a bound).
    #[must_use]
    pub(crate) fn cache_sizes(&self) -> [(&'static str, usize); 5] {
        let tracks = self
            .units
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        // A bus being replaced is skipped for this once; the next second says.
        let paths = self
            .bus
            .try_lock()
            .ok()
            .and_then(|bus| bus.as_ref().map(|b| b.cached_paths()))
            .unwrap_or(0);
        [
            ("unit_tracks", tracks),
            ("unit_object_paths", paths),
            ("unit_states", self.states.0.load(Ordering::Relaxed)),
            (
                "unit_failures_handled",
                self.states.1.load(Ordering::Relaxed),
            ),
            ("unit_states_seen", self.seen.len()),
        ]
    }

    /// The units' last health verdicts, for reporting.
    #[must_use]
    pub(crate) fn health_board(&self) -> HealthBoard {
        Arc::clone(&self.health)
    }

    /// Notes the verdict of `unit`'s latest health check.
    pub(crate) fn note_health(&self, unit: &str, healthy: bool) {
        self.health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(unit.to_owned(), healthy);
    }

    /// The configuration in force.
    #[must_use]
    pub(crate) fn config(&self) -> Arc<Config> {
        self.config.get()
    }

    /// The configuration, to reload it.
    #[must_use]
    pub(crate) fn live(&self) -> &Live {
        &self.config
    }

    /// Where the watched systemd's files are.
    #[must_use]
    pub(crate) fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// The connection to systemd, made again if an earlier one failed.
    pub(crate) async fn bus(&self) -> Result<Arc<Systemd>, ActionError> {
        let mut bus = self.bus.lock().await;
        if let Some(bus) = bus.as_ref() {
            return Ok(Arc::clone(bus));
        }
        let connected = Arc::new(Systemd::connect(&self.root).await?);
        *bus = Some(Arc::clone(&connected));
        Ok(connected)
    }

    /// Forgets the connection after an error, so that the next failure connects afresh.
    async fn drop_bus(&self) {
        self.bus.lock().await.take();
    }

    /// Where health checks connect from.
    pub(crate) fn dialer(&self) -> &netns::Dialer {
        &self.dialer
    }

    /// Carries out `policy` for a failure of `unit`'s run `old`, writing steps into `progress`.
    pub(crate) async fn recover(
        &self,
        unit: &str,
        policy: &UnitPolicy,
        failure: Failure<'_>,
        progress: &Progress,
        mut deaths: watch::Receiver<u64>,
    ) {
        let outcome = tokio::select! {
            outcome = self.run_policy(unit, policy, failure, progress) => outcome,
            _ = deaths.changed() => Err(DiedAgain),
        };
        match outcome {
            Ok(action) => {
                progress.with(|i| i.action = action);
            }
            Err(DiedAgain) => {
                progress.step(
                    "died_again",
                    Some("the unit failed again before it recovered; see the next incident".into()),
                );
            }
        }
    }

    async fn run_policy(
        &self,
        unit: &str,
        policy: &UnitPolicy,
        Failure { old, kind }: Failure<'_>,
        progress: &Progress,
    ) -> Result<Action, DiedAgain> {
        let bus = match self.bus().await {
            Ok(bus) => bus,
            Err(e) => return Ok(self.failure(progress, &e).await),
        };
        // Only `restart` defers to the unit's own `Restart=`, and only it needs to read it. A
        // unit that is still active (its workers die, or it hangs) is nothing systemd restarts.
        let service = if policy.restart == RestartMode::Restart && kind == Kind::Stopped {
            match bus.unit(unit).await {
                Ok(state) => Some(state),
                Err(e) => return Ok(self.failure(progress, &e).await),
            }
        } else {
            None
        };
        let systemd_restarts = service
            .as_ref()
            .and_then(|s| s.restart.as_deref())
            .is_some_and(|r| r != "no");
        let recent = self.recent(unit, policy.crash_loop.window);
        let plan = policy::plan(policy.restart, policy.crash_loop, systemd_restarts, recent);
        if kind == Kind::Hung
            && matches!(plan, Plan::Restart { .. })
            && let Err(e) = bus.kill(unit, libc::SIGKILL).await
        {
            return Ok(self.failure(progress, &e).await);
        }
        if kind == Kind::Hung && matches!(plan, Plan::Restart { .. }) {
            progress.step(
                "killed",
                Some(
                    "SIGKILL to every process of the unit: a hung service would hold its stop \
                     for TimeoutStopSec="
                        .to_owned(),
                ),
            );
        }
        if kind != Kind::Running
            && matches!(plan, Plan::Watch | Plan::Restart { .. })
            && let Err(e) = self
                .await_reaped(&bus, unit, old, Instant::now() + REAP_WAIT)
                .await
        {
            return Ok(self.failure(progress, &e).await);
        }
        match plan {
            Plan::Report => Ok(Action::Reported),
            Plan::GiveUp { restarts } => Ok(give_up(progress, policy, restarts)),
            Plan::Watch => {
                let restart_sec = service.and_then(|s| s.restart_sec).unwrap_or_default();
                self.watch(&bus, unit, policy, old, progress, restart_sec)
                    .await
            }
            Plan::Restart { delay } => self.restart(&bus, unit, policy, old, progress, delay).await,
        }
    }

    /// A bus or systemd error: say it in the timeline and the log. The next failure connects
    /// afresh: the error may be the connection's (a bus restarted, a machine rebooted), and a
    /// new connection costs a millisecond.
    pub(crate) async fn failure(&self, progress: &Progress, error: &ActionError) -> Action {
        tracing::warn!("{error}");
        progress.step("restart_failed", Some(error.to_string()));
        self.drop_bus().await;
        Action::Failed
    }
}

/// Everything about one death in a service: the journal's account and, for a unit failure
/// under a restarting policy, the recovery. `fast` says the death is known to be a unit's main
/// or control process (its parent is the manager), so the recovery need not wait for the
/// journal. Announces the incident once the journal has spoken, and sends it when both are done;
/// nothing when the death did not fail its unit.
pub(crate) async fn handle(
    recovery: Arc<Recovery>,
    unit: String,
    record: ExitRecord,
    journal: oneshot::Receiver<Account>,
    fast: bool,
    progress: Arc<Progress>,
) {
    let acting = recovery
        .config()
        .policy(&unit)
        .filter(|p| p.restarts())
        .cloned();
    match acting {
        Some(policy) if fast => {
            let deaths = recovery.failed(&unit);
            let failure = Failure {
                old: record.invocation_id.as_deref(),
                kind: Kind::Stopped,
            };
            let recover = recovery.recover(&unit, &policy, failure, &progress, deaths);
            // Announced as soon as the journal has spoken, while the recovery goes on.
            let journaled = async {
                if let Ok(account) = journal.await {
                    progress.with(|i| i.journaled(account));
                }
                progress.opened();
            };
            tokio::join!(journaled, recover);
        }
        acting => {
            match journal.await {
                Ok(Account {
                    main_process: false,
                    ..
                }) => {
                    progress.discard();
                    return;
                }
                Ok(account) => {
                    progress.with(|i| i.journaled(account));
                }
                // No journal thread: we cannot tell the main process, so every death counts.
                Err(_) => {}
            }
            progress.opened();
            if let Some(policy) = acting {
                let deaths = recovery.failed(&unit);
                let failure = Failure {
                    old: record.invocation_id.as_deref(),
                    kind: Kind::Stopped,
                };
                recovery
                    .recover(&unit, &policy, failure, &progress, deaths)
                    .await;
            }
        }
    }
    progress.finish();
}
