//! The storm batch window (`detector run --batch-window-us`, off by default): once deaths come
//! closer together than the window, the reader stops being woken for each and reads the ring
//! buffer once per window instead, until a window passes with nothing in it.
//!
//! Why it exists, and why it is off: a wakeup costs the reader a context switch (some 12–16 µs
//! of CPU on a 2-core VM), far more than a record. A prompt reader is woken for nearly every
//! death of a storm, since it has caught up by the time the next one comes: the kernel wakes a
//! reader only when it has read everything before the new record
//! ([`bpf_ringbuf_commit`](https://github.com/torvalds/linux/blob/v6.18/kernel/bpf/ringbuf.c)).
//! Sleeping a window between reads makes each wakeup take a window's deaths, which a host whose
//! storms are routine may prefer: the README's "When the daemon wakes" has the measured trade
//! (on a 2-core VM, a 400 µs window costs about half the CPU per death of none, and its median
//! latency is about half the window).
//!
//! The reader sleeps in `clock_nanosleep`, not in `epoll`: a reader waiting in `epoll` would be
//! woken by the first record of the window, which is the cost the window is there to save. While
//! it sleeps the kernel's wakeups find nobody waiting. No record waits longer than a window: the
//! loop goes back to `epoll` after each window, and `epoll` reports at once a ring that is not
//! empty (a record committed during the window), or sleeps until the next one.

use std::time::{Duration, Instant};

/// The longest window: the loop serves nothing else while it sleeps (signals, the watchdog, a
/// recovery's next step), so the wait must stay far below anything those notice.
pub(crate) const MAX_WINDOW: Duration = Duration::from_millis(10);

/// The window, and when the reader last read records.
#[derive(Debug)]
pub(crate) struct Window {
    /// Zero: off.
    length: Duration,
    /// When the last read that found records ended, or the window slept after it: a read that
    /// finds records less than a window after that is in a storm.
    last_read: Option<Instant>,
    /// Windows slept since the start (`detector_ring_batch_windows_total`).
    windows: u64,
}

impl Window {
    /// A window of `window` (zero: off; at most [`MAX_WINDOW`], checked by the caller).
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            length: window.min(MAX_WINDOW),
            last_read: None,
            windows: 0,
        }
    }

    /// After a read that emptied the ring and took `records`: sleeps one window if this read
    /// came less than a window after the last one, so that the next read takes all the deaths
    /// of the window. A read that stopped early (a recovery to start, its bound) must not call
    /// this: what it left is read at once.
    pub(crate) fn after_read(&mut self, records: usize) {
        if self.paces(records, Instant::now()) {
            // Blocking on purpose: see the module's comment. It is short (at most MAX_WINDOW)
            // and only taken in a storm, when the reader would otherwise be woken for each death.
            std::thread::sleep(self.length);
            self.last_read = Some(Instant::now());
        }
    }

    /// Whether a read at `now` that took `records` came less than a window after the last one
    /// (then it is counted as a window); notes the read.
    fn paces(&mut self, records: usize, now: Instant) -> bool {
        if self.length.is_zero() || records == 0 {
            return false;
        }
        let close = self
            .last_read
            .is_some_and(|last| now.saturating_duration_since(last) < self.length);
        self.last_read = Some(now);
        if close {
            self.windows += 1;
        }
        close
    }

    /// Windows slept since the start.
    pub(crate) fn windows(&self) -> u64 {
        self.windows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_never_paces() {
        let mut w = Window::new(Duration::ZERO);
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(!w.paces(5, t0 + Duration::from_micros(i)));
        }
        assert_eq!(w.windows(), 0);
    }

    #[test]
    fn a_lone_death_is_not_paced_and_a_close_one_is_until_a_quiet_window() {
        let ms = Duration::from_millis;
        let mut w = Window::new(ms(5));
        let t0 = Instant::now();
        assert!(!w.paces(1, t0), "a first death has nothing to be close to");
        assert!(
            w.paces(1, t0 + ms(1)),
            "a death within the window starts pacing"
        );
        assert!(
            w.paces(2, t0 + ms(2)),
            "records right after a window keep pacing"
        );
        assert!(
            !w.paces(0, t0 + ms(3)),
            "a read that found nothing does not pace"
        );
        assert!(
            !w.paces(1, t0 + ms(9)),
            "a death after a quiet window is read at once"
        );
        assert!(
            w.paces(1, t0 + ms(10)),
            "and the next close one paces again"
        );
        assert_eq!(w.windows(), 3);
    }

    #[test]
    fn a_paced_read_sleeps_its_window_and_counts_it() {
        let mut w = Window::new(Duration::from_millis(2));
        // A last read "in the future": this one is close to it however late the test runs.
        w.last_read = Some(Instant::now() + Duration::from_mins(1));
        let started = Instant::now();
        w.after_read(1);
        assert!(started.elapsed() >= Duration::from_millis(2));
        assert_eq!(w.windows(), 1);
    }

    #[test]
    fn deaths_further_apart_than_the_window_are_not_paced() {
        let mut w = Window::new(Duration::from_micros(200));
        for _ in 0..3 {
            w.after_read(1);
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(w.windows(), 0);
    }

    #[test]
    fn the_window_is_bounded() {
        let w = Window::new(Duration::from_secs(1));
        assert_eq!(w.length, MAX_WINDOW);
    }
}
