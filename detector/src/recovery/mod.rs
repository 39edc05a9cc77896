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
pub(crate) mod policy;
mod restart;
mod settle;
mod states;
pub(crate) mod systemd;
mod workers;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::{
    sync::{oneshot, watch},
    time::Instant,
};

pub(crate) use self::dispatch::{Dispatcher, check_units};
use self::{
    policy::{History, Plan},
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

/// Per-unit state kept across failures.
#[derive(Default)]
struct Track {
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
    had_incident: std::collections::VecDeque<Run>,
}

/// A run of a unit, by its invocation id (None: not known).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Run(Option<String>);

/// Most runs a unit's track remembers as owned, or as having had an incident; the oldest goes
/// first.
const MAX_OWNED: usize = 8;

impl Track {
    fn remember(&mut self, invocation: Option<&str>) {
        let run = Run(invocation.map(str::to_owned));
        if !self.had_incident.contains(&run) {
            if self.had_incident.len() >= MAX_OWNED {
                self.had_incident.pop_front();
            }
            self.had_incident.push_back(run);
        }
    }
}

/// The recovery side of the daemon, shared by the tasks handling deaths.
pub(crate) struct Recovery {
    root: PathBuf,
    config: Arc<Live>,
    bus: tokio::sync::Mutex<Option<Arc<Systemd>>>,
    units: Mutex<HashMap<String, Track>>,
    /// Made at the first health check: a daemon without any costs no memory for it.
    http: std::sync::OnceLock<reqwest::Client>,
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
    pub(crate) fn new(root: PathBuf, config: Arc<Live>, bus: Option<Systemd>) -> Self {
        Self {
            root,
            config,
            bus: tokio::sync::Mutex::new(bus.map(Arc::new)),
            units: Mutex::new(HashMap::new()),
            http: std::sync::OnceLock::new(),
        }
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

    fn with_track<T>(&self, unit: &str, f: impl FnOnce(&mut Track) -> T) -> T {
        let mut units = self.units.lock().unwrap_or_else(PoisonError::into_inner);
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
        units
            .get(unit)
            .is_some_and(|t| t.had_incident.iter().any(|r| r.0.as_deref() == invocation))
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

    /// Whether an incident of `unit` is open (a recovery, or a burst of worker deaths).
    pub(crate) fn busy(&self, unit: &str) -> bool {
        self.with_track(unit, |track| {
            track.owned.retain(|(_, p)| p.is_open());
            !track.owned.is_empty() || track.group.as_ref().is_some_and(workers::Group::is_open)
        })
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

    /// The health-check client, made at the first check.
    pub(crate) fn http(&self) -> &reqwest::Client {
        self.http.get_or_init(health::client)
    }

    pub(crate) fn recent(&self, unit: &str, window: Duration) -> usize {
        self.with_track(unit, |track| track.history.recent(Instant::now(), window))
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
            && let Err(e) = bus
                .await_reaped(unit, old, Instant::now() + REAP_WAIT)
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
/// journal. Sends the incident when both are done; nothing when the death did not fail its unit.
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
            let (journaled, ()) = tokio::join!(journal, recover);
            if let Ok(account) = journaled {
                progress.with(|i| i.journaled(account));
            }
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
