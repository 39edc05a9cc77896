//! Reading the watched systemd's journal with sd-journal (libsystemd): PID 1's account of a
//! death, the run's start, and the run's last lines. Called on the journal thread only: sd-journal
//! handles are not thread-safe.

use std::{
    path::Path,
    thread,
    time::{Duration, Instant},
};

use detector_common::wait::WaitStatus;
use systemd::journal::{Journal, OpenDirectoryOptions};

use crate::{death::record::ExitRecord, kernel::clock::Clock};

/// `SD_MESSAGE_UNIT_PROCESS_EXIT`: "Main process exited" (systemd's src/systemd/sd-messages.h).
const PROCESS_EXIT: &str = "98e322203f7a4ed290d09fe03c09fe15";
/// `SD_MESSAGE_UNIT_FAILURE_RESULT`: "Failed with result '...'." with `UNIT_RESULT=` (not
/// `SD_MESSAGE_UNIT_FAILED`, which is a failed start job).
const UNIT_FAILED_RESULT: &str = "d9b373ed55a64feb8242e02dbe79a49c";
/// `SD_MESSAGE_UNIT_STARTED`: "Started UNIT", logged when the run began.
const UNIT_STARTED: &str = "39f53479d3a045ac8e11786248231fbf";
/// After PID 1's message, a moment for journald to finish the dead process's stdout stream.
const SETTLE: Duration = Duration::from_millis(100);

/// What the journal says about one death.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Collected {
    /// PID 1 logged that this was the unit's main process.
    pub main_process: bool,
    pub invocation_id: Option<String>,
    /// When the run started (realtime µs), from PID 1's "Started" message.
    pub started_us: Option<u64>,
    /// The run's last lines, oldest first.
    pub lines: Vec<String>,
}

pub(super) fn open(root: &Path) -> Result<Journal, String> {
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
        // PID 1 logs no exit for a death it counts as clean (SIGTERM), yet a run it ended itself
        // (a start timeout) or a failed control process (ExecStartPre=) still fails the unit:
        // "Failed with result 'timeout'." of this run says so.
        j.match_flush()?;
        j.match_add("MESSAGE_ID", UNIT_FAILED_RESULT)?;
        j.match_add("UNIT", unit)?;
        j.match_add("_PID", "1")?;
        if let Some(id) = &record.invocation_id {
            j.match_add("INVOCATION_ID", id.as_str())?;
        }
        j.seek_tail()?;
        if j.previous()? > 0 && j.timestamp_usec()? + 1_000_000 >= died_us {
            return Ok(Some(field(j, "INVOCATION_ID").unwrap_or_default()));
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

/// Collects what the journal says about `record`'s death in `unit`, with up to `n` lines, waiting
/// up to `wait` for PID 1's account.
pub(super) fn collect(
    j: &mut Journal,
    unit: &str,
    record: &ExitRecord,
    clock: Clock,
    wait: Duration,
    n: usize,
) -> Result<Collected, systemd::Error> {
    let died_us = clock.realtime_us(record.ktime_ns);
    let deadline = Instant::now() + wait;
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

/// The last `n` lines of `unit`'s run `invocation`, once PID 1's own lines about its failure are
/// in.
pub(crate) fn collect_run(
    j: &mut Journal,
    unit: &str,
    invocation: Option<&str>,
    n: usize,
) -> Result<Vec<String>, systemd::Error> {
    thread::sleep(SETTLE);
    lines(j, unit, invocation, n)
}

/// What the journal says about a worker's death in `unit`: its own lines (`_PID=ns_pid`, the
/// pid in the watched manager's namespace), else the run's last lines. PID 1 says nothing of a
/// worker, so there is nothing to wait for beyond the moment its stream needs to be read.
pub(crate) fn collect_worker(
    j: &mut Journal,
    unit: &str,
    record: &ExitRecord,
    n: usize,
) -> Result<Collected, systemd::Error> {
    thread::sleep(SETTLE);
    let invocation = record.invocation_id.as_deref();
    let mut lines = Vec::new();
    if record.ns_pid != 0 {
        j.match_flush()?;
        j.match_add("_SYSTEMD_UNIT", unit)?;
        j.match_add("_PID", record.ns_pid.to_string().as_str())?;
        j.seek_tail()?;
        while lines.len() < n && j.previous()? > 0 {
            if let Some(line) = field(j, "MESSAGE") {
                lines.push(line);
            }
        }
        lines.reverse();
    }
    if lines.is_empty() {
        lines = self::lines(j, unit, invocation, n)?;
    }
    Ok(Collected {
        main_process: false,
        invocation_id: record.invocation_id.clone(),
        started_us: None,
        lines,
    })
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
