//! Carrying out a plan: watch systemd's own restart, or restart the unit ourselves; then wait
//! for it to be active in a new run and check its health, writing each step into the incident.

use std::time::Duration;

use tokio::time::Instant;

use super::{
    ACTIVE_WAIT, DiedAgain, Recovery, WATCH_MARGIN,
    health::{self, Verdict},
    policy::{self, Plan},
    settle::Settled,
    systemd::Systemd,
};
use crate::{
    config::{RestartMode, UnitPolicy},
    incident::{Action, Progress},
    kernel::clock,
};

impl Recovery {
    /// systemd's `Restart=` should bring the unit back (after `restart_sec`): wait for that. If
    /// systemd leaves it down after all (this death is not one its `Restart=` covers, or the
    /// start limit was hit), restart it ourselves. Called once systemd has handled the death.
    pub(super) async fn watch(
        &self,
        bus: &Systemd,
        unit: &str,
        policy: &UnitPolicy,
        old: Option<&str>,
        progress: &Progress,
        restart_sec: Duration,
    ) -> Result<Action, DiedAgain> {
        let until = Instant::now() + restart_sec + WATCH_MARGIN;
        match bus.settle(unit, old, until).await {
            Ok(Settled::Active) => Ok(self.restarted_by_systemd(unit, policy, progress).await),
            Ok(Settled::Down { result, .. }) => {
                let recent = self.recent(unit, policy.crash_loop.window);
                progress.step(
                    "systemd_gave_up",
                    Some(format!("systemd left the unit down (Result={result})")),
                );
                match policy::plan(RestartMode::Expedite, policy.crash_loop, false, recent) {
                    Plan::Restart { delay } => {
                        self.restart(bus, unit, policy, old, progress, delay).await
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
    pub(super) async fn restart(
        &self,
        bus: &Systemd,
        unit: &str,
        policy: &UnitPolicy,
        old: Option<&str>,
        progress: &Progress,
        delay: Duration,
    ) -> Result<Action, DiedAgain> {
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
        self.check_health(unit, policy, progress).await;
        Ok(Action::Restarted)
    }

    /// systemd's own `Restart=` brought the unit back: count it, say so, check its health.
    pub(super) async fn restarted_by_systemd(
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
        self.check_health(unit, policy, progress).await;
        Action::Watched
    }

    /// Polls the unit's health check, if it has one, until it passes or its deadline.
    async fn check_health(&self, unit: &str, policy: &UnitPolicy, progress: &Progress) {
        let Some(health) = &policy.health else {
            return;
        };
        let until = Instant::now() + health.deadline;
        let verdict = health::wait_healthy(self.dialer(), health, until).await;
        self.note_health(unit, matches!(verdict, Verdict::Healthy { .. }));
        match verdict {
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
}

pub(super) fn give_up(progress: &Progress, policy: &UnitPolicy, restarts: usize) -> Action {
    progress.step(
        "gave_up",
        Some(format!(
            "{restarts} restarts within {:?} (crash_loop max_restarts = {}): not restarting it",
            policy.crash_loop.window, policy.crash_loop.max_restarts
        )),
    );
    Action::GaveUp
}
