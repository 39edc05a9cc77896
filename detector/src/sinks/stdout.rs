//! JSON lines on stdout: one object per record or incident.
//!
//! The main loop must never wait on stdout: a reader that stops reading (a paused pager, a full
//! pipe) would stop the ring buffer from being drained, and the kernel would drop records. So the
//! loop's batches go through a bounded queue to a writer thread of their own ([`Stdout::queued`]);
//! a batch that does not fit is dropped and its lines counted and logged, never waited for.
//!
//! While the writer thread has nothing to do, the loop writes a batch itself with a write that
//! cannot wait (`pwritev2` with `RWF_NOWAIT`; pipes and sockets take it): a record then costs no
//! thread switch, which at thousands of deaths a second is most of what it would cost. Whatever
//! that write cannot take at once goes to the writer thread, behind nothing, so the order holds.

use std::{
    io::Write,
    os::fd::RawFd,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc,
    },
    thread,
    time::Duration,
};

use bytes::{BufMut as _, Bytes, BytesMut};
use serde::Serialize;

/// Batches waiting for the writer thread.
const QUEUE: usize = 256;
/// Bytes kept for the writer beyond its queue, coalesced into one batch (a storm's batches are
/// small: a bound in batches alone kept only a thousand records). Some 20,000 records.
const BACKLOG: usize = 16 << 20;
/// At shutdown, how long the writer may take to write what is queued.
const GRACE: Duration = Duration::from_secs(3);

/// The writer thread, as the main loop sees it.
struct Queue {
    tx: mpsc::SyncSender<Bytes>,
    /// Lines dropped because the queue was full.
    dropped: Arc<AtomicU64>,
    /// Batches handed to the writer thread and not yet written.
    busy: Arc<AtomicUsize>,
    /// Closed by the writer thread when it has written everything.
    done: mpsc::Receiver<()>,
}

/// Buffers JSON lines for one batch and writes them in one go: through the writer thread when
/// [`Stdout::queued`], else at once (for a thread that may wait, such as the journal writer).
#[derive(Default)]
pub(crate) struct Stdout {
    buf: BytesMut,
    /// Lines in `buf`.
    lines: u64,
    /// What did not fit the queue yet, oldest first, and its lines.
    backlog: BytesMut,
    backlog_lines: u64,
    queue: Option<Queue>,
    /// The descriptor the loop may write to itself while the writer thread is idle; `None` once
    /// such a write was refused as unsupported.
    direct: Option<RawFd>,
}

impl Stdout {
    /// A writer whose batches go to stdout from a thread of their own.
    pub(crate) fn queued() -> Self {
        Self {
            direct: Some(libc::STDOUT_FILENO),
            ..Self::queued_to(std::io::stdout())
        }
    }

    /// As [`Stdout::queued`], to `out`.
    fn queued_to(mut out: impl Write + Send + 'static) -> Self {
        let (tx, rx) = mpsc::sync_channel::<Bytes>(QUEUE);
        let (finished, done) = mpsc::channel();
        let busy = Arc::new(AtomicUsize::new(0));
        let writing = Arc::clone(&busy);
        let spawned = thread::Builder::new().name("stdout".into()).spawn(move || {
            let mut failed = false;
            for batch in rx {
                if let Err(e) = out.write_all(&batch).and_then(|()| out.flush())
                    && !failed
                {
                    // Said once: a closed stdout stays closed.
                    tracing::error!(error = %e, "writing records to stdout failed");
                    failed = true;
                }
                writing.fetch_sub(1, Ordering::Release);
            }
            drop(finished);
        });
        let queue = match spawned {
            Ok(_) => Some(Queue {
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
                busy,
                done,
            }),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the stdout writer; writing from the main loop");
                None
            }
        };
        Self {
            queue,
            ..Self::default()
        }
    }

    /// Appends one record as a line.
    pub(crate) fn push(&mut self, record: &impl Serialize) {
        let mut writer = (&mut self.buf).writer();
        match serde_json::to_writer(&mut writer, record) {
            Ok(()) => {
                self.buf.put_u8(b'\n');
                self.lines += 1;
            }
            // Our records are plain data; this would be a bug, and must not take the daemon down.
            Err(e) => tracing::error!(error = %e, "could not serialise a record"),
        }
    }

    /// Writes what was pushed, or hands it to the writer thread; a full queue drops it, counted.
    pub(crate) fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let mut batch = self.buf.split().freeze();
        let lines = std::mem::take(&mut self.lines);
        let Some(queue) = &self.queue else {
            let mut out = std::io::stdout().lock();
            if let Err(e) = out.write_all(&batch).and_then(|()| out.flush()) {
                tracing::error!(error = %e, "writing records to stdout failed");
            }
            return;
        };
        // Nothing queued ahead of it: try to write it here and now.
        if self.backlog.is_empty()
            && let Some(fd) = self.direct
            && queue.busy.load(Ordering::Acquire) == 0
        {
            match write_now(fd, &batch) {
                Ok(n) if n >= batch.len() => return,
                // The rest through the writer thread (a line may be cut between the two: the
                // reader sees the bytes in order all the same).
                Ok(n) => batch = batch.slice(n..),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {}
                Err(e) => {
                    // Not a pipe or a socket (a terminal, some files), or stdout is broken: the
                    // writer thread takes every batch from now on, and says if it is broken.
                    tracing::debug!(error = %e, "stdout takes no non-waiting writes; using the writer thread");
                    self.direct = None;
                }
            }
        }
        // The backlog first, in order; then this batch, or onto the backlog while it fits.
        if !self.backlog.is_empty() {
            let waiting = self.backlog.split().freeze();
            if let Err(mpsc::TrySendError::Full(back) | mpsc::TrySendError::Disconnected(back)) =
                Self::send(queue, waiting)
            {
                self.backlog.extend_from_slice(&back);
                if self.backlog.len() + batch.len() <= BACKLOG {
                    self.backlog.extend_from_slice(&batch);
                    self.backlog_lines += lines;
                } else {
                    Self::count_dropped(queue, lines);
                }
                return;
            }
            self.backlog_lines = 0;
        }
        if let Err(mpsc::TrySendError::Full(batch) | mpsc::TrySendError::Disconnected(batch)) =
            Self::send(queue, batch)
        {
            self.backlog.extend_from_slice(&batch);
            self.backlog_lines += lines;
        }
    }

    /// Hands a batch to the writer thread, counted busy until it is written.
    fn send(queue: &Queue, batch: Bytes) -> Result<(), mpsc::TrySendError<Bytes>> {
        queue.busy.fetch_add(1, Ordering::AcqRel);
        let sent = queue.tx.try_send(batch);
        if sent.is_err() {
            queue.busy.fetch_sub(1, Ordering::AcqRel);
        }
        sent
    }

    fn count_dropped(queue: &Queue, lines: u64) {
        let before = queue.dropped.fetch_add(lines, Ordering::Relaxed);
        // The first drop, then one line per thousand lines dropped.
        if before == 0 || before / 1000 != (before + lines) / 1000 {
            tracing::warn!(
                dropped = before + lines,
                "stdout is not being read fast enough; records that do not fit are dropped (the journal and the other sinks still have them)"
            );
        }
    }

    /// Lines dropped so far because stdout was not read (said in the log as it happens).
    #[cfg(test)]
    fn dropped(&self) -> u64 {
        self.queue
            .as_ref()
            .map_or(0, |q| q.dropped.load(Ordering::Relaxed))
    }

    /// At shutdown: writes what is left, and gives the writer thread [`GRACE`] to finish. A
    /// reader that never reads again cannot hold the daemon's exit.
    pub(crate) fn finish(mut self) {
        self.flush();
        if let Some(Queue {
            tx, dropped, done, ..
        }) = self.queue.take()
        {
            // The backlog may wait for room, within the grace.
            if !self.backlog.is_empty() {
                let waiting = self.backlog.split().freeze();
                let deadline = std::time::Instant::now() + GRACE;
                let mut waiting = Some(waiting);
                while let Some(batch) = waiting.take() {
                    match tx.try_send(batch) {
                        Err(mpsc::TrySendError::Full(back))
                            if std::time::Instant::now() < deadline =>
                        {
                            waiting = Some(back);
                            thread::sleep(Duration::from_millis(10));
                        }
                        Err(_) => {
                            dropped.fetch_add(self.backlog_lines, Ordering::Relaxed);
                        }
                        Ok(()) => {}
                    }
                }
            }
            drop(tx);
            if done.recv_timeout(GRACE) == Err(mpsc::RecvTimeoutError::Timeout) {
                tracing::warn!("stdout is not being read; what is still queued for it is lost");
            }
            let dropped = dropped.load(Ordering::Relaxed);
            if dropped > 0 {
                tracing::warn!(dropped, "records not written to stdout: it was not read");
            }
        }
    }
}

/// One write to `fd` that returns rather than waits when it cannot take `buf` now (`EAGAIN`):
/// `RWF_NOWAIT` is per call, so stdout's file description, which we may share with our parent,
/// stays blocking.
fn write_now(fd: RawFd, buf: &[u8]) -> std::io::Result<usize> {
    let iov = libc::iovec {
        iov_base: buf.as_ptr().cast_mut().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: `iov` describes `buf`, which outlives the call, and the kernel only reads from it
    // for a write; offset -1 is "the current position", as `write(2)` uses.
    let n = unsafe { libc::pwritev2(fd, &raw const iov, 1, -1, libc::RWF_NOWAIT) };
    usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write,
        sync::{Arc, Mutex},
        time::{Duration, Instant},
    };

    use super::{QUEUE, Stdout};

    /// A reader that stopped: every write waits until `open` is set, as a full pipe would.
    struct Stopped(Arc<Mutex<bool>>);

    impl Write for Stopped {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            while !*self.0.lock().expect("lock") {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stopped_reader_never_holds_the_loop_and_what_did_not_fit_is_counted() {
        let open = Arc::new(Mutex::new(false));
        let mut out = Stdout::queued_to(Stopped(Arc::clone(&open)));
        let started = Instant::now();
        let batches = QUEUE + 100;
        for n in 0..batches {
            out.push(&n);
            out.push(&n);
            out.flush();
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "flush waited on the reader: {:?}",
            started.elapsed()
        );
        // Small batches: all of them fit the queue and the backlog.
        assert_eq!(out.dropped(), 0);
        // Past the backlog's bytes, lines are dropped and counted.
        let big = "x".repeat(1 << 20);
        for _ in 0..(super::BACKLOG >> 20) + 8 {
            out.push(&big);
            out.flush();
        }
        let dropped = out.dropped();
        // Each line is a little over 1 MiB: 15 of the 24 fit beside the small ones.
        assert!((8..=10).contains(&dropped), "{dropped} lines dropped");
        *open.lock().expect("lock") = true;
        out.finish();
    }
}
