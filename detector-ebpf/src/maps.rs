//! Every map and loader-set global of the kernel programs.

use aya_ebpf::{
    Global,
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
};
use detector_common::{Offsets, OomInfo, SenderKey, SignalSender, Watch, counter};

/// Death records to userspace. The loader may resize it (`--ringbuf-bytes`).
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Per-CPU counters indexed by [`detector_common::counter`]: failures are counted, not printed.
#[map]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Last delivered signal per (thread group, signal), until the death it explains. LRU: a process
/// that handles a signal and lives on must not pin an entry forever.
#[map]
pub(crate) static SENDERS: LruHashMap<SenderKey, SignalSender> =
    LruHashMap::with_max_entries(16384, 0);

/// OOM victims (by the thread the OOM killer marked) waiting for their death.
#[map]
pub(crate) static OOM_VICTIMS: LruHashMap<u32, OomInfo> = LruHashMap::with_max_entries(1024, 0);

/// The kind of reclaim (`detector_common::oom_constraint`) each task did last, by pid_tgid. Only
/// tasks under memory pressure reclaim, so this stays small; LRU bounds it anyway.
#[map]
pub(crate) static LAST_RECLAIM: LruHashMap<u64, u32> = LruHashMap::with_max_entries(4096, 0);

/// Offsets of kernel fields in this kernel, set by the loader from BTF and tracepoint formats.
// SAFETY: the loader finds this global by its unmangled name to set it; no other symbol in the
// object has that name.
#[unsafe(no_mangle)]
pub(crate) static OFFSETS: Global<Offsets> = Global::new(Offsets::ABSENT);

/// Processes the watched manager forked itself, by thread group, until their death. LRU: a
/// process whose death is never seen (a clean exit is filtered before the lookup) must not pin
/// an entry forever.
#[map]
pub(crate) static SPAWNED: LruHashMap<u32, u32> = LruHashMap::with_max_entries(16384, 0);

/// The watched systemd manager, written by the daemon at every start (entry 0). A map, not a
/// loader-set global: with pinned links the programs outlive the daemon that loaded them, and a
/// daemon that reattaches to them may watch another manager (a machine rebooted, another
/// `--root`); a global would be frozen at the first load.
#[map]
pub(crate) static WATCH: Array<Watch> = Array::with_max_entries(1, 0);

/// Counter totals the daemon has already reported, by [`detector_common::counter`] index. Only
/// the daemon reads and writes it; pinned with `COUNTERS`, it lets a daemon that reattaches
/// report what was lost while none ran, and nothing twice.
#[map]
pub(crate) static REPORTED: Array<u64> = Array::with_max_entries(counter::COUNT, 0);

/// Adds one to a per-CPU counter; returns its new value on this CPU (0 if the slot is missing).
#[inline(always)]
pub(crate) fn count(index: u32) -> u64 {
    match COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot is only touched by programs on this CPU, and BPF programs do not
        // preempt each other on one CPU for these hook types.
        Some(slot) => unsafe {
            *slot += 1;
            *slot
        },
        None => 0,
    }
}

/// Counts a failure of `kind` without a kernel message: for `oom.rs`, whose `mark_victim`
/// program the 6.1 verifier rejects with aya-log's code in it (its rare path is logged at the
/// death instead, by `exit`).
#[inline(always)]
pub(crate) fn fail_quietly(kind: u32) {
    let _ = count(kind);
}

/// Counts a failure of `kind` (one of [`detector_common::counter`]), and says so through
/// aya-log the 1st, 2nd, 4th, 8th... time on this CPU: the first of a kind is always seen, a
/// storm of failures logs a few dozen lines, never one per event. Off unless the daemon runs at
/// debug: the loader sets `AYA_LOG_LEVEL` (read-only data, so the verifier drops the logging
/// code as dead when it is 0).
#[inline(always)]
pub(crate) fn fail(kind: u32) {
    let n = count(kind);
    if n.is_power_of_two() {
        aya_log_ebpf::debug!(&(), "{} failed ({} on this CPU)", counter::name(kind), n);
    }
}
