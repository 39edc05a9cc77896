//! Incidents: one record per unit failure, telling an operator what died, why, and what happened
//! next. Written on stdout as `kind: "incident"`, after the death's `kind: "exit"` record, once
//! the recovery is over (healthy, failed, or given up).

use std::sync::{Mutex, PoisonError};

use serde::Serialize;
use tokio::sync::mpsc::UnboundedSender;

use crate::{
    clock::{self, Clock},
    journal::Collected,
    ports::Holder,
    record::ExitRecord,
};

/// One step of an incident, in time order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// RFC 3339 with µs.
    pub at: String,
    /// `detected`, `restart_requested`, `unit_active`, `health_ok`, `health_failed`,
    /// `backoff`, `gave_up`, ... (see the README).
    pub step: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What detector did about the failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Nothing: the unit is not configured, or its policy is `report`.
    Reported,
    /// We restarted the unit.
    Restarted,
    /// systemd restarted the unit by its own `Restart=`; we watched.
    Watched,
    /// Too many restarts within the crash-loop window: we did not restart it.
    GaveUp,
    /// We meant to restart it and could not (the bus, or systemd, said no).
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Incident {
    pub kind: &'static str,
    pub unit: String,
    pub invocation_id: Option<String>,
    pub pid: u32,
    /// `oom_kill`, `missing_dependency`, `port_in_use`, `missing_env`, `signal`,
    /// `startup_failure`, `exit_code`, or an operator's own (see `causes`).
    pub cause: String,
    /// The cause in words an operator reads once.
    pub detail: String,
    /// The failed run's last journal lines, oldest first.
    pub journal: Vec<String>,
    /// For `port_in_use`: the process (and unit) listening on the port.
    pub port_holder: Option<Holder>,
    pub action: Action,
    /// From the death (kernel time) to our restart request accepted by systemd, or to systemd's
    /// own restart seen.
    pub crash_to_restart_ms: Option<f64>,
    /// From the death to the unit active again in a new run.
    pub crash_to_active_ms: Option<f64>,
    /// From the death to the first passing health check.
    pub crash_to_healthy_ms: Option<f64>,
    pub timeline: Vec<Step>,
    /// Kernel time of the death, for the durations.
    #[serde(skip)]
    pub died_ns: u64,
}

impl Incident {
    /// The incident for a death that failed `unit`, with its cause already classified.
    #[must_use]
    pub fn from_death(
        unit: &str,
        record: &ExitRecord,
        journal: Collected,
        (cause, detail): (String, String),
    ) -> Self {
        let Collected {
            main_process: _,
            invocation_id,
            started_us: _,
            lines,
        } = journal;
        Self {
            kind: "incident",
            unit: unit.to_owned(),
            invocation_id,
            pid: record.pid,
            cause,
            detail,
            journal: lines,
            port_holder: None,
            action: Action::Reported,
            crash_to_restart_ms: None,
            crash_to_active_ms: None,
            crash_to_healthy_ms: None,
            timeline: vec![Step {
                at: record.time.clone(),
                step: "detected",
                detail: None,
            }],
            died_ns: record.ktime_ns,
        }
    }

    /// Takes what the journal said (run, cause, lines, port holder) from `journaled`, the
    /// incident the journal thread built for the same death; keeps the recovery's own fields.
    pub fn journaled(&mut self, journaled: Self) {
        let Self {
            kind: _,
            unit: _,
            invocation_id,
            pid: _,
            cause,
            detail,
            journal,
            port_holder,
            action: _,
            crash_to_restart_ms: _,
            crash_to_active_ms: _,
            crash_to_healthy_ms: _,
            timeline: _,
            died_ns: _,
        } = journaled;
        if invocation_id.is_some() {
            self.invocation_id = invocation_id;
        }
        self.cause = cause;
        self.detail = detail;
        self.journal = journal;
        self.port_holder = port_holder;
    }
}

/// ns as ms, to the µs.
fn ms(ns: u64) -> f64 {
    (ns / 1000) as f64 / 1000.0
}

/// An incident while its recovery runs: steps are added as they happen. Dropped unfinished (the
/// daemon stopping mid-recovery), it still goes out, with an `interrupted` step: an incident is
/// never lost.
pub struct Progress {
    /// None once sent or discarded. Behind a lock: the journal's answer and the recovery's steps
    /// come from two futures of the same task.
    incident: Mutex<Option<Incident>>,
    out: UnboundedSender<Incident>,
}

impl Progress {
    #[must_use]
    pub fn new(incident: Incident, out: UnboundedSender<Incident>) -> Self {
        Self {
            incident: Mutex::new(Some(incident)),
            out,
        }
    }

    /// Changes the incident (if it is still open).
    pub fn with<T>(&self, f: impl FnOnce(&mut Incident) -> T) -> Option<T> {
        self.incident
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
            .map(f)
    }

    /// Adds a step now.
    pub fn step(&self, step: &'static str, detail: Option<String>) {
        let _ = self.timed_step(step, detail);
    }

    /// Adds a step now; returns how long after the death it came, in ms.
    #[must_use]
    pub fn timed_step(&self, step: &'static str, detail: Option<String>) -> f64 {
        self.timed_step_at(clock::monotonic_ns(), step, detail)
    }

    /// Adds a step that happened at `now` (CLOCK_MONOTONIC ns); returns how long after the
    /// death it came, in ms.
    #[must_use]
    pub fn timed_step_at(&self, now: u64, step: &'static str, detail: Option<String>) -> f64 {
        self.with(|i| {
            i.timeline.push(Step {
                at: Clock::now().rfc3339(now),
                step,
                detail,
            });
            ms(now.saturating_sub(i.died_ns))
        })
        .unwrap_or_default()
    }

    /// Sends the incident.
    pub fn finish(self) {
        self.send(None);
    }

    /// Drops the incident: the death did not fail its unit.
    pub fn discard(self) {
        self.take();
    }

    fn take(&self) -> Option<Incident> {
        self.incident
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Sends the incident if it is still open, after a last step if one is given.
    fn send(&self, last: Option<&'static str>) {
        if let Some(step) = last {
            self.step(
                step,
                Some("detector stopped before the recovery ended".to_owned()),
            );
        }
        if let Some(incident) = self.take() {
            // The receiver lives as long as the daemon's main loop, which outlives every task.
            let _ = self.out.send(incident);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.send(Some("interrupted"));
    }
}
