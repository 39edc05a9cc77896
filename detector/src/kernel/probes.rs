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
//! With a pin directory (`--pin-dir`), the programs, their links and maps outlive the daemon
//! (see [`crate::kernel::pins`]): a daemon of the same build reattaches to them instead of
//! loading anything, and reads first what they wrote while no daemon ran.
//!
//! Over 400 lines with its tests (the last 40): loading is one sequence (pins or a fresh load,
//! globals, each hook and its fallback, the maps the programs need at once), read best in one
//! place.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use aya::{Ebpf, EbpfLoader, programs::ProgramError};
use detector_common::{ABSENT, Watch};

pub(crate) use crate::kernel::maps::Backlog;
use crate::kernel::{
    attach::Attacher,
    btf::Btf,
    clock,
    counters::Counters,
    log::{self, Logger},
    maps::{self, Maps, map_error},
    offsets,
    pins::{self, PinDir, Stamp},
    ring::{Ring, RingError},
    tracefs,
};

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
    #[error(transparent)]
    Pins(#[from] pins::PinError),
    #[error("pinning the link of `{program}` at {}: {detail}", path.display())]
    Pin {
        program: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("kernel map `{name}`: {detail}")]
    Map { name: &'static str, detail: String },
    #[error(transparent)]
    Ring(#[from] RingError),
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

/// What `load` needs to know.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub ringbuf_bytes: u32,
    /// The watched systemd's PID 1 in our pid namespace, when known.
    pub manager_pid: Option<i32>,
    /// Pin the programs here (bpffs) so that they outlive the daemon.
    pub pin_dir: Option<PathBuf>,
}

/// The attached programs and the maps the daemon reads. Without pins, dropping it detaches
/// everything; with pins, the programs run on.
pub(crate) struct Probes {
    pub ring: Ring,
    pub counters: Counters,
    pub hooks: Hooks,
    /// Older generations' rings, to read first.
    pub backlog: Vec<Backlog>,
    /// Kernel time (ns) when an older generation's programs and ours both ran, so that a death
    /// then may be in both rings.
    pub overlap: Option<(u64, u64)>,
    /// The programs were found pinned and running, not loaded now.
    pub reattached: bool,
    /// The programs' own messages, when this daemon shows them (debug) and loaded them.
    pub logger: Option<Logger>,
    /// Hold it as long as the daemon runs.
    pub attached: Attached,
}

/// What must live as long as the daemon: without pins, the loaded object, which owns the links
/// (dropped, the programs detach); with pins, the lock on the pin directory.
pub(crate) struct Attached {
    _ebpf: Option<Ebpf>,
    _pins: Option<PinDir>,
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

pub(crate) const SPAWNS: &str = "raw tracepoint sched_process_fork";
pub(crate) const SPAWNS_DEGRADED: &str = "a unit's main process is told from its workers by its parent at death only, so a supervisor's orphaned workers count as main processes";
pub(crate) const CGROUPS: &str = "tracepoints cgroup:cgroup_mkdir, cgroup:cgroup_rmdir";
pub(crate) const CGROUPS_DEGRADED: &str =
    "cgroup paths are looked up after each death, so a cgroup removed right after it may be null";
pub(crate) const OOM: &str =
    "tracepoints oom:mark_victim, vmscan:mm_vmscan_{memcg,direct}_reclaim_begin";
pub(crate) const OOM_DEGRADED: &str = "OOM kills are reported without OOM details";

/// What this kernel offers, read before loading.
struct Kernel {
    offsets: detector_common::Offsets,
    cgroup_events: Result<(), String>,
    exit_has_group_dead: bool,
}

fn read_kernel(hooks: &mut Hooks) -> Result<Kernel, ProbeError> {
    let btf = Btf::from_sys_fs()?;
    let tracefs_dir = tracefs::locate()?;
    let mut offsets = offsets::kernel_offsets(&btf, &mut hooks.degraded)?;
    match tracefs::format(&tracefs_dir, "oom", "mark_victim") {
        Ok(format) => offsets::mark_victim_offsets(&mut offsets, &format, &mut hooks.degraded),
        Err(e) => hooks.degraded.push(e.to_string()),
    }
    let cgroup_events = match tracefs::format(&tracefs_dir, "cgroup", "cgroup_mkdir") {
        Ok(format) => offsets::cgroup_offsets(&mut offsets, &format),
        Err(e) => Err(e.to_string()),
    };
    let exit_has_group_dead = tracefs::format(&tracefs_dir, "sched", "sched_process_exit")
        .is_ok_and(|format| format.contains_key("group_dead"));
    Ok(Kernel {
        offsets,
        cgroup_events,
        exit_has_group_dead,
    })
}

/// Loads the programs with this kernel's offsets and attaches them; with `pins`, pins their maps
/// and links there.
fn fresh(
    kernel: Kernel,
    options: &Options,
    watch: &Watch,
    pins: Option<&Path>,
    hooks: &mut Hooks,
) -> Result<(Ebpf, Maps, Option<Logger>), ProbeError> {
    let log_level = log::level();
    // No CO-RE relocations to apply (offsets come in `OFFSETS`), so aya needs no target BTF.
    let mut ebpf = EbpfLoader::new()
        .btf(None)
        .override_global("OFFSETS", &kernel.offsets, true)
        .override_global(aya_log::LEVEL, &log_level, true)
        .map_max_entries("EVENTS", options.ringbuf_bytes)
        .load(OBJECT)
        .map_err(ProbeError::Load)?;
    if let Some(dir) = pins {
        for (name, map) in ebpf.maps() {
            // `.rodata` and friends hold the offsets, set at each load; nothing to keep.
            if !name.starts_with('.') {
                map.pin(dir.join(name)).map_err(|e| ProbeError::Map {
                    name: "(pinning)",
                    detail: format!("{name}: {e}"),
                })?;
            }
        }
    }
    let mut maps = Maps::take(&mut ebpf)?;
    let logger = log::take(&mut ebpf, log_level);
    // Before the fork program runs: it reads the manager from here.
    maps.watch.set(0, watch, 0).map_err(map_error("WATCH"))?;
    let mut attach = Attacher {
        ebpf: &mut ebpf,
        pins,
    };
    hooks.exit = if kernel.exit_has_group_dead {
        attach.raw_tp("sched_process_exit", "sched_process_exit")?;
        "raw tracepoint sched_process_exit(group_dead)"
    } else {
        // aya's own BTF view: fentry programs need their target function's type.
        let aya_btf = aya::Btf::from_sys_fs().map_err(|e| ProbeError::AyaBtf(e.to_string()))?;
        attach
            .fentry(&aya_btf, "taskstats_exit", "taskstats_exit")
            .map_err(|e| ProbeError::NoExitHook(e.to_string()))?;
        "fentry taskstats_exit"
    };
    attach.raw_tp("signal_generate", "signal_generate")?;
    // With pins, always: a later daemon reattaching to these programs may watch a manager.
    if options.manager_pid.is_some() || pins.is_some() {
        match attach.raw_tp("sched_process_fork", "sched_process_fork") {
            Ok(()) => hooks.spawns = options.manager_pid.map(|_| SPAWNS),
            Err(e) => hooks.degraded.push(format!("{SPAWNS_DEGRADED}: {e}")),
        }
    }
    match kernel
        .cgroup_events
        .and_then(|()| attach.cgroup().map_err(|e| e.to_string()))
    {
        Ok(()) => hooks.cgroups = Some(CGROUPS),
        Err(e) => hooks.degraded.push(format!("{CGROUPS_DEGRADED}: {e}")),
    }
    if kernel.offsets.mv_pid == ABSENT {
        hooks
            .degraded
            .push(format!("{OOM_DEGRADED}: no oom:mark_victim tracepoint"));
    } else {
        match attach.oom() {
            Ok(()) => hooks.oom = Some(OOM),
            Err(e) => hooks.degraded.push(format!("{OOM_DEGRADED}: {e}")),
        }
    }
    Ok((ebpf, maps, logger))
}

/// Checks the host, then loads and attaches the programs, or reattaches to pinned ones.
pub(crate) fn load(options: &Options) -> Result<Probes, ProbeError> {
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
    let mut hooks = Hooks::default();
    let kernel = read_kernel(&mut hooks)?;
    let watch = watch(options.manager_pid);
    let pins = options.pin_dir.as_deref().map(PinDir::open).transpose()?;
    let generation = pins
        .as_ref()
        .map(|p| p.generation(Stamp::new(OBJECT, options.ringbuf_bytes, &kernel.offsets)))
        .transpose()?;
    let attach_start = clock::monotonic_ns();
    let (mut maps, ebpf, logger, reattached) = match &generation {
        Some((dir, true)) => {
            if log::level() != 0 {
                tracing::info!(
                    "no kernel messages: the pinned programs keep the log level and the log ring of the daemon that loaded them"
                );
            }
            (
                maps::reattach(dir, &watch, options, &mut hooks)?,
                None,
                None,
                true,
            )
        }
        Some((dir, false)) => {
            let (_, maps, logger) = fresh(kernel, options, &watch, Some(dir), &mut hooks)?;
            pins::mark_ready(dir)?;
            (maps, None, logger, false)
        }
        None => {
            let (ebpf, maps, logger) = fresh(kernel, options, &watch, None, &mut hooks)?;
            (maps, Some(ebpf), logger, false)
        }
    };
    if let Some(manager) = options.manager_pid.and_then(|p| u32::try_from(p).ok())
        && hooks.spawns.is_some()
    {
        // After attaching: a child forked during the scan is marked by the program.
        match maps.mark_running_children(manager) {
            Ok(marked) => tracing::debug!(marked, "the manager's running children"),
            Err(e) => hooks.degraded.push(format!("{SPAWNS_DEGRADED}: {e}")),
        }
    }
    let (backlog, overlap) = match (&pins, &generation) {
        (Some(pins), Some((dir, _))) => {
            let backlog = maps::take_over(pins, dir)?;
            let window = (!backlog.is_empty()).then(|| {
                // Reattached programs ran alongside the old ones for as long as both existed.
                (
                    if reattached { 0 } else { attach_start },
                    clock::monotonic_ns(),
                )
            });
            (backlog, window)
        }
        _ => (Vec::new(), None),
    };
    // Start-up parsed two copies of the kernel's BTF (ours and aya's): several MB of small
    // allocations the allocator keeps unless asked. Hand them back; the daemon runs for months.
    // SAFETY: malloc_trim only releases free heap memory; it has no preconditions.
    unsafe { libc::malloc_trim(0) };
    Ok(Probes {
        ring: Ring::new(maps.events)?,
        counters: Counters::new(maps.counters, maps.reported),
        hooks,
        backlog,
        overlap,
        reattached,
        logger,
        attached: Attached {
            _ebpf: ebpf,
            _pins: pins,
        },
    })
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
