//! The journal readers: a few threads, each with its own sd-journal handle (they are not
//! thread-safe), taking requests from one bounded queue, each request answered once even when
//! the queue is full or a reader fails on it.

use std::{
    panic::AssertUnwindSafe,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread,
};

use super::{Account, Options, Reader, Request, causes};

/// Niceness of the journal thread. Its work waits on journald anyway, and it runs while a
/// restarted unit starts up: it should not take CPU from that (the daemon's main thread, which
/// sees deaths and restarts units, runs at `--nice`, -10 by default).
const JOURNAL_NICE: i32 = 10;

/// Lowers this thread's priority to [`JOURNAL_NICE`] (on Linux, `setpriority` on a thread id
/// applies to that thread alone).
fn lower_priority() {
    let tid = nix::unistd::gettid().as_raw();
    // SAFETY: setpriority has no memory-safety preconditions; `tid` is this thread.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, JOURNAL_NICE) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower the journal thread's priority");
    }
}

/// Journal readers at work at once. Each may wait up to the journal wait (2 s) on one death for
/// PID 1's account, so a crash storm across many units needs more than one.
const READERS: usize = 4;
/// Requests waiting for a reader. Past this, a death's incident goes out without journal lines,
/// and says so: the ring buffer and the recoveries never wait on the journal.
const QUEUE: usize = 1024;

/// The journal readers, as the rest of the daemon sees them.
#[derive(Clone)]
pub(crate) struct Readers {
    tx: mpsc::SyncSender<Request>,
    /// Requests answered without reading because the queue was full.
    overflowed: Arc<AtomicU64>,
}

impl Readers {
    /// Hands `request` to a reader; when none can take it, answers it at once without lines.
    pub(crate) fn ask(&self, request: Request) {
        match self.tx.try_send(request) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(request)) => {
                let n = self.overflowed.fetch_add(1, Ordering::Relaxed) + 1;
                if n == 1 || n.is_multiple_of(100) {
                    tracing::warn!(
                        overflowed = n,
                        "the journal readers are behind ({QUEUE} requests waiting); incidents go out without journal lines"
                    );
                }
                request.unread(&format!(
                    "not read: the journal readers were behind ({QUEUE} requests waiting)"
                ));
            }
            Err(mpsc::TrySendError::Disconnected(request)) => {
                request.unread("not read: no journal reader runs");
            }
        }
    }
}

impl Request {
    /// Answers at once, without the journal: the death's own cause, and why there are no lines.
    fn unread(self, why: &str) {
        let account = match &self {
            Request::Death { record, .. } => Account {
                main_process: true,
                invocation_id: record.invocation_id.clone(),
                lines: Vec::new(),
                cause: causes::from_death(record),
                port_holder: None,
                unread: Some(why.to_owned()),
            },
            Request::Run { invocation, .. } => Account {
                main_process: true,
                invocation_id: invocation.clone(),
                lines: Vec::new(),
                cause: causes::classify_run(&[], &[]),
                port_holder: None,
                unread: Some(why.to_owned()),
            },
        };
        let (Request::Death { answer, .. } | Request::Run { answer, .. }) = self;
        // Nobody waiting any more (the daemon is stopping) is not an error.
        let _ = answer.send(account);
    }
}

impl Reader {
    fn handle(&mut self, request: Request) {
        // Nobody waiting any more (the daemon is stopping) is not an error.
        match request {
            Request::Death {
                unit,
                record,
                answer,
            } => {
                let _ = answer.send(self.account(&unit, &record));
            }
            Request::Run {
                unit,
                invocation,
                answer,
            } => {
                let _ = answer.send(self.run(&unit, invocation));
            }
        }
    }
}

/// Starts the journal readers. Deaths in units go in through [`Readers::ask`] with a channel for
/// the answer. A journal that cannot be opened or read is logged, and the answer then has no
/// lines and says why (and counts every death in a service as the main process's, since we
/// cannot tell). A reader that panics on a request is logged, and reads the next one with a
/// fresh journal handle: the request's incident goes out without lines.
#[must_use]
pub(crate) fn spawn(options: &Options) -> Readers {
    let (tx, rx) = mpsc::sync_channel::<Request>(QUEUE);
    let rx = Arc::new(Mutex::new(rx));
    let (rules, rules_version) = super::rules(&options.config);
    for n in 0..READERS {
        let rx = Arc::clone(&rx);
        let options = options.clone();
        let rules = rules.clone();
        // sd-journal handles must stay on the thread that opened them: build the reader there.
        let spawned = thread::Builder::new()
            .name(format!("journal-{n}"))
            .spawn(move || {
                lower_priority();
                let mut reader = Reader {
                    options,
                    rules,
                    rules_version,
                    journal: None,
                    last_error: String::new(),
                };
                loop {
                    // The lock is held only while taking one request.
                    let next = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                    let Ok(request) = next else { return };
                    let handled =
                        std::panic::catch_unwind(AssertUnwindSafe(|| reader.handle(request)));
                    if let Err(panic) = handled {
                        let what = panic
                            .downcast_ref::<&str>()
                            .map(|s| (*s).to_owned())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_default();
                        tracing::error!(
                            panic = what,
                            "a journal reader failed on a request; it goes on with a fresh handle"
                        );
                        reader.journal = None;
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a journal reader");
        }
    }
    Readers {
        tx,
        overflowed: Arc::new(AtomicU64::new(0)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, atomic::AtomicU64, mpsc};

    use tokio::sync::oneshot;

    use super::{Readers, Request};

    /// A queue with no room and no reader: the request is answered at once, with the death's
    /// own cause, no lines, and why.
    #[test]
    fn a_full_queue_answers_at_once_and_says_why() {
        let (tx, _rx) = mpsc::sync_channel(0);
        let readers = Readers {
            tx,
            overflowed: Arc::new(AtomicU64::new(0)),
        };
        let (answer, account) = oneshot::channel();
        readers.ask(Request::Death {
            unit: "app.service".into(),
            record: Box::new(crate::journal::causes::tests::record()),
            answer,
        });
        let account = account.blocking_recv().expect("answered");
        assert_eq!(
            (
                account.main_process,
                account.lines.len(),
                account.cause.0.as_str()
            ),
            (true, 0, "exit_code")
        );
        assert!(
            account
                .unread
                .is_some_and(|why| why.contains("journal readers were behind")),
        );
    }
}
