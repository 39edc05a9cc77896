//! `detector run` wired together: probes → ring buffer → decode → correlate → enrich → sinks for
//! every death; deaths in services go on to the recovery's dispatcher, whose incidents' notices
//! (opened, resolved) come back here for the sinks. Each stage's logic lives in its folder; this file only connects them and
//! runs the loop.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use aya::maps::{MapData, PerCpuArray, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    sync::mpsc::UnboundedReceiver,
};

use crate::{
    config::Config,
    death::correlate::correlate,
    incident::Notice,
    journal,
    kernel::{
        clock::{self, Clock},
        counters::Counters,
        decode::{Event, decode},
        probes::{self, Probes},
    },
    recovery::{self, Dispatcher, Recovery},
    sinks::{
        Output, Sinks,
        history::History,
        metrics::{Metrics, server},
        words,
    },
    unit::{cgroups::CgroupResolver, manager, roles::Roles},
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
/// How long the journal thread waits for PID 1's account of a death before deciding it was not
/// the unit's main process.
const JOURNAL_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub ringbuf_bytes: u32,
    /// Where the watched systemd instance's files are (`/`, `/host`, `/proc/PID/root`).
    pub root: PathBuf,
    /// How many journal lines an incident carries (unless a unit's policy says).
    pub journal_lines: usize,
    /// Unit policies, cause rules and alert sinks.
    pub config: Config,
    /// Where records and incidents are written.
    pub output: Output,
}

/// Everything after the ring buffer.
struct Pipeline {
    dispatcher: Dispatcher,
    cgroups: CgroupResolver,
    roles: Roles,
    sinks: Sinks,
    received: u64,
    undecodable: u64,
}

impl Pipeline {
    /// Drains, then keeps draining every [`BUSY_PAUSE`] while records keep coming. A death a
    /// recovery may act on at once ends the stretch: its recovery runs on this thread.
    fn drain_burst(&mut self, ring: &mut RingBuf<MapData>) {
        let start = std::time::Instant::now();
        loop {
            let (read, urgent) = self.drain(ring);
            if read == 0 || urgent || start.elapsed() >= BUSY_MAX {
                return;
            }
            // A blocking pause on purpose: tokio's timers have millisecond resolution, and this
            // runtime serves nothing else that could starve in 100 µs.
            std::thread::sleep(BUSY_PAUSE);
        }
    }

    /// Reads everything in the ring buffer; returns how many records it read, and whether a
    /// recovery wants to run at once.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> (usize, bool) {
        let clock = Clock::now();
        let (mut read, mut pending, mut urgent) = (0, 0, false);
        while let Some(item) = ring.next() {
            read += 1;
            match decode(&item) {
                Ok(Event::Death(event)) => {
                    self.received += 1;
                    let mut record = correlate(&event);
                    self.cgroups.enrich(&mut record);
                    self.roles.assign(&mut record);
                    record.time = clock.rfc3339(record.ktime_ns);
                    record.latency_us =
                        clock::monotonic_ns().saturating_sub(record.ktime_ns) / 1000;
                    self.sinks.record(&record);
                    urgent |= self.dispatcher.death(&record);
                    pending += 1;
                    if pending == FLUSH_EVERY {
                        self.sinks.flush();
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
        self.sinks.flush();
        (read, urgent)
    }

    /// After the last drain: the incidents still open go out, the sinks send what they hold,
    /// and the totals are logged.
    async fn stop(mut self, mut counters: Counters, incidents: &mut UnboundedReceiver<Notice>) {
        for notice in self.dispatcher.finish(incidents).await {
            self.sinks.notice(&notice);
        }
        self.sinks.finish().await;
        let totals = counters.finish();
        tracing::info!(
            emitted = totals.emitted,
            received = self.received,
            lost = totals.lost,
            read_failures = totals.read_failures,
            map_failures = totals.map_failures,
            undecodable = self.undecodable,
            "detector stopped"
        );
    }
}

/// The metrics, and the history's writer unless `[history]` is disabled.
fn measures(config: &Arc<Config>, recovery: &Recovery) -> (Arc<Metrics>, Option<History>) {
    let metrics = Arc::new(Metrics::new(Arc::clone(config), recovery.health_board()));
    // The sink's counters exist only with the sink: a disabled history exports none.
    let history = config
        .history
        .path
        .as_ref()
        .and_then(|_| History::spawn(&config.history, metrics.sink("history")));
    (metrics, history)
}

/// Serves `/metrics` if the configuration asks; a port that cannot be had is logged, and the
/// daemon goes on without it.
async fn serve_metrics(
    listen: Option<std::net::SocketAddr>,
    metrics: &Arc<Metrics>,
) -> Option<tokio::task::JoinHandle<()>> {
    match server::bind(listen?).await {
        Ok(listener) => Some(tokio::spawn(server::serve(listener, Arc::clone(metrics)))),
        Err(e) => {
            tracing::error!("{e:#}; running without the metrics endpoint");
            None
        }
    }
}

pub(crate) async fn run(options: Options) -> anyhow::Result<()> {
    let manager_root = manager::cgroup(&options.root).unwrap_or_else(|e| {
        // Deaths are still worth reporting without unit names.
        tracing::warn!("{e:#}; units are named as if systemd managed the whole cgroup tree");
        "/".to_owned()
    });
    let manager_pid = manager::pid(&options.root);
    let Probes { mut ebpf, hooks } = probes::load(options.ringbuf_bytes, manager_pid)?;
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
    let mut counters =
        Counters::new(PerCpuArray::try_from(counters).context("COUNTERS is not a per-CPU array")?);
    // SAFETY: `RingBuf` owns its map fd; it stays open and unchanged until the `AsyncFd` (which
    // owns the `RingBuf`) is dropped.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;
    let (incidents_tx, mut incidents) = tokio::sync::mpsc::unbounded_channel();
    let config = Arc::new(options.config.clone());
    let journal = journal::spawn(&journal::Options {
        root: options.root.clone(),
        lines: options.journal_lines,
        wait: JOURNAL_WAIT,
        config: Arc::clone(&config),
        manager_root: manager_root.clone(),
        // Without the manager's pid (a container watching /host), our own network namespace
        // is the best guess: such daemons run with the host's network.
        netns_pid: manager_pid.unwrap_or_else(|| i32::try_from(std::process::id()).unwrap_or(1)),
    });
    let bus = recovery::check_units(&options.root, &options.config).await;
    let recovery = Recovery::new(options.root.clone(), Arc::clone(&config), bus);
    let (metrics, history) = measures(&config, &recovery);
    let server = serve_metrics(config.metrics.listen, &metrics).await;
    let mut pipeline = Pipeline {
        dispatcher: Dispatcher::new(journal, recovery, incidents_tx, manager_pid),
        cgroups: CgroupResolver::discover(manager_root.clone()),
        roles: Roles {
            manager_pid,
            spawns_tracked: hooks.spawns.is_some(),
        },
        sinks: Sinks::start(
            options.output,
            (&options.root, manager_pid),
            &options.config.alerts,
            &words::host(&options.root),
            metrics,
            history,
        ),
        received: 0,
        undecodable: 0,
    };
    // After the probes: a cgroup created during the scan is also in the ring buffer.
    let known = pipeline.cgroups.scan();
    tracing::debug!(cgroups = known, "learned the cgroup2 tree");
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));

    pipeline.dispatcher.watching().await;
    ready(&hooks, &options.root, &manager_root, &config);
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                guard.clear_ready();
                pipeline.drain_burst(guard.get_inner_mut());
            }
            _ = tick.tick() => {
                counters.report();
                pipeline.sinks.metrics().kernel(counters.totals(), pipeline.undecodable);
                pipeline.cgroups.sweep(std::time::Instant::now());
            }
            Some(notice) = incidents.recv() => {
                pipeline.sinks.notice(&notice);
                pipeline.sinks.flush();
            }
            () = pipeline.dispatcher.join_next() => {}
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    pipeline.drain(ring.get_mut());
    pipeline.stop(counters, &mut incidents).await;
    if let Some(server) = server {
        server.abort();
    }
    Ok(())
}

/// Says the daemon is ready (the tests wait for this line), with what it watches and serves.
fn ready(hooks: &probes::Hooks, root: &std::path::Path, manager_root: &str, config: &Config) {
    tracing::info!(
        exit = hooks.exit,
        spawns = hooks.spawns.unwrap_or("none"),
        oom = hooks.oom.unwrap_or("none"),
        cgroups = hooks.cgroups.unwrap_or("none"),
        root = %root.display(),
        manager_cgroup = manager_root,
        metrics = %config.metrics.listen.map_or_else(|| "off".to_owned(), |a| format!("http://{a}/metrics")),
        history = %config.history.path.as_deref().map_or_else(|| "off".into(), std::path::Path::to_string_lossy),
        "detector ready: watching process deaths"
    );
}
