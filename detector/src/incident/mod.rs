//! Stage 5, the incident: one record per unit failure, telling an operator what died, why, and
//! what happened next. It is opened at the death (with the cause the death alone tells), takes
//! the journal's account when it comes, gets a step in its timeline for each thing the recovery
//! does ([`Progress`]), and goes to the sinks twice ([`Notice`]): `opened` once its cause is known
//! (the journal's account is in), `resolved` once the recovery is over (healthy, failed, or given
//! up); stdout writes the latter as `kind: "incident"`.
//!
//! The incident comes before recovery in the flow, although the issue that laid out the folders
//! listed it after: recovery writes into an open incident's timeline, so recovery imports it,
//! never the reverse.
//!
//! - In: an [`ExitRecord`] and its provisional cause, then the journal's [`Account`].
//! - Out: [`Notice`]s on a bounded channel ([`Outbox`]): every incident opened, then resolved
//!   (finished or `interrupted`), never lost; an `opened` notice that finds the channel full is
//!   folded into the `resolved` one, counted.
//! - Must not know: D-Bus, health checks, policies (the recovery reports its steps through
//!   [`Progress`]), sinks.

mod notice;
pub(crate) mod outbox;
mod progress;

use serde::Serialize;

pub(crate) use self::{
    notice::{Notice, Outcome, Phase},
    outbox::Outbox,
    progress::Progress,
};
use crate::{
    death::record::ExitRecord,
    journal::{Account, causes::Cause},
    kernel::{
        clock::{self, Clock},
        random,
    },
    unit::ports::Holder,
};

/// One step of an incident, in time order.
#[expect(
    clippy::struct_field_names,
    reason = "`step` is the JSON field operators read: `{\"at\": ..., \"step\": \"health_ok\"}`"
)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Step {
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
pub(crate) enum Action {
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
pub(crate) struct Incident {
    pub kind: &'static str,
    /// Stable for the incident's life: 32 lowercase hex digits from random bytes, made when it
    /// opens. Its notices (opened, resolved), journal entries and alerts all carry it.
    pub id: String,
    pub unit: String,
    pub invocation_id: Option<String>,
    /// The first death's process; null for an incident no death opened (`unhealthy`).
    pub pid: Option<u32>,
    /// Whose death opened it: `main` (the unit's main process), `worker` (a process its main
    /// forked: the supervisor lives on), or `unit` (no death: the unit stopped answering).
    pub role: &'static str,
    /// Deaths this incident covers: the first, the workers that died with a main process or in
    /// the same burst, and the rest of a run systemd or detector stopped.
    pub deaths: u32,
    /// Their pids, the first [`MAX_PIDS`].
    pub pids: Vec<u32>,
    /// When the first and the last of them died.
    pub first_death: Option<String>,
    pub last_death: Option<String>,
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
    /// The cause a worker incident this one took over had found (its worker's own lines), kept
    /// in case the main process's account says no more than how it exited.
    #[serde(skip)]
    pub workers_cause: Option<Cause>,
}

/// Causes that say how a process ended, not why: a more specific one found elsewhere wins.
fn generic(cause: &str) -> bool {
    matches!(cause, "signal" | "exit_code" | "startup_failure")
}

/// How many pids an incident lists; `deaths` counts them all.
pub(crate) const MAX_PIDS: usize = 16;

impl Incident {
    /// The incident for a death that failed `unit`, with its cause already classified.
    #[must_use]
    pub(crate) fn from_death(unit: &str, record: &ExitRecord, cause: Cause) -> Self {
        let mut incident = Self::without_death(
            unit,
            record.invocation_id.clone(),
            cause,
            record.ktime_ns,
            record.time.clone(),
        );
        incident.pid = Some(record.pid);
        incident.role = if record.role == Some("worker") {
            "worker"
        } else {
            "main"
        };
        incident.add_death(record);
        incident
    }

    /// An incident no death opened: `unit` (run `invocation_id`) failed `cause` at `now_ns`
    /// (CLOCK_MONOTONIC).
    #[must_use]
    pub(crate) fn without_death(
        unit: &str,
        invocation_id: Option<String>,
        (cause, detail): Cause,
        now_ns: u64,
        at: String,
    ) -> Self {
        Self {
            kind: "incident",
            id: random::id128(),
            unit: unit.to_owned(),
            invocation_id,
            pid: None,
            role: "unit",
            deaths: 0,
            pids: Vec::new(),
            first_death: None,
            last_death: None,
            cause,
            detail,
            journal: Vec::new(),
            port_holder: None,
            action: Action::Reported,
            crash_to_restart_ms: None,
            crash_to_active_ms: None,
            crash_to_healthy_ms: None,
            timeline: vec![Step {
                at,
                step: "detected",
                detail: None,
            }],
            died_ns: now_ns,
            workers_cause: None,
        }
    }

    /// How the incident ended, in one word: `reported`, `gave_up`, `failed` (the bus or systemd
    /// refused, or the restarted unit failed to start), `healthy` (the health check passed, or
    /// workers stayed up), `unhealthy` (the check did not pass by its deadline), `active` (up
    /// again, no check), `died_again`, `down` (systemd did not bring it back), `interrupted`
    /// (detector stopped), `incomplete`. The last step that says one decides.
    #[must_use]
    pub(crate) fn ending(&self) -> &'static str {
        match self.action {
            Action::Reported => return "reported",
            Action::GaveUp => return "gave_up",
            Action::Failed => return "failed",
            Action::Restarted | Action::Watched => {}
        }
        self.timeline
            .iter()
            .rev()
            .find_map(|s| match s.step {
                "health_ok" | "workers_stable" => Some("healthy"),
                "health_failed" => Some("unhealthy"),
                "restart_failed" => Some("failed"),
                "died_again" => Some("died_again"),
                "interrupted" => Some("interrupted"),
                "unit_inactive" => Some("down"),
                "unit_active" => Some("active"),
                _ => None,
            })
            .unwrap_or("incomplete")
    }

    /// Counts one more death in this incident.
    pub(crate) fn add_death(&mut self, record: &ExitRecord) {
        self.deaths += 1;
        if self.pids.len() < MAX_PIDS {
            self.pids.push(record.pid);
        }
        if self.first_death.is_none() {
            self.first_death = Some(record.time.clone());
        }
        self.last_death = Some(record.time.clone());
    }

    /// Takes the deaths another incident counted (one opened for the same failure, folded into
    /// this one): they came first. It takes its id too: the failure is one conversation, and
    /// the earlier incident may already have been announced (its alerts are resolved by this
    /// one's end).
    pub(crate) fn absorb(&mut self, earlier: &Self) {
        self.id.clone_from(&earlier.id);
        self.deaths += earlier.deaths;
        let mut pids = earlier.pids.clone();
        pids.extend(self.pids.iter().copied());
        pids.truncate(MAX_PIDS);
        self.pids = pids;
        if earlier.first_death.is_some() {
            self.first_death.clone_from(&earlier.first_death);
        }
        if !generic(&earlier.cause) {
            self.workers_cause = Some((earlier.cause.clone(), earlier.detail.clone()));
        }
    }

    /// Takes what the journal said (run, cause, lines, port holder); keeps the recovery's own
    /// fields.
    pub(crate) fn journaled(&mut self, account: Account) {
        let Account {
            main_process: _,
            invocation_id,
            lines,
            cause: (cause, detail),
            port_holder,
            unread,
        } = account;
        if let Some(why) = unread {
            // Said in the timeline: an incident without journal lines says why it has none.
            let now = clock::monotonic_ns();
            self.timeline.push(Step {
                at: Clock::now().rfc3339(now),
                step: "journal_unread",
                detail: Some(why),
            });
        }
        if invocation_id.is_some() {
            self.invocation_id = invocation_id;
        }
        match self.workers_cause.take() {
            // The main process only gave up after its workers failed: their cause is the one
            // to fix (gunicorn's arbiter exits after "Worker failed to boot").
            Some((why, what)) if generic(&cause) => {
                self.cause = why;
                self.detail = format!("{what}; its workers failed, then the main process {detail}");
            }
            _ => {
                self.cause = cause;
                self.detail = detail;
            }
        }
        self.journal = lines;
        self.port_holder = port_holder;
    }
}

#[cfg(test)]
mod tests {
    use super::{Incident, MAX_PIDS};
    use crate::journal::Account;

    fn opened(cause: &str, detail: &str) -> Incident {
        Incident::without_death(
            "app.service",
            Some("run".into()),
            (cause.into(), detail.into()),
            0,
            "t".into(),
        )
    }

    fn account(cause: &str, detail: &str) -> Account {
        Account {
            main_process: true,
            invocation_id: None,
            lines: vec!["line".into()],
            cause: (cause.into(), detail.into()),
            port_holder: None,
            unread: None,
        }
    }

    /// A main process that exits after its workers failed: the workers' cause is the one to fix.
    #[test]
    fn a_taken_over_worker_incident_gives_its_cause_to_a_generic_main_one() {
        let worker = opened("missing_dependency", "Python module 'x' is not installed");
        let mut main = opened("exit_code", "exited with status 3");
        main.absorb(&worker);
        main.journaled(account("exit_code", "exited with status 3"));
        assert_eq!(
            (main.cause.as_str(), main.detail.as_str()),
            (
                "missing_dependency",
                "Python module 'x' is not installed; its workers failed, then the main process \
                 exited with status 3"
            )
        );
        // The main's own specific cause stands.
        let mut main = opened("exit_code", "exited with status 3");
        main.absorb(&worker);
        main.journaled(account("port_in_use", "the address is in use"));
        assert_eq!(main.cause, "port_in_use");
    }

    #[test]
    fn deaths_are_counted_and_pids_bounded() {
        let mut incident = opened("signal", "killed");
        let mut record = crate::journal::causes::tests::record();
        for pid in 0..40 {
            record.pid = pid;
            incident.add_death(&record);
        }
        assert_eq!((incident.deaths, incident.pids.len()), (40, MAX_PIDS));
    }
}
