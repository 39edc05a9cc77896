//! `detector run` wired together: probes → ring buffer → decode → correlate → enrich → sinks for
//! every death; deaths in services go on to the recovery's dispatcher, whose incidents' notices
//! (opened, resolved) come back here for the sinks. Each stage's logic lives in its folder; this
//! file only connects them and runs the loop (ring, ticks, notices, watchdog, SIGHUP). Start-up
//! (pins and their backlog, privileges, sinks, metrics, history) is in [`start`], and what the
//! daemon gives back once started in [`memory`].

mod memory;
mod scheduling;
mod start;

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use sd_notify::NotifyState;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc::Receiver,
};

use self::start::{Started, start};
use crate::{
    config::Config,
    death::correlate::correlate,
    incident::Notice,
    kernel::{
        batch::Window,
        clock::{self, Clock},
        counters::{Counters, Lost},
        decode::{Event, decode},
        overlap::Overlap,
        probes::Backlog,
        ring::Ring,
    },
    recovery::Dispatcher,
    sinks::{Output, Sinks},
    unit::{cgroups::CgroupResolver, roles::Roles},
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
    /// `SCHED_FIFO` priority of the loop's thread from just before the capabilities are dropped
    /// (0: none); see [`scheduling`].
    pub realtime_priority: u8,
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
    /// The storm batch window (`--batch-window-us`; zero: off).
    pub batch_window: Duration,
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
    /// read again once the runtime's tasks have had their turn. No wakeup would come for them:
    /// the kernel wakes a reader only once it has caught up.
    more: bool,
    /// In a storm, reads paced by the batch window (off by default).
    window: Window,
}

impl Pipeline {
    /// Reads what is in the ring buffer, up to [`READ_AT_MOST`] records or a recovery that
    /// should start first (then `more` is set); returns how many records it read.
    fn drain(&mut self, ring: &mut Ring) -> usize {
        let read = self.drain_ring(ring, false);
        if !self.more {
            self.window.after_read(read);
        }
        read
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
            batch_windows = self.window.windows(),
            coalesced_folded = coalesced.folded,
            coalesced_unopened = coalesced.unopened,
            notices_folded = notices.opened,
            notices_lost = notices.resolved,
            "detector stopped"
        );
    }
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
                // The last read stopped early, for a recovery to start or at its bound. A branch
                // that is always ready never hands the runtime back: without this yield, the
                // recovery the last read spawned would wait for the rest of the storm to be read.
                tokio::task::yield_now().await;
                pipeline.drain(ring.get_mut());
            }
            _ = tick.tick() => {
                if let Some(lost) = counters.report() {
                    pipeline.sinks.lost(&lost);
                    pipeline.sinks.flush();
                }
                pipeline.sinks.metrics().kernel(counters.totals(), pipeline.undecodable);
                pipeline.sinks.metrics().batch_windows(pipeline.window.windows());
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
                pipeline.sinks.tick();
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
