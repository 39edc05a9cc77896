//! Incidents: one record per unit failure, telling an operator what died, why, and what happened
//! next. Written on stdout as `kind: "incident"`, after the death's `kind: "exit"` record.
//!
//! Today an incident carries the death, a cause in plain words and the failed run's journal lines;
//! the recovery steps (restart, health) extend its timeline.

use serde::Serialize;

use crate::{journal::Collected, record::ExitRecord};

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
    /// `exit_code`, `signal` or `oom_kill`.
    pub cause: &'static str,
    /// The cause in words an operator reads once.
    pub detail: String,
    /// The failed run's last journal lines, oldest first.
    pub journal: Vec<String>,
    pub timeline: Vec<Step>,
}

/// The cause of a death and its detail.
#[must_use]
pub fn cause(record: &ExitRecord) -> (&'static str, String) {
    if let Some(oom) = &record.oom {
        let memory = oom.anon_rss_kb.map_or_else(String::new, |kb| {
            format!(" with {kb} kB of anonymous memory")
        });
        let place = match (oom.constraint.as_deref(), oom.memcg.as_deref()) {
            (Some("memcg"), Some(memcg)) => format!(": memory cgroup {memcg} reached its limit"),
            (Some("global"), _) => ": the host ran out of memory".to_owned(),
            _ => String::new(),
        };
        return (
            "oom_kill",
            format!("killed by the OOM killer{memory}{place}"),
        );
    }
    if let Some(signal) = &record.signal {
        let core = if record.core_dumped {
            ", core dumped"
        } else {
            ""
        };
        let by = match &record.killed_by {
            Some(k) if k.kernel && k.pid == record.pid => {
                " raised by the kernel (a fault in the process)".to_owned()
            }
            Some(k) if k.kernel => " sent by the kernel".to_owned(),
            Some(k) if k.pid == record.pid => " sent by the process itself".to_owned(),
            Some(k) => format!(" sent by {} (pid {})", k.comm, k.pid),
            None => String::new(),
        };
        return ("signal", format!("killed by {signal}{by}{core}"));
    }
    let code = record
        .exit_code
        .map_or_else(|| "?".to_owned(), |c| c.to_string());
    ("exit_code", format!("exited with status {code}"))
}

impl Incident {
    /// The incident for a death that failed `unit`.
    #[must_use]
    pub fn from_death(unit: &str, record: &ExitRecord, journal: Collected) -> Self {
        let (cause, detail) = cause(record);
        let Collected {
            main_process: _,
            invocation_id,
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
            timeline: vec![Step {
                at: record.time.clone(),
                step: "detected",
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{KilledBy, OomRecord};

    fn record() -> ExitRecord {
        ExitRecord {
            kind: "exit",
            time: "t".into(),
            pid: 10,
            ppid: 1,
            tid: 10,
            comm: "python3".into(),
            cgroup: None,
            cgroup_id: 1,
            unit: Some("app.service".into()),
            user_unit: None,
            invocation_id: None,
            exit_code: Some(3),
            signal: None,
            core_dumped: false,
            wait_status: 3 << 8,
            oom: None,
            killed_by: None,
            latency_us: 0,
            ktime_ns: 0,
        }
    }

    #[test]
    fn causes_in_words() {
        let mut r = record();
        assert_eq!(cause(&r), ("exit_code", "exited with status 3".to_owned()));
        r.exit_code = None;
        r.signal = Some("SIGSEGV".into());
        r.core_dumped = true;
        r.killed_by = Some(KilledBy {
            pid: 10,
            comm: "python3".into(),
            kernel: true,
            si_code: 1,
        });
        assert_eq!(
            cause(&r),
            (
                "signal",
                "killed by SIGSEGV raised by the kernel (a fault in the process), core dumped"
                    .to_owned()
            )
        );
        r.core_dumped = false;
        r.signal = Some("SIGKILL".into());
        r.killed_by = Some(KilledBy {
            pid: 77,
            comm: "bash".into(),
            kernel: false,
            si_code: 0,
        });
        assert_eq!(
            cause(&r),
            (
                "signal",
                "killed by SIGKILL sent by bash (pid 77)".to_owned()
            )
        );
        r.oom = Some(OomRecord {
            total_vm_kb: Some(1),
            anon_rss_kb: Some(65000),
            file_rss_kb: None,
            shmem_rss_kb: None,
            oom_score_adj: None,
            constraint: Some("memcg".into()),
            memcg: Some("/system.slice/app.service".into()),
            memcg_id: Some(5),
            trigger_pid: 10,
            trigger_comm: "python3".into(),
        });
        assert_eq!(
            cause(&r),
            (
                "oom_kill",
                "killed by the OOM killer with 65000 kB of anonymous memory: memory cgroup /system.slice/app.service reached its limit"
                    .to_owned()
            )
        );
    }
}
