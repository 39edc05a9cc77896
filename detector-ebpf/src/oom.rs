//! The OOM killer's victims.
//!
//! Hooks, all tracepoints (function hooks are a build or policy option on some hosts: this
//! project's VM kernel has no kprobes and refuses fentry):
//! - classic tracepoint `oom:mark_victim`, fired by `mark_oom_victim()` inside `out_of_memory()`
//!   in the context of the task whose allocation invoked the OOM killer (mm/oom_kill.c). Classic,
//!   not raw: the kernel computes the victim's memory figures (kB) for the event record, the same
//!   numbers it prints in "Killed process"; a BPF program could not sum the per-CPU counters.
//!   Field offsets come from its `format` file; kernels without the 6.8 additions (unless backported, as Debian's 6.1 did) have only `pid`.
//! - raw tracepoints `mm_vmscan_memcg_reclaim_begin` and `mm_vmscan_direct_reclaim_begin`: the
//!   reclaim a task did last before invoking the OOM killer says what ran out. A memory cgroup's
//!   charge path (`try_charge_memcg` → `try_to_free_mem_cgroup_pages`) reclaims with the first,
//!   the page allocator (`__alloc_pages_direct_reclaim`) with the second.
//!
//! The memory cgroup reported is the one the invoking task belongs to, read through
//! `current->cgroups->subsys[memory_cgrp_id]`: the cgroup whose charge failed, or a child of it
//! when the limit sits on an ancestor. The victim's details wait in `OOM_VICTIMS` until `exit`
//! attaches them to its death.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_probe_read_kernel_str_bytes,
    },
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use detector_common::{OomInfo, counter, oom_constraint, oom_fields};

use crate::{
    kernel::{Error, now_ns, offset, read},
    maps::{LAST_RECLAIM, OOM_VICTIMS, fail_quietly},
};

#[inline(always)]
fn note_reclaim(kind: u32) {
    if LAST_RECLAIM
        .insert(bpf_get_current_pid_tgid(), kind, 0)
        .is_err()
    {
        fail_quietly(counter::MAP_LAST_RECLAIM);
    }
}

#[raw_tracepoint(tracepoint = "mm_vmscan_memcg_reclaim_begin")]
pub(crate) fn memcg_reclaim_begin(_ctx: RawTracePointContext) -> i32 {
    note_reclaim(oom_constraint::MEMCG);
    0
}

#[raw_tracepoint(tracepoint = "mm_vmscan_direct_reclaim_begin")]
pub(crate) fn direct_reclaim_begin(_ctx: RawTracePointContext) -> i32 {
    note_reclaim(oom_constraint::GLOBAL);
    0
}

#[tracepoint]
pub(crate) fn mark_victim(ctx: TracePointContext) -> u32 {
    let _ = try_mark_victim(&ctx);
    0
}

/// Reads an optional tracepoint field, setting `bit` in `fields` when the kernel has it.
#[inline(always)]
fn field<T: Default>(
    ctx: &TracePointContext,
    at: Result<u64, Error>,
    bit: u32,
    fields: &mut u32,
) -> T {
    let Ok(at) = at else { return T::default() };
    // SAFETY: `at` is an offset inside this event's record, from its `format` file.
    if let Ok(value) = unsafe { ctx.read_at::<T>(at as usize) } {
        *fields |= bit;
        value
    } else {
        fail_quietly(counter::READ_OOM_FIELDS);
        T::default()
    }
}

/// Id and name of `current`'s memory cgroup.
#[inline(always)]
fn current_memcg(info: &mut OomInfo) -> Result<(), Error> {
    // SAFETY: the helper only returns the current task pointer.
    let task = unsafe { bpf_get_current_task() };
    let css_set: u64 = read(task, offset!(task_cgroups)?)?;
    let slot = offset!(css_set_subsys)? + offset!(memory_cgrp_id)? * 8;
    let css: u64 = read(css_set, slot)?;
    let cgroup: u64 = read(css, offset!(css_cgroup)?)?;
    let kn: u64 = read(cgroup, offset!(cgroup_kn)?)?;
    info.memcg_id = read(kn, offset!(kn_id)?)?;
    let name: u64 = read(kn, offset!(kn_name)?)?;
    // SAFETY: a probe read of a kernel string; a bad pointer fails, it never faults.
    if unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, &mut info.memcg_name) }.is_err()
    {
        fail_quietly(counter::READ_MEMCG);
    }
    info.fields |= oom_fields::MEMCG;
    Ok(())
}

#[inline(always)]
fn try_mark_victim(ctx: &TracePointContext) -> Result<(), Error> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let mut fields = 0;
    let mut info = OomInfo {
        ktime_ns: now_ns(),
        total_vm_kb: field(ctx, offset!(mv_total_vm), oom_fields::TOTAL_VM, &mut fields),
        anon_rss_kb: field(ctx, offset!(mv_anon_rss), oom_fields::ANON_RSS, &mut fields),
        file_rss_kb: field(ctx, offset!(mv_file_rss), oom_fields::FILE_RSS, &mut fields),
        shmem_rss_kb: field(
            ctx,
            offset!(mv_shmem_rss),
            oom_fields::SHMEM_RSS,
            &mut fields,
        ),
        memcg_id: 0,
        fields: 0,
        constraint: oom_constraint::UNKNOWN,
        oom_score_adj: i32::from(field::<i16>(
            ctx,
            offset!(mv_oom_score_adj),
            oom_fields::OOM_SCORE_ADJ,
            &mut fields,
        )),
        victim_tid: field::<u32>(ctx, offset!(mv_pid), 0, &mut fields),
        trigger_pid: (pid_tgid >> 32) as u32,
        trigger_tid: pid_tgid as u32,
        trigger_comm: bpf_get_current_comm().unwrap_or_default(),
        memcg_name: [0; detector_common::CGROUP_NAME_LEN],
    };
    info.fields = fields;
    if let Some(kind) = LAST_RECLAIM.get_ptr(pid_tgid) {
        // SAFETY: a map value pointer from a successful lookup, valid for this program run.
        info.constraint = unsafe { *kind };
    }
    // Missing offsets or a failed read leave the memcg out; the victim is still reported.
    // A failed read is counted; `exit` logs the victim without a memcg at its death.
    if let Err(Error::Read) = current_memcg(&mut info) {
        fail_quietly(counter::READ_MEMCG);
    }
    // The OOM killer picks a process (a thread-group leader) and marks the thread of it that still
    // has an mm: the leader itself unless the leader already exited, so key by the marked thread;
    // `exit` looks under the group id and then under its own thread id.
    OOM_VICTIMS.insert(info.victim_tid, info, 0).map_err(|_| {
        fail_quietly(counter::MAP_OOM_VICTIMS);
        Error::Counted
    })
}
