//! The records detector writes: one JSON object per line on stdout.

use serde::Serialize;

/// One process (thread group) death. `kind` is always `"exit"`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ExitRecord {
    pub kind: &'static str,
    /// When the last thread exited, from the kernel's clock, RFC 3339 with µs.
    pub time: String,
    pub pid: u32,
    pub ppid: u32,
    /// The thread that exited last and so ended the group.
    pub tid: u32,
    pub comm: String,
    /// cgroup v2 path relative to the cgroup2 mount; null when the cgroup was gone before we looked.
    pub cgroup: Option<String>,
    pub cgroup_id: u64,
    /// The systemd system manager's unit of `cgroup` (`app.service`, `session-3.scope`,
    /// `user@1000.service`); null outside systemd's cgroup layout.
    pub unit: Option<String>,
    /// The unit of the user manager (`user@UID.service`) the process ran under, if any.
    pub user_unit: Option<String>,
    /// The unit's invocation id (which run of the unit this was), where systemd has one.
    pub invocation_id: Option<String>,
    /// In a service: `main` (a process the watched systemd spawned itself: the unit's main
    /// process, or a control process such as `ExecStartPre=`), `worker` (any other process in the
    /// service: what its main process forked, such as uvicorn's or gunicorn's workers); `other`
    /// in any other unit (a scope, a slice); null outside systemd's units.
    pub role: Option<&'static str>,
    /// `exit()` code; null when a signal killed the process.
    pub exit_code: Option<u8>,
    /// Terminating signal (`"SIGSEGV"`), or null.
    pub signal: Option<String>,
    pub core_dumped: bool,
    /// The raw wait status, `(code << 8) | signal | 0x80 if core`, as `wait4()` returns it.
    pub wait_status: u32,
    pub oom: Option<OomRecord>,
    pub killed_by: Option<KilledBy>,
    /// Kernel timestamp of the death → this record written, in µs.
    pub latency_us: u64,
    /// Kernel timestamp (CLOCK_MONOTONIC, ns); not serialised, for latency and ordering.
    #[serde(skip)]
    pub ktime_ns: u64,
    /// The watched manager forked this process itself (see `detector_common::death_flags`).
    #[serde(skip)]
    pub spawned: bool,
    /// The pid in the watched manager's pid namespace (the journal's `_PID`); 0 when unknown.
    #[serde(skip)]
    pub ns_pid: u32,
}

/// Who generated the fatal signal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct KilledBy {
    /// The task running when the signal was generated: the sender for `kill()`, the faulting
    /// process itself for a fault, the allocating task for the OOM killer.
    pub pid: u32,
    pub comm: String,
    /// True when the kernel generated the signal on its own account (fault, OOM killer, tty,
    /// broken pipe), false when a task asked for it.
    pub kernel: bool,
    /// `si_code` of the signal (`0` = `kill()`, `-6` = `tgkill()`, `0x80` = kernel, > 0 = fault).
    pub si_code: i32,
}

/// The OOM killer's view of the victim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct OomRecord {
    /// Memory figures in kB at the kill; null on kernels whose `oom:mark_victim` lacks them (6.8 added them).
    pub total_vm_kb: Option<u64>,
    pub anon_rss_kb: Option<u64>,
    pub file_rss_kb: Option<u64>,
    pub shmem_rss_kb: Option<u64>,
    pub oom_score_adj: Option<i32>,
    /// `"memcg"` (a memory cgroup hit its limit) or `"global"` (the page allocator ran out: the
    /// host, or a cpuset/mempolicy-constrained allocation); null when it could not be told.
    pub constraint: Option<String>,
    /// Memory cgroup of the OOM-invoking task, in its own hierarchy (cgroup v1 memory controller
    /// or cgroup2): for a memcg OOM, the cgroup that ran out (or a child of it when the limit is on
    /// an ancestor). Its bare name when the cgroup was removed before we looked.
    pub memcg: Option<String>,
    pub memcg_id: Option<u64>,
    /// The task whose allocation triggered the OOM killer.
    pub trigger_pid: u32,
    pub trigger_comm: String,
}

/// A kernel-side NUL-padded name as a string.
#[must_use]
pub(crate) fn c_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}
