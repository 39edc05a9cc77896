//! Recovery: carries out the [`policy`](crate::policy) for a failed unit through systemd
//! ([`actions`](crate::actions)) and the health check ([`health`](crate::health)), writing each
//! step into the incident's timeline.
//!
//! A death whose parent is the watched systemd itself (a unit's main or control process) is acted
//! on at once, while the journal thread is still gathering the run's lines: an `expedite` restart
//! is requested within milliseconds of the death. Other deaths wait for PID 1's "Main process
//! exited" in the journal, which tells a unit failure from a worker's death.

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

use crate::{
    actions::{ActionError, Settled, Systemd},
    clock,
    config::{Config, RestartMode, UnitPolicy},
    health::{self, Verdict},
    incident::{Action, Progress},
    journal::Journaled,
    policy::{self, History, Plan},
    record::ExitRecord,
};

/// How long a unit may take to come back when neither its health check's deadline nor its
/// `RestartSec=` says.
const ACTIVE_WAIT: Duration = Duration::from_secs(30);
/// How long a restart or a watch waits for systemd to handle the death first: usually 1-3 ms.
/// A control process's death while the unit is starting does not wait at all (the unit is not
/// `active`); one while it stays active (a failed `ExecReload=`) waits this long.
const REAP_WAIT: Duration = Duration::from_secs(1);
/// Added to `RestartSec=` when watching systemd's own restart: its timer, then the start.
const WATCH_MARGIN: Duration = Duration::from_secs(30);

/// Per-unit state kept across failures.
#[derive(Default)]
struct Track {
    history: History,
    /// Bumped at each failure, so that a recovery still running for the last one stops.
    deaths: Option<watch::Sender<u64>>,
}

/// The recovery side of the daemon, shared by the tasks handling deaths.
pub struct Recovery {
    root: PathBuf,
    config: Arc<Config>,
    bus: tokio::sync::Mutex<Option<Arc<Systemd>>>,
    units: Mutex<HashMap<String, Track>>,
    /// Made at the first health check: a daemon without any costs no memory for it.
    http: std::sync::OnceLock<reqwest::Client>,
}

/// A recovery was cut short by the unit failing again.
struct DiedAgain;

impl Recovery {
    #[must_use]
    pub fn new(root: PathBuf, config: Arc<Config>, bus: Option<Systemd>) -> Self {
        Self {
            root,
            config,
            bus: tokio::sync::Mutex::new(bus.map(Arc::new)),
            units: Mutex::new(HashMap::new()),
            http: std::sync::OnceLock::new(),
        }
    }

    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The connection to systemd, made again if an earlier one failed.
    async fn bus(&self) -> Result<Arc<Systemd>, ActionError> {
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
    fn failed(&self, unit: &str) -> watch::Receiver<u64> {
        self.with_track(unit, |track| {
            let sender = track.deaths.get_or_insert_with(|| watch::channel(0).0);
            sender.send_modify(|n| *n += 1);
            let mut receiver = sender.subscribe();
            receiver.borrow_and_update();
            receiver
        })
    }

    fn restarted(&self, unit: &str) {
        self.with_track(unit, |track| track.history.restarted(Instant::now()));
    }

    fn recent(&self, unit: &str, window: Duration) -> usize {
        self.with_track(unit, |track| track.history.recent(Instant::now(), window))
    }

    /// Carries out `policy` for the failure `record` of `unit`, writing steps into `progress`.
    async fn recover(
        &self,
        unit: &str,
        policy: &UnitPolicy,
        record: &ExitRecord,
        progress: &Progress,
        mut deaths: watch::Receiver<u64>,
    ) {
        let outcome = tokio::select! {
            outcome = self.run_policy(unit, policy, record, progress) => outcome,
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
        record: &ExitRecord,
        progress: &Progress,
    ) -> Result<Action, DiedAgain> {
        let bus = match self.bus().await {
            Ok(bus) => bus,
            Err(e) => return Ok(self.failure(progress, &e).await),
        };
        // Only `restart` defers to the unit's own `Restart=`, and only it needs to read it.
        let service = if policy.restart == RestartMode::Restart {
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
        if matches!(plan, Plan::Watch | Plan::Restart { .. })
            && let Err(e) = bus
                .await_reaped(
                    unit,
                    record.invocation_id.as_deref(),
                    Instant::now() + REAP_WAIT,
                )
                .await
        {
            return Ok(self.failure(progress, &e).await);
        }
        match plan {
            Plan::Report => Ok(Action::Reported),
            Plan::GiveUp { restarts } => Ok(give_up(progress, policy, restarts)),
            Plan::Watch => {
                let restart_sec = service.and_then(|s| s.restart_sec).unwrap_or_default();
                self.watch(&bus, unit, policy, record, progress, restart_sec)
                    .await
            }
            Plan::Restart { delay } => {
                self.restart(&bus, unit, policy, record, progress, delay)
                    .await
            }
        }
    }

    /// systemd's `Restart=` should bring the unit back (after `restart_sec`): wait for that. If
    /// systemd leaves it down after all (this death is not one its `Restart=` covers, or the
    /// start limit was hit), restart it ourselves. Called once systemd has handled the death.
    async fn watch(
        &self,
        bus: &Systemd,
        unit: &str,
        policy: &UnitPolicy,
        record: &ExitRecord,
        progress: &Progress,
        restart_sec: Duration,
    ) -> Result<Action, DiedAgain> {
        let until = Instant::now() + restart_sec + WATCH_MARGIN;
        match bus
            .settle(unit, record.invocation_id.as_deref(), until)
            .await
        {
            Ok(Settled::Active) => Ok(self.restarted_by_systemd(unit, policy, progress).await),
            Ok(Settled::Down { result, .. }) => {
                let recent = self.recent(unit, policy.crash_loop.window);
                progress.step(
                    "systemd_gave_up",
                    Some(format!("systemd left the unit down (Result={result})")),
                );
                match policy::plan(RestartMode::Expedite, policy.crash_loop, false, recent) {
                    Plan::Restart { delay } => {
                        self.restart(bus, unit, policy, record, progress, delay)
                            .await
                    }
                    Plan::GiveUp { restarts } => Ok(give_up(progress, policy, restarts)),
                    Plan::Report | Plan::Watch => Ok(Action::Reported),
                }
            }
            Ok(Settled::Pending { state }) => {
                progress.step(
                    "unit_inactive",
                    Some(format!(
                        "systemd did not restart the unit within {:?} (it is {state})",
                        restart_sec + WATCH_MARGIN
                    )),
                );
                Ok(Action::Watched)
            }
            Err(e) => Ok(self.failure(progress, &e).await),
        }
    }

    /// Restarts the unit after `delay`, waits for it to be active in a new run, and checks its
    /// health. A start refused for systemd's start limit is retried once after `reset-failed`.
    /// Called once systemd has handled the death (see [`Systemd::await_reaped`]).
    async fn restart(
        &self,
        bus: &Systemd,
        unit: &str,
        policy: &UnitPolicy,
        record: &ExitRecord,
        progress: &Progress,
        delay: Duration,
    ) -> Result<Action, DiedAgain> {
        let old = record.invocation_id.as_deref();
        if !delay.is_zero() {
            let recent = self.recent(unit, policy.crash_loop.window);
            progress.step(
                "backoff",
                Some(format!(
                    "waiting {delay:?} before restarting: {recent} restarts within {:?}",
                    policy.crash_loop.window
                )),
            );
            tokio::time::sleep(delay).await;
            // systemd's own Restart= may have been quicker.
            if let Ok(Settled::Active) = bus.settle(unit, old, Instant::now()).await {
                return Ok(self.restarted_by_systemd(unit, policy, progress).await);
            }
        }
        let until = Instant::now() + policy.health.as_ref().map_or(ACTIVE_WAIT, |h| h.deadline);
        let mut reset = false;
        loop {
            // The step is when we asked; systemd's answer (the job enqueued) follows a round
            // trip later.
            let asked = clock::monotonic_ns();
            if let Err(e) = bus.restart(unit).await {
                return Ok(self.failure(progress, &e).await);
            }
            self.restarted(unit);
            let ms = progress.timed_step_at(
                asked,
                "restart_requested",
                reset.then(|| "after clearing systemd's start limit (reset-failed)".to_owned()),
            );
            // Kept if the unit dies again before the recovery ends.
            progress.with(|i| {
                i.action = Action::Restarted;
                i.crash_to_restart_ms.get_or_insert(ms);
            });
            match bus.settle(unit, old, until).await {
                Ok(Settled::Active) => break,
                // Refused before any run began: systemd's start limit (or a condition or a
                // dependency). Clearing the failed state resets the limit; try once more.
                Ok(Settled::Down { result, new_run })
                    if (!new_run || result == "start-limit-hit") && !reset =>
                {
                    reset = true;
                    if let Err(e) = bus.reset_failed(unit).await {
                        return Ok(self.failure(progress, &e).await);
                    }
                }
                Ok(Settled::Down { result, new_run }) => {
                    let what = if new_run {
                        "the unit failed again as it started"
                    } else {
                        "systemd did not start the unit, even after reset-failed"
                    };
                    progress.step("restart_failed", Some(format!("{what} (Result={result})")));
                    return Ok(Action::Restarted);
                }
                Ok(Settled::Pending { state }) => {
                    progress.step(
                        "restart_failed",
                        Some(format!(
                            "the unit was not active by the deadline (it is {state})"
                        )),
                    );
                    return Ok(Action::Restarted);
                }
                Err(e) => return Ok(self.failure(progress, &e).await),
            }
        }
        let ms = progress.timed_step("unit_active", None);
        progress.with(|i| i.crash_to_active_ms = Some(ms));
        self.check_health(policy, progress).await;
        Ok(Action::Restarted)
    }

    /// systemd's own `Restart=` brought the unit back: count it, say so, check its health.
    async fn restarted_by_systemd(
        &self,
        unit: &str,
        policy: &UnitPolicy,
        progress: &Progress,
    ) -> Action {
        self.restarted(unit);
        let ms = progress.timed_step(
            "unit_active",
            Some("restarted by systemd (Restart=)".into()),
        );
        progress.with(|i| {
            i.action = Action::Watched;
            i.crash_to_restart_ms = Some(ms);
            i.crash_to_active_ms = Some(ms);
        });
        self.check_health(policy, progress).await;
        Action::Watched
    }

    /// Polls the unit's health check, if it has one, until it passes or its deadline.
    async fn check_health(&self, policy: &UnitPolicy, progress: &Progress) {
        let Some(health) = &policy.health else {
            return;
        };
        let until = Instant::now() + health.deadline;
        match health::wait_healthy(self.http.get_or_init(health::client), health, until).await {
            Verdict::Healthy { attempts } => {
                let ms = progress.timed_step(
                    "health_ok",
                    Some(format!(
                        "{} answered {} (attempt {attempts})",
                        health.url, health.expect
                    )),
                );
                progress.with(|i| i.crash_to_healthy_ms = Some(ms));
            }
            Verdict::Unhealthy { attempts, last } => {
                progress.step(
                    "health_failed",
                    Some(format!(
                        "{} not healthy within {:?} ({attempts} attempts; last: {last})",
                        health.url, health.deadline
                    )),
                );
            }
        }
    }

    /// A bus or systemd error: say it in the timeline and the log. The next failure connects
    /// afresh: the error may be the connection's (a bus restarted, a machine rebooted), and a
    /// new connection costs a millisecond.
    async fn failure(&self, progress: &Progress, error: &ActionError) -> Action {
        tracing::warn!("{error}");
        progress.step("restart_failed", Some(error.to_string()));
        self.drop_bus().await;
        Action::Failed
    }
}

fn give_up(progress: &Progress, policy: &UnitPolicy, restarts: usize) -> Action {
    progress.step(
        "gave_up",
        Some(format!(
            "{restarts} restarts within {:?} (crash_loop max_restarts = {}): not restarting it",
            policy.crash_loop.window, policy.crash_loop.max_restarts
        )),
    );
    Action::GaveUp
}

/// Everything about one death in a service: the journal's account and, for a unit failure
/// under a restarting policy, the recovery. `fast` says the death is known to be a unit's main
/// or control process (its parent is the manager), so the recovery need not wait for the
/// journal. Sends the incident when both are done; nothing when the death did not fail its unit.
pub async fn handle(
    recovery: Arc<Recovery>,
    unit: String,
    record: ExitRecord,
    journal: oneshot::Receiver<Journaled>,
    fast: bool,
    progress: Progress,
) {
    let acting = recovery
        .config()
        .policy(&unit)
        .filter(|p| p.restarts())
        .cloned();
    match acting {
        Some(policy) if fast => {
            let deaths = recovery.failed(&unit);
            let recover = recovery.recover(&unit, &policy, &record, &progress, deaths);
            let (journaled, ()) = tokio::join!(journal, recover);
            if let Ok(Journaled { incident, .. }) = journaled {
                progress.with(|i| i.journaled(incident));
            }
        }
        acting => {
            match journal.await {
                Ok(Journaled {
                    main_process: false,
                    ..
                }) => {
                    progress.discard();
                    return;
                }
                Ok(Journaled { incident, .. }) => {
                    progress.with(|i| i.journaled(incident));
                }
                // No journal thread: we cannot tell the main process, so every death counts.
                Err(_) => {}
            }
            if let Some(policy) = acting {
                let deaths = recovery.failed(&unit);
                recovery
                    .recover(&unit, &policy, &record, &progress, deaths)
                    .await;
            }
        }
    }
    progress.finish();
}
