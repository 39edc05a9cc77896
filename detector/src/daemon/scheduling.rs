//! How the thread that reads the ring buffer is scheduled: `SCHED_FIFO` at `--realtime-priority`,
//! so that a death is read within tens of microseconds even while a storm keeps every core busy.
//! A woken real-time thread takes its core at once; a niced one waits its turn: milliseconds at
//! the 99th percentile on a saturated host, and 1.5 to 3.6 ms after a unit's crash on this VM
//! while systemd, the bus and the journal handle it. The loop only ever waits in `epoll`, so it
//! gives the core back as soon as the ring is empty.
//!
//! Only that thread. It becomes real-time during start-up, after the two threads that start-up
//! makes first (the journal writer and the health checks' socket thread, which keep `--nice`) and
//! before the capabilities go (CAP_SYS_NICE among them): `SCHED_RESET_ON_FORK` gives every thread
//! made after it (journal readers, history, stdout, the runtime's blocking pool) the normal policy
//! at nice 0 instead of ours (`sched_fork()` in [kernel/sched/core.c]).
//!
//! [kernel/sched/core.c]: https://github.com/torvalds/linux/blob/v6.18/kernel/sched/core.c

/// Makes the calling thread `SCHED_FIFO` at `priority` (0: leaves it as it is). A refusal is
/// logged, and the daemon runs on at its niceness.
pub(super) fn enter(priority: u8) {
    if priority == 0 {
        return;
    }
    let param = libc::sched_param {
        sched_priority: i32::from(priority),
    };
    // SAFETY: `param` is a valid `sched_param` that outlives the call; pid 0 is the calling
    // thread.
    let rc = unsafe {
        libc::sched_setscheduler(
            0,
            libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK,
            &raw const param,
        )
    };
    if rc == 0 {
        tracing::debug!(priority, "reading the ring buffer at real-time priority");
    } else {
        tracing::warn!(
            priority,
            error = %std::io::Error::last_os_error(),
            "cannot read the ring buffer at real-time priority (it needs CAP_SYS_NICE, no RestrictRealtime=yes in the unit, and, on kernels with real-time group scheduling, a real-time budget for the cgroup); the daemon runs at --nice instead"
        );
    }
}

#[cfg(test)]
mod tests {
    /// The policy and the flag as the kernel reports them, for the calling thread.
    fn policy() -> i32 {
        // SAFETY: no preconditions; pid 0 is the calling thread.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[test]
    fn zero_leaves_the_thread_alone() {
        std::thread::spawn(|| {
            let before = policy();
            super::enter(0);
            assert_eq!(policy(), before);
        })
        .join()
        .expect("thread");
    }

    /// As root (the daemon's tests run as root): the thread becomes FIFO with reset-on-fork,
    /// and a thread it starts afterwards is back at the normal policy.
    #[test]
    fn enter_makes_this_thread_fifo_and_not_its_children() {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "this test needs root (CAP_SYS_NICE), as the daemon's other tests do"
        );
        std::thread::spawn(|| {
            super::enter(1);
            assert_eq!(policy(), libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK);
            let child = std::thread::spawn(policy).join().expect("child thread");
            assert_eq!(child, libc::SCHED_OTHER);
        })
        .join()
        .expect("thread");
    }
}
