//! The maps the daemon reads, however it got them, and what it finds pinned: its own build's
//! programs to reattach to, other builds' programs to take over (see [`crate::kernel::pins`]).

use std::path::Path;

use aya::{
    Ebpf,
    maps::{Array, Map, MapData, PerCpuArray},
};
use detector_common::{Watch, counter};

use crate::kernel::{
    pins::{self, PinDir},
    probes::{CGROUPS, CGROUPS_DEGRADED, Hooks, OOM, Options, ProbeError, SPAWNS, SPAWNS_DEGRADED},
    ring::Ring,
};

/// The maps the daemon uses, however it got them.
pub(crate) struct Maps {
    pub events: MapData,
    pub counters: PerCpuArray<MapData, u64>,
    pub reported: Array<MapData, u64>,
    pub watch: Array<MapData, Watch>,
    pub spawned: aya::maps::HashMap<MapData, u32, u32>,
}

pub(crate) fn map_error(name: &'static str) -> impl Fn(aya::maps::MapError) -> ProbeError {
    move |e| ProbeError::Map {
        name,
        detail: e.to_string(),
    }
}

impl Maps {
    /// Takes the maps out of a freshly loaded object.
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Self, ProbeError> {
        let mut take = |name: &'static str| {
            ebpf.take_map(name).ok_or(ProbeError::Map {
                name,
                detail: "missing from the kernel object".to_owned(),
            })
        };
        let Map::RingBuf(events) = take("EVENTS")? else {
            return Err(ProbeError::Map {
                name: "EVENTS",
                detail: "not a ring buffer".to_owned(),
            });
        };
        Ok(Self {
            events,
            counters: PerCpuArray::try_from(take("COUNTERS")?).map_err(map_error("COUNTERS"))?,
            reported: Array::try_from(take("REPORTED")?).map_err(map_error("REPORTED"))?,
            watch: Array::try_from(take("WATCH")?).map_err(map_error("WATCH"))?,
            spawned: aya::maps::HashMap::try_from(take("SPAWNED")?)
                .map_err(map_error("SPAWNED"))?,
        })
    }

    /// Marks the manager's children that already run (forked before we attached, or while no daemon
    /// ran) as spawned by it.
    pub(crate) fn mark_running_children(&mut self, manager: u32) -> Result<usize, String> {
        let processes = procfs::process::all_processes().map_err(|e| e.to_string())?;
        let mut marked = 0;
        for process in processes.flatten() {
            // Processes vanish while we walk; what is gone needs no mark.
            if let Ok(stat) = process.stat()
                && u32::try_from(stat.ppid) == Ok(manager)
                && let Ok(pid) = u32::try_from(stat.pid)
                && self.spawned.insert(pid, 1, 0).is_ok()
            {
                marked += 1;
            }
        }
        Ok(marked)
    }

    /// Opens the maps pinned in a generation directory.
    fn from_pins(dir: &Path) -> Result<Self, ProbeError> {
        let open = |name: &'static str| {
            MapData::from_pin(dir.join(name))
                .and_then(Map::from_map_data)
                .map_err(map_error(name))
        };
        Ok(Self {
            events: MapData::from_pin(dir.join("EVENTS")).map_err(map_error("EVENTS"))?,
            counters: PerCpuArray::try_from(open("COUNTERS")?).map_err(map_error("COUNTERS"))?,
            reported: Array::try_from(open("REPORTED")?).map_err(map_error("REPORTED"))?,
            watch: Array::try_from(open("WATCH")?).map_err(map_error("WATCH"))?,
            spawned: aya::maps::HashMap::try_from(open("SPAWNED")?)
                .map_err(map_error("SPAWNED"))?,
        })
    }
}

/// The ring buffer of an older generation (another build), to read before ours.
pub(crate) struct Backlog {
    pub ring: Ring,
    /// Its records have our layouts; if not, they are only counted, as lost.
    pub decodable: bool,
    /// Deaths its programs lost that its daemon never reported.
    pub lost: u64,
}

/// Reattaches to a complete generation: its programs run; the daemon only opens their maps and
/// points them at the manager it watches.
pub(crate) fn reattach(
    dir: &Path,
    watch: &Watch,
    options: &Options,
    hooks: &mut Hooks,
) -> Result<Maps, ProbeError> {
    let mut maps = Maps::from_pins(dir)?;
    maps.watch.set(0, watch, 0).map_err(map_error("WATCH"))?;
    let linked = pins::linked_programs(dir);
    let has = |program: &str| linked.iter().any(|l| l == program);
    hooks.exit = if has("sched_process_exit") {
        "raw tracepoint sched_process_exit(group_dead) (pinned)"
    } else {
        "fentry taskstats_exit (pinned)"
    };
    if has("sched_process_fork") {
        hooks.spawns = options.manager_pid.map(|_| SPAWNS);
    } else if options.manager_pid.is_some() {
        hooks.degraded.push(format!(
            "{SPAWNS_DEGRADED}: not attached in the pinned programs"
        ));
    }
    if has("cgroup_mkdir") {
        hooks.cgroups = Some(CGROUPS);
    } else {
        hooks.degraded.push(format!(
            "{CGROUPS_DEGRADED}: not attached in the pinned programs"
        ));
    }
    if has("mark_victim") {
        hooks.oom = Some(OOM);
    }
    Ok(maps)
}

/// Detaches and removes every other generation; returns their rings to read first.
pub(crate) fn take_over(pins: &PinDir, current: &Path) -> Result<Vec<Backlog>, ProbeError> {
    let mut backlog = Vec::new();
    for old in pins.others(current)? {
        let links = pins::unlink(&old.dir)?;
        match open_old(&old.dir, old.decodable) {
            Ok(b) => {
                tracing::info!(
                    dir = %old.dir.display(),
                    links,
                    decodable = b.decodable,
                    pending_bytes = b.ring.pending(),
                    "took over the pins of another build: its programs are detached, its ring is read first"
                );
                backlog.push(b);
            }
            Err(e) => tracing::warn!(
                dir = %old.dir.display(),
                complete = old.ready,
                error = %e,
                "removing the pins of another build whose ring cannot be read"
            ),
        }
        pins::remove_generation(&old.dir)?;
    }
    Ok(backlog)
}

fn open_old(dir: &Path, decodable: bool) -> Result<Backlog, ProbeError> {
    let maps = Maps::from_pins(dir)?;
    let ringbuf_full = maps
        .counters
        .get(&counter::RINGBUF_FULL, 0)
        .map_or(0, |v| v.iter().sum::<u64>());
    let reported = maps.reported.get(&counter::RINGBUF_FULL, 0).unwrap_or(0);
    Ok(Backlog {
        ring: Ring::new(maps.events)?,
        decodable,
        lost: ringbuf_full.saturating_sub(reported),
    })
}
