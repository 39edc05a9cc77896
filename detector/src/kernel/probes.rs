//! Loading and attaching the kernel programs, with the offsets this kernel needs.
//!
//! Hook choice (the first one the kernel has wins):
//! - death of a thread group: raw tracepoint `sched_process_exit` when it carries `group_dead`
//!   (6.16+), else fentry on `taskstats_exit`, which gets the same `group_dead`;
//! - fatal-signal sender: raw tracepoint `signal_generate` (4.17+);
//! - cgroup2 paths ahead of need: classic tracepoints `cgroup:cgroup_mkdir` / `cgroup_rmdir`;
//! - OOM: classic tracepoint `oom:mark_victim`, raw tracepoints `mm_vmscan_memcg_reclaim_begin`
//!   and `mm_vmscan_direct_reclaim_begin` (see the kernel side's `oom.rs`). Missing OOM hooks or
//!   fields degrade the `oom` object (logged); they never stop the daemon.
//!
//! Tracepoints only on the main paths: function hooks are optional on real hosts (this project's
//! VM kernel has CONFIG_KPROBES off and refuses fentry programs).
//!
//! Raw tracepoints rather than classic ones where we only need the arguments: no record is
//! formatted for us, which matters on the exit path of every process on the host.
//!
//! Over 400 lines with its tests (the last 40): loading is one sequence (offsets, globals, each
//! hook and its fallback, the maps the programs need at once), read best in one place.

use std::{collections::HashMap, os::unix::fs::MetadataExt as _};

use aya::{
    Ebpf, EbpfLoader,
    programs::{FEntry, ProgramError, RawTracePoint, TracePoint},
};
use detector_common::{ABSENT, Offsets, Watch};

use crate::kernel::{btf::Btf, tracefs};

/// The kernel programs, built by `build.rs` for the BPF target.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/detector"));

/// The embedded kernel object, for tests that inspect it.
#[cfg(test)]
#[must_use]
pub(crate) fn object() -> &'static [u8] {
    OBJECT
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    #[error("detector must run as root to load eBPF programs (running as uid {0})")]
    NotRoot(u32),
    #[error(transparent)]
    Btf(#[from] crate::kernel::btf::BtfError),
    #[error(transparent)]
    Tracefs(#[from] tracefs::TracefsError),
    #[error("loading the kernel programs failed: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("kernel program `{program}` is missing from the object")]
    Missing { program: &'static str },
    #[error("kernel program `{program}` was rejected by the kernel: {detail}")]
    Rejected {
        program: &'static str,
        detail: String,
    },
    #[error("attaching `{program}` to {target} failed: {source}")]
    Attach {
        program: &'static str,
        target: String,
        source: ProgramError,
    },
    #[error("cannot read kernel BTF for fentry programs: {0}")]
    AyaBtf(String),
    #[error(
        "this kernel has neither a `sched_process_exit` tracepoint with `group_dead` nor a `taskstats_exit` function to attach to (CONFIG_TASKSTATS): {0}"
    )]
    NoExitHook(String),
}

/// How the running kernel is being watched, for the start-up log and `status` output.
#[derive(Debug, Default)]
pub(crate) struct Hooks {
    pub exit: &'static str,
    /// How the manager's own children are told from other processes.
    pub spawns: Option<&'static str>,
    pub cgroups: Option<&'static str>,
    pub oom: Option<&'static str>,
    /// What is missing on this kernel, one line each.
    pub degraded: Vec<String>,
}

/// Loaded and attached programs. Dropping it detaches everything.
pub(crate) struct Probes {
    pub ebpf: Ebpf,
    pub hooks: Hooks,
}

/// Field offsets from BTF. The ones the death record cannot do without fail start-up; the OOM
/// ones are left [`ABSENT`] with a note, and the OOM probe then reports less.
fn kernel_offsets(btf: &Btf, degraded: &mut Vec<String>) -> Result<Offsets, ProbeError> {
    let mut o = Offsets::ABSENT;
    let required = |s: &str, f: &str| btf.field_offset(s, f);
    o.task_pid = required("task_struct", "pid")?;
    o.task_tgid = required("task_struct", "tgid")?;
    o.task_real_parent = required("task_struct", "real_parent")?;
    o.task_group_leader = required("task_struct", "group_leader")?;
    o.task_signal = required("task_struct", "signal")?;
    o.task_exit_code = required("task_struct", "exit_code")?;
    o.task_comm = required("task_struct", "comm")?;
    o.signal_flags = required("signal_struct", "flags")?;
    o.signal_group_exit_code = required("signal_struct", "group_exit_code")?;
    o.siginfo_code = required("kernel_siginfo", "si_code")?;
    let mut optional = |slot: &mut u32, s: &str, f: &str| match btf.field_offset(s, f) {
        Ok(v) => *slot = v,
        Err(e) => degraded.push(format!("OOM memory cgroup: {e}")),
    };
    optional(&mut o.task_cgroups, "task_struct", "cgroups");
    optional(&mut o.css_set_subsys, "css_set", "subsys");
    optional(&mut o.css_cgroup, "cgroup_subsys_state", "cgroup");
    optional(&mut o.cgroup_kn, "cgroup", "kn");
    optional(&mut o.kn_id, "kernfs_node", "id");
    optional(&mut o.kn_name, "kernfs_node", "name");
    match btf
        .enum_values("cgroup_subsys_id")
        .iter()
        .find(|(name, _)| name == "memory_cgrp_id")
    {
        Some((_, id)) => o.memory_cgrp_id = u32::try_from(*id).unwrap_or(ABSENT),
        None => degraded.push(
            "OOM memory cgroup: this kernel has no memory controller (memory_cgrp_id)".to_owned(),
        ),
    }
    Ok(o)
}

/// Offsets of `oom:mark_victim` record fields; each one missing only costs its figure.
fn mark_victim_offsets(
    o: &mut Offsets,
    format: &HashMap<String, tracefs::Field>,
    degraded: &mut Vec<String>,
) {
    degraded.extend(tracefs::place_fields(
        "oom:mark_victim",
        format,
        &mut [
            ("pid", 4, &mut o.mv_pid),
            ("total_vm", 8, &mut o.mv_total_vm),
            ("anon_rss", 8, &mut o.mv_anon_rss),
            ("file_rss", 8, &mut o.mv_file_rss),
            ("shmem_rss", 8, &mut o.mv_shmem_rss),
            ("oom_score_adj", 2, &mut o.mv_oom_score_adj),
        ],
    ));
}

fn rejected(program: &'static str, e: &ProgramError) -> ProbeError {
    let detail = match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => format!("{io_error}\nverifier log:\n{verifier_log}"),
        other => other.to_string(),
    };
    ProbeError::Rejected { program, detail }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, ProbeError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or(ProbeError::Missing { program: name })?;
    prog.try_into().map_err(|e| rejected(name, &e))
}

fn attach_raw_tp(ebpf: &mut Ebpf, name: &'static str, tracepoint: &str) -> Result<(), ProbeError> {
    let prog: &mut RawTracePoint = program(ebpf, name)?;
    prog.load().map_err(|e| rejected(name, &e))?;
    prog.attach(tracepoint)
        .map_err(|source| ProbeError::Attach {
            program: name,
            target: format!("raw tracepoint {tracepoint}"),
            source,
        })?;
    Ok(())
}

fn attach_fentry(
    ebpf: &mut Ebpf,
    btf: &aya::Btf,
    name: &'static str,
    function: &str,
) -> Result<(), ProbeError> {
    let prog: &mut FEntry = program(ebpf, name)?;
    prog.load(function, btf).map_err(|e| rejected(name, &e))?;
    prog.attach().map_err(|source| ProbeError::Attach {
        program: name,
        target: format!("fentry {function}"),
        source,
    })?;
    Ok(())
}

fn attach_oom(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    attach_raw_tp(ebpf, "memcg_reclaim_begin", "mm_vmscan_memcg_reclaim_begin")?;
    attach_raw_tp(
        ebpf,
        "direct_reclaim_begin",
        "mm_vmscan_direct_reclaim_begin",
    )?;
    let prog: &mut TracePoint = program(ebpf, "mark_victim")?;
    prog.load().map_err(|e| rejected("mark_victim", &e))?;
    prog.attach("oom", "mark_victim")
        .map_err(|source| ProbeError::Attach {
            program: "mark_victim",
            target: "tracepoint oom:mark_victim".to_owned(),
            source,
        })?;
    Ok(())
}

/// Offsets of the `cgroup:cgroup_mkdir` record fields (`cgroup_rmdir` is the same event class);
/// the programs need all of them.
fn cgroup_offsets(o: &mut Offsets, format: &HashMap<String, tracefs::Field>) -> Result<(), String> {
    let problems = tracefs::place_fields(
        "cgroup:cgroup_mkdir",
        format,
        &mut [
            ("root", 4, &mut o.cg_root),
            ("level", 4, &mut o.cg_level),
            ("id", 8, &mut o.cg_id),
            ("path", 4, &mut o.cg_path),
        ],
    );
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

fn attach_cgroup(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    for name in ["cgroup_mkdir", "cgroup_rmdir"] {
        let prog: &mut TracePoint = program(ebpf, name)?;
        prog.load().map_err(|e| rejected(name, &e))?;
        prog.attach("cgroup", name)
            .map_err(|source| ProbeError::Attach {
                program: name,
                target: format!("tracepoint cgroup:{name}"),
                source,
            })?;
    }
    Ok(())
}

/// The watched manager for the kernel programs: its pid and its pid namespace's identity (as
/// `bpf_get_ns_current_pid_tgid` takes it: the nsfs device and inode of `/proc/PID/ns/pid`).
fn watch(manager_pid: Option<i32>) -> Watch {
    let Some(pid) = manager_pid.and_then(|p| u32::try_from(p).ok()) else {
        return Watch::NONE;
    };
    let mut watch = Watch {
        manager_tgid: pid,
        ..Watch::NONE
    };
    match std::fs::metadata(format!("/proc/{pid}/ns/pid")) {
        Ok(meta) => {
            watch.pidns_dev = meta.dev();
            watch.pidns_ino = meta.ino();
        }
        Err(e) => tracing::warn!(
            pid,
            error = %e,
            "cannot read the manager's pid namespace; worker deaths are matched in the journal without their pid"
        ),
    }
    watch
}

/// Marks the manager's children that already run (forked before we attached) as spawned by it.
fn mark_running_children(ebpf: &mut Ebpf, manager: u32) -> Result<usize, String> {
    let map = ebpf.map_mut("SPAWNED").ok_or("no SPAWNED map")?;
    let mut spawned: aya::maps::HashMap<_, u32, u32> =
        aya::maps::HashMap::try_from(map).map_err(|e| e.to_string())?;
    let processes = procfs::process::all_processes().map_err(|e| e.to_string())?;
    let mut marked = 0;
    for process in processes.flatten() {
        // Processes vanish while we walk; what is gone needs no mark.
        if let Ok(stat) = process.stat()
            && u32::try_from(stat.ppid) == Ok(manager)
            && let Ok(pid) = u32::try_from(stat.pid)
            && spawned.insert(pid, 1, 0).is_ok()
        {
            marked += 1;
        }
    }
    Ok(marked)
}

/// Checks the host, loads the programs with this kernel's offsets and attaches them.
/// `manager_pid` is the watched systemd's PID 1 in our pid namespace, when known.
pub(crate) fn load(ringbuf_bytes: u32, manager_pid: Option<i32>) -> Result<Probes, ProbeError> {
    let uid = nix::unistd::geteuid().as_raw();
    if uid != 0 {
        return Err(ProbeError::NotRoot(uid));
    }
    // Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; lift it so they can load us.
    if let Err(e) = nix::sys::resource::setrlimit(
        nix::sys::resource::Resource::RLIMIT_MEMLOCK,
        nix::sys::resource::RLIM_INFINITY,
        nix::sys::resource::RLIM_INFINITY,
    ) {
        tracing::debug!(error = %e, "could not lift RLIMIT_MEMLOCK");
    }
    let btf = Btf::from_sys_fs()?;
    let tracefs_dir = tracefs::locate()?;
    let mut hooks = Hooks::default();
    let mut offsets = kernel_offsets(&btf, &mut hooks.degraded)?;
    match tracefs::format(&tracefs_dir, "oom", "mark_victim") {
        Ok(format) => mark_victim_offsets(&mut offsets, &format, &mut hooks.degraded),
        Err(e) => hooks.degraded.push(e.to_string()),
    }
    let cgroup_events = match tracefs::format(&tracefs_dir, "cgroup", "cgroup_mkdir") {
        Ok(format) => cgroup_offsets(&mut offsets, &format),
        Err(e) => Err(e.to_string()),
    };
    let exit_has_group_dead = tracefs::format(&tracefs_dir, "sched", "sched_process_exit")
        .is_ok_and(|format| format.contains_key("group_dead"));

    // No CO-RE relocations to apply (offsets come in `OFFSETS`), so aya needs no target BTF.
    let mut ebpf = EbpfLoader::new()
        .btf(None)
        .override_global("OFFSETS", &offsets, true)
        .override_global("WATCH", &watch(manager_pid), true)
        .map_max_entries("EVENTS", ringbuf_bytes)
        .load(OBJECT)
        .map_err(ProbeError::Load)?;

    hooks.exit = if exit_has_group_dead {
        attach_raw_tp(&mut ebpf, "sched_process_exit", "sched_process_exit")?;
        "raw tracepoint sched_process_exit(group_dead)"
    } else {
        // aya's own BTF view: fentry programs need their target function's type.
        let aya_btf = aya::Btf::from_sys_fs().map_err(|e| ProbeError::AyaBtf(e.to_string()))?;
        attach_fentry(&mut ebpf, &aya_btf, "taskstats_exit", "taskstats_exit")
            .map_err(|e| ProbeError::NoExitHook(e.to_string()))?;
        "fentry taskstats_exit"
    };
    attach_raw_tp(&mut ebpf, "signal_generate", "signal_generate")?;
    if let Some(manager) = manager_pid.and_then(|p| u32::try_from(p).ok()) {
        // After attaching: a child forked during the scan is marked by the program.
        match attach_raw_tp(&mut ebpf, "sched_process_fork", "sched_process_fork")
            .map_err(|e| e.to_string())
            .and_then(|()| mark_running_children(&mut ebpf, manager))
        {
            Ok(marked) => {
                tracing::debug!(marked, "the manager's running children");
                hooks.spawns = Some("raw tracepoint sched_process_fork");
            }
            Err(e) => hooks.degraded.push(format!(
                "a unit's main process is told from its workers by its parent at death only, so a supervisor's orphaned workers count as main processes: {e}"
            )),
        }
    }
    match cgroup_events.and_then(|()| attach_cgroup(&mut ebpf).map_err(|e| e.to_string())) {
        Ok(()) => hooks.cgroups = Some("tracepoints cgroup:cgroup_mkdir, cgroup:cgroup_rmdir"),
        Err(e) => hooks.degraded.push(format!(
            "cgroup paths are looked up after each death, so a cgroup removed right after it may be null: {e}"
        )),
    }
    let oom_ready = offsets.mv_pid != ABSENT;
    if oom_ready {
        match attach_oom(&mut ebpf) {
            Ok(()) => {
                hooks.oom = Some(
                    "tracepoints oom:mark_victim, vmscan:mm_vmscan_{memcg,direct}_reclaim_begin",
                );
            }
            Err(e) => hooks
                .degraded
                .push(format!("OOM kills are reported without OOM details: {e}")),
        }
    } else {
        hooks.degraded.push(
            "OOM kills are reported without OOM details: no oom:mark_victim tracepoint".to_owned(),
        );
    }
    drop(btf);
    // Start-up parsed two copies of the kernel's BTF (ours and aya's): several MB of small
    // allocations the allocator keeps unless asked. Hand them back; the daemon runs for months.
    // SAFETY: malloc_trim only releases free heap memory; it has no preconditions.
    unsafe { libc::malloc_trim(0) };
    Ok(Probes { ebpf, hooks })
}

#[cfg(test)]
mod tests {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

    /// A `u32` table the kernel object exports as `name`.
    fn table(name: &str) -> Vec<u32> {
        let file = object::File::parse(super::object()).expect("embedded object is ELF");
        let symbol = file
            .symbols()
            .find(|s| s.name() == Ok(name))
            .unwrap_or_else(|| panic!("{name} symbol in the kernel object"));
        let section = file
            .section_by_index(symbol.section_index().expect("symbol has a section"))
            .expect("section");
        let data = section.data().expect("section data");
        let start = usize::try_from(symbol.address() - section.address()).expect("offset");
        let len = usize::try_from(symbol.size()).expect("size");
        data.get(start..start + len)
            .expect("symbol inside its section")
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect()
    }

    /// The kernel programs were compiled by another compiler for another target; this reads the
    /// tables they were built with out of the embedded object and compares them with ours: every
    /// type's size and alignment, and every field's offset.
    #[test]
    fn kernel_object_was_built_with_our_layouts() {
        assert_eq!(
            table("DETECTOR_LAYOUTS"),
            detector_common::LAYOUTS,
            "(size, align) of EventHeader, SignalSender, OomInfo, DeathEvent, Offsets, CgroupEvent, Watch"
        );
        assert_eq!(
            table("DETECTOR_FIELD_OFFSETS"),
            detector_common::FIELD_OFFSETS,
            "field offsets of EventHeader, SignalSender, OomInfo, DeathEvent, CgroupEvent, Watch, SenderKey"
        );
    }
}
