//! Processes that die in exactly one known way, for the kernel tests.
//!
//! `victim MODE`:
//! - `segv`: writes through a null pointer (a real fault: the kernel sends SIGSEGV);
//! - `abort`: `abort()` (SIGABRT raised by the process itself with `tgkill`);
//! - `group-exit-after-main`: the main thread exits alone, then another thread calls
//!   `exit_group(7)`;
//! - `thread-exits-after-main`: the main thread exits alone with 5, then the last thread exits
//!   alone with 7 (no `exit_group`);
//! - `alloc`: allocates and touches memory until something stops it (run it in a memory cgroup);
//! - `storm N [CODE]`: forks N children that each `_exit(CODE)` (default 1) at once, reaping them
//!   a thousand at a time, and prints their pids.

#![expect(
    unused_crate_dependencies,
    reason = "each target of the tests package uses a part of its dependencies"
)]

use std::{thread, time::Duration};

fn exit_thread(code: i32) -> ! {
    // SAFETY: SYS_exit ends only the calling thread; nothing runs after it.
    unsafe { libc::syscall(libc::SYS_exit, code) };
    unreachable!("SYS_exit returned")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("segv") => {
            let p: *mut u32 = std::ptr::null_mut();
            // SAFETY: not safe at all, on purpose: this write faults and the kernel kills us.
            unsafe { p.write_volatile(1) };
        }
        Some("abort") => std::process::abort(),
        Some("group-exit-after-main") => {
            thread::spawn(|| {
                thread::sleep(Duration::from_millis(100));
                // SAFETY: ends the whole process with exit_group(7).
                unsafe { libc::_exit(7) };
            });
            exit_thread(0);
        }
        Some("thread-exits-after-main") => {
            thread::spawn(|| {
                thread::sleep(Duration::from_millis(100));
                exit_thread(7);
            });
            exit_thread(5);
        }
        Some("alloc") => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                // Touch every page so it is really charged.
                hoard.push(vec![1u8; 1 << 20]);
            }
        }
        Some("storm") => {
            let n: usize = args.get(2).and_then(|n| n.parse().ok()).expect("storm N");
            let code: i32 = args.get(3).map_or(1, |c| c.parse().expect("storm N CODE"));
            let mut pids = Vec::with_capacity(n);
            // Reaped in batches: unreaped children hold pids, and pid_max can be as low as 32768.
            for batch in (0..n).collect::<Vec<_>>().chunks(1000) {
                let start = pids.len();
                for _ in batch {
                    // SAFETY: this helper is single-threaded; the child only calls _exit.
                    match unsafe { libc::fork() } {
                        // SAFETY: _exit is async-signal-safe.
                        0 => unsafe { libc::_exit(code) },
                        -1 => panic!("fork failed: {}", std::io::Error::last_os_error()),
                        pid => pids.push(pid),
                    }
                }
                for pid in &pids[start..] {
                    let mut status = 0;
                    // SAFETY: waiting for our own child.
                    unsafe { libc::waitpid(*pid, &raw mut status, 0) };
                    assert_eq!(status, code << 8, "child {pid}");
                }
            }
            let out: Vec<String> = pids.iter().map(ToString::to_string).collect();
            println!("{}", out.join("\n"));
        }
        other => {
            eprintln!("victim: unknown mode {other:?}");
            std::process::exit(2);
        }
    }
}
