//! A failed run's journal lines, read with sd-journal (libsystemd) from the journal of the systemd
//! instance at `--root` (its /var/log/journal and /run/log/journal).
//!
//! The dying process's last lines reach journald after its death, through its stdout stream. So
//! for each death in a service we wait, within a bound, for PID 1's own account of it: "Main
//! process exited" (`MESSAGE_ID=98e322203f7a4ed290d09fe03c09fe15`, with `UNIT=` and
//! `INVOCATION_ID=`), logged after PID 1 reaped the process. It tells three things at once: the
//! death failed the unit (it was the main process, not a worker), which run of the unit it was,
//! and that the process's own output is in. Then we take that run's last lines, as
//! `journalctl -u UNIT _SYSTEMD_INVOCATION_ID=...` would show them.
//!
//! sd-journal handles are not thread-safe, and waiting must not hold up the ring buffer, so all
//! of this runs on one thread of its own ([`spawn`]).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
    thread,
    time::{Duration, Instant},
};

use detector_common::wait::WaitStatus;
use systemd::journal::{Journal, OpenDirectoryOptions};
use tokio::sync::oneshot;

use crate::{
    causes::{self, Rule},
    clock::Clock,
    config::Config,
    incident::Incident,
    ports,
    record::ExitRecord,
};

/// A death sooner than this after its unit started is a startup failure, unless the unit's
/// policy says otherwise.
const STARTUP_GRACE: Duration = Duration::from_secs(10);

/// `SD_MESSAGE_UNIT_PROCESS_EXIT`: "Main process exited" (systemd's src/systemd/sd-messages.h).
const PROCESS_EXIT: &str = "98e322203f7a4ed290d09fe03c09fe15";
/// `SD_MESSAGE_UNIT_STARTED`: "Started UNIT", logged when the run began.
const UNIT_STARTED: &str = "39f53479d3a045ac8e11786248231fbf";
/// After PID 1's message, a moment for journald to finish the dead process's stdout stream.
const SETTLE: Duration = Duration::from_millis(100);

/// What the journal says about one death.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Collected {
    /// PID 1 logged that this was the unit's main process.
    pub main_process: bool,
    pub invocation_id: Option<String>,
    /// When the run started (realtime µs), from PID 1's "Started" message.
    pub started_us: Option<u64>,
    /// The run's last lines, oldest first.
    pub lines: Vec<String>,
}

/// How the journal thread works.
#[derive(Debug, Clone)]
pub struct Options {
    pub root: PathBuf,
    /// How many lines an incident carries, for units the configuration does not set it for.
    pub lines: usize,
    /// How long to wait for PID 1's account of a death.
    pub wait: Duration,
    /// Unit policies and the operator's cause rules.
    pub config: Arc<Config>,
    /// The cgroup the watched systemd manages, for naming the unit that holds a port.
    pub manager_root: String,
    /// A process in the watched systemd's network namespace, for finding who holds a port.
    pub netns_pid: i32,
}

fn open(root: &Path) -> Result<Journal, String> {
    OpenDirectoryOptions::default()
        .os_root(true)
        .open_directory(root.as_os_str().as_encoded_bytes())
        .map_err(|e| format!("cannot open the journal under {}: {e}", root.display()))
}

fn field(j: &mut Journal, name: &str) -> Option<String> {
    j.get_data(name)
        .ok()
        .flatten()
        .and_then(|f| f.value().map(|v| String::from_utf8_lossy(v).into_owned()))
}

/// How PID 1 words a wait status in the exit message: `EXIT_CODE=exited|killed|dumped` and
/// `EXIT_STATUS=` the code or the signal number (systemd's `sigchld_code_to_string()`).
fn exit_fields(wait_status: u32) -> (&'static str, String) {
    match WaitStatus::from_raw(wait_status) {
        WaitStatus::Exited { code } => ("exited", code.to_string()),
        WaitStatus::Signaled {
            signal,
            core_dumped,
        } => (
            if core_dumped { "dumped" } else { "killed" },
            signal.to_string(),
        ),
    }
}

/// Waits for PID 1's "Main process exited" for `unit`, with this death's status (and run, when
/// known), at or after `died_us` (realtime µs); returns its `INVOCATION_ID` when it comes. The message names no pid:
/// the status is what tells the main process's death from a worker's just before it.
fn await_exit(
    j: &mut Journal,
    unit: &str,
    record: &ExitRecord,
    died_us: u64,
    deadline: Instant,
) -> Result<Option<String>, systemd::Error> {
    let (code, status) = exit_fields(record.wait_status);
    loop {
        j.match_flush()?;
        j.match_add("MESSAGE_ID", PROCESS_EXIT)?;
        j.match_add("UNIT", unit)?;
        j.match_add("_PID", "1")?;
        j.match_add("EXIT_CODE", code)?;
        j.match_add("EXIT_STATUS", status.as_str())?;
        // The run read from the unit's cgroup at the death: a unit restarted at once can fail
        // the same way again within the clocks' slack below, and only this tells the runs apart.
        if let Some(id) = &record.invocation_id {
            j.match_add("INVOCATION_ID", id.as_str())?;
        }
        j.seek_tail()?;
        // The newest such message; entries are stamped by journald, so allow the two clocks a
        // second of disagreement.
        if j.previous()? > 0 && j.timestamp_usec()? + 1_000_000 >= died_us {
            // The "Main process" wording tells it from a control process (ExecStartPre=, ...).
            if field(j, "MESSAGE").is_some_and(|m| m.contains("Main process exited")) {
                // Some("") when PID 1 gave no id: the death is confirmed all the same.
                return Ok(Some(field(j, "INVOCATION_ID").unwrap_or_default()));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        j.wait(Some(left.min(Duration::from_millis(100))))?;
    }
}

/// The last `n` lines of `unit`'s run `invocation` (its processes' output and PID 1's messages
/// about it), oldest first; without an invocation, the unit's last lines.
fn lines(
    j: &mut Journal,
    unit: &str,
    invocation: Option<&str>,
    n: usize,
) -> Result<Vec<String>, systemd::Error> {
    j.match_flush()?;
    j.match_add("_SYSTEMD_UNIT", unit)?;
    if let Some(id) = invocation {
        j.match_add("_SYSTEMD_INVOCATION_ID", id)?;
    }
    j.match_or()?;
    j.match_add("UNIT", unit)?;
    if let Some(id) = invocation {
        j.match_add("INVOCATION_ID", id)?;
    }
    j.seek_tail()?;
    let mut out = Vec::new();
    while out.len() < n && j.previous()? > 0 {
        if let Some(line) = field(j, "MESSAGE") {
            out.push(line);
        }
    }
    out.reverse();
    Ok(out)
}

/// When run `invocation` of `unit` started (realtime µs).
fn started(j: &mut Journal, unit: &str, invocation: &str) -> Result<Option<u64>, systemd::Error> {
    j.match_flush()?;
    j.match_add("MESSAGE_ID", UNIT_STARTED)?;
    j.match_add("UNIT", unit)?;
    j.match_add("INVOCATION_ID", invocation)?;
    j.seek_tail()?;
    Ok(if j.previous()? > 0 {
        Some(j.timestamp_usec()?)
    } else {
        None
    })
}

/// Collects what the journal says about `record`'s death in `unit`, with up to `n` lines.
fn collect(
    j: &mut Journal,
    unit: &str,
    record: &ExitRecord,
    clock: Clock,
    options: &Options,
    n: usize,
) -> Result<Collected, systemd::Error> {
    let died_us = clock.realtime_us(record.ktime_ns);
    let deadline = Instant::now() + options.wait;
    let exit = await_exit(j, unit, record, died_us, deadline)?;
    let main_process = exit.is_some();
    let invocation_id = exit
        .filter(|id| !id.is_empty())
        .or_else(|| record.invocation_id.clone());
    if main_process {
        thread::sleep(SETTLE);
    }
    let started_us = match invocation_id.as_deref() {
        Some(id) => started(j, unit, id)?,
        None => None,
    };
    let lines = lines(j, unit, invocation_id.as_deref(), n)?;
    Ok(Collected {
        main_process,
        invocation_id,
        started_us,
        lines,
    })
}

/// The journal thread's answer for one death.
#[derive(Debug)]
pub struct Journaled {
    /// PID 1 said the death was its unit's main process: the unit failed. False also when PID 1
    /// said nothing within the wait.
    pub main_process: bool,
    /// The incident as the journal tells it: run, cause, lines, port holder.
    pub incident: Incident,
}

/// A death in a service (the unit, the death) for the journal thread, and where its answer goes.
pub type Request = (String, ExitRecord, oneshot::Sender<Journaled>);

/// What the journal thread keeps between deaths.
struct Reader {
    options: Options,
    /// The operator's rules, then the built-in ones.
    rules: Vec<Rule>,
    journal: Option<Journal>,
    last_error: String,
}

impl Reader {
    /// What the journal says about `record`'s death in `unit`.
    fn incident(&mut self, unit: &str, record: &ExitRecord) -> Journaled {
        if self.journal.is_none() {
            match open(&self.options.root) {
                Ok(j) => self.journal = Some(j),
                Err(e) if e != self.last_error => {
                    tracing::warn!("{e}; incidents go out without journal lines");
                    self.last_error = e;
                }
                Err(_) => {}
            }
        }
        let policy = self.options.config.policy(unit);
        let n = policy.map_or(self.options.lines, |p| p.journal_lines);
        let startup_grace = policy.map_or(STARTUP_GRACE, |p| p.startup_grace);
        // Without a journal we cannot tell the main process: every death in a service counts.
        let unread = || Collected {
            main_process: true,
            invocation_id: record.invocation_id.clone(),
            started_us: None,
            lines: Vec::new(),
        };
        let clock = Clock::now();
        let collected = match self
            .journal
            .as_mut()
            .map(|j| collect(j, unit, record, clock, &self.options, n))
        {
            Some(Ok(collected)) => collected,
            Some(Err(e)) => {
                tracing::warn!(unit, error = %e, "reading the journal failed; reopening it for the next death");
                self.journal = None;
                unread()
            }
            None => unread(),
        };
        let main_process = collected.main_process;
        if !main_process {
            tracing::debug!(
                unit,
                pid = record.pid,
                "PID 1 did not report it as the unit's main process"
            );
        }
        let died_us = clock.realtime_us(record.ktime_ns);
        let uptime = collected
            .started_us
            .map(|s| Duration::from_micros(died_us.saturating_sub(s)));
        let cause = causes::classify(
            record,
            &collected.lines,
            &self.rules,
            causes::Context {
                uptime,
                startup_grace,
            },
        );
        let mut incident = Incident::from_death(unit, record, collected, cause);
        if incident.cause == "port_in_use" {
            self.name_port_holder(
                &mut incident,
                policy
                    .and_then(|p| p.health.as_ref())
                    .and_then(|h| h.url.port_or_known_default()),
            );
        }
        Journaled {
            main_process,
            incident,
        }
    }

    /// Names the process and unit holding the port a `port_in_use` failure wanted: the port from
    /// the run's lines, else from the unit's health check URL.
    fn name_port_holder(&self, incident: &mut Incident, health_port: Option<u16>) {
        let Some(port) = ports::port_in_lines(&incident.journal).or(health_port) else {
            return;
        };
        let Some(mut holder) = ports::holders(self.options.netns_pid, port)
            .into_iter()
            .next()
        else {
            return;
        };
        holder.unit = holder
            .cgroup
            .as_deref()
            .and_then(|c| crate::units::units(&self.options.manager_root, c))
            .map(|u| u.user_unit.unwrap_or(u.unit));
        let unit = holder
            .unit
            .as_deref()
            .map_or_else(String::new, |u| format!(" of {u}"));
        incident.detail = format!(
            "{}: port {port} is held by {} (pid {}){unit}",
            incident.detail, holder.comm, holder.pid
        );
        incident.port_holder = Some(holder);
    }
}

/// Niceness of the journal thread. Its work waits on journald anyway, and it runs while a
/// restarted unit starts up: it should not take CPU from that (the daemon's main thread, which
/// sees deaths and restarts units, runs at `--nice`, -10 by default).
const JOURNAL_NICE: i32 = 10;

/// Lowers this thread's priority to [`JOURNAL_NICE`] (on Linux, `setpriority` on a thread id
/// applies to that thread alone).
fn lower_priority() {
    let tid = nix::unistd::gettid().as_raw();
    // SAFETY: setpriority has no memory-safety preconditions; `tid` is this thread.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, JOURNAL_NICE) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower the journal thread's priority");
    }
}

/// Starts the journal thread. Deaths in units go in on the returned sender with a channel for
/// the answer. A journal that cannot be opened or read is logged, and the answer then has no
/// lines (and counts every death in a service as the main process's, since we cannot tell).
#[must_use]
pub fn spawn(options: Options) -> mpsc::Sender<Request> {
    let (tx, rx) = mpsc::channel::<Request>();
    let mut rules = options.config.rules.clone();
    rules.extend(causes::builtin());
    // sd-journal handles must stay on the thread that opened them: build the reader there.
    let spawned = thread::Builder::new()
        .name("journal".into())
        .spawn(move || {
            lower_priority();
            let mut reader = Reader {
                options,
                rules,
                journal: None,
                last_error: String::new(),
            };
            for (unit, record, answer) in rx {
                // Nobody waiting any more (the daemon is stopping) is not an error.
                let _ = answer.send(reader.incident(&unit, &record));
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the journal thread; incidents go out without journal lines");
    }
    tx
}

#[cfg(test)]
mod tests {
    #[test]
    fn exit_fields_as_pid1_writes_them() {
        for (status, want) in [
            (3 << 8, ("exited", "3")),
            (9, ("killed", "9")),
            (0x80 | 0xb, ("dumped", "11")),
        ] {
            let (code, n) = super::exit_fields(status);
            assert_eq!((code, n.as_str()), want, "{status:#x}");
        }
    }
}
