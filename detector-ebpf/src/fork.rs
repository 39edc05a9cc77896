//! Processes the watched systemd manager forks itself: a unit's main and control processes.
//!
//! Raw tracepoint `sched_process_fork(struct task_struct *parent, struct task_struct *child)`,
//! fired in `kernel_clone()` once the child exists
//! (<https://github.com/torvalds/linux/blob/v6.18/kernel/fork.c>, `trace_sched_process_fork`).
//! A child whose parent is the manager goes into `SPAWNED`; its death record then carries
//! `death_flags::SPAWNED`. Knowing this at fork time, not from the parent at death, is what tells
//! a supervisor's orphaned workers (reparented to the manager when the supervisor dies) from the
//! unit's own processes.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use detector_common::counter;

use crate::{
    kernel::{Error, counted, offset, read},
    maps::{SPAWNED, WATCH, fail},
};

#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub(crate) fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    let parent: u64 = ctx.arg(0);
    let child: u64 = ctx.arg(1);
    let _ = try_fork(parent, child);
    0
}

#[inline(always)]
fn try_fork(parent: u64, child: u64) -> Result<(), Error> {
    let Some(watch) = WATCH.get(0) else {
        return Ok(());
    };
    let manager = watch.manager_tgid;
    if manager == 0 {
        return Ok(());
    }
    let parent_tgid: u32 = counted(read(parent, offset!(task_tgid)?), counter::READ_FORK)?;
    if parent_tgid != manager {
        return Ok(());
    }
    let pid: u32 = counted(read(child, offset!(task_pid)?), counter::READ_FORK)?;
    let tgid: u32 = counted(read(child, offset!(task_tgid)?), counter::READ_FORK)?;
    // A thread of the manager itself is not a process it spawned.
    if pid != tgid {
        return Ok(());
    }
    SPAWNED.insert(tgid, 1, 0).map_err(|_| {
        fail(counter::MAP_SPAWNED);
        Error::Counted
    })
}
