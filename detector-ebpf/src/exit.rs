//! The death of a thread group, with its wait status.
//!
//! Primary hook: the raw tracepoint `sched_process_exit(struct task_struct *p, bool group_dead)`
//! (the `group_dead` argument arrived in 6.16). Fallback for older kernels: fentry on
//! `taskstats_exit(struct task_struct *tsk, int group_dead)` (CONFIG_TASKSTATS). Both run in `do_exit()` right after
//! `tsk->exit_code = code` with `current == tsk`, and both are handed the exact result of
//! `atomic_dec_and_test(&tsk->signal->live)`: exactly one thread of a group sees `group_dead`,
//! whichever order its threads exit in, and it is there for deaths by signal too, which make no
//! exit syscall. <https://github.com/torvalds/linux/blob/v6.18/kernel/exit.c> (`do_exit`).
//!
//! The wait status is what `wait_task_zombie()` would report to the parent:
//! `signal->flags & SIGNAL_GROUP_EXIT ? signal->group_exit_code : leader->exit_code`.
//! That is why a process whose main thread called `pthread_exit` and whose last thread then called
//! `exit(7)` reports 7: the last thread's `exit_group` set `group_exit_code`. Since 5.19 even a
//! plain exit of the last thread does (`synchronize_group_exit()`); reading the same fields the
//! kernel reads keeps us right on both sides of that change.

use aya_ebpf::{
    macros::{fentry, raw_tracepoint},
    programs::{FEntryContext, RawTracePointContext},
};
use detector_common::{
    DeathEvent, EventHeader, SenderKey, counter, death_flags, event_kind, oom_fields,
};

use crate::{
    kernel::{Error, counted, current_cgroup_id, now_ns, offset, read, read_bytes},
    maps::{EVENTS, OOM_VICTIMS, SENDERS, SPAWNED, WATCH, count, fail},
};

/// `SIGNAL_GROUP_EXIT` in include/linux/sched/signal.h: a group exit (exit_group, fatal signal,
/// core dump) is under way and `group_exit_code` holds the status. A flag value, not an offset:
/// unchanged since it was introduced.
const SIGNAL_GROUP_EXIT: u32 = 0x0000_0004;

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub(crate) fn sched_process_exit(ctx: RawTracePointContext) -> i32 {
    let task: u64 = ctx.arg(0);
    let group_dead: u64 = ctx.arg(1);
    // `bool` arrives widened in a u64 slot; only the low byte is defined.
    if group_dead & 0xff != 0 {
        let _ = try_group_dead(task);
    }
    0
}

#[fentry(function = "taskstats_exit")]
pub(crate) fn taskstats_exit(ctx: FEntryContext) -> u32 {
    let task: u64 = ctx.arg(0);
    let group_dead: u64 = ctx.arg(1);
    // `int` in a u64 slot: only the low 32 bits are defined.
    if group_dead as u32 != 0 {
        let _ = try_group_dead(task);
    }
    0
}

/// The wait status the parent will see for the group `task` is the last thread of.
#[inline(always)]
fn wait_status(task: u64) -> Result<u32, Error> {
    let signal: u64 = read(task, offset!(task_signal)?)?;
    let flags: u32 = read(signal, offset!(signal_flags)?)?;
    let status: i32 = if flags & SIGNAL_GROUP_EXIT != 0 {
        read(signal, offset!(signal_group_exit_code)?)?
    } else {
        let leader: u64 = read(task, offset!(task_group_leader)?)?;
        read(leader, offset!(task_exit_code)?)?
    };
    Ok(status as u32)
}

#[inline(always)]
fn try_group_dead(task: u64) -> Result<(), Error> {
    let status = counted(wait_status(task), counter::READ_EXIT_STATUS)?;
    // Clean exits are the common case by far; they never leave the kernel.
    if status == 0 {
        return Ok(());
    }
    let ktime_ns = now_ns();
    let Some(mut entry) = EVENTS.reserve::<DeathEvent>(0) else {
        fail(counter::RINGBUF_FULL);
        return Err(Error::Counted);
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved, writable ring-buffer slot of `size_of::<DeathEvent>()`
    // bytes; every field is written below before the slot is submitted.
    unsafe {
        (*event).header = EventHeader {
            kind: event_kind::DEATH,
            size: size_of::<DeathEvent>() as u32,
        };
        (*event).wait_status = status;
        (*event).ktime_ns = ktime_ns;
        (*event).cgroup_id = current_cgroup_id();
        (*event).ns_pid = 0;
        (*event).flags = 0;
        (*event).pid = 0;
        (*event).tid = 0;
        (*event).ppid = 0;
        (*event).comm = [0; detector_common::COMM_LEN];
        (*event).sender = core::mem::zeroed();
        (*event).oom = core::mem::zeroed();
        // A failed read leaves zeros and is counted; the death is still reported.
        let _ = counted(fill(task, &mut *event), counter::READ_TASK);
    }
    // Default flags: the kernel wakes the reader only if it has read everything before this
    // record, so a busy reader is not woken again for each death of a storm.
    // <https://github.com/torvalds/linux/blob/v6.18/kernel/bpf/ringbuf.c> (`bpf_ringbuf_commit`).
    entry.submit(0);
    let _ = count(counter::EMITTED);
    Ok(())
}

#[inline(always)]
fn fill(task: u64, event: &mut DeathEvent) -> Result<(), Error> {
    let tgid: u32 = read(task, offset!(task_tgid)?)?;
    event.pid = tgid;
    event.tid = read(task, offset!(task_pid)?)?;
    let leader: u64 = read(task, offset!(task_group_leader)?)?;
    read_bytes(leader, offset!(task_comm)?, &mut event.comm)?;

    let signo = event.wait_status & 0x7f;
    if signo != 0 {
        let key = SenderKey { tgid, signo };
        if let Some(sender) = SENDERS.get_ptr(key) {
            // SAFETY: a map value pointer from a successful lookup, valid for this program run.
            event.sender = unsafe { *sender };
            event.flags |= death_flags::SENDER;
            let _ = SENDERS.remove(key);
        }
    }
    // The OOM killer marks the leader, or another thread when the leader exited first.
    for key in [tgid, event.tid] {
        if let Some(oom) = OOM_VICTIMS.get_ptr(key) {
            // SAFETY: as above.
            event.oom = unsafe { *oom };
            event.flags |= death_flags::OOM;
            if event.oom.fields & oom_fields::MEMCG == 0 {
                // Rare (an OOM kill whose memory cgroup could not be read); logged here, not in
                // `oom.rs`: see `maps::fail_quietly`.
                aya_log_ebpf::debug!(&(), "oom: victim {} died without its memory cgroup", tgid);
            }
            let _ = OOM_VICTIMS.remove(key);
            break;
        }
    }

    if SPAWNED.get_ptr(tgid).is_some() {
        event.flags |= death_flags::SPAWNED;
        let _ = SPAWNED.remove(tgid);
    }
    event.ns_pid = ns_pid();

    let parent: u64 = read(task, offset!(task_real_parent)?)?;
    event.ppid = read(parent, offset!(task_tgid)?)?;
    Ok(())
}

/// The dying thread group's id in the watched manager's pid namespace (`current` is the dying
/// thread in both exit hooks); 0 when no namespace is set or the process is outside it.
#[inline(always)]
fn ns_pid() -> u32 {
    let Some(watch) = WATCH.get(0) else {
        return 0;
    };
    let (dev, ino) = (watch.pidns_dev, watch.pidns_ino);
    if ino == 0 {
        return 0;
    }
    let mut ids = aya_ebpf::bindings::bpf_pidns_info { pid: 0, tgid: 0 };
    // SAFETY: `ids` is a writable `bpf_pidns_info` of the size passed; the helper fails (non-zero)
    // rather than writing when the current task is not in that namespace.
    let rc = unsafe {
        aya_ebpf::helpers::generated::bpf_get_ns_current_pid_tgid(
            dev,
            ino,
            &raw mut ids,
            size_of::<aya_ebpf::bindings::bpf_pidns_info>() as u32,
        )
    };
    if rc == 0 { ids.tgid } else { 0 }
}
