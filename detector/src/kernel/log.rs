//! The kernel programs' own messages (aya-log), at debug only.
//!
//! The programs write a line on their rare paths (the first failure of a kind on a CPU, then the
//! 2nd, 4th, 8th...; an OOM victim whose memory cgroup could not be read), never per event.
//! Whether they write at all is `AYA_LOG_LEVEL`, a read-only global set at load: 0 unless this
//! daemon logs `detector::kernel::programs` at debug (`DETECTOR_LOG=debug`), and then the verifier
//! removes the logging code as dead. The daemon reads their log ring (`AYA_LOGS`) only then, and
//! forwards each message to `tracing` under that target.
//!
//! With pins, a generation keeps the level of the daemon that loaded it, and only that daemon
//! reads its log ring: a daemon that reattaches says so and goes on without the kernel's messages
//! (`detector unpin` first, to have them). Nothing else reads that ring; it holds 128 KiB, and a
//! full one drops messages, never records.

use std::panic::{AssertUnwindSafe, catch_unwind};

use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::io::{Interest, unix::AsyncFd};

/// The target of the forwarded messages, and the one whose level decides whether the programs
/// write any.
pub(crate) const TARGET: &str = "detector::kernel::programs";

/// aya-log's `AYA_LOG_LEVEL` for this daemon: `Debug` (4) when it would show kernel messages,
/// else 0, which silences every level.
#[must_use]
pub(crate) fn level() -> u8 {
    if tracing::enabled!(target: TARGET, tracing::Level::DEBUG) {
        aya_log::Level::Debug as u8
    } else {
        0
    }
}

/// aya-log writes to a `log::Log`; this one hands each message to `tracing`.
pub(crate) struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        // The program's module (`detector::exit`, ...) says which hook wrote it.
        let program = record.target();
        let message = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: TARGET, program, "{message}"),
            log::Level::Warn => tracing::warn!(target: TARGET, program, "{message}"),
            log::Level::Info => tracing::info!(target: TARGET, program, "{message}"),
            log::Level::Debug => tracing::debug!(target: TARGET, program, "{message}"),
            log::Level::Trace => tracing::trace!(target: TARGET, program, "{message}"),
        }
    }

    fn flush(&self) {}
}

/// The reader of a freshly loaded object's log ring, when this daemon shows kernel messages.
pub(crate) type Logger = EbpfLogger<ToTracing>;

/// Takes the log ring out of `ebpf` if the level asks for messages. A failure is a warning: the
/// daemon runs on without the kernel's messages.
pub(crate) fn take(ebpf: &mut Ebpf, level: u8) -> Option<Logger> {
    if level == 0 {
        return None;
    }
    match EbpfLogger::init_with_logger(ebpf, ToTracing) {
        Ok(logger) => Some(logger),
        Err(e) => {
            tracing::warn!(error = %e, "the kernel programs' messages cannot be read; going on without them");
            None
        }
    }
}

/// Forwards the programs' messages as they come, on the runtime, until the daemon stops.
pub(crate) fn spawn(logger: Logger) {
    // SAFETY: the logger owns its ring's map fd; it stays open and unchanged until the `AsyncFd`
    // (which owns the logger) is dropped.
    let mut logger = match unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "cannot poll the kernel programs' log ring; going on without it");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = logger.readable_mut().await else {
                return;
            };
            // aya-log panics (an `unwrap`) on a message it cannot parse; ours are built by the
            // same aya-log release, but a daemon must not stop for its debug output.
            let flushed = catch_unwind(AssertUnwindSafe(|| guard.get_inner_mut().flush()));
            if flushed.is_err() {
                tracing::warn!("a kernel program's message could not be parsed; no more are read");
                return;
            }
            guard.clear_ready();
        }
    });
}
