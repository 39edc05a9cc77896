//! Who generated each signal that could end a process.
//!
//! Hook: the raw tracepoint `signal_generate(int sig, struct kernel_siginfo *info,
//! struct task_struct *task, int group, int result)`, which fires in `__send_signal_locked()` in
//! the context of the sender (kernel/signal.c). Raw rather than the classic tracepoint because we
//! need the target's thread-group id, and only the `task` argument gives it. The sender is kept in
//! `SENDERS` under (target tgid, signal) until `exit` attaches it to the death it caused.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use detector_common::{SenderKey, SignalSender, counter};

use crate::{
    kernel::{Error, counted, now_ns, offset, read},
    maps::{SENDERS, fail},
};

/// `enum trace_signal_result` (include/trace/events/signal.h): the signal was queued, or queued
/// without its siginfo. Anything else (ignored, already pending, overflow) changed nothing.
const TRACE_SIGNAL_DELIVERED: i32 = 0;
const TRACE_SIGNAL_LOSE_INFO: i32 = 4;

/// `SEND_SIG_NOINFO` / `SEND_SIG_PRIV` (include/linux/sched/signal.h) are sentinel pointers, not
/// siginfo structs: a task's `kill()` without info, and a kernel-internal send (the OOM killer).
const SEND_SIG_NOINFO: u64 = 0;
const SEND_SIG_PRIV: u64 = 1;
/// `si_code` values (include/uapi/asm-generic/siginfo.h).
const SI_USER: i32 = 0;
const SI_KERNEL: i32 = 0x80;

/// Signals whose default action is to ignore or stop (asm-generic numbering, as on x86-64 and
/// arm64): they can never be the signal in a death's wait status, and SIGCHLD alone arrives once
/// per child death, so skipping them keeps the map quiet during fork storms.
const fn can_terminate(sig: u32) -> bool {
    !matches!(sig, 0 | 17..=23 | 28) && sig < 65
}

#[raw_tracepoint(tracepoint = "signal_generate")]
pub(crate) fn signal_generate(ctx: RawTracePointContext) -> i32 {
    let _ = try_signal_generate(&ctx);
    0
}

#[inline(always)]
fn try_signal_generate(ctx: &RawTracePointContext) -> Result<(), Error> {
    let result = ctx.arg::<u64>(4) as i32;
    if result != TRACE_SIGNAL_DELIVERED && result != TRACE_SIGNAL_LOSE_INFO {
        return Ok(());
    }
    let signo = ctx.arg::<u64>(0) as u32;
    if !can_terminate(signo) {
        return Ok(());
    }
    // `kill()` and friends always pass a real siginfo (`prepare_kill_siginfo`), so the two
    // sentinels only come from the kernel acting on its own: a tty, a broken pipe, the OOM killer.
    let (code, kernel) = match ctx.arg::<u64>(1) {
        SEND_SIG_NOINFO => (SI_USER, 1),
        SEND_SIG_PRIV => (SI_KERNEL, 1),
        info => {
            let code = counted(
                read::<i32>(info, offset!(siginfo_code)?),
                counter::READ_SIGNAL,
            )?;
            (code, u32::from(code > 0))
        }
    };
    let target: u64 = ctx.arg(2);
    let tgid: u32 = counted(read(target, offset!(task_tgid)?), counter::READ_SIGNAL)?;
    let pid_tgid = bpf_get_current_pid_tgid();
    let sender = SignalSender {
        ktime_ns: now_ns(),
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        signo,
        code,
        kernel,
        pad0: 0,
        comm: bpf_get_current_comm().unwrap_or_default(),
    };
    SENDERS
        .insert(SenderKey { tgid, signo }, sender, 0)
        .map_err(|_| {
            fail(counter::MAP_SENDERS);
            Error::Counted
        })
}
