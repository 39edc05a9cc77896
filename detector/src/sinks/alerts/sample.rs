//! A sample incident, as a real one looks: what `detector alert-test` sends to every sink, and
//! what the payload tests check.

use std::sync::Arc;

use crate::{
    incident::{Action, Incident, Notice, Phase, Step},
    kernel::clock::{self, Clock},
};

/// The sample's unit: no real unit is named, so nobody takes the test for an outage.
pub(crate) const UNIT: &str = "detector-alert-test.service";

/// The sample incident's two notices: opened, then resolved (restarted and healthy).
#[must_use]
pub(crate) fn notices() -> (Notice, Notice) {
    let now = clock::monotonic_ns();
    let clock = Clock::now();
    let at = |ms: u64| clock.rfc3339(now + ms * 1_000_000);
    let mut incident = Incident::without_death(
        UNIT,
        Some("0123456789abcdef0123456789abcdef".to_owned()),
        (
            "signal".to_owned(),
            "killed by SIGKILL sent by sh (pid 4242); a sample from `detector alert-test`, \
             nothing failed"
                .to_owned(),
        ),
        now,
        at(0),
    );
    incident.role = "main";
    incident.pid = Some(4242);
    incident.deaths = 1;
    incident.pids = vec![4242];
    incident.first_death = Some(at(0));
    incident.last_death = Some(at(0));
    incident.journal = vec![
        format!("Started {UNIT}."),
        "demo starting, mode=ok".to_owned(),
        format!("{UNIT}: Main process exited, code=killed, status=9/KILL"),
        format!("{UNIT}: Failed with result 'signal'."),
    ];
    let opened = Notice {
        phase: Phase::Opened,
        incident: Arc::new(incident.clone()),
    };
    incident.action = Action::Restarted;
    for (ms, step, detail) in [
        (2, "restart_requested", None),
        (20, "unit_active", None),
        (
            72,
            "health_ok",
            Some("http://127.0.0.1:8000/health answered 200 (attempt 2)".to_owned()),
        ),
    ] {
        incident.timeline.push(Step {
            at: at(ms),
            step,
            detail,
        });
    }
    incident.crash_to_restart_ms = Some(2.371);
    incident.crash_to_active_ms = Some(20.518);
    incident.crash_to_healthy_ms = Some(72.138);
    let resolved = Notice {
        phase: Phase::Resolved,
        incident: Arc::new(incident),
    };
    (opened, resolved)
}

/// An incident far past every receiver's limits: long cause, 10,000 journal lines of 600
/// characters with markup in them, 300 steps.
#[cfg(test)]
#[must_use]
pub(crate) fn huge() -> (Notice, Notice) {
    let (opened, resolved) = notices();
    let grow = |incident: &Incident| {
        let mut incident = incident.clone();
        incident.unit = format!("{}.service", "u".repeat(300));
        incident.detail = "<b>&detail</b> ".repeat(2000);
        incident.journal = (0..10_000)
            .map(|n| format!("line {n} <tag> & {}", "x".repeat(600)))
            .collect();
        for _ in 0..300 {
            incident.timeline.push(Step {
                at: "2026-01-01T00:00:00.000000Z".to_owned(),
                step: "backoff",
                detail: Some("y".repeat(500)),
            });
        }
        Arc::new(incident)
    };
    (
        Notice {
            phase: Phase::Opened,
            incident: grow(&opened.incident),
        },
        Notice {
            phase: Phase::Resolved,
            incident: grow(&resolved.incident),
        },
    )
}
