//! `detector run` wired together: probes → ring buffer → decode → correlate → enrich → sinks for
//! every death; deaths in services go on to the recovery's dispatcher, whose incidents' notices
//! (opened, resolved) come back here for the sinks. Each stage's logic lives in its folder; this
//! file only connects them and runs the loop.
//!
//! Over 400 lines: start-up (pins and their backlog, privileges, sinks, metrics, history) and the
//! loop (ring, ticks, notices, watchdog, SIGHUP) are one sequence, read best in one place.

mod memory;

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use sd_notify::NotifyState;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    sync::mpsc::Receiver,
};

use crate::{
    config::{Config, Live},
    death::correlate::correlate,
    incident::{Notice, Outbox, outbox},
    journal,
    kernel::{
        clock::{self, Clock},
        counters::{Counters, Lost},
        decode::{Event, decode},
        log as kernel_log,
        overlap::Overlap,
        privileges,
        probes::{self, Attached, Backlog, Probes},
        ring::Ring,
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

/// At most this many records per read: past it, the loop serves its other work (signals, the
/// watchdog, a recovery) and comes back at once, so that a storm the daemon cannot outrun does
/// not hold everything else.
const READ_AT_MOST: usize = 4096;
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
    /// Where they came from, read again on SIGHUP.
    pub config_path: Option<PathBuf>,
    /// Pin the kernel programs here, so that they outlive the daemon (`--pin-dir`).
    pub pin_dir: Option<PathBuf>,
    /// Where records and incidents are written.
    pub output: Output,
}

/// Everything after the ring buffer.
struct Pipeline {
    dispatcher: Dispatcher,
    cgroups: CgroupResolver,
    roles: Roles,
    sinks: Sinks,
    /// While a new build takes over pinned programs: deaths the old ring already had.
    overlap: Option<Overlap>,
    received: u64,
    undecodable: u64,
    /// The last read stopped with records left (a bound, or a recovery that should run first):
    /// read again as soon as the loop has served the rest. No wakeup would come for them: the
    /// kernel wakes a reader only once it has caught up.
    more: bool,
}

impl Pipeline {
    /// Reads what is in the ring buffer, up to [`READ_AT_MOST`] records or a recovery that
    /// should start first (then `more` is set); returns how many records it read.
    fn drain(&mut self, ring: &mut Ring) -> usize {
        self.drain_ring(ring, false)
    }

    /// Reads everything in `ring`, bounds or not: at start-up and at shutdown, when nothing else
    /// is served. Returns how many records it read.
    fn drain_all(&mut self, ring: &mut Ring, older: bool) -> usize {
        let mut read = self.drain_ring(ring, older);
        while self.more {
            read += self.drain_ring(ring, older);
        }
        read
    }

    /// Reads an older generation's ring before ours: its records, or what they cost.
    fn drain_backlog(&mut self, mut backlog: Backlog) {
        if backlog.lost > 0 {
            self.sinks
                .lost(&Lost::new(backlog.lost, "ring_buffer_full"));
        }
        if backlog.decodable {
            self.drain_all(&mut backlog.ring, true);
        } else {
            let mut records = 0;
            while backlog.ring.next().is_some() {
                records += 1;
            }
            backlog.ring.commit();
            if records > 0 {
                tracing::warn!(
                    records,
                    "records of a build with other layouts were left in its ring: counted as lost"
                );
                self.sinks.lost(&Lost::new(records, "incompatible_build"));
            }
        }
        self.sinks.flush();
    }

    /// Reads `ring` to its end, handing records to the sinks in batches; each batch is given
    /// back to the kernel only once the sinks took it, so a daemon killed meanwhile leaves it
    /// for the next one.
    fn drain_ring(&mut self, ring: &mut Ring, older: bool) -> usize {
        let clock = Clock::now();
        let (mut read, mut pending, mut urgent) = (0, 0, false);
        self.more = false;
        loop {
            while !urgent
                && read < READ_AT_MOST
                && let Some(item) = ring.next()
            {
                read += 1;
                match decode(item) {
                    Ok(Event::Death(event)) => {
                        if let Some(overlap) = &mut self.overlap {
                            if older {
                                overlap.note(&event);
                            } else if !overlap.is_new(&event) {
                                continue;
                            }
                        }
                        self.received += 1;
                        let mut record = correlate(&event);
                        self.cgroups.enrich(&mut record);
                        self.roles.assign(&mut record);
                        record.time = clock.rfc3339(record.ktime_ns);
                        record.latency_us =
                            clock::monotonic_ns().saturating_sub(record.ktime_ns) / 1000;
                        self.sinks.record(&record);
                        // A recovery that may act at once runs on this thread: let it start
                        // before the rest of a storm is read.
                        urgent = self.dispatcher.death(&record);
                        pending += 1;
                        if pending == FLUSH_EVERY {
                            self.sinks.flush();
                            ring.commit();
                            pending = 0;
                        }
                    }
                    Ok(Event::CgroupMkdir { id, path }) => self.cgroups.created(id, path),
                    Ok(Event::CgroupRmdir { id }) => self.cgroups.removed(id),
                    Err(e) => {
                        self.undecodable += 1;
                        tracing::warn!(error = %e, "skipping an undecodable kernel record");
                    }
                }
            }
            self.sinks.flush();
            ring.commit();
            // A record committed while we held back the ring's position woke nobody.
            if !ring.ready() {
                return read;
            }
            if urgent || read >= READ_AT_MOST {
                self.more = true;
                return read;
            }
        }
    }

    /// After the last drain: the incidents still open go out, the sinks send what they hold,
    /// and the totals are logged.
    async fn stop(mut self, mut counters: Counters, incidents: &mut Receiver<Notice>) {
        for notice in self.dispatcher.finish(incidents).await {
            self.sinks.notice(&notice);
        }
        let (totals, lost) = counters.finish();
        if let Some(lost) = lost {
            self.sinks.lost(&lost);
        }
        self.sinks.finish().await;
        let coalesced = self.dispatcher.coalesced();
        let notices = self.dispatcher.outbox().dropped();
        tracing::info!(
            emitted = totals.emitted,
            received = self.received,
            lost = totals.lost,
            read_failures = totals.read_failures(),
            map_failures = totals.map_failures(),
            kernel_errors = %totals.summary(),
            undecodable = self.undecodable,
            coalesced_folded = coalesced.folded,
            coalesced_unopened = coalesced.unopened,
            notices_folded = notices.opened,
            notices_lost = notices.resolved,
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

/// The daemon once started: the pipeline, the ring it reads, the counters, and the notices of
/// the incidents its recoveries open and finish.
struct Started {
    /// The programs stay attached (and the pins locked) while this lives.
    attached: Attached,
    pipeline: Pipeline,
    ring: AsyncFd<Ring>,
    counters: Counters,
    incidents: Receiver<Notice>,
    /// The `/metrics` server, when the configuration asks for one.
    server: Option<tokio::task::JoinHandle<()>>,
}

/// Loads (or reattaches to) the kernel programs, builds the pipeline and its sinks, reads what
/// the kernel wrote while no daemon read, and says ready once systemd's unit states are
/// followed.
async fn start(options: &Options) -> anyhow::Result<Started> {
    let manager_root = manager::cgroup(&options.root).unwrap_or_else(|e| {
        // Deaths are still worth reporting without unit names.
        tracing::warn!("{e:#}; units are named as if systemd managed the whole cgroup tree");
        "/".to_owned()
    });
    let manager_pid = manager::pid(&options.root);
    let Probes {
        ring,
        mut counters,
        hooks,
        backlog,
        overlap,
        reattached,
        logger,
        attached,
    } = probes::load(&probes::Options {
        ringbuf_bytes: options.ringbuf_bytes,
        manager_pid,
        pin_dir: options.pin_dir.clone(),
    })?;
    for note in &hooks.degraded {
        tracing::warn!("{note}");
    }
    // The two threads started before: the journal writer, whose relay enters a machine's pid
    // namespace, and the health checks' one in its network namespace; each drops its own
    // capabilities once inside.
    let journal_sink = Sinks::journal(options.output, (&options.root, manager_pid));
    // Likewise the thread that makes health checks' sockets in the machine's network namespace.
    let dialer = recovery::netns::Dialer::start(manager_pid);
    // Before any other thread starts (capabilities are per thread, and inherited).
    let kept = privileges::drop_all_but_kept()?;
    tracing::info!(kept = ?kept, "dropped every other capability");
    // Kernel messages at debug: a task on this runtime, no thread (capabilities are per thread).
    if let Some(logger) = logger {
        kernel_log::spawn(logger);
    }
    // SAFETY: `Ring` owns its map fd; it stays open and unchanged until the `AsyncFd` (which
    // owns the `Ring`) is dropped.
    let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;
    let (incidents_tx, incidents) = Outbox::new(outbox::CAPACITY);
    let live = Arc::new(Live::new(options.config.clone()));
    let config = live.get();
    let journal = journal::spawn(&journal::Options {
        root: options.root.clone(),
        lines: options.journal_lines,
        wait: JOURNAL_WAIT,
        config: Arc::clone(&live),
        manager_root: manager_root.clone(),
        // Without the manager's pid (a container watching /host), our own network namespace
        // is the best guess: such daemons run with the host's network.
        netns_pid: manager_pid.unwrap_or_else(|| i32::try_from(std::process::id()).unwrap_or(1)),
    });
    let bus = recovery::check_units(&options.root, &options.config).await;
    let recovery = Recovery::new(options.root.clone(), live, bus, dialer);
    // The metrics, the history and the alert sinks are set up once, from the configuration at
    // start: a reload does not change them (see README, "Reloading").
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
            journal_sink,
            &config.alerts,
            &words::host(&options.root),
            metrics,
            history,
        ),
        overlap: overlap.map(Overlap::new),
        received: 0,
        undecodable: 0,
        more: false,
    };
    // After the probes: a cgroup created during the scan is also in the ring buffer.
    let known = pipeline.cgroups.scan();
    tracing::debug!(cgroups = known, "learned the cgroup2 tree");
    // What the kernel wrote while no daemon read: older builds' rings, then ours, and what did
    // not fit in them.
    for backlog in backlog {
        pipeline.drain_backlog(backlog);
    }
    if let Some(lost) = counters.report() {
        pipeline.sinks.lost(&lost);
    }
    let mut ring = ring;
    let backlog_records = pipeline.drain_all(ring.get_mut(), false);
    pipeline.dispatcher.watching().await;
    ready(
        &hooks,
        options,
        &manager_root,
        &config,
        (reattached, backlog_records),
    );
    Ok(Started {
        attached,
        pipeline,
        ring,
        counters,
        incidents,
        server,
    })
}

/// Says the daemon is ready (the tests wait for this line), with what it watches and serves.
fn ready(
    hooks: &probes::Hooks,
    options: &Options,
    manager_root: &str,
    config: &Config,
    (reattached, backlog_records): (bool, usize),
) {
    tracing::info!(
        exit = hooks.exit,
        reattached,
        backlog_records,
        spawns = hooks.spawns.unwrap_or("none"),
        oom = hooks.oom.unwrap_or("none"),
        cgroups = hooks.cgroups.unwrap_or("none"),
        root = %options.root.display(),
        manager_cgroup = manager_root,
        metrics = %config.metrics.listen.map_or_else(|| "off".to_owned(), |a| format!("http://{a}/metrics")),
        history = %config.history.path.as_deref().map_or_else(|| "off".into(), std::path::Path::to_string_lossy),
        "detector ready: watching process deaths"
    );
}

/// Tells systemd (`Type=notify`), when it started us; a no-op otherwise.
fn notify(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!(error = %e, "cannot notify systemd");
    }
}

pub(crate) async fn run(options: Options) -> anyhow::Result<()> {
    // Before "ready": a stop requested right after it must find the handlers in place.
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let Started {
        attached,
        mut pipeline,
        mut ring,
        mut counters,
        mut incidents,
        server,
    } = start(&options).await?;
    memory::release_startup();
    // Probes attached, units named and followed, backlog read.
    notify(&[
        NotifyState::Ready,
        NotifyState::Status("watching process deaths"),
    ]);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // Pinged from this loop, the one that reads the ring buffer: a reader stuck anywhere in it
    // (a bug, a sink that blocks) misses the pings, and systemd restarts the daemon, which with
    // pins loses nothing.
    let watchdog = sd_notify::watchdog_enabled();
    let mut ping = tokio::time::interval(watchdog.map_or(Duration::from_hours(1), |d| d / 2));
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                guard.clear_ready();
                pipeline.drain(guard.get_inner_mut());
            }
            () = std::future::ready(()), if pipeline.more => {
                pipeline.drain(ring.get_mut());
            }
            _ = tick.tick() => {
                if let Some(lost) = counters.report() {
                    pipeline.sinks.lost(&lost);
                    pipeline.sinks.flush();
                }
                pipeline.sinks.metrics().kernel(counters.totals(), pipeline.undecodable);
                pipeline.sinks.metrics().pressure(
                    pipeline.dispatcher.coalesced(),
                    pipeline.dispatcher.outbox().dropped(),
                );
                let (cgroups, recovery) =
                    (pipeline.cgroups.cache_sizes(), pipeline.dispatcher.cache_sizes());
                pipeline.sinks.metrics().caches(&[cgroups.as_slice(), recovery.as_slice()].concat());
                if pipeline.overlap.as_ref().is_some_and(|o| !o.open(clock::monotonic_ns())) {
                    pipeline.overlap = None;
                }
                pipeline.cgroups.sweep(std::time::Instant::now());
                pipeline.dispatcher.sweep();
            }
            Some(notice) = incidents.recv() => {
                pipeline.sinks.notice(&notice);
                pipeline.sinks.flush();
            }
            () = pipeline.dispatcher.join_next() => {}
            _ = ping.tick(), if watchdog.is_some() => notify(&[NotifyState::Watchdog]),
            _ = sighup.recv() => {
                notify(&[NotifyState::Reloading]);
                pipeline.dispatcher.reload(options.config_path.as_deref());
                notify(&[NotifyState::Ready]);
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    notify(&[NotifyState::Stopping]);
    pipeline.drain_all(ring.get_mut(), false);
    pipeline.stop(counters, &mut incidents).await;
    if let Some(server) = server {
        // It serves until now; one that ended before failed (it never returns otherwise).
        if !server.is_finished() {
            server.abort();
        } else if let Err(e) = server.await {
            tracing::error!(error = %e, "the metrics endpoint's task failed");
        }
    }
    drop(attached);
    Ok(())
}
