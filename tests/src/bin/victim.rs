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
//!   a thousand at a time, and prints their pids;
//! - `pace RATE SECONDS [CODE]`: for SECONDS, forks children that each `_exit(CODE)` (default 1)
//!   at RATE forks/s (0: as fast as it can), and prints how many it forked. The schedule is by
//!   deadline (the Nth fork is due at N / RATE s), so a late sleep is caught up, not lost;
//! - `serve PORT [FILE]`: answers every HTTP request on 127.0.0.1:PORT with `200 ok`, one at a
//!   time: a service that listens within a millisecond of its start, for the restart benchmark.
//!   Once it listens, it writes the time (µs since the epoch) to FILE.

#![expect(
    unused_crate_dependencies,
    reason = "each target of the tests package uses a part of its dependencies"
)]

use std::{
    io::{Read as _, Write as _},
    net::TcpListener,
    thread,
    time::{Duration, Instant},
};

fn exit_thread(code: i32) -> ! {
    // SAFETY: SYS_exit ends only the calling thread; nothing runs after it.
    unsafe { libc::syscall(libc::SYS_exit, code) };
    unreachable!("SYS_exit returned")
}

/// Reaps every child that has already exited, checking its status; returns how many.
fn reap_ready(code: i32) -> usize {
    let mut reaped = 0;
    loop {
        let mut status = 0;
        // SAFETY: waiting for our own children, without blocking.
        let pid = unsafe { libc::waitpid(-1, &raw mut status, libc::WNOHANG) };
        if pid <= 0 {
            return reaped;
        }
        assert_eq!(status, code << 8, "child {pid}");
        reaped += 1;
    }
}

/// `pace RATE SECONDS CODE`: forks on a deadline schedule; returns how many children it forked.
fn pace(rate: u32, seconds: f64, code: i32) -> u64 {
    // Unreaped children hold pids (pid_max can be as low as 32768): past this many, wait.
    const MAX_LIVE: usize = 1000;
    let duration = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let (mut forked, mut live) = (0u64, 0usize);
    loop {
        let elapsed = start.elapsed();
        if elapsed >= duration {
            break;
        }
        if rate > 0 {
            let due = (elapsed.as_secs_f64() * f64::from(rate)) as u64;
            if forked >= due {
                live -= reap_ready(code);
                // The next fork's deadline; a sleep that overshoots is made up by the forks
                // that are then already due.
                let next = Duration::from_secs_f64((forked + 1) as f64 / f64::from(rate));
                if let Some(wait) = next.checked_sub(start.elapsed()) {
                    thread::sleep(wait.min(duration.saturating_sub(elapsed)));
                }
                continue;
            }
        }
        // SAFETY: this helper is single-threaded; the child only calls _exit.
        match unsafe { libc::fork() } {
            // SAFETY: _exit is async-signal-safe.
            0 => unsafe { libc::_exit(code) },
            -1 => panic!("fork failed: {}", std::io::Error::last_os_error()),
            _ => {
                forked += 1;
                live += 1;
            }
        }
        if live >= MAX_LIVE {
            live -= reap_ready(code);
            while live >= MAX_LIVE {
                let mut status = 0;
                // SAFETY: waiting for our own child.
                let pid = unsafe { libc::waitpid(-1, &raw mut status, 0) };
                assert_eq!(status, code << 8, "child {pid}");
                live -= 1;
            }
        }
    }
    while live > 0 {
        let mut status = 0;
        // SAFETY: waiting for our own child.
        let pid = unsafe { libc::waitpid(-1, &raw mut status, 0) };
        assert_eq!(status, code << 8, "child {pid}");
        live -= 1;
    }
    forked
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
        Some("pace") => {
            let rate: u32 = args.get(2).and_then(|n| n.parse().ok()).expect("pace RATE");
            let seconds: f64 = args
                .get(3)
                .and_then(|n| n.parse().ok())
                .expect("pace RATE SECONDS");
            let code: i32 = args
                .get(4)
                .map_or(1, |c| c.parse().expect("pace RATE SECONDS CODE"));
            println!("{}", pace(rate, seconds, code));
        }
        Some("serve") => {
            let port: u16 = args
                .get(2)
                .and_then(|n| n.parse().ok())
                .expect("serve PORT");
            let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
            if let Some(file) = args.get(3) {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("after the epoch");
                std::fs::write(file, now.as_micros().to_string()).expect("write the listen time");
            }
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut request = [0; 1024];
                let _ = stream.read(&mut request);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            }
        }
        other => {
            eprintln!("victim: unknown mode {other:?}");
            std::process::exit(2);
        }
    }
}
