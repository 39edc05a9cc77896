//! Harness for the kernel tests: a real `detector run` whose stdout records are collected, and
//! helpers to make processes die in known ways. `cargo xtask test` builds the daemon and sets
//! `DETECTOR_BIN`; the tests need root.

#![expect(
    unused_crate_dependencies,
    reason = "each target of the tests package uses a part of its dependencies"
)]

use std::{
    io::{BufRead as _, BufReader},
    os::unix::process::ExitStatusExt as _,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod alerting;
pub mod alertmanager;
pub mod incidents;
pub mod machine;
pub mod prometheus;
pub mod receiver;

/// How long a test waits for a record or for the daemon to be ready before failing.
pub const WAIT: Duration = Duration::from_secs(20);

/// The daemon binary under test.
///
/// # Panics
/// When `DETECTOR_BIN` is not set: run the tests with `cargo xtask test`.
#[must_use]
pub fn detector_bin() -> String {
    std::env::var("DETECTOR_BIN").unwrap_or_else(|_| {
        panic!("DETECTOR_BIN is not set: run these tests with `cargo xtask test`")
    })
}

#[derive(Default)]
struct Seen {
    records: Vec<Value>,
    stderr: Vec<String>,
    ready: bool,
    closed: bool,
    /// A last line without its newline: the daemon was killed while writing it.
    cut: Option<String>,
}

/// A running `detector run`; stopped (SIGTERM) when dropped.
pub struct Daemon {
    child: Child,
    seen: Arc<(Mutex<Seen>, Condvar)>,
}

impl Daemon {
    /// Starts the daemon and waits until its probes are attached.
    ///
    /// # Panics
    /// If it cannot start or does not become ready in time.
    #[must_use]
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// # Panics
    /// As [`Daemon::start`].
    #[must_use]
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_with_env(extra, &[])
    }

    /// As [`Daemon::start_with`], with more environment variables (the alert sinks' `env:`
    /// secrets).
    ///
    /// # Panics
    /// As [`Daemon::start`].
    #[must_use]
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(detector_bin())
            .arg("run")
            .args(extra)
            // `DETECTOR_TEST_LOG=debug` for the daemon's debug lines in a failing test's output.
            .env(
                "DETECTOR_LOG",
                std::env::var("DETECTOR_TEST_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", detector_bin()));
        let seen = Arc::new((Mutex::new(Seen::default()), Condvar::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let s = Arc::clone(&seen);
        thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            let mut line = String::new();
            let mut cut = None;
            loop {
                line.clear();
                if !matches!(stdout.read_line(&mut line), Ok(1..)) {
                    break;
                }
                // Only at the end: a SIGKILL while it was written. `stop` refuses one.
                let Some(whole) = line.strip_suffix('\n') else {
                    cut = Some(line.clone());
                    break;
                };
                let value: Value = serde_json::from_str(whole)
                    .unwrap_or_else(|e| panic!("daemon wrote a non-JSON line {whole:?}: {e}"));
                let (lock, cv) = &*s;
                lock.lock().expect("lock").records.push(value);
                cv.notify_all();
            }
            let (lock, cv) = &*s;
            let mut seen = lock.lock().expect("lock");
            seen.closed = true;
            seen.cut = cut;
            cv.notify_all();
        });
        let s = Arc::clone(&seen);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[detector] {line}");
                let (lock, cv) = &*s;
                let mut seen = lock.lock().expect("lock");
                seen.ready |= line.contains("detector ready");
                seen.stderr.push(line);
                cv.notify_all();
            }
        });
        let daemon = Self { child, seen };
        daemon.wait_until("the daemon to become ready", |s| s.ready || s.closed);
        assert!(
            daemon.with(|s| s.ready),
            "daemon exited before it was ready: {:?}",
            daemon.with(|s| s.stderr.clone())
        );
        daemon
    }

    fn with<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.seen.0.lock().expect("lock"))
    }

    fn wait_until(&self, what: &str, done: impl Fn(&Seen) -> bool) {
        let (lock, cv) = &*self.seen;
        let deadline = Instant::now() + WAIT;
        let mut seen = lock.lock().expect("lock");
        while !done(&seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out after {WAIT:?} waiting for {what}; stderr: {:?}",
                seen.stderr
            );
            seen = cv.wait_timeout(seen, left).expect("lock").0;
        }
    }

    /// All records for `pid` seen so far.
    #[must_use]
    pub fn records_for(&self, pid: u32) -> Vec<Value> {
        self.with(|s| {
            s.records
                .iter()
                .filter(|r| r["pid"] == pid)
                .cloned()
                .collect()
        })
    }

    /// Waits for the record of `pid`'s death and returns it.
    ///
    /// # Panics
    /// If none comes in time.
    #[must_use]
    pub fn record_for(&self, pid: u32) -> Value {
        self.wait_until(&format!("the record of pid {pid}"), |s| {
            s.records.iter().any(|r| r["pid"] == pid)
        });
        self.records_for(pid).remove(0)
    }

    /// Waits for the first record matching `pred` and returns it.
    ///
    /// # Panics
    /// If none comes in time.
    #[must_use]
    pub fn record_where(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_until(what, |s| s.records.iter().any(&pred));
        self.with(|s| s.records.iter().find(|r| pred(r)).cloned().expect("seen"))
    }

    /// How many records matching `pred` were seen so far (no waiting).
    #[must_use]
    pub fn count(&self, pred: impl Fn(&Value) -> bool) -> usize {
        self.with(|s| s.records.iter().filter(|r| pred(r)).count())
    }

    /// Waits until `n` records matching `pred` were seen.
    pub fn wait_for_count(&self, what: &str, n: usize, pred: impl Fn(&Value) -> bool) {
        self.wait_until(what, |s| s.records.iter().filter(|r| pred(r)).count() >= n);
    }

    /// The daemon's pid.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the daemon with SIGTERM; returns every record it wrote and its stderr (which ends
    /// with its summary).
    ///
    /// # Panics
    /// If it does not stop cleanly.
    #[must_use]
    pub fn stop(mut self) -> (Vec<Value>, Vec<String>) {
        self.terminate();
        let status = self.child.wait().expect("wait for daemon");
        assert!(status.success(), "daemon exited with {status}");
        self.wait_until("the daemon's output to end", |s| {
            s.closed && s.stderr.iter().any(|l| l.contains("detector stopped"))
        });
        let cut = self.with(|s| s.cut.clone());
        assert!(
            cut.is_none(),
            "a stopped daemon's last line was cut short: {cut:?}"
        );
        self.with(|s| (s.records.clone(), s.stderr.clone()))
    }

    /// Kills the daemon with SIGKILL, as a crash or the OOM killer would: no drain, no summary.
    /// Returns every record it wrote before (a line it was writing when killed is no record).
    ///
    /// # Panics
    /// If it cannot be killed or its output does not end.
    #[must_use]
    pub fn kill(mut self) -> Vec<Value> {
        self.child.kill().expect("SIGKILL the daemon");
        let status = self.child.wait().expect("wait for daemon");
        assert_eq!(status.signal(), Some(9), "daemon ended with {status}");
        self.wait_until("the daemon's output to end", |s| s.closed);
        self.with(|s| s.records.clone())
    }

    /// Waits until the daemon's stderr has a line containing `text`, and returns it.
    ///
    /// # Panics
    /// If none comes in time.
    #[must_use]
    pub fn log_line(&self, text: &str) -> String {
        self.wait_until(&format!("a log line with {text:?}"), |s| {
            s.stderr.iter().any(|l| l.contains(text))
        });
        self.with(|s| {
            s.stderr
                .iter()
                .find(|l| l.contains(text))
                .cloned()
                .expect("seen")
        })
    }

    fn terminate(&self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.terminate();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to its end; returns its pid and exit status (the kernel's wait status).
///
/// # Panics
/// If it cannot be started.
#[must_use]
pub fn run(cmd: &mut Command) -> (u32, ExitStatus) {
    let mut child = cmd
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let pid = child.id();
    let status = child
        .wait()
        .unwrap_or_else(|e| panic!("waiting for {cmd:?}: {e}"));
    (pid, status)
}

/// Asserts what every record must say of a death we watched with `waitpid`: who, and the wait
/// status exactly as the kernel gave it to us.
///
/// # Panics
/// On any difference.
pub fn assert_matches_wait(record: &Value, pid: u32, status: ExitStatus) {
    assert_eq!(record["kind"], "exit", "{record}");
    assert_eq!(record["pid"], pid, "{record}");
    assert_eq!(
        record["ppid"],
        std::process::id(),
        "parent is this test: {record}"
    );
    assert_eq!(
        record["wait_status"],
        status.into_raw(),
        "wait status as waitpid saw it: {record}"
    );
    assert_eq!(
        record["exit_code"],
        status.code().map_or(Value::Null, Value::from),
        "{record}"
    );
    assert_eq!(record["core_dumped"], status.core_dumped(), "{record}");
    let time = record["time"]
        .as_str()
        .unwrap_or_else(|| panic!("no time: {record}"));
    assert!(
        time.ends_with('Z') && time.len() == "2026-01-01T00:00:00.000000Z".len(),
        "RFC 3339 with µs: {time}"
    );
    assert!(record["latency_us"].as_u64().is_some(), "{record}");
    assert!(
        record["cgroup_id"].as_u64().is_some_and(|id| id > 0),
        "{record}"
    );
    assert_eq!(record["cgroup"], own_cgroup2_path(), "{record}");
    // The tests run outside any systemd unit (cgroup2 root or a plain directory).
    assert_eq!(
        (record["unit"].clone(), record["user_unit"].clone()),
        (Value::Null, Value::Null),
        "{record}"
    );
}

/// This process's cgroup2 path (`0::/path` in /proc/self/cgroup).
///
/// # Panics
/// If there is none.
#[must_use]
pub fn own_cgroup2_path() -> String {
    let text = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
        .expect("a cgroup2 entry in /proc/self/cgroup")
}

/// This process's cgroup v1 memory controller path (`N:memory:/path`), if v1 memory is mounted.
#[must_use]
pub fn own_memcg_v1_path() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then(|| path.to_owned())
    })
}

/// Where the cgroup2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on
/// hybrid hosts).
///
/// # Panics
/// If none is mounted.
#[must_use]
pub fn cgroup2_mount() -> std::path::PathBuf {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("/proc/self/mountinfo");
    text.lines()
        .find_map(|l| {
            let (mount, fs) = l.split_once(" - ")?;
            (fs.split_whitespace().next() == Some("cgroup2")).then(|| {
                mount
                    .split_whitespace()
                    .nth(4)
                    .map(std::path::PathBuf::from)
            })?
        })
        .expect("a cgroup2 mount")
}
