//! Stage 5, the incident: one record per unit failure, telling an operator what died, why, and
//! what happened next. It is opened at the death (with the cause the death alone tells), takes
//! the journal's account when it comes, gets a step in its timeline for each thing the recovery
//! does ([`Progress`]), and goes to the sinks as `kind: "incident"` once the recovery is over
//! (healthy, failed, or given up).
//!
//! The incident comes before recovery in the flow, although the issue that laid out the folders
//! listed it after: recovery writes into an open incident's timeline, so recovery imports it,
//! never the reverse.
//!
//! - In: an [`ExitRecord`] and its provisional cause, then the journal's [`Account`].
//! - Out: [`Incident`]s on a channel, finished or `interrupted`, never lost.
//! - Must not know: D-Bus, health checks, policies (the recovery reports its steps through
//!   [`Progress`]), sinks.

mod progress;

use std::fmt::Write as _;

use serde::Serialize;

pub(crate) use self::progress::Progress;
use crate::{
    death::record::ExitRecord,
    journal::{Account, causes::Cause},
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
    /// Stable and unique: 128 random bits as 32 lowercase hex digits, made when the incident
    /// opens. The history, `detector incidents show ID` and the sinks name it by this.
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
}

/// How many pids an incident lists; `deaths` counts them all.
pub(crate) const MAX_PIDS: usize = 16;

/// A new incident id: 128 bits from the kernel's random source as 32 lowercase hex digits (the
/// shape of systemd's ids). Random rather than counted, so that ids stay unique across daemon
/// restarts and hosts without any state.
#[must_use]
pub(crate) fn new_id() -> String {
    let mut bytes = [0_u8; 16];
    let mut filled = 0;
    while filled < bytes.len() {
        let rest = &mut bytes[filled..];
        // SAFETY: the pointer and length describe `rest`, a live, writable part of `bytes`;
        // getrandom writes at most that many bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        match usize::try_from(n) {
            Ok(n) => filled += n,
            // EINTR: try again. Any other error (no getrandom, before 3.17) cannot happen on
            // the kernels detector runs on (BTF, ring buffers: 5.8 and later); fall back to
            // time and pid rather than fail an incident over it.
            Err(_) if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {
            }
            Err(_) => return fallback_id(),
        }
    }
    bytes.iter().fold(String::with_capacity(32), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    })
}

/// An id from the clock, the pid and a counter: unique enough without a random source.
fn fallback_id() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{:016x}{:08x}{n:08x}", now as u64, std::process::id())
}

impl Incident {
    /// The incident for a death that failed `unit`, with its cause already classified.
    #[must_use]
    pub(crate) fn from_death(unit: &str, record: &ExitRecord, (cause, detail): Cause) -> Self {
        Self {
            kind: "incident",
            id: new_id(),
            unit: unit.to_owned(),
            invocation_id: record.invocation_id.clone(),
            pid: Some(record.pid),
            role: if record.role == Some("worker") {
                "worker"
            } else {
                "main"
            },
            deaths: 1,
            pids: vec![record.pid],
            first_death: Some(record.time.clone()),
            last_death: Some(record.time.clone()),
            cause,
            detail,
            journal: Vec::new(),
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
            id: new_id(),
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
        }
    }

    /// How the incident ended, in one word: `reported`, `gave_up`, `failed` (the bus or systemd
    /// refused, or the restarted unit failed to start), `healthy` (the health check passed, or
    /// workers stayed up), `unhealthy` (the check did not pass by its deadline), `active` (up
    /// again, no check), `died_again`, `down` (systemd did not bring it back), `interrupted`
    /// (detector stopped), `incomplete`. The last step that says one decides.
    #[must_use]
    pub(crate) fn outcome(&self) -> &'static str {
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
    /// this one): they came first.
    pub(crate) fn absorb(&mut self, earlier: &Self) {
        self.deaths += earlier.deaths;
        let mut pids = earlier.pids.clone();
        pids.extend(self.pids.iter().copied());
        pids.truncate(MAX_PIDS);
        self.pids = pids;
        if earlier.first_death.is_some() {
            self.first_death.clone_from(&earlier.first_death);
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
        } = account;
        if invocation_id.is_some() {
            self.invocation_id = invocation_id;
        }
        self.cause = cause;
        self.detail = detail;
        self.journal = lines;
        self.port_holder = port_holder;
    }
}
