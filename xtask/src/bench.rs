//! `cargo xtask bench`: what the daemon costs and how fast its records are. Numbers are printed,
//! not asserted (timings depend on the machine); the README keeps the latest figures.
//!
//! - overhead: a fork/exit loop on every core, with and without the daemon, interleaved, median
//!   of rounds; once with clean exits (filtered in the kernel) and once with failing exits (every
//!   one becomes a record);
//! - latency (kernel timestamp → record written) p50/p99/p99.9, idle and during the storm;
//! - records lost at the host's maximum exit rate; the daemon's resident memory when idle;
//! - restarts on real systemd in a systemd-nspawn machine: crash → restart requested and crash →
//!   healthy, against restarts without the daemon (`tests/src/bin/restart-bench.rs`).

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

const ROUNDS: usize = 5;
const FORKS_PER_CORE: usize = 20_000;

struct Daemon {
    child: Child,
    latencies: Arc<Mutex<Vec<u64>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(bin: &Path) -> Result<Self> {
        let mut child = Command::new(bin)
            .arg("run")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let stderr_lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().context("daemon stdout")?;
        let stderr = child.stderr.take().context("daemon stderr")?;
        let l = Arc::clone(&latencies);
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // A substring, not a JSON parse: this reader shares the cores with what it measures.
                if let Some(us) = latency_us(&line)
                    && let Ok(mut l) = l.lock()
                {
                    l.push(us);
                }
            }
        });
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let s = Arc::clone(&stderr_lines);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("detector ready") {
                    let _ = ready_tx.send(());
                }
                if let Ok(mut s) = s.lock() {
                    s.push(line);
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .context("daemon did not become ready")?;
        Ok(Self {
            child,
            latencies,
            stderr: stderr_lines,
        })
    }

    fn take_latencies(&self) -> Vec<u64> {
        self.latencies
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }

    fn rss_kb(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS")
    }

    /// Stops the daemon; returns the `lost=` figure from its summary.
    fn stop(mut self) -> Result<u64> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        self.child.wait()?;
        thread::sleep(Duration::from_millis(100));
        let lines = self.stderr.lock().map(|s| s.clone()).unwrap_or_default();
        let summary = lines
            .iter()
            .find(|l| l.contains("detector stopped"))
            .context("no summary from the daemon")?;
        summary
            .split_whitespace()
            .find_map(|w| w.strip_prefix("lost="))
            .and_then(|n| n.parse().ok())
            .context("summary has no lost= figure")
    }
}

fn latency_us(line: &str) -> Option<u64> {
    let rest = &line[line.find("\"latency_us\":")? + "\"latency_us\":".len()..];
    rest[..rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len())]
        .parse()
        .ok()
}

/// Forks `FORKS_PER_CORE` children exiting with `code` on every core at once; returns exits/s.
fn storm(victim: &Path, code: i32) -> Result<f64> {
    let cores = thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let start = Instant::now();
    let children: Vec<Child> = (0..cores)
        .map(|_| {
            Command::new(victim)
                .args(["storm", &FORKS_PER_CORE.to_string(), &code.to_string()])
                .stdout(Stdio::null())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    for mut child in children {
        let status = child.wait()?;
        if !status.success() {
            bail!("storm helper failed: {status}");
        }
    }
    Ok((cores * FORKS_PER_CORE) as f64 / start.elapsed().as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn latency_line(what: &str, mut v: Vec<u64>) {
    v.sort_unstable();
    println!(
        "latency {what:<6} n={:<6} p50={} µs  p99={} µs  p99.9={} µs  max={} µs",
        v.len(),
        percentile(&v, 50.0),
        percentile(&v, 99.0),
        percentile(&v, 99.9),
        v.last().copied().unwrap_or(0)
    );
}

/// Builds one of the tests crate's helper binaries; returns its path.
fn build_helper(name: &str) -> Result<PathBuf> {
    crate::run(crate::cargo().args(["build", "--release", "--package", "tests", "--bin", name]))?;
    Ok(crate::root().join("target/release").join(name))
}

pub(crate) fn all(daemon: &Path) -> Result<()> {
    let victim = build_helper("victim")?;
    for (label, code) in [
        ("clean exits (filtered in kernel)", 0),
        ("failing exits (one record each)", 1),
    ] {
        let (mut without, mut with) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            without.push(storm(&victim, code)?);
            let d = Daemon::start(daemon)?;
            with.push(storm(&victim, code)?);
            d.stop()?;
        }
        let (a, b) = (median(without), median(with));
        println!(
            "overhead {label}: {a:.0} exits/s without, {b:.0} with the daemon: ratio {:.3}",
            b / a
        );
    }

    let d = Daemon::start(daemon)?;
    for _ in 0..300 {
        Command::new("sh").args(["-c", "exit 1"]).status()?;
        thread::sleep(Duration::from_millis(5));
    }
    thread::sleep(Duration::from_millis(200));
    latency_line("idle", d.take_latencies());
    println!("idle RSS: {} kB", d.rss_kb()?);
    let rate = storm(&victim, 1)?;
    thread::sleep(Duration::from_millis(500));
    latency_line("storm", d.take_latencies());
    let lost = d.stop()?;
    println!("drops at the host's max failing-exit rate ({rate:.0} exits/s): {lost}");
    Ok(())
}

/// The restart, workers, load and soak benchmarks, run by `restart-bench`, `workers-bench`,
/// `load-bench` and `soak-bench` from the tests crate, which has the machine and daemon harness.
/// The soak's size comes from `SOAK_CYCLES`, `SOAK_DEATHS` and `SOAK_ROUNDS` (see its file).
pub(crate) fn restart(daemon: &Path, machine_root: &Path) -> Result<()> {
    build_helper("victim")?;
    for bench in ["restart-bench", "workers-bench", "load-bench", "soak-bench"] {
        crate::run(
            Command::new(build_helper(bench)?)
                .env("DETECTOR_BIN", daemon)
                .env("DETECTOR_MACHINE_ROOT", machine_root),
        )?;
    }
    Ok(())
}
