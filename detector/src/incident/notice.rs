//! What the sinks hear about an incident: that it opened (the cause is known, the recovery may
//! still run) and that it ended, with how it ended.

use std::sync::Arc;

use serde::Serialize;

use super::{Action, Incident};

/// Which of an incident's two notices this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Phase {
    /// The cause is known (the journal's account is in); the recovery may still be running.
    Opened,
    /// The incident is over: its timeline and durations are final.
    Resolved,
}

/// One notice about an incident. The incident is shared: every sink reads the same one.
#[derive(Debug, Clone)]
pub(crate) struct Notice {
    pub phase: Phase,
    pub incident: Arc<Incident>,
}

/// How an incident ended, for the sinks that must tell "back" from "still down".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Outcome {
    /// The unit is back: a passing health check, the supervisor's workers stable, or (without a
    /// check) active in a new run.
    Recovered,
    /// It failed again before it recovered: the next incident carries on.
    Superseded,
    /// It was left down: given up (crash loop), the health check never passed, systemd or the
    /// bus refused the restart, or the policy only reports.
    Down,
    /// detector stopped before the recovery ended: nobody knows.
    Interrupted,
}

impl Outcome {
    #[must_use]
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Recovered => "recovered",
            Self::Superseded => "superseded",
            Self::Down => "down",
            Self::Interrupted => "interrupted",
        }
    }
}

impl Incident {
    /// How the incident ended, from its timeline and action. Meaningful once it is resolved.
    #[must_use]
    pub(crate) fn outcome(&self) -> Outcome {
        let last = self.timeline.last().map(|s| s.step);
        if last == Some("interrupted") {
            return Outcome::Interrupted;
        }
        if last == Some("died_again") {
            return Outcome::Superseded;
        }
        let steps = || self.timeline.iter().map(|s| s.step);
        if steps().any(|s| matches!(s, "health_ok" | "workers_stable")) {
            return Outcome::Recovered;
        }
        // Without a health check, a new run that came up is as far as anyone can tell.
        let restarted = matches!(self.action, Action::Restarted | Action::Watched);
        if restarted && last == Some("unit_active") {
            return Outcome::Recovered;
        }
        Outcome::Down
    }

    /// The incident's last word: the final step (`health_ok`, `gave_up`, ...).
    #[must_use]
    pub(crate) fn last_step(&self) -> &'static str {
        self.timeline.last().map_or("detected", |s| s.step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incident::Step;

    fn with_steps(action: Action, steps: &[&'static str]) -> Incident {
        let mut incident = Incident::without_death(
            "app.service",
            None,
            ("unhealthy".to_owned(), "no answer".to_owned()),
            0,
            "2026-01-01T00:00:00.000000Z".to_owned(),
        );
        incident.action = action;
        incident.timeline = steps
            .iter()
            .map(|step| Step {
                at: String::new(),
                step,
                detail: None,
            })
            .collect();
        incident
    }

    #[test]
    fn outcomes_follow_the_timeline() {
        let cases = [
            (
                Action::Restarted,
                &["detected", "restart_requested", "unit_active", "health_ok"][..],
                Outcome::Recovered,
            ),
            (
                Action::Restarted,
                &["detected", "restart_requested", "unit_active"],
                Outcome::Recovered,
            ),
            (
                Action::Watched,
                &["detected", "workers_stable"],
                Outcome::Recovered,
            ),
            (Action::GaveUp, &["detected", "gave_up"], Outcome::Down),
            (
                Action::Restarted,
                &[
                    "detected",
                    "restart_requested",
                    "unit_active",
                    "health_failed",
                ],
                Outcome::Down,
            ),
            (Action::Reported, &["detected"], Outcome::Down),
            (
                Action::Failed,
                &["detected", "restart_failed"],
                Outcome::Down,
            ),
            (
                Action::Restarted,
                &["detected", "restart_requested", "died_again"],
                Outcome::Superseded,
            ),
            (
                Action::Reported,
                &["detected", "interrupted"],
                Outcome::Interrupted,
            ),
        ];
        for (action, steps, want) in cases {
            assert_eq!(
                with_steps(action, steps).outcome(),
                want,
                "{action:?} {steps:?}"
            );
        }
    }
}
