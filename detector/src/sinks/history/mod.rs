//! The incident history: every finished incident goes into an SQLite database ([`store`]),
//! written on a thread of its own, so that the main loop never waits for the disk. The loop
//! hands an incident over a bounded queue ([`QUEUE`]); when it is full the incident is dropped
//! and counted (`detector_sink_drops_total{sink="history"}`), never waited for. A database that
//! cannot be opened or written (a full disk, a corrupt file, a read-only path) is logged with
//! what to do, the incidents it misses are counted as drops, and detection goes on; the writer
//! tries to open it again at most every [`REOPEN`].

pub(crate) mod store;
#[cfg(test)]
mod tests;

use std::{
    path::PathBuf,
    sync::mpsc::{Receiver, SyncSender, TrySendError},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use self::store::Store;
use super::metrics::SinkStats;
use crate::{config, incident::Incident};

/// Incidents waiting to be written. Incidents come at most a few a second even in a crash
/// loop; this many is minutes of a disk that has stopped.
const QUEUE: usize = 1024;
/// After a failure, the database is opened again no sooner than this.
const REOPEN: Duration = Duration::from_secs(30);
/// At shutdown, how long the writer may take to write what is queued.
const FINISH: Duration = Duration::from_secs(5);

/// The handle the main loop holds.
pub(crate) struct History {
    /// Boxed: a bounded std channel allocates every slot up front, and 1,024 incidents in place
    /// would be half a megabyte held from the start.
    queue: SyncSender<Box<Incident>>,
    stats: SinkStats,
    thread: JoinHandle<()>,
    done: Receiver<()>,
}

impl History {
    /// Starts the writer for `config`'s database; None when the history is off.
    #[must_use]
    pub(crate) fn spawn(config: &config::history::History, stats: SinkStats) -> Option<Self> {
        let path = config.path.clone()?;
        let (queue, incidents) = std::sync::mpsc::sync_channel(QUEUE);
        let (finished, done) = std::sync::mpsc::channel();
        let writer = Writer {
            path,
            max_age: config.max_age,
            max_incidents: config.max_incidents,
            stats: stats.clone(),
            store: None,
            tried: None,
        };
        let thread = std::thread::Builder::new()
            .name("history".to_owned())
            .spawn(move || {
                writer.run(&incidents);
                let _ = finished.send(());
            });
        match thread {
            Ok(thread) => Some(Self {
                queue,
                stats,
                thread,
                done,
            }),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the history writer: incidents are not kept");
                None
            }
        }
    }

    /// Queues `incident` for the database, or counts it dropped when the queue is full.
    pub(crate) fn push(&self, incident: &Incident) {
        match self.queue.try_send(Box::new(incident.clone())) {
            Ok(()) => {}
            Err(TrySendError::Full(incident)) => {
                self.stats.dropped.inc();
                tracing::warn!(
                    id = incident.id,
                    unit = incident.unit,
                    "incident history: the writer is {QUEUE} incidents behind; this one is not kept"
                );
            }
            Err(TrySendError::Disconnected(incident)) => {
                self.stats.dropped.inc();
                tracing::warn!(id = incident.id, "incident history: the writer has stopped");
            }
        }
    }

    /// Lets the writer write what is queued (for at most [`FINISH`]), then stops it.
    pub(crate) fn finish(self) {
        let Self {
            queue,
            thread,
            done,
            ..
        } = self;
        drop(queue);
        if done.recv_timeout(FINISH).is_ok() {
            let _ = thread.join();
        } else {
            tracing::warn!("incident history: the writer did not finish within {FINISH:?}");
        }
    }
}

/// The writer thread's state.
struct Writer {
    path: PathBuf,
    max_age: Duration,
    max_incidents: usize,
    stats: SinkStats,
    store: Option<Store>,
    /// When opening last failed.
    tried: Option<Instant>,
}

impl Writer {
    fn run(mut self, incidents: &Receiver<Box<Incident>>) {
        self.open();
        for incident in incidents {
            self.write(&incident);
        }
    }

    /// Opens the database and prunes it; logs why not.
    fn open(&mut self) {
        self.tried = None;
        match Store::open(&self.path).and_then(|store| {
            store.prune(store::now_ms(), self.max_age, self.max_incidents)?;
            Ok(store)
        }) {
            Ok(store) => {
                tracing::debug!(path = %self.path.display(), "incident history open");
                self.store = Some(store);
            }
            Err(e) => {
                tracing::error!(
                    "{e}; incidents are not kept until this is fixed (detection goes on; \
                     detector tries again in {REOPEN:?})"
                );
                self.tried = Some(Instant::now());
            }
        }
    }

    fn write(&mut self, incident: &Incident) {
        if self.store.is_none() && self.tried.is_none_or(|t| t.elapsed() >= REOPEN) {
            self.open();
        }
        let Some(store) = &self.store else {
            self.stats.dropped.inc();
            tracing::warn!(
                id = incident.id,
                unit = incident.unit,
                path = %self.path.display(),
                "incident history unavailable: this incident is not kept"
            );
            return;
        };
        let written = store
            .record(incident)
            .and_then(|()| store.prune(store::now_ms(), self.max_age, self.max_incidents));
        match written {
            Ok(_) => {
                self.stats.delivered.inc();
            }
            Err(e) => {
                self.stats.dropped.inc();
                tracing::error!(
                    id = incident.id,
                    unit = incident.unit,
                    "{e}; this incident is not kept (detection goes on)"
                );
                // Open afresh next time: the file may have been replaced or repaired.
                self.store = None;
                self.tried = Some(Instant::now());
            }
        }
    }
}
