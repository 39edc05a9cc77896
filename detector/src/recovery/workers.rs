//! A worker's abnormal death is a unit incident: its supervisor (uvicorn, gunicorn) lives on and
//! respawns it, so systemd sees nothing, but the requests it held failed.
//!
//! Deaths of one run's workers close together are ONE incident: the first opens it, the others
//! are counted in it. Then the incident follows what the supervisor does:
//! - the respawned worker serves again (the health check passes; without one, no worker dies for
//!   [`QUIET`]): it ends there, recovered by the supervisor (`watched`), never restarted;
//! - workers keep dying ([`LOOP_DEATHS`] in one incident), or the health check does not come
//!   back by its deadline: the service is down although systemd says active. The unit's policy
//!   applies as to any failure (restart, crash-loop limits), and the run's later worker deaths
//!   are no longer incidents (a loop that is given up makes a bounded number of incidents).
//!
//! A main process that dies while a worker incident is open takes it over (see `dispatch`): the
//! gunicorn arbiter's "Worker failed to boot" follows its worker's death.

use std::{
    sync::Arc,
    time::{Duration, Instant as StdInstant},
};

use tokio::{
    sync::{oneshot, watch},
    task::AbortHandle,
    time::Instant,
};

use super::{Failure, Kind, Recovery, health};
use crate::{
    config::UnitPolicy,
    incident::{Action, Progress},
    journal::Account,
};

/// Deaths in one worker incident that make it a respawn loop.
pub(crate) const LOOP_DEATHS: u32 = 3;
/// Without a health check, a worker incident ends recovered once no worker died for this long.
const QUIET: Duration = Duration::from_secs(2);
/// Without a health check, how long a worker incident may stay open before its policy applies.
const DEADLINE: Duration = Duration::from_secs(30);

/// An open worker incident, as the dispatcher and the recovery see it.
#[derive(Clone)]
pub(crate) struct Group {
    /// The run whose workers died.
    pub invocation: Option<String>,
    pub progress: Arc<Progress>,
    /// Deaths so far; the incident's task wakes on each.
    pub deaths: Arc<watch::Sender<u32>>,
    /// The incident's task, stopped when a main process's death takes the incident over.
    pub task: Option<AbortHandle>,
}

impl Group {
    pub(crate) fn is_open(&self) -> bool {
        self.progress.is_open()
    }
}

/// How a worker incident turned out before any action.
enum Outcome {
    /// The supervisor's respawned workers serve: `detail` says how we know.
    Healed { detail: String, healthy: bool },
    /// Workers keep dying.
    Looping { deaths: u32, over: Duration },
    /// The health check did not pass by its deadline; `last` is what it got.
    Down { last: String },
}

/// Watches the incident's deaths and the unit's health until one of [`Outcome`].
async fn observe(
    recovery: &Recovery,
    policy: Option<&UnitPolicy>,
    deaths: &mut watch::Receiver<u32>,
    opened: StdInstant,
) -> Outcome {
    let health = policy.and_then(|p| p.health.as_ref());
    let until = Instant::now() + health.map_or(DEADLINE, |h| h.deadline);
    let mut last_death = Instant::now();
    let mut last_check = String::from("no check yet");
    let mut seen = *deaths.borrow_and_update();
    loop {
        if seen >= LOOP_DEATHS {
            return Outcome::Looping {
                deaths: seen,
                over: opened.elapsed(),
            };
        }
        let now = Instant::now();
        if now >= until {
            return Outcome::Down { last: last_check };
        }
        let wait = match health {
            Some(h) => {
                let timeout = h.timeout.min(until - now);
                match health::check(recovery.dialer(), h, timeout).await {
                    Ok(()) => {
                        return Outcome::Healed {
                            detail: format!("{} answered {}", h.url, h.expect),
                            healthy: true,
                        };
                    }
                    Err(got) => last_check = got,
                }
                h.interval
            }
            None if now.duration_since(last_death) >= QUIET => {
                return Outcome::Healed {
                    detail: format!("no worker died for {QUIET:?}"),
                    healthy: false,
                };
            }
            None => QUIET.saturating_sub(now.duration_since(last_death)),
        };
        tokio::select! {
            changed = deaths.changed() => {
                if changed.is_err() {
                    // The dispatcher is gone (shutdown): nothing more will be counted.
                    return Outcome::Down { last: last_check };
                }
                seen = *deaths.borrow_and_update();
                last_death = Instant::now();
            }
            () = tokio::time::sleep(wait.min(until.saturating_duration_since(Instant::now()))) => {}
        }
    }
}

/// The incident opened by a worker's death in `unit`'s run `invocation`, from the journal's
/// account to its end. `failures` is the unit's failure counter, taken when it opened.
pub(crate) async fn run(
    recovery: Arc<Recovery>,
    unit: String,
    group: Group,
    journal: oneshot::Receiver<Account>,
    failures: watch::Receiver<u64>,
) {
    let Group {
        invocation,
        progress,
        deaths,
        task: _,
    } = group;
    let opened = StdInstant::now();
    let mut counted = deaths.subscribe();
    if let Ok(account) = journal.await {
        progress.with(|i| i.journaled(account));
    }
    progress.opened();
    let policy = recovery.config().policy(&unit).cloned();
    let (step, what) = match observe(&recovery, policy.as_ref(), &mut counted, opened).await {
        Outcome::Healed { detail, healthy } => {
            let ms = progress.timed_step(
                if healthy {
                    "health_ok"
                } else {
                    "workers_stable"
                },
                Some(format!("the supervisor respawned its workers: {detail}")),
            );
            progress.with(|i| {
                i.action = Action::Watched;
                if healthy {
                    i.crash_to_healthy_ms = Some(ms);
                }
            });
            progress.finish();
            return;
        }
        Outcome::Looping { deaths, over } => {
            let what = progress
                .with(|i| {
                    let detail = format!(
                        "{deaths} workers died within {:.1} s and the supervisor keeps respawning \
                         them, while systemd sees the unit active: {}",
                        over.as_secs_f64(),
                        i.detail
                    );
                    i.detail.clone_from(&detail);
                    detail
                })
                .unwrap_or_default();
            ("respawn_loop", what)
        }
        Outcome::Down { last } => (
            "health_failed",
            format!(
                "the unit did not answer its health check after its workers died (last: {last})"
            ),
        ),
    };
    progress.step(step, Some(what));
    act(
        &recovery,
        &unit,
        policy.as_ref(),
        invocation.as_deref(),
        &progress,
        failures,
    )
    .await;
    progress.finish();
}

/// The service is down while systemd says active: the policy applies. The run's later worker
/// deaths are no longer incidents: a restart stops that run, and a loop reported or given up
/// would otherwise open one incident after another.
async fn act(
    recovery: &Recovery,
    unit: &str,
    policy: Option<&UnitPolicy>,
    invocation: Option<&str>,
    progress: &Arc<Progress>,
    failures: watch::Receiver<u64>,
) {
    recovery.quiet(unit, invocation);
    let Some(policy) = policy.filter(|p| p.restarts()) else {
        return;
    };
    // Deaths of the run we stop are this incident's.
    recovery.own_run(unit, invocation, progress);
    let failure = Failure {
        old: invocation,
        kind: Kind::Running,
    };
    recovery
        .recover(unit, policy, failure, progress, failures)
        .await;
}
