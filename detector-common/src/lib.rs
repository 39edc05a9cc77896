//! Records the kernel programs write into the ring buffer, and the tunables the loader passes in.
//!
//! Rules for everything here, because both a BPF and a host compiler lay these out:
//! `#[repr(C)]`, every padding byte spelled out as a field, no `bool`, no enums on the wire (event
//! kinds are numbered `u32` constants that never change meaning), and a `const` assertion of each
//! size. The daemon checks at test time that the object it embeds was built with the same layouts
//! (see [`LAYOUTS`]).
#![no_std]

pub mod wait;

/// `TASK_COMM_LEN` in include/linux/sched.h: the kernel's fixed command-name buffer.
pub const COMM_LEN: usize = 16;
/// How many bytes of a memory cgroup's own directory name the OOM probe copies.
pub const CGROUP_NAME_LEN: usize = 64;

/// Stable numbers for the records in the ring buffer. A number is never reused for another shape.
pub mod event_kind {
    /// A thread group died with a non-zero wait status: [`crate::DeathEvent`].
    pub const DEATH: u32 = 1;
    /// A cgroup2 directory was created: [`crate::CgroupEvent`].
    pub const CGROUP_MKDIR: u32 = 2;
    /// A cgroup2 directory was removed: [`crate::CgroupEvent`].
    pub const CGROUP_RMDIR: u32 = 3;
}

/// Bytes of a cgroup path the kernel programs copy; longer paths are cut and flagged.
pub const CGROUP_PATH_LEN: usize = 256;

/// Bits of [`DeathEvent::flags`].
pub mod death_flags {
    /// [`crate::DeathEvent::sender`] holds who generated the fatal signal.
    pub const SENDER: u32 = 1 << 0;
    /// [`crate::DeathEvent::oom`] holds the OOM killer's view of this victim.
    pub const OOM: u32 = 1 << 1;
    /// The watched systemd manager forked this process itself (`sched_process_fork` with the
    /// manager as parent): a unit's main or control process, never a worker. Unlike the parent at
    /// death, this survives reparenting: a supervisor's orphaned workers are reparented to the
    /// manager, but the manager did not fork them.
    pub const SPAWNED: u32 = 1 << 2;
}

/// Bits of [`OomInfo::fields`]: which figures the running kernel provided. Kernels without the 6.8
/// additions have no memory figures in `oom:mark_victim`; we report them as missing, not zero.
pub mod oom_fields {
    pub const TOTAL_VM: u32 = 1 << 0;
    pub const ANON_RSS: u32 = 1 << 1;
    pub const FILE_RSS: u32 = 1 << 2;
    pub const SHMEM_RSS: u32 = 1 << 3;
    pub const OOM_SCORE_ADJ: u32 = 1 << 4;
    /// `memcg_id` and `memcg_name` name the OOM-invoking task's memory cgroup.
    pub const MEMCG: u32 = 1 << 5;
}

/// What ran out, as seen from the reclaim the OOM-invoking task did last: a memory cgroup's
/// charge path reclaims with `mm_vmscan_memcg_reclaim_begin`, the page allocator with
/// `mm_vmscan_direct_reclaim_begin` (mm/vmscan.c), and both give up into the OOM killer.
pub mod oom_constraint {
    pub const UNKNOWN: u32 = 0;
    pub const MEMCG: u32 = 1;
    pub const GLOBAL: u32 = 2;
}

/// Indexes into the per-CPU `COUNTERS` map: what the kernel programs wrote, and each kind of
/// failure, specific enough to act on. Stable: a number never changes meaning and is never reused;
/// the daemon exports each under its [`counter::name`] (`detector_kernel_errors_total{kind}`).
pub mod counter {
    /// Death records written to the ring buffer.
    pub const EMITTED: u32 = 0;
    /// Death records lost because the ring buffer had no room (`--ringbuf-bytes`, a daemon that
    /// does not read).
    pub const RINGBUF_FULL: u32 = 1;
    // 2 and 3 were the generic `KERNEL_READ` and `MAP_UPDATE` before the kinds below; retired.
    /// cgroup2 mkdir/rmdir records lost because the ring buffer had no room: a unit's cgroup
    /// path may be looked up late (or be null when the cgroup is already gone).
    pub const RINGBUF_FULL_CGROUP: u32 = 4;
    /// The dying task's wait status could not be read (`task->signal`, its flags and codes):
    /// the death was not reported at all.
    pub const READ_EXIT_STATUS: u32 = 5;
    /// The dying task's ids, command name or parent could not be read: the record went out with
    /// zeros in their place.
    pub const READ_TASK: u32 = 6;
    /// A signal's siginfo or target could not be read: its sender is missing from the death.
    pub const READ_SIGNAL: u32 = 7;
    /// A field of the `oom:mark_victim` record could not be read: an OOM figure is missing.
    pub const READ_OOM_FIELDS: u32 = 8;
    /// The OOM-invoking task's memory cgroup (`css_set` → `cgroup` → kernfs id and name) could
    /// not be read: the OOM record has no memcg.
    pub const READ_MEMCG: u32 = 9;
    /// A field of a `cgroup:cgroup_mkdir`/`rmdir` record could not be read: the event was not
    /// written.
    pub const READ_CGROUP: u32 = 10;
    /// A cgroup's path could not be copied: the event went out with an empty path.
    pub const READ_CGROUP_PATH: u32 = 11;
    /// A forked process's ids could not be read: a unit's main process may count as a worker.
    pub const READ_FORK: u32 = 12;
    /// `SENDERS` refused an update: a fatal signal's sender is missing from its death.
    pub const MAP_SENDERS: u32 = 13;
    /// `OOM_VICTIMS` refused an update: an OOM kill is reported as a plain SIGKILL.
    pub const MAP_OOM_VICTIMS: u32 = 14;
    /// `SPAWNED` refused an update: a unit's main process may count as a worker.
    pub const MAP_SPAWNED: u32 = 15;
    /// `LAST_RECLAIM` refused an update: an OOM's constraint (memcg or global) may be unknown.
    pub const MAP_LAST_RECLAIM: u32 = 16;
    pub const COUNT: u32 = 17;

    /// The failure kinds, in order: every index but [`EMITTED`] and the retired 2 and 3.
    pub const ERRORS: [u32; 14] = [
        RINGBUF_FULL,
        RINGBUF_FULL_CGROUP,
        READ_EXIT_STATUS,
        READ_TASK,
        READ_SIGNAL,
        READ_OOM_FIELDS,
        READ_MEMCG,
        READ_CGROUP,
        READ_CGROUP_PATH,
        READ_FORK,
        MAP_SENDERS,
        MAP_OOM_VICTIMS,
        MAP_SPAWNED,
        MAP_LAST_RECLAIM,
    ];

    /// The stable name of a counter: the `kind` label of its metric, the word in the logs (the
    /// kernel programs' own included).
    #[must_use]
    pub const fn name(index: u32) -> &'static str {
        match index {
            EMITTED => "emitted",
            RINGBUF_FULL => "ringbuf_full_death",
            RINGBUF_FULL_CGROUP => "ringbuf_full_cgroup",
            READ_EXIT_STATUS => "read_exit_status",
            READ_TASK => "read_task",
            READ_SIGNAL => "read_signal",
            READ_OOM_FIELDS => "read_oom_fields",
            READ_MEMCG => "read_memcg",
            READ_CGROUP => "read_cgroup",
            READ_CGROUP_PATH => "read_cgroup_path",
            READ_FORK => "read_fork",
            MAP_SENDERS => "map_senders",
            MAP_OOM_VICTIMS => "map_oom_victims",
            MAP_SPAWNED => "map_spawned",
            MAP_LAST_RECLAIM => "map_last_reclaim",
            _ => "retired",
        }
    }

    /// A failed read of kernel memory (`read_*`), rather than a full ring or a refused map update.
    #[must_use]
    pub const fn is_read(index: u32) -> bool {
        matches!(index, READ_EXIT_STATUS..=READ_FORK)
    }

    /// A map that refused an update (`map_*`).
    #[must_use]
    pub const fn is_map(index: u32) -> bool {
        matches!(index, MAP_SENDERS..=MAP_LAST_RECLAIM)
    }
}

/// Header of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHeader {
    /// One of [`event_kind`].
    pub kind: u32,
    /// Size in bytes of the whole record, header included.
    pub size: u32,
}

/// Who generated a signal: recorded by the `signal_generate` probe, attached to the death it caused.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignalSender {
    /// `bpf_ktime_get_ns()` when the signal was generated.
    pub ktime_ns: u64,
    /// Thread group of the task that was running when the signal was generated.
    pub pid: u32,
    /// That task's own id.
    pub tid: u32,
    pub signo: u32,
    /// `si_code` as the target will see it (`SI_USER` for the in-kernel `SEND_SIG_NOINFO`).
    pub code: i32,
    /// 1 when the kernel generated the signal on its own account: a fault (`si_code > 0`), the
    /// OOM killer or a tty (`SEND_SIG_PRIV`), a broken pipe (`SEND_SIG_NOINFO`). 0 when a task
    /// asked for it with `kill`, `tgkill`, `sigqueue`, ... (those always carry a real siginfo).
    pub kernel: u32,
    pub pad0: u32,
    pub comm: [u8; COMM_LEN],
}

/// The OOM killer's view of one victim, from `oom:mark_victim` and the `oom_control` in flight.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OomInfo {
    pub ktime_ns: u64,
    pub total_vm_kb: u64,
    pub anon_rss_kb: u64,
    pub file_rss_kb: u64,
    pub shmem_rss_kb: u64,
    /// kernfs id (the directory's inode number) of the memory cgroup the OOM-invoking task was
    /// charging: in its own hierarchy, v1 `memory` or cgroup2.
    pub memcg_id: u64,
    /// Bits of [`oom_fields`].
    pub fields: u32,
    /// One of [`oom_constraint`].
    pub constraint: u32,
    pub oom_score_adj: i32,
    /// The thread `mark_victim` named.
    pub victim_tid: u32,
    /// The task whose allocation invoked the OOM killer (`current` in `out_of_memory`).
    pub trigger_pid: u32,
    pub trigger_tid: u32,
    pub trigger_comm: [u8; COMM_LEN],
    /// NUL-terminated leaf name of the memory cgroup, in case it is gone before the daemon looks.
    pub memcg_name: [u8; CGROUP_NAME_LEN],
}

/// One record per thread-group death with a non-zero wait status.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeathEvent {
    pub header: EventHeader,
    /// Bits of [`death_flags`].
    pub flags: u32,
    /// The wait status exactly as `wait4()` would return it: `(code << 8) | signal`, `0x80` = core.
    pub wait_status: u32,
    /// `bpf_ktime_get_ns()` (`CLOCK_MONOTONIC`) when the last thread of the group exited.
    pub ktime_ns: u64,
    /// cgroup v2 id of the dying task (`bpf_get_current_cgroup_id`).
    pub cgroup_id: u64,
    /// Thread group id: the pid users know.
    pub pid: u32,
    /// The thread that exited last and so carried the group's death.
    pub tid: u32,
    /// Thread group id of `real_parent`.
    pub ppid: u32,
    /// The thread group id in the watched manager's pid namespace (what its journal calls
    /// `_PID`), from `bpf_get_ns_current_pid_tgid`; 0 when unknown or outside that namespace.
    pub ns_pid: u32,
    /// The thread group leader's command name.
    pub comm: [u8; COMM_LEN],
    pub sender: SignalSender,
    pub oom: OomInfo,
}

/// A cgroup2 directory created or removed (`cgroup:cgroup_mkdir` / `cgroup:cgroup_rmdir`). The
/// creation reaches the ring buffer before any death inside the cgroup can, so the daemon knows
/// every path before it needs it, however soon the cgroup is removed after the death.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupEvent {
    pub header: EventHeader,
    /// The cgroup id (its kernfs id, the directory's inode number), as deaths carry it.
    pub id: u64,
    /// Depth below the root (the root is 0).
    pub level: u32,
    /// Bytes of `path` used, without the NUL; `CGROUP_PATH_LEN` when the path was cut.
    pub path_len: u32,
    /// Path relative to the cgroup2 root, e.g. `/system.slice/app.service`; NUL-padded.
    pub path: [u8; CGROUP_PATH_LEN],
}

const _: () = assert!(size_of::<CgroupEvent>() == 8 + 8 + 8 + CGROUP_PATH_LEN);

/// The systemd manager being watched, set by the loader: whose children are units' main and
/// control processes, and whose pid namespace the journal's `_PID`s are in.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watch {
    /// The manager's thread group id in the initial pid namespace; 0: none known.
    pub manager_tgid: u32,
    pub pad0: u32,
    /// `st_dev` and `st_ino` of the manager's `/proc/PID/ns/pid`; 0: none known.
    pub pidns_dev: u64,
    pub pidns_ino: u64,
}

impl Watch {
    /// Nothing watched: no roles, no namespace pids.
    pub const NONE: Self = Self {
        manager_tgid: 0,
        pad0: 0,
        pidns_dev: 0,
        pidns_ino: 0,
    };
}

const _: () = assert!(size_of::<Watch>() == 24);

#[cfg(feature = "user")]
// SAFETY: `Watch` is `repr(C)` with its padding spelled out, valid for any bit pattern.
unsafe impl aya::Pod for Watch {}

const _: () = assert!(size_of::<EventHeader>() == 8);
const _: () = assert!(size_of::<SignalSender>() == 48);
const _: () = assert!(size_of::<OomInfo>() == 152);
const _: () = assert!(size_of::<DeathEvent>() == 64 + 48 + 152);
// The ring buffer hands out 8-byte aligned slots; anything wider cannot be reserved in place.
const _: () = assert!(align_of::<DeathEvent>() == 8);

/// The version of the records' meaning. A daemon decodes records left in a pinned ring buffer by
/// another build only when this and [`LAYOUTS`] are the same: bump it when a field of a record
/// changes meaning or place without changing a size.
pub const RECORD_VERSION: u32 = 1;

/// `(size, alignment)` of each shared type, in a fixed order. The kernel object exports the same
/// table as the `DETECTOR_LAYOUTS` symbol, built by the BPF compiler; a daemon test compares the two.
pub const LAYOUTS: [u32; 14] = [
    size_of::<EventHeader>() as u32,
    align_of::<EventHeader>() as u32,
    size_of::<SignalSender>() as u32,
    align_of::<SignalSender>() as u32,
    size_of::<OomInfo>() as u32,
    align_of::<OomInfo>() as u32,
    size_of::<DeathEvent>() as u32,
    align_of::<DeathEvent>() as u32,
    size_of::<Offsets>() as u32,
    align_of::<Offsets>() as u32,
    size_of::<CgroupEvent>() as u32,
    align_of::<CgroupEvent>() as u32,
    size_of::<Watch>() as u32,
    align_of::<Watch>() as u32,
];

/// How many field names follow: for the length of [`FIELD_OFFSETS`].
macro_rules! count {
    () => { 0 };
    ($first:ident $($rest:ident)*) => { 1 + count!($($rest)*) };
}

/// The offsets of every field of the records, in a fixed order.
macro_rules! field_offsets {
    ($($t:ty { $($field:ident),* $(,)? })*) => {
        /// The byte offset of every field of the shared records and globals, in a fixed order.
        /// The kernel object exports the same table as built by the BPF compiler
        /// (`DETECTOR_FIELD_OFFSETS`), and a daemon test compares the two: a field the two
        /// compilers place differently fails that test, which sizes alone would not catch.
        pub const FIELD_OFFSETS: [u32; 0 $($(+ count!($field))*)*] =
            [$($(core::mem::offset_of!($t, $field) as u32),*),*];
    };
}

field_offsets! {
    EventHeader { kind, size }
    SignalSender { ktime_ns, pid, tid, signo, code, kernel, pad0, comm }
    OomInfo {
        ktime_ns, total_vm_kb, anon_rss_kb, file_rss_kb, shmem_rss_kb, memcg_id, fields,
        constraint, oom_score_adj, victim_tid, trigger_pid, trigger_tid, trigger_comm, memcg_name,
    }
    DeathEvent {
        header, flags, wait_status, ktime_ns, cgroup_id, pid, tid, ppid, ns_pid, comm, sender, oom,
    }
    CgroupEvent { header, id, level, path_len, path }
    Watch { manager_tgid, pad0, pidns_dev, pidns_ino }
    SenderKey { tgid, signo }
}

/// Key of the pending-signal map: one slot per (thread group, signal) so that a later harmless
/// signal (SIGCHLD, say) does not overwrite who sent the fatal one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenderKey {
    pub tgid: u32,
    pub signo: u32,
}

const _: () = assert!(size_of::<SenderKey>() == 8);

/// Field offsets the kernel programs need, read by the loader from this kernel's BTF
/// (/sys/kernel/btf/vmlinux) and from tracepoint `format` files. Rust BPF has no CO-RE relocations,
/// so nothing here may be compiled in. [`ABSENT`] marks a field the running kernel does not have.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    // struct task_struct
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_real_parent: u32,
    pub task_group_leader: u32,
    pub task_signal: u32,
    pub task_exit_code: u32,
    pub task_comm: u32,
    // struct signal_struct
    pub signal_flags: u32,
    pub signal_group_exit_code: u32,
    // struct kernel_siginfo
    pub siginfo_code: u32,
    // current->cgroups->subsys[memory_cgrp_id]->cgroup->kn->{id, name}
    pub task_cgroups: u32,
    pub css_set_subsys: u32,
    /// Not an offset: `memory_cgrp_id`, the memory controller's index in `subsys[]`.
    pub memory_cgrp_id: u32,
    pub css_cgroup: u32,
    pub cgroup_kn: u32,
    pub kn_id: u32,
    pub kn_name: u32,
    // Fields of the oom:mark_victim tracepoint record (from its `format` file).
    pub mv_pid: u32,
    pub mv_total_vm: u32,
    pub mv_anon_rss: u32,
    pub mv_file_rss: u32,
    pub mv_shmem_rss: u32,
    pub mv_oom_score_adj: u32,
    // Fields of the cgroup:cgroup_mkdir / cgroup_rmdir records (one event class, one layout).
    pub cg_root: u32,
    pub cg_level: u32,
    pub cg_id: u32,
    /// The `__data_loc` word of `path`: offset in the low 16 bits, length in the high 16.
    pub cg_path: u32,
}

const _: () = assert!(size_of::<Offsets>() == 27 * 4);

impl Offsets {
    /// Every offset absent: what the kernel programs see if the loader set nothing.
    pub const ABSENT: Self = Self {
        task_pid: ABSENT,
        task_tgid: ABSENT,
        task_real_parent: ABSENT,
        task_group_leader: ABSENT,
        task_signal: ABSENT,
        task_exit_code: ABSENT,
        task_comm: ABSENT,
        signal_flags: ABSENT,
        signal_group_exit_code: ABSENT,
        siginfo_code: ABSENT,
        task_cgroups: ABSENT,
        css_set_subsys: ABSENT,
        memory_cgrp_id: ABSENT,
        css_cgroup: ABSENT,
        cgroup_kn: ABSENT,
        kn_id: ABSENT,
        kn_name: ABSENT,
        mv_pid: ABSENT,
        mv_total_vm: ABSENT,
        mv_anon_rss: ABSENT,
        mv_file_rss: ABSENT,
        mv_shmem_rss: ABSENT,
        mv_oom_score_adj: ABSENT,
        cg_root: ABSENT,
        cg_level: ABSENT,
        cg_id: ABSENT,
        cg_path: ABSENT,
    };
}

/// Marks a field this kernel lacks; probes skip reading it.
pub const ABSENT: u32 = u32::MAX;

#[cfg(feature = "user")]
// SAFETY: `Offsets` is `repr(C)`, all `u32`, no padding, valid for any bit pattern.
unsafe impl aya::Pod for Offsets {}

// SAFETY (the three below): `repr(C)` records of integers and integer arrays, every padding
// byte a named field (their sizes are asserted above), so any bit pattern is a valid value:
// the daemon decodes them from ring-buffer bytes.
#[cfg(feature = "user")]
unsafe impl aya::Pod for EventHeader {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for DeathEvent {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for CgroupEvent {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_kinds_have_one_name_each() {
        let mut names = [""; counter::ERRORS.len()];
        for (slot, kind) in names.iter_mut().zip(counter::ERRORS) {
            assert!(kind < counter::COUNT);
            assert_ne!(counter::name(kind), "retired", "{kind}");
            assert!(
                counter::is_read(kind)
                    || counter::is_map(kind)
                    || counter::name(kind).starts_with("ringbuf_full"),
                "{kind}"
            );
            *slot = counter::name(kind);
        }
        for (i, a) in names.iter().enumerate() {
            assert!(!names[i + 1..].contains(a), "{a} twice");
        }
        assert_eq!(counter::name(2), "retired");
        assert_eq!(counter::name(3), "retired");
        assert_eq!(counter::ERRORS.len() as u32, counter::COUNT - 3);
    }

    #[test]
    fn flag_bits_do_not_overlap() {
        let all = [
            oom_fields::TOTAL_VM,
            oom_fields::ANON_RSS,
            oom_fields::FILE_RSS,
            oom_fields::SHMEM_RSS,
            oom_fields::OOM_SCORE_ADJ,
            oom_fields::MEMCG,
        ];
        let deaths = [death_flags::SENDER, death_flags::OOM, death_flags::SPAWNED];
        let mut seen = 0u32;
        for bit in deaths {
            assert_eq!(bit.count_ones(), 1);
            assert_eq!(seen & bit, 0, "bit {bit:#x} reused");
            seen |= bit;
        }
        let mut seen = 0u32;
        for bit in all {
            assert_eq!(bit.count_ones(), 1);
            assert_eq!(seen & bit, 0, "bit {bit:#x} reused");
            seen |= bit;
        }
    }
}
