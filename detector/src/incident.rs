//! Incidents: one record per unit failure, telling an operator what died, why, and what happened
//! next. Written on stdout as `kind: "incident"`, after the death's `kind: "exit"` record.
//!
//! Today an incident carries the death, a cause in plain words and the failed run's journal lines;
//! the recovery steps (restart, health) extend its timeline.

use serde::Serialize;

use crate::{journal::Collected, ports::Holder, record::ExitRecord};

/// One step of an incident, in time order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// RFC 3339 with µs.
    pub at: String,
    pub step: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
    pub timeline: Vec<Step>,
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
            timeline: vec![Step {
                at: record.time.clone(),
                step: "detected",
            }],
        }
    }
}
