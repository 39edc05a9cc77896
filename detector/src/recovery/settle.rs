//! Waiting on a unit: until systemd has handled a death, or until the unit is active in a new
//! run or down for good. Woken by the unit's PropertiesChanged signals (after
//! `Manager.Subscribe`), with a re-read on a timer in case a signal is missed; for a death, the
//! state watcher's standing subscription (`seen.rs`) first.

use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::{sync::watch, time::Instant};
use zbus::{OwnedObjectPath, proxy::CacheProperties};

use super::{
    Recovery,
    seen::UnitSeen,
    systemd::{ActionError, ServiceProxy, Systemd, UnitProxy, hex, unit_error},
};

/// While waiting on a unit, its state is read again at least this often, signal or not.
const REREAD: Duration = Duration::from_millis(250);
/// As [`REREAD`], while waiting for systemd to reap a main process, which takes a millisecond.
const REAP_REREAD: Duration = Duration::from_millis(5);

/// How long a unit may take to stop the rest of a run whose main process died.
const STOP_WAIT: Duration = Duration::from_secs(30);

/// The `ActiveState` a unit's PropertiesChanged signal carries; None for a signal that says
/// nothing of it (systemd sends the service interface's properties, main PID and exit status,
/// alongside the unit's).
fn signalled_state(signal: &zbus::fdo::PropertiesChanged) -> Option<String> {
    let args = signal.args().ok()?;
    if args.interface_name().as_str() != "org.freedesktop.systemd1.Unit" {
        return None;
    }
    let state = args.changed_properties().get("ActiveState")?;
    <&str>::try_from(state).ok().map(str::to_owned)
}

/// Waits for the unit's next PropertiesChanged signal, but no later than `next_read` (the state
/// is then read again in case a signal was missed) and never past `until`. None once `until` has
/// passed; otherwise the signal, if one came.
async fn next_change(
    changes: &mut zbus::fdo::PropertiesChangedStream,
    next_read: Instant,
    until: Instant,
) -> Option<Option<zbus::fdo::PropertiesChanged>> {
    let next_read = next_read.min(until);
    let woke = tokio::time::timeout_at(next_read, changes.next()).await;
    if Instant::now() >= until {
        return None;
    }
    match woke {
        Ok(Some(signal)) => Some(Some(signal)),
        // The signal stream ended (the bus is going away): read on the timer alone.
        Ok(None) => {
            tokio::time::sleep_until(next_read).await;
            Some(None)
        }
        Err(_) => Some(None),
    }
}

/// As [`Systemd::await_reaped`], told by the state watcher's standing subscription (`seen`):
/// true once systemd has handled the death (or `until` passed while the unit stayed active);
/// false when this cannot tell, and the caller asks the bus: the watcher lost its connection,
/// or no signal came for [`REREAD`] (one may have been missed).
async fn reaped_as_seen(
    mut seen: watch::Receiver<UnitSeen>,
    old: Option<&str>,
    until: Instant,
) -> bool {
    let stop_until = Instant::now() + STOP_WAIT;
    loop {
        let (deadline, run) = {
            let now = seen.borrow_and_update();
            let deadline = match now.active.as_str() {
                "active" => until,
                "deactivating" => stop_until,
                _ => return true,
            };
            (deadline, now.invocation.clone())
        };
        // Active in another run: systemd has restarted it already. (A run no signal named is
        // not taken for another.)
        if old.is_some_and(|old| run.is_some_and(|run| run != old)) {
            return true;
        }
        let quiet = (Instant::now() + REREAD).min(deadline);
        match tokio::time::timeout_at(quiet, seen.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return false,
            Err(_) => return Instant::now() >= deadline,
        }
    }
}

impl Recovery {
    /// Waits until systemd has handled the death of `unit`'s run `old` (see
    /// [`Systemd::await_reaped`]): told by the state watcher's standing subscription when it
    /// follows the unit, else by asking the bus.
    pub(super) async fn await_reaped(
        &self,
        bus: &Systemd,
        unit: &str,
        old: Option<&str>,
        until: Instant,
    ) -> Result<(), ActionError> {
        if let Some(seen) = self.seen.follow(unit)
            && reaped_as_seen(seen, old, until).await
        {
            return Ok(());
        }
        bus.await_reaped(unit, old, until).await
    }
}

/// Where a unit settled after a death or a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Active in a new run.
    Active,
    /// Failed or inactive with no job pending: nothing will start it. `result` is the service's
    /// `Result=` (`exit-code`, `start-limit-hit`, ...); `new_run` says whether a run after the
    /// one we knew began at all. A start refused by systemd's start limit begins none, and
    /// leaves the earlier failure's `Result=` in place ("Start request repeated too quickly").
    Down { result: String, new_run: bool },
    /// Still neither when the time was up; `state` is `active/sub` at the end.
    Pending { state: String },
}

impl Systemd {
    /// Waits until systemd has handled the death of a main or control process of `unit`'s
    /// run `old`: the unit is neither active nor still stopping the rest of that run
    /// (`deactivating`: a supervisor's workers, killed by systemd's stop), or is active in
    /// another run; or `until` while it stays active, [`STOP_WAIT`] while it is stopping. A
    /// restart requested before that races systemd's own handling of the death: on systemd 252
    /// such a restart was seen to wait out the unit's `RestartSec=` after all, while one requested
    /// once the unit is in `auto-restart` replaces the wait (the job stops the unit,
    /// `auto-restart -> dead`, then starts it); and one requested while the old run's workers are
    /// still being stopped races that stop. (Not `MainPID`: systemd gives it in its own pid
    /// namespace, which is not ours when it runs in a container.)
    pub async fn await_reaped(
        &self,
        unit: &str,
        old: Option<&str>,
        until: Instant,
    ) -> Result<(), ActionError> {
        let err = |what| unit_error(unit, what);
        let path = self.path(unit).await?;
        let proxy = self.proxy::<UnitProxy<'static>>(unit, path.clone()).await?;
        // The subscription and the first reads go out together: one round trip where waiting for
        // each in turn took three (0.5 to 5 ms each while systemd and the bus are busy with the
        // death). `join!` polls the subscription first, which writes its AddMatch before the
        // read is written, and dbus-daemon handles one connection's messages in order: the match
        // is in place before systemd answers the read. Were a change missed anyway (the AddMatch
        // held back behind a lock), the loop reads again within REAP_REREAD.
        let (changes, mut state, mut run) = tokio::join!(
            self.changes(unit, &path),
            proxy.active_state(),
            proxy.invocation_id()
        );
        let mut changes = changes?;
        let stop_until = Instant::now() + STOP_WAIT;
        loop {
            let deadline = match state.map_err(err("read the state of"))?.as_str() {
                "active" => until,
                "deactivating" => stop_until,
                _ => return Ok(()),
            };
            let now = run.ok().as_deref().and_then(hex);
            if old.is_some_and(|old| now.as_deref() != Some(old)) {
                return Ok(());
            }
            let next_read = Instant::now() + REAP_REREAD;
            loop {
                match next_change(&mut changes, next_read, deadline).await {
                    Some(Some(signal)) => match signalled_state(&signal).as_deref() {
                        // The service's properties, sent just before the unit's: no word on
                        // the state. A read now would wait behind systemd's handling of the
                        // death, and the unit's own signal would wait behind the read.
                        None => {}
                        Some("active" | "deactivating") => break,
                        // The signal carries the new state: no need to ask for it.
                        Some(_) => return Ok(()),
                    },
                    Some(None) => break,
                    None => return Ok(()),
                }
            }
            // Both again, in one round trip.
            (state, run) = tokio::join!(proxy.active_state(), proxy.invocation_id());
        }
    }

    /// The unit's PropertiesChanged signals.
    async fn changes(
        &self,
        unit: &str,
        path: &OwnedObjectPath,
    ) -> Result<zbus::fdo::PropertiesChangedStream, ActionError> {
        let err = |what| unit_error(unit, what);
        let properties = zbus::fdo::PropertiesProxy::builder(&self.connection)
            .destination("org.freedesktop.systemd1")
            .path(path.clone())
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(err("address"))?;
        properties
            .receive_properties_changed()
            .await
            .map_err(err("watch"))
    }

    /// Waits until `unit` is active in a run other than `old` (any run when `old` is unknown:
    /// call [`Systemd::await_reaped`] first), or is down with nothing pending, or `until`
    /// passes. Woken by the unit's
    /// PropertiesChanged signals; reads the state again at least every [`REREAD`] in case a
    /// signal is missed.
    pub async fn settle(
        &self,
        unit: &str,
        old: Option<&str>,
        until: Instant,
    ) -> Result<Settled, ActionError> {
        let err = |what| unit_error(unit, what);
        let path = self.path(unit).await?;
        // Subscribed before the first read: a change in between still wakes us.
        let mut changes = self.changes(unit, &path).await?;
        let proxy = self.proxy::<UnitProxy<'static>>(unit, path.clone()).await?;
        let service = self.proxy::<ServiceProxy<'static>>(unit, path).await?;
        let is_service = unit.ends_with(".service");
        loop {
            let active = proxy
                .active_state()
                .await
                .map_err(err("read the state of"))?;
            let sub = proxy.sub_state().await.map_err(err("read the state of"))?;
            if active == "active" {
                let invocation_id = proxy.invocation_id().await.ok().as_deref().and_then(hex);
                if old.is_none_or(|o| invocation_id.as_deref() != Some(o)) {
                    return Ok(Settled::Active);
                }
            }
            // "failed" and "dead" are also passed through on the way to a restart
            // (`failed-before-auto-restart` since systemd 254, `dead` between a restart job's
            // stop and start); only with no job pending are they where the unit rests.
            if (active == "failed" && sub == "failed") || (active == "inactive" && sub == "dead") {
                let (job, _) = proxy.job().await.map_err(err("read the job of"))?;
                // The state and the job are separate reads. A restart job that went from its
                // stop to its start and finished between them leaves a "dead" read before it and
                // no job after it: seen on systemd 252, once RestartUnit came within 3.4 ms of
                // the crash, as "failed again as it started (Result=success)". Only a state that
                // has not moved across the job's read is where the unit rests.
                if job == 0 {
                    if proxy
                        .active_state()
                        .await
                        .map_err(err("read the state of"))?
                        != active
                    {
                        continue;
                    }
                    let result = if is_service {
                        service.result().await.unwrap_or_default()
                    } else {
                        String::new()
                    };
                    let invocation_id = proxy.invocation_id().await.ok().as_deref().and_then(hex);
                    let new_run = old.is_none_or(|o| invocation_id.as_deref() != Some(o));
                    return Ok(Settled::Down { result, new_run });
                }
            }
            if next_change(&mut changes, Instant::now() + REREAD, until)
                .await
                .is_none()
            {
                return Ok(Settled::Pending {
                    state: format!("{active}/{sub}"),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::{sync::watch, time::Instant};

    use super::{REREAD, UnitSeen, reaped_as_seen};

    fn seen(active: &str, run: &str) -> UnitSeen {
        UnitSeen {
            active: active.to_owned(),
            invocation: Some(run.to_owned()),
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    }

    /// `reaped_as_seen` from `first`, with `then` signalled 20 ms later (None: the watcher
    /// forgets the unit); its answer and how long it took.
    fn reaped(first: UnitSeen, then: Option<UnitSeen>, until: Duration) -> (bool, Duration) {
        runtime().block_on(async {
            let (sender, receiver) = watch::channel(first);
            let started = Instant::now();
            let signal = async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                // Kept open after a signal: the answer must come from the value, not a close.
                let _open = if let Some(then) = then {
                    let _ = sender.send(then);
                    Some(sender)
                } else {
                    drop(sender);
                    None
                };
                std::future::pending::<()>().await;
            };
            tokio::select! {
                answer = reaped_as_seen(receiver, Some("01"), started + until) => {
                    (answer, started.elapsed())
                }
                () = signal => unreachable!("the signal side never ends"),
            }
        })
    }

    #[test]
    fn a_state_that_is_not_active_says_the_death_was_handled_at_once() {
        for state in ["failed", "activating", "inactive"] {
            let (answer, took) = reaped(seen(state, "01"), None, Duration::from_secs(1));
            assert!(
                answer && took < Duration::from_millis(20),
                "{state}: {took:?}"
            );
        }
        // Active, but in another run: systemd restarted it already.
        let (answer, took) = reaped(seen("active", "02"), None, Duration::from_secs(1));
        assert!(answer && took < Duration::from_millis(20), "{took:?}");
    }

    #[test]
    fn active_waits_for_the_signal_that_moves_it() {
        for then in [seen("failed", "01"), seen("deactivating", "01")] {
            let (answer, took) = reaped(
                seen("active", "01"),
                Some(then.clone()),
                Duration::from_secs(1),
            );
            if then.active == "failed" {
                assert!(answer && took >= Duration::from_millis(20), "{took:?}");
            } else {
                // Stopping the rest of the run: nothing said for REREAD, so the bus is asked.
                assert!(!answer && took >= REREAD, "deactivating: {took:?}");
            }
        }
    }

    #[test]
    fn a_forgotten_unit_or_a_quiet_one_is_asked_of_the_bus() {
        let (answer, took) = reaped(seen("active", "01"), None, Duration::from_secs(1));
        assert!(!answer && took < REREAD, "forgotten: {took:?}");
        // Active until the caller's deadline, which comes before REREAD: done waiting.
        let (answer, took) = reaped(
            seen("active", "01"),
            Some(seen("active", "01")),
            Duration::from_millis(100),
        );
        assert!(
            answer && took >= Duration::from_millis(100),
            "deadline: {took:?}"
        );
    }
}
