//! `detector run`: probes → ring buffer → decode → correlate → enrich → sinks.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::{MapData, PerCpuArray, RingBuf};
use detector_common::counter;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    sync::{
        mpsc::{UnboundedReceiver, UnboundedSender},
        oneshot,
    },
    task::JoinSet,
};

use crate::{
    actions::Systemd,
    causes,
    clock::{self, Clock},
    config::{Config, UnitPolicy},
    correlate::correlate,
    decode::{Event, decode},
    enrich::CgroupResolver,
    incident::{Incident, Progress},
    journal::{self, Collected},
    probes::{self, Probes},
    record::ExitRecord,
    recovery::{self, Recovery},
    sinks, units,
};

/// While deaths keep coming, drain again after this pause instead of going back to sleep in the
/// kernel: one wakeup then carries many records. Deaths in a storm wait at most this long more;
/// an isolated death still wakes the daemon at once.
const BUSY_PAUSE: Duration = Duration::from_micros(250);
/// Bound on one busy stretch, so that signals and counters are still served during a long storm.
const BUSY_MAX: Duration = Duration::from_millis(50);

/// Records are written at least this often during a burst, so the first death of a storm is not
/// held back until the whole storm has been read.
const FLUSH_EVERY: usize = 64;
const COUNTER_NAMES: [(u32, &str); 4] = [
    (counter::EMITTED, "emitted"),
    (counter::RINGBUF_FULL, "lost_ringbuf_full"),
    (counter::KERNEL_READ, "kernel_read_failures"),
    (counter::MAP_UPDATE, "map_update_failures"),
];

#[derive(Debug, Clone)]
pub struct Options {
    pub ringbuf_bytes: u32,
    /// Niceness to run at; see `detector run --help`.
    pub nice: i32,
    /// Where the watched systemd instance's files are (`/`, `/host`, `/proc/PID/root`).
    pub root: PathBuf,
    /// How many journal lines an incident carries (unless a unit's policy says).
    pub journal_lines: usize,
    /// Unit policies and cause rules.
    pub config: Config,
}

/// How long the journal thread waits for PID 1's account of a death before deciding it was not
/// the unit's main process.
const JOURNAL_WAIT: Duration = Duration::from_secs(2);
/// At shutdown, how long incidents still being written may take to finish (about one journal
/// wait); after that they go out as they are, marked `interrupted`.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// The PID, in our pid namespace, of the systemd instance whose files are at `root`: 1 for `/`,
/// N for `/proc/N/root`; None otherwise (a container with the host's / at /host).
fn manager_pid(root: &Path) -> Option<i32> {
    if root == Path::new("/") {
        return Some(1);
    }
    root.strip_prefix("/proc")
        .ok()?
        .to_str()?
        .strip_suffix("/root")?
        .parse()
        .ok()
}

/// The cgroup managed by the systemd instance whose files are at `root`, from the cgroup of its
/// PID 1 (`/proc/PID/cgroup`, or `ROOT/proc/1/cgroup` when we do not know its pid).
fn manager_root(root: &Path) -> anyhow::Result<String> {
    let pid1 = match manager_pid(root) {
        Some(pid) => PathBuf::from(format!("/proc/{pid}/cgroup")),
        None => root.join("proc/1/cgroup"),
    };
    let text = std::fs::read_to_string(&pid1).with_context(|| {
        format!(
            "--root {}: cannot read {} to find the systemd manager's cgroup",
            root.display(),
            pid1.display()
        )
    })?;
    units::manager_root(&text).with_context(|| {
        format!(
            "--root {}: {} does not show a systemd manager (no cgroup2 `init.scope`)",
            root.display(),
            pid1.display()
        )
    })
}

/// The daemon keeps a directory open per live unit cgroup (see `enrich`): lift the soft limit
/// on open files to the hard one.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit");
    }
}

/// The last counter report and the summary line, at shutdown.
fn summarise(
    pipeline: &Pipeline,
    counters: &PerCpuArray<MapData, u64>,
    previous: &[(u64, Vec<u64>); 4],
) {
    let now = read_counters(counters);
    report_counters(&now, previous);
    let [
        (emitted, _),
        (lost, _),
        (read_failures, _),
        (map_failures, _),
    ] = now;
    tracing::info!(
        emitted,
        received = pipeline.received,
        lost,
        read_failures,
        map_failures,
        undecodable = pipeline.undecodable,
        "detector stopped"
    );
}

/// Connects to the watched systemd when the configuration asks for restarts, so that the first
/// restart does not wait for a connection, and checks that systemd knows every configured unit:
/// a typo there would otherwise only show when that unit fails. A bus that cannot be reached is
/// reported, not fatal: the recovery connects again when it needs to.
async fn connect_and_check_units(root: &Path, config: &Config) -> Option<Systemd> {
    let listed: Vec<&str> = config
        .units
        .iter()
        .map(|p| p.name.as_str())
        .filter(|name| !name.contains("@."))
        .collect();
    let acting = config.units.iter().any(UnitPolicy::restarts);
    if listed.is_empty() && !acting {
        return None;
    }
    let bus = match Systemd::connect(root).await {
        Ok(bus) => bus,
        Err(e) => {
            tracing::warn!(
                "{e}; the configured units cannot be checked, and restarts will connect again"
            );
            return None;
        }
    };
    for unit in listed {
        match bus.unit(unit).await {
            Ok(state) if state.load_state == "not-found" => {
                tracing::warn!(unit, root = %root.display(), "the configuration names a unit systemd does not know");
            }
            Ok(state) => tracing::debug!(unit, active = state.active_state, "configured unit"),
            Err(e) => tracing::warn!("{e}"),
        }
    }
    Some(bus)
}

/// Sets this process's niceness. Failing is not fatal: the records are the same, only later
/// under load.
fn set_nice(nice: i32) {
    // SAFETY: setpriority has no memory-safety preconditions; `0` means this process.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if rc != 0 {
        tracing::warn!(nice, error = %std::io::Error::last_os_error(), "cannot set the daemon's niceness");
    }
}

/// Everything after the ring buffer.
struct Pipeline {
    /// Deaths in services, to the journal thread, which tells unit failures from other deaths
    /// and gathers the failed run's lines.
    journal: std::sync::mpsc::Sender<journal::Request>,
    recovery: Arc<Recovery>,
    /// One task per death in a service, until its incident is written.
    tasks: JoinSet<()>,
    incidents: UnboundedSender<Incident>,
    /// The watched systemd's PID 1, in our pid namespace, when known.
    manager_pid: Option<i32>,
    /// A recovery was started during this drain.
    urgent: bool,
    cgroups: CgroupResolver,
    stdout: sinks::Stdout,
    received: u64,
    undecodable: u64,
}

impl Pipeline {
    /// Drains, then keeps draining every [`BUSY_PAUSE`] while records keep coming.
    fn drain_burst(&mut self, ring: &mut RingBuf<MapData>) {
        let start = std::time::Instant::now();
        // A death to act on ends the stretch at once: its recovery runs on this thread.
        while self.drain(ring) > 0
            && !std::mem::take(&mut self.urgent)
            && start.elapsed() < BUSY_MAX
        {
            // A blocking pause on purpose: tokio's timers have millisecond resolution, and this
            // runtime serves nothing else that could starve in 100 µs.
            std::thread::sleep(BUSY_PAUSE);
        }
    }

    /// Reads everything in the ring buffer; returns how many records it read.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> usize {
        let clock = Clock::now();
        let mut read = 0;
        let mut pending = 0;
        while let Some(item) = ring.next() {
            read += 1;
            match decode(&item) {
                Ok(Event::Death(event)) => {
                    self.received += 1;
                    let mut record = correlate(&event);
                    self.cgroups.enrich(&mut record);
                    record.time = clock.rfc3339(record.ktime_ns);
                    record.latency_us =
                        clock::monotonic_ns().saturating_sub(record.ktime_ns) / 1000;
                    self.stdout.push(&record);
                    self.unit_death(record);
                    pending += 1;
                    if pending == FLUSH_EVERY {
                        self.stdout.flush();
                        pending = 0;
                    }
                }
                Ok(Event::CgroupMkdir { id, path }) => self.cgroups.created(id, path),
                Ok(Event::CgroupRmdir { id }) => self.cgroups.removed(id),
                Err(e) => {
                    self.undecodable += 1;
                    tracing::warn!(error = %e, len = item.len(), "skipping an undecodable kernel record");
                }
            }
        }
        self.stdout.flush();
        read
    }
}

impl Pipeline {
    /// At shutdown: every incident begun still gets out, finished within [`SHUTDOWN_GRACE`] or
    /// as far as it got.
    async fn finish_incidents(&mut self, incidents: &mut UnboundedReceiver<Incident>) {
        let finishing = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, finishing)
            .await
            .is_err()
        {
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
        while let Ok(incident) = incidents.try_recv() {
            self.stdout.push(&incident);
        }
        self.stdout.flush();
    }

    /// Starts the incident (and recovery) of a death in a service that may have failed it.
    fn unit_death(&mut self, record: ExitRecord) {
        // The innermost unit: a user manager's service rather than its `user@UID.service`.
        let Some(unit) = record
            .user_unit
            .clone()
            .or_else(|| record.unit.clone())
            .filter(|u| u.ends_with(".service"))
        else {
            return;
        };
        // A unit's main and control processes are the manager's children (daemons that fork
        // are reparented to it, PID 1 being their subreaper): with the manager's pid known, any
        // other death is a worker's, which does not fail the unit. User units have their own
        // manager, whose pid we do not track: the journal decides for them.
        let from_manager = record.user_unit.is_none()
            && self
                .manager_pid
                .is_some_and(|m| i64::from(record.ppid) == i64::from(m));
        if self.manager_pid.is_some() && record.user_unit.is_none() && !from_manager {
            return;
        }
        self.urgent |= from_manager
            && self
                .recovery
                .config()
                .policy(&unit)
                .is_some_and(UnitPolicy::restarts);
        let provisional = causes::from_death(&record);
        let collected = Collected {
            invocation_id: record.invocation_id.clone(),
            ..Collected::default()
        };
        let incident = Incident::from_death(&unit, &record, collected, provisional);
        let progress = Progress::new(incident, self.incidents.clone());
        let (answer, journaled) = oneshot::channel();
        // Sending fails only without a journal thread; the incident then goes out without lines.
        let _ = self.journal.send((unit.clone(), record.clone(), answer));
        self.tasks.spawn(recovery::handle(
            Arc::clone(&self.recovery),
            unit,
            record,
            journaled,
            from_manager,
            progress,
        ));
    }
}

/// Sums of the per-CPU counters, with the per-CPU split of the ones that matter.
fn read_counters(map: &PerCpuArray<MapData, u64>) -> [(u64, Vec<u64>); 4] {
    COUNTER_NAMES.map(|(index, name)| match map.get(&index, 0) {
        Ok(values) => (values.iter().sum(), values.to_vec()),
        Err(e) => {
            tracing::warn!(counter = name, error = %e, "cannot read kernel counter");
            (0, Vec::new())
        }
    })
}

fn report_counters(now: &[(u64, Vec<u64>); 4], before: &[(u64, Vec<u64>); 4]) {
    for ((index, name), ((total, per_cpu), (was, _))) in
        COUNTER_NAMES.iter().zip(now.iter().zip(before.iter()))
    {
        if *index != counter::EMITTED && total > was {
            tracing::warn!(
                counter = name,
                new = total - was,
                total,
                per_cpu = ?per_cpu,
                "kernel programs report failures"
            );
        }
    }
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    let manager_root = match manager_root(&options.root) {
        Ok(root) => root,
        Err(e) => {
            // Deaths are still worth reporting without unit names.
            tracing::warn!("{e:#}; units are named as if systemd managed the whole cgroup tree");
            "/".to_owned()
        }
    };
    raise_fd_limit();
    let Probes { mut ebpf, hooks } = probes::load(options.ringbuf_bytes)?;
    set_nice(options.nice);
    for note in &hooks.degraded {
        tracing::warn!("{note}");
    }
    let ring = ebpf
        .take_map("EVENTS")
        .context("kernel object has no EVENTS map")?;
    let ring = RingBuf::try_from(ring).context("EVENTS is not a ring buffer")?;
    let counters = ebpf
        .take_map("COUNTERS")
        .context("kernel object has no COUNTERS map")?;
    let counters: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(counters).context("COUNTERS is not a per-CPU array")?;
    // SAFETY: `RingBuf` owns its map fd; it stays open and unchanged until the `AsyncFd` (which
    // owns the `RingBuf`) is dropped.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;
    let (incidents_tx, mut incidents) = tokio::sync::mpsc::unbounded_channel();
    let config = Arc::new(options.config.clone());
    let journal = journal::spawn(journal::Options {
        root: options.root.clone(),
        lines: options.journal_lines,
        wait: JOURNAL_WAIT,
        config: Arc::clone(&config),
        manager_root: manager_root.clone(),
        // Without the manager's pid (a container watching /host), our own network namespace
        // is the best guess: such daemons run with the host's network.
        netns_pid: manager_pid(&options.root)
            .unwrap_or_else(|| i32::try_from(std::process::id()).unwrap_or(1)),
    });
    let bus = connect_and_check_units(&options.root, &options.config).await;
    let mut pipeline = Pipeline {
        journal,
        recovery: Arc::new(Recovery::new(options.root.clone(), config, bus)),
        tasks: JoinSet::new(),
        incidents: incidents_tx,
        manager_pid: manager_pid(&options.root),
        urgent: false,
        cgroups: CgroupResolver::discover(manager_root.clone()),
        stdout: sinks::Stdout::default(),
        received: 0,
        undecodable: 0,
    };
    // After the probes: a cgroup created during the scan is also in the ring buffer.
    let known = pipeline.cgroups.scan();
    tracing::debug!(cgroups = known, "learned the cgroup2 tree");
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut previous = read_counters(&counters);

    tracing::info!(
        exit = hooks.exit,
        oom = hooks.oom.unwrap_or("none"),
        cgroups = hooks.cgroups.unwrap_or("none"),
        root = %options.root.display(),
        manager_cgroup = manager_root,
        "detector ready: watching process deaths"
    );
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                guard.clear_ready();
                pipeline.drain_burst(guard.get_inner_mut());
            }
            _ = tick.tick() => {
                let now = read_counters(&counters);
                report_counters(&now, &previous);
                previous = now;
                pipeline.cgroups.sweep(std::time::Instant::now());
            }
            Some(incident) = incidents.recv() => {
                pipeline.stdout.push(&incident);
                pipeline.stdout.flush();
            }
            Some(done) = pipeline.tasks.join_next(), if !pipeline.tasks.is_empty() => {
                if let Err(e) = done {
                    tracing::error!(error = %e, "an incident's task failed");
                }
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    pipeline.drain(ring.get_mut());
    pipeline.finish_incidents(&mut incidents).await;
    summarise(&pipeline, &counters, &previous);
    Ok(())
}
