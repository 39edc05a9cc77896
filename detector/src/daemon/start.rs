//! Start-up: the kernel programs loaded or reattached, privileges dropped, the pipeline and its
//! sinks built, what the kernel wrote while no daemon ran read, then "ready".

use std::sync::Arc;

use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::mpsc::Receiver,
};

use super::{JOURNAL_WAIT, Options, Pipeline};
use crate::{
    config::{Config, Live},
    incident::{Notice, Outbox, outbox},
    journal,
    kernel::{
        batch::Window,
        counters::Counters,
        log as kernel_log,
        overlap::Overlap,
        privileges,
        probes::{self, Attached, Probes},
        ring::Ring,
    },
    recovery::{self, Dispatcher, Recovery},
    sinks::{
        Sinks,
        history::History,
        metrics::{Metrics, server},
        words,
    },
    unit::{cgroups::CgroupResolver, manager, roles::Roles},
};

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
pub(super) struct Started {
    /// The programs stay attached (and the pins locked) while this lives.
    pub(super) attached: Attached,
    pub(super) pipeline: Pipeline,
    pub(super) ring: AsyncFd<Ring>,
    pub(super) counters: Counters,
    pub(super) incidents: Receiver<Notice>,
    /// The `/metrics` server, when the configuration asks for one.
    pub(super) server: Option<tokio::task::JoinHandle<()>>,
}

/// Loads (or reattaches to) the kernel programs, builds the pipeline and its sinks, reads what
/// the kernel wrote while no daemon read, and says ready once systemd's unit states are
/// followed.
pub(super) async fn start(options: &Options) -> anyhow::Result<Started> {
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
    let journal_sink = Sinks::journal(
        options.output,
        (&options.root, manager_pid),
        options.config.journal,
    );
    // Likewise the thread that makes health checks' sockets in the machine's network namespace.
    let dialer = recovery::netns::Dialer::start(manager_pid);
    // After those two threads, which keep `--nice`, and while CAP_SYS_NICE is ours: this thread
    // reads the ring buffer at real-time priority from here on, the threads made later do not.
    super::scheduling::enter(options.realtime_priority);
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
        window: Window::new(options.batch_window),
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
