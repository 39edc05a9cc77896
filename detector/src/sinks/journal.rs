//! Structured entries in the journal of the watched systemd: one per death (`exit`) and two per
//! incident (opened, resolved), each with a human `MESSAGE`, a fixed `MESSAGE_ID` per kind (the
//! catalog, `detector/catalog/detector.catalog`, explains each to `journalctl -x`), a `PRIORITY`,
//! `DETECTOR_*` fields to filter on, the whole record as JSON, and `OBJECT_SYSTEMD_UNIT=<unit>`
//! so that `journalctl -u UNIT` shows them beside the unit's own lines.
//!
//! Sending runs on a thread of its own behind a bounded queue: a slow or hung journald never
//! holds up the ring buffer. When the queue is full, or the journal is gone, the entry is not
//! lost: the caller (or the thread) writes its JSON to stdout instead, unless stdout has it
//! already. A journal that is gone is said once, and once again when it is back.
//!
//! Death entries come out of a share per interval ([`share`], `[journal]`): past it a death is
//! counted, not written, and the count is an entry of its own (`left_out`) when the interval
//! ends. A storm of deaths then neither floods the journal nor pushes detector past journald's
//! rate limit, which would drop the incidents' entries with the rest.

mod entries;
mod native;
mod relay;
pub(crate) mod share;

use std::{
    path::Path,
    sync::mpsc::{SyncSender, TrySendError},
    thread::JoinHandle,
    time::Instant,
};

use chrono::Utc;

pub(crate) use self::relay::serve as relay;
use self::{
    entries::{class, exit_entry, left_out_entry, notice_entry},
    relay::Relay,
    share::{Class, LeftOut, Share},
};
use super::words;
use crate::{
    config::journal::Journal as Config,
    death::record::ExitRecord,
    incident::{Notice, Phase},
    kernel::privileges,
};

/// Entries waiting for the thread; past this the caller writes them to stdout instead.
const QUEUE: usize = 8192;
/// At shutdown, how long the thread may take to send what is queued.
const FINISH_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
/// How long the daemon waits for the writer to start its relay and drop its capabilities.
const STARTED_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

enum Entry {
    Exit(Box<ExitRecord>),
    Notice(Notice),
    LeftOut(LeftOut),
}

/// What became of a death's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Taken {
    Queued,
    /// Past its class's share: counted, and not to be written anywhere else either (under
    /// systemd, stdout is the journal too).
    LeftOut(Class),
    /// The queue is full or the writer is not running: the caller keeps it elsewhere.
    Refused,
}

/// The journal writer: a thread and its queue, and the death entries' shares.
pub(crate) struct Journal {
    queue: Option<SyncSender<Entry>>,
    thread: Option<JoinHandle<()>>,
    /// One per [`Class`], in [`Class::ALL`]'s order.
    shares: [Share; 2],
}

impl Journal {
    /// Starts the thread writing to `ROOT/run/systemd/journal/socket`, through a relay in the
    /// pid namespace of the watched manager (`manager_pid`) when it is not ours. `to_stdout`:
    /// an entry the journal does not take is written to stdout as JSON (stdout does not have it
    /// already).
    pub(crate) fn spawn(
        root: &Path,
        manager_pid: Option<i32>,
        to_stdout: bool,
        config: Config,
    ) -> Self {
        let shares = Class::ALL.map(|class| Share::new(class, config));
        let path = root.join("run/systemd/journal/socket");
        let (queue, entries) = std::sync::mpsc::sync_channel::<Entry>(QUEUE);
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("journal-writer".to_owned())
            .spawn(move || write_entries(&path, manager_pid, &entries, to_stdout, &started_tx));
        match thread {
            Ok(thread) => {
                // Until its relay is started and it dropped its capabilities (see
                // `write_entries`): the daemon drops its own next, and says ready after.
                let _ = started.recv_timeout(STARTED_WAIT);
                Self {
                    queue: Some(queue),
                    thread: Some(thread),
                    shares,
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start the journal writer: no journal entries");
                Self {
                    queue: None,
                    thread: None,
                    shares,
                }
            }
        }
    }

    /// Queues a death's entry if its class's share has room; before it, the count of an
    /// interval of that class that ended.
    pub(crate) fn exit(&mut self, record: &ExitRecord) -> Taken {
        let class = class(record);
        let (write, ended) = self.shares[class as usize].take(Instant::now(), Utc::now());
        if let Some(ended) = ended {
            self.left_out(ended);
        }
        if !write {
            Taken::LeftOut(class)
        } else if self.push(Entry::Exit(Box::new(record.clone()))) {
            Taken::Queued
        } else {
            Taken::Refused
        }
    }

    /// Each second: the counts of the intervals that ended.
    pub(crate) fn tick(&mut self) {
        let (now, wall) = (Instant::now(), Utc::now());
        for i in 0..self.shares.len() {
            if let Some(ended) = self.shares[i].roll(now, wall) {
                self.left_out(ended);
            }
        }
    }

    /// A count of deaths left out, as an entry; in the daemon's log if it cannot be queued.
    fn left_out(&self, left_out: LeftOut) {
        let message = words::left_out(&left_out);
        if !self.push(Entry::LeftOut(left_out)) {
            tracing::warn!("{message}");
        }
    }

    /// Queues an incident's entry; false when it cannot be queued.
    pub(crate) fn notice(&self, notice: &Notice) -> bool {
        self.push(Entry::Notice(notice.clone()))
    }

    fn push(&self, entry: Entry) -> bool {
        match self.queue.as_ref().map(|q| q.try_send(entry)) {
            Some(Ok(())) => true,
            Some(Err(TrySendError::Full(_) | TrySendError::Disconnected(_))) | None => false,
        }
    }

    /// Sends what is queued and stops the thread, waiting at most [`FINISH_WAIT`]: a journald
    /// that stopped reading must not hold up the daemon's exit.
    pub(crate) fn finish(mut self) {
        let wall = Utc::now();
        for i in 0..self.shares.len() {
            if let Some(ended) = self.shares[i].finish(wall) {
                self.left_out(ended);
            }
        }
        drop(self.queue.take());
        let Some(thread) = self.thread.take() else {
            return;
        };
        let deadline = Instant::now() + FINISH_WAIT;
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        if !thread.is_finished() {
            tracing::warn!("the journal did not take every entry before the daemon stopped");
        } else if thread.join().is_err() {
            tracing::error!("the journal writer panicked");
        }
    }
}

/// Where the thread sends entries: straight to the socket, or through the relay.
struct Sender {
    socket: Option<native::Socket>,
    relay: Option<Relay>,
}

impl Sender {
    fn new(path: &Path, manager_pid: Option<i32>) -> Self {
        let relay = manager_pid.and_then(|pid| {
            Relay::start(pid, path).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot start the journal relay in the watched systemd's pid namespace; entries go without _UID, so `journalctl -u` will not show them");
                None
            })
        });
        let socket = native::Socket::new(path)
            .map_err(|e| tracing::error!(error = %e, "cannot make a socket for the journal"))
            .ok();
        Self { socket, relay }
    }

    fn send(&mut self, entry: &[u8]) -> std::io::Result<()> {
        if let Some(relay) = &mut self.relay {
            match relay.send(entry) {
                // The pipe broke or closed: the relay is gone. (An errno is the journal's answer,
                // passed on by a relay that is fine.)
                Err(e)
                    if e.raw_os_error().is_none() || e.kind() == std::io::ErrorKind::BrokenPipe =>
                {
                    tracing::warn!(error = %e, "the journal relay stopped; sending entries directly (without _UID)");
                    self.relay = None;
                }
                done => return done,
            }
        }
        match &self.socket {
            Some(socket) => socket.send(entry),
            None => Err(std::io::Error::other("no socket")),
        }
    }
}

/// The thread: every entry to the journal, or to stdout when the journal does not take it.
fn write_entries(
    path: &Path,
    manager_pid: Option<i32>,
    entries: &std::sync::mpsc::Receiver<Entry>,
    to_stdout: bool,
    started: &std::sync::mpsc::Sender<()>,
) {
    let mut sender = Sender::new(path, manager_pid);
    // Entering the machine's pid namespace for the relay takes CAP_SYS_ADMIN: this thread starts
    // before the daemon drops its capabilities, and drops its own once the relay runs.
    if let Err(e) = privileges::drop_all_but_kept() {
        tracing::error!("{e}; the journal writer keeps its capabilities");
    }
    let _ = started.send(());
    let mut gone = false;
    let mut buf = Vec::with_capacity(4096);
    for entry in entries {
        buf.clear();
        match &entry {
            Entry::Exit(record) => exit_entry(&mut buf, record),
            Entry::Notice(notice) => notice_entry(&mut buf, notice),
            Entry::LeftOut(left_out) => left_out_entry(&mut buf, left_out),
        }
        match sender.send(&buf) {
            Ok(()) => {
                if gone {
                    tracing::info!(journal = %path.display(), "the journal takes entries again");
                    gone = false;
                }
                continue;
            }
            Err(e) if !gone => {
                let then = if to_stdout {
                    "its entries go to stdout as JSON until it is back"
                } else {
                    "stdout still has every record"
                };
                tracing::error!(journal = %path.display(), error = %e, "cannot write to the journal; {then}");
                gone = true;
            }
            Err(_) => {}
        }
        if to_stdout {
            fall_back(&entry);
        }
    }
}

/// The entry's JSON on stdout: the record, or the incident once it is resolved.
fn fall_back(entry: &Entry) {
    let mut out = super::stdout::Stdout::default();
    match entry {
        Entry::Exit(record) => out.push(&**record),
        Entry::Notice(notice) if notice.phase == Phase::Resolved => out.push(&*notice.incident),
        Entry::Notice(_) => return,
        Entry::LeftOut(left_out) => {
            tracing::warn!("{}", words::left_out(left_out));
            return;
        }
    }
    out.flush();
}
