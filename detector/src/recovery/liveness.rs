//! Liveness: a unit that runs but does not answer is a failure no process death shows. A
//! deadlock, or blocking code in an async endpoint, stalls every worker's event loop; uvicorn pings
//! its workers over a pipe answered by a thread, so it sees them alive and kills none.
//!
//! For each listed unit with `liveness = { every, failures }`, its health check is polled every
//! `every` while the unit is `active/running` and no incident of it is open (not while it starts
//! or is being recovered). `failures` failures in a row open an incident with cause `unhealthy`,
//! whose detail is what the checks got; then the unit's policy applies. A hung service would hold
//! a plain restart for `TimeoutStopSec=` (its workers ignore SIGTERM while their loop is stuck),
//! so the restart is preceded by SIGKILL to the unit's processes.

use std::{sync::Arc, time::Duration};

use tokio::task::JoinSet;

use super::{Failure, Kind, Recovery, health};
use crate::{
    config::UnitPolicy,
    incident::{Incident, Outbox, Progress},
    kernel::clock::{self, Clock},
};

/// Starts one liveness task per unit that asks for one (templates are skipped: their instances
/// are not known in advance).
pub(crate) fn spawn(recovery: &Arc<Recovery>, incidents: &Outbox) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    // Checks that cannot reach the machine's network say nothing of its units: killing them for
    // it would be detector's failure passed on.
    if let Some(error) = recovery.dialer().unreachable() {
        if recovery.config().units.iter().any(|p| p.liveness.is_some()) {
            tracing::error!("{error}; liveness checks are off");
        }
        return tasks;
    }
    for policy in &recovery.config().units {
        if policy.liveness.is_some() && policy.health.is_some() && !policy.name.contains("@.") {
            tasks.spawn(watch(
                Arc::clone(recovery),
                policy.clone(),
                incidents.clone(),
            ));
        }
    }
    tasks
}

/// Polls one unit for as long as the daemon runs.
async fn watch(recovery: Arc<Recovery>, policy: UnitPolicy, incidents: Outbox) {
    let (Some(liveness), Some(check)) = (policy.liveness, policy.health.clone()) else {
        return;
    };
    let unit = policy.name.as_str();
    let mut failed: u32 = 0;
    let mut tick = tokio::time::interval(liveness.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if recovery.busy(unit) {
            failed = 0;
            continue;
        }
        let running = match recovery.bus().await {
            Ok(bus) => match bus.unit(unit).await {
                Ok(state) if state.active_state == "active" && state.sub_state == "running" => {
                    Some(state.invocation_id)
                }
                Ok(_) => None,
                Err(e) => {
                    tracing::debug!(unit, error = %e, "liveness: cannot read the unit's state");
                    None
                }
            },
            Err(e) => {
                tracing::debug!(unit, error = %e, "liveness: no bus");
                None
            }
        };
        let Some(invocation) = running else {
            failed = 0;
            continue;
        };
        let checked = health::check(recovery.dialer(), &check, check.timeout).await;
        recovery.note_health(unit, checked.is_ok());
        let Err(last) = checked else {
            failed = 0;
            continue;
        };
        failed += 1;
        // A recovery that began while we checked owns the unit now.
        if failed < liveness.failures || recovery.busy(unit) {
            continue;
        }
        failed = 0;
        unhealthy(
            &recovery,
            &policy,
            invocation,
            &incidents,
            &check.url,
            liveness.every,
            &last,
        )
        .await;
    }
}

/// The incident of a unit that stopped answering, and its recovery.
async fn unhealthy(
    recovery: &Recovery,
    policy: &UnitPolicy,
    invocation: Option<String>,
    incidents: &Outbox,
    url: &url::Url,
    every: Duration,
    last: &str,
) {
    let unit = policy.name.as_str();
    let failures = policy.liveness.map_or(0, |l| l.failures);
    let now = clock::monotonic_ns();
    let detail = format!(
        "{failures} health checks in a row failed ({url}, every {every:?}); last: {last}. The \
         unit is active but does not answer: its workers may be stuck (a deadlock, or blocking \
         code in an async endpoint)"
    );
    let incident = Incident::without_death(
        unit,
        invocation.clone(),
        ("unhealthy".to_owned(), detail),
        now,
        Clock::now().rfc3339(now),
    );
    let progress = Arc::new(Progress::new(incident, incidents.clone()));
    // The cause is what the checks got: known from the start.
    progress.opened();
    // The deaths of the run we kill are this incident's, not new ones.
    recovery.own_run(unit, invocation.as_deref(), &progress);
    if policy.restarts() {
        let failure = Failure {
            old: invocation.as_deref(),
            kind: Kind::Hung,
        };
        let deaths = recovery.failed(unit);
        recovery
            .recover(unit, policy, failure, &progress, deaths)
            .await;
    }
    progress.finish();
}
