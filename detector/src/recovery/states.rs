//! systemd's own view as a second source of truth. Some failures kill no process of ours, or
//! none at all: a missing `EnvironmentFile=` fails the start before systemd forks (Result=
//! `resources`), and a refused start (`start-limit-hit`) runs nothing. systemd says so on the
//! bus: the unit's `ActiveState` becomes `failed`, or it passes through `auto-restart`.
//!
//! This task follows every unit's PropertiesChanged (systemd sends them once a client called
//! `Manager.Subscribe`, which [`Systemd::connect`] does) and, for a configured unit or one a
//! death was seen in, opens an incident for a failed run that no death's incident covers. A
//! death and the state change that follows it are one incident: the death's incident owns the
//! run ([`Recovery::had_incident`]) before systemd's signal can arrive, since systemd only
//! learns of a death after the kernel did.
//!
//! Interfaces: <https://www.freedesktop.org/software/systemd/man/latest/org.freedesktop.systemd1.html>.
//!
//! About 440 lines with its tests (the last 13): following the states (and keeping them for the
//! recoveries, `seen.rs`), telling a failed run from a stop, and bounding the tasks that look at
//! failed runs are one watcher.

use std::{collections::HashMap, num::NonZeroUsize, path::Path, sync::Arc, time::Duration};

use futures_util::StreamExt as _;
use tokio::{
    sync::{Semaphore, oneshot},
    task::JoinSet,
};
use zbus::OwnedVariant as OwnedValue;

use super::{
    Failure, Kind, Recovery,
    systemd::{Systemd, hex},
};
use crate::{
    incident::{Incident, Outbox, Progress},
    journal::{self, Account},
    kernel::clock::{self, Clock},
};

/// After a connection to the bus is lost, how long before trying again.
const RECONNECT: Duration = Duration::from_secs(5);
/// How long a state change waits for a death's incident that may still be on its way.
const SETTLE: Duration = Duration::from_millis(200);
/// Most units whose last state (and last handled failure) the watcher keeps: one per unit not at
/// rest, which a host has far fewer of.
const MAX_STATES: usize = 4096;

/// Starts the watcher in `tasks` when the configuration lists units (the units it watches are
/// those, and any a death was seen in).
///
/// Returns what says the watcher follows systemd's signals (None without a watcher): the daemon
/// says it is ready only then, so that a unit failing right after is not missed.
pub(crate) fn spawn(
    tasks: &mut JoinSet<()>,
    recovery: &Arc<Recovery>,
    incidents: &Outbox,
    journal: &journal::Readers,
) -> Option<oneshot::Receiver<()>> {
    if recovery.config().units.is_empty() {
        return None;
    }
    let (ready, following) = oneshot::channel();
    tasks.spawn(watch(
        Arc::clone(recovery),
        incidents.clone(),
        journal.clone(),
        ready,
    ));
    Some(following)
}

/// `_2e` → `.` and the like: the unit name in a systemd unit object path's last component.
fn unescape(component: &str) -> String {
    let bytes = component.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'_', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn string(value: Option<&OwnedValue>) -> Option<String> {
    value
        .and_then(|v| <&str>::try_from(v).ok())
        .map(str::to_owned)
}

/// Follows the bus for as long as the daemon runs, connecting again when it goes.
async fn watch(
    recovery: Arc<Recovery>,
    incidents: Outbox,
    journal: journal::Readers,
    ready: oneshot::Sender<()>,
) {
    let mut watcher = Watcher {
        recovery,
        incidents,
        journal,
        handled: HashMap::new(),
        ready: Some(ready),
        runs: Arc::new(Semaphore::new(MAX_RUNS)),
    };
    // What the watcher said of the units is stale once it stops following them: a lost
    // connection, or the task aborted (a reload starts another).
    let _forget = Forget(Arc::clone(&watcher.recovery));
    let mut last_error = String::new();
    loop {
        let followed = watcher.follow().await;
        watcher.recovery.seen().forget();
        if let Err(e) = followed
            && e != last_error
        {
            tracing::warn!("unit states: {e}; trying again every {RECONNECT:?}");
            last_error = e;
        }
        tokio::time::sleep(RECONNECT).await;
    }
}

/// Forgets the units' signalled states when dropped.
struct Forget(Arc<Recovery>);

impl Drop for Forget {
    fn drop(&mut self) {
        self.0.seen().forget();
    }
}

/// The watcher's state across reconnections.
struct Watcher {
    recovery: Arc<Recovery>,
    incidents: Outbox,
    journal: journal::Readers,
    /// The last failed run handled per unit: `failed` and then `auto-restart` of one run are
    /// one failure.
    handled: HashMap<String, Option<String>>,
    /// Fired once, when the signals are first followed.
    ready: Option<oneshot::Sender<()>>,
    /// A slot per failed run being looked at, each in a task; at most [`MAX_RUNS`].
    runs: Arc<Semaphore>,
}

/// Most failed runs looked at at once (each waits [`SETTLE`], then usually finds a death's
/// incident covers it). Past it, a failed run opens no incident of its own: counted.
const MAX_RUNS: usize = 256;

impl Watcher {
    async fn follow(&mut self) -> Result<(), String> {
        let recovery = Arc::clone(&self.recovery);
        // The last (ActiveState, SubState) each unit was seen in: systemd sends every property of
        // the interface with each change (a restart job appearing repeats `auto-restart`), so only a
        // change of state is acted on.
        let mut states = States::new();
        let bus = Systemd::connect(recovery.root())
            .await
            .map_err(|e| e.to_string())?;
        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .interface("org.freedesktop.DBus.Properties")
            .member("PropertiesChanged")
            .path_namespace("/org/freedesktop/systemd1/unit")
            .build()
            .map_err(|e| e.to_string())?;
        // The stream is polled without pause (a failed run is handled in a task of its own), and
        // method calls go over the recovery's own connection: a full stream queue would block
        // this connection's reader, and a reply waited for here would never come.
        let mut stream =
            zbus::MessageStream::for_match_rule(rule, &bus.connection, NonZeroUsize::new(4096))
                .await
                .map_err(|e| format!("cannot follow systemd's unit signals: {e}"))?;
        let reconnected = self.ready.is_none();
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(());
        }
        self.ask_units(reconnected).await;
        tracing::debug!("unit states: following systemd's signals");
        while let Some(message) = stream.next().await {
            let Ok(message) = message else { continue };
            let Some(unit) = message
                .header()
                .path()
                .and_then(|p| p.as_str().rsplit('/').next().map(unescape))
            else {
                continue;
            };
            if !unit.ends_with(".service")
                || (recovery.config().policy(&unit).is_none() && !recovery.knows(&unit))
            {
                continue;
            }
            let Ok((interface, mut changed, _)) =
                message
                    .body()
                    .deserialize::<(String, HashMap<String, OwnedValue>, Vec<String>)>()
            else {
                continue;
            };
            if interface != "org.freedesktop.systemd1.Unit" {
                continue;
            }
            let active = string(changed.get("ActiveState"));
            let sub = string(changed.get("SubState"));
            // The run the signal speaks of: the one in the signal itself, not whatever runs by
            // the time we could ask.
            let signalled = changed
                .remove("InvocationID")
                .and_then(|v| Vec::<u8>::try_from(v).ok())
                .map(|bytes| hex(&bytes));
            recovery.seen().publish(
                &unit,
                active.as_deref(),
                signalled.clone().flatten().as_deref(),
            );
            let state = (active.clone(), sub.clone());
            tracing::debug!(unit, ?active, ?sub, "unit states: a change");
            let new = note(&mut states, &unit, state);
            self.recovery.note_states(states.len(), self.handled.len());
            if !new {
                continue;
            }
            if active.as_deref() != Some("failed") && sub.as_deref() != Some("auto-restart") {
                continue;
            }
            let invocation = match signalled {
                Some(id) => id,
                None => match self
                    .recovery
                    .bus()
                    .await
                    .map_err(|e| e.to_string())?
                    .unit(&unit)
                    .await
                {
                    Ok(state) => state.invocation_id,
                    Err(e) => {
                        tracing::debug!(unit, error = %e, "unit states: cannot read the failed run");
                        continue;
                    }
                },
            };
            self.failed_run(unit, invocation);
        }
        Err("systemd's bus closed the connection".to_owned())
    }

    /// Each configured unit's state, asked once the signals are followed: a recovery learns of
    /// the next change from the signals alone. And after a reconnection, a configured unit that
    /// failed while the bus was gone is found this way. (Not at the first start: a unit failed
    /// before the daemon ran was reported, if at all, by the one before it.)
    async fn ask_units(&mut self, reconnected: bool) {
        let recovery = Arc::clone(&self.recovery);
        let Ok(asked) = recovery.bus().await else {
            return;
        };
        for policy in &recovery.config().units {
            if policy.name.contains("@.") {
                continue;
            }
            let Ok(state) = asked.unit(&policy.name).await else {
                continue;
            };
            recovery.seen().publish(
                &policy.name,
                Some(&state.active_state),
                state.invocation_id.as_deref(),
            );
            if reconnected && state.active_state == "failed" {
                self.failed_run(policy.name.clone(), state.invocation_id);
            }
        }
    }

    /// Opens an incident for `unit`'s failed run `invocation` (in a task of its own, so that the
    /// signals are never left unread), unless one of its deaths did; at most [`MAX_RUNS`] at
    /// once, a panic logged.
    fn failed_run(&mut self, unit: String, invocation: Option<String>) {
        if self.handled.get(&unit) == Some(&invocation) {
            return;
        }
        if self.handled.len() >= MAX_STATES && !self.handled.contains_key(&unit) {
            // Past the bound, the oldest memory is no better than any: start over. A failed run
            // seen again after that is still covered by `Recovery::had_incident`.
            self.handled.clear();
        }
        self.handled.insert(unit.clone(), invocation.clone());
        let Ok(slot) = Arc::clone(&self.runs).try_acquire_owned() else {
            if !self.recovery.had_incident(&unit, invocation.as_deref()) {
                self.recovery.coalesce(&unit, None, "failed runs at once");
            }
            return;
        };
        let recovery = Arc::clone(&self.recovery);
        let incidents = self.incidents.clone();
        let journal = self.journal.clone();
        // Not in the watchers' set: a reload starts the watcher again, and the runs it was looking
        // at go on. How each ends is still reported.
        let task = tokio::spawn(async move {
            let _slot = slot;
            tokio::time::sleep(SETTLE).await;
            if recovery.had_incident(&unit, invocation.as_deref()) {
                return;
            }
            let (answer, account) = oneshot::channel();
            journal.ask(journal::Request::Run {
                unit: unit.clone(),
                invocation: invocation.clone(),
                answer,
            });
            let progress = Arc::new(Progress::new(opened(&unit, invocation.clone()), incidents));
            recovery.own_run(&unit, invocation.as_deref(), &progress);
            let env_files = match recovery.bus().await {
                Ok(bus) => bus.environment_files(&unit).await.unwrap_or_default(),
                Err(_) => Vec::new(),
            };
            recover(&recovery, &unit, invocation, &progress, account, &env_files).await;
        });
        tokio::spawn(async move { super::dispatch::report(task.await, "a failed run's task") });
    }
}

/// A unit's last (ActiveState, SubState).
type States = HashMap<String, (Option<String>, Option<String>)>;

/// Notes `unit`'s `state`; true when it is a change worth looking at.
fn note(states: &mut States, unit: &str, state: (Option<String>, Option<String>)) -> bool {
    // A unit at rest needs no memory of its state (inactive is never acted on): a template's
    // instances, started and gone by the thousand, leave nothing behind.
    if state.0.as_deref() == Some("inactive") {
        states.remove(unit);
        return false;
    }
    if states.len() >= MAX_STATES && !states.contains_key(unit) {
        // Failed units systemd collected never go inactive here. Forgetting them all costs at
        // most one repeated signal acted on again, which `handled` dedups.
        states.clear();
    }
    if states.get(unit) == Some(&state) {
        return false;
    }
    states.insert(unit.to_owned(), state);
    true
}

fn opened(unit: &str, invocation: Option<String>) -> Incident {
    let now = clock::monotonic_ns();
    Incident::without_death(
        unit,
        invocation,
        (
            "failed".to_owned(),
            "systemd reports the unit failed; no process of it died".to_owned(),
        ),
        now,
        Clock::now().rfc3339(now),
    )
}

/// Names the environment files (`EnvironmentFile=` without `-`) that are not there under the
/// watched root.
fn missing_files(root: &Path, files: &[(String, bool)]) -> Vec<String> {
    files
        .iter()
        .filter(|(_, optional)| !optional)
        .filter(|(path, _)| !crate::unit::root::exists(root, path))
        .map(|(path, _)| path.clone())
        .collect()
}

/// The journal's account of the failed run, then the unit's policy.
async fn recover(
    recovery: &Recovery,
    unit: &str,
    invocation: Option<String>,
    progress: &Arc<Progress>,
    account: oneshot::Receiver<Account>,
    env_files: &[(String, bool)],
) {
    if let Ok(mut account) = account.await {
        if account.cause.0 == "missing_env" {
            let missing = missing_files(recovery.root(), env_files);
            if !missing.is_empty() {
                account.cause.1 = format!(
                    "{}: EnvironmentFile={} is missing",
                    account.cause.1,
                    missing.join(", ")
                );
            }
        }
        progress.with(|i| {
            i.journaled(account);
            i.role = "unit";
        });
    }
    progress.opened();
    if let Some(policy) = recovery
        .config()
        .policy(unit)
        .filter(|p| p.restarts())
        .cloned()
    {
        let failure = Failure {
            old: invocation.as_deref(),
            kind: Kind::Stopped,
        };
        let deaths = recovery.failed(unit);
        recovery
            .recover(unit, &policy, failure, progress, deaths)
            .await;
    }
    progress.finish();
}

#[cfg(test)]
mod tests {
    #[test]
    fn unit_paths_unescape() {
        for (component, unit) in [
            ("fastapi_2dapp_2eservice", "fastapi-app.service"),
            ("app_401_2eservice", "app@1.service"),
            ("plain", "plain"),
            ("trailing_2", "trailing_2"),
        ] {
            assert_eq!(super::unescape(component), unit);
        }
    }
}
