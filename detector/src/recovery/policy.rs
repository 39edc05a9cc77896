//! Policy: what to do about a unit's failure, from its configured policy, what systemd will do on
//! its own (`Restart=`), and how often it was restarted lately (the crash-loop limit).
//! Pure decisions; [`crate::recovery`] carries them out.

use std::{collections::VecDeque, time::Duration};

use tokio::time::Instant;

use crate::config::{CrashLoop, RestartMode};

/// What to do about one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Report only.
    Report,
    /// systemd's own `Restart=` will bring the unit back: watch that restart.
    Watch,
    /// Restart the unit ourselves after `delay` (zero for the first restart in a window).
    Restart { delay: Duration },
    /// The unit was restarted `restarts` times within the crash-loop window: stop restarting.
    GiveUp { restarts: usize },
}

/// Decides for a failure of a unit whose policy is `mode` and `crash_loop`. `systemd_restarts`
/// says whether the unit's `Restart=` is other than `no` (systemd may restart it itself);
/// `recent` is how many restarts (ours and systemd's) fell within the window.
#[must_use]
pub(crate) fn plan(
    mode: RestartMode,
    crash_loop: CrashLoop,
    systemd_restarts: bool,
    recent: usize,
) -> Plan {
    let limit = usize::try_from(crash_loop.max_restarts).unwrap_or(usize::MAX);
    match mode {
        RestartMode::Report => Plan::Report,
        _ if recent >= limit => Plan::GiveUp { restarts: recent },
        // Never fight systemd: its restart comes after RestartSec=, ours would be a second one.
        RestartMode::Restart if systemd_restarts => Plan::Watch,
        RestartMode::Restart | RestartMode::Expedite => Plan::Restart {
            delay: backoff(crash_loop, recent),
        },
    }
}

/// The wait before a restart when `recent` restarts already fell within the window: none for
/// the first, then `backoff`, doubling, never more than the window.
#[must_use]
pub(crate) fn backoff(crash_loop: CrashLoop, recent: usize) -> Duration {
    let Some(doublings) = recent.checked_sub(1) else {
        return Duration::ZERO;
    };
    let factor = 1_u32
        .checked_shl(u32::try_from(doublings).unwrap_or(u32::MAX))
        .unwrap_or(u32::MAX);
    crash_loop
        .backoff
        .checked_mul(factor)
        .unwrap_or(crash_loop.window)
        .min(crash_loop.window)
}

/// When a unit was restarted lately (by us or by systemd).
#[derive(Debug, Default, Clone)]
pub(crate) struct History {
    restarts: VecDeque<Instant>,
}

impl History {
    pub(crate) fn restarted(&mut self, at: Instant) {
        self.restarts.push_back(at);
    }

    /// How many restarts fell within `window` before `now`; forgets older ones.
    pub(crate) fn recent(&mut self, now: Instant, window: Duration) -> usize {
        while self
            .restarts
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > window)
        {
            self.restarts.pop_front();
        }
        self.restarts.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{History, Plan, backoff, plan};
    use crate::config::{CrashLoop, RestartMode};

    const LOOP: CrashLoop = CrashLoop {
        max_restarts: 3,
        window: Duration::from_mins(1),
        backoff: Duration::from_secs(1),
    };

    #[test]
    fn plans() {
        use RestartMode::{Expedite, Report, Restart};
        let now = |delay| Plan::Restart { delay };
        for (mode, systemd, recent, want) in [
            (Report, false, 0, Plan::Report),
            (Report, true, 9, Plan::Report),
            (Restart, false, 0, now(Duration::ZERO)),
            (Restart, true, 0, Plan::Watch),
            (Restart, true, 2, Plan::Watch),
            (Restart, true, 3, Plan::GiveUp { restarts: 3 }),
            (Expedite, true, 0, now(Duration::ZERO)),
            (Expedite, false, 1, now(Duration::from_secs(1))),
            (Expedite, false, 2, now(Duration::from_secs(2))),
            (Expedite, false, 3, Plan::GiveUp { restarts: 3 }),
        ] {
            assert_eq!(
                plan(mode, LOOP, systemd, recent),
                want,
                "{mode:?} systemd_restarts={systemd} recent={recent}"
            );
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_window() {
        let crash_loop = CrashLoop {
            max_restarts: 100,
            ..LOOP
        };
        let waits: Vec<u64> = [0, 1, 2, 3, 6, 7, 8, 64, usize::MAX]
            .iter()
            .map(|&n| backoff(crash_loop, n).as_secs())
            .collect();
        assert_eq!(waits, [0, 1, 2, 4, 32, 60, 60, 60, 60]);
    }

    #[test]
    fn history_forgets_restarts_outside_the_window() {
        let mut history = History::default();
        let start = tokio::time::Instant::now();
        history.restarted(start);
        history.restarted(start + Duration::from_secs(30));
        assert_eq!(
            history.recent(start + Duration::from_secs(31), LOOP.window),
            2
        );
        assert_eq!(
            history.recent(start + Duration::from_secs(61), LOOP.window),
            1
        );
        assert_eq!(
            history.recent(start + Duration::from_secs(91), LOOP.window),
            0
        );
    }
}
