//! `cargo xtask bench`: what the daemon costs and how fast its records are, next to peers
//! measured in the same run. Numbers are printed, not asserted (timings depend on the machine);
//! the README keeps the latest figures.
//!
//! The kernel part (`cargo xtask bench kernel` runs only it):
//! - peers: a failing fork/exit storm on every core, in interleaved rounds, with no reader, with
//!   a plain C libbpf ring-buffer reader (`xtask/peers`) at the default policy and again at
//!   detector's (`SCHED_FIFO` 1), with bpftrace counting and printing each exit, and with
//!   detector: throughput with ÷ without, kernel → handler latency
//!   p50/p99/p99.9, drops ([`reader`], [`peers`]);
//! - overhead of clean exits (filtered in the kernel), with and without the daemon;
//! - idle latency and resident memory; records lost at the host's maximum exit rate;
//! - scaling: paced failing-exit rates against latency, drops and CPU, drawn to
//!   `target/bench/scaling.svg` ([`scaling`]).
//!
//! Then restarts on real systemd in a systemd-nspawn machine: crash → restart requested and
//! crash → healthy, against restarts without the daemon (`tests/src/bin/restart-bench.rs`).

mod peers;
mod reader;
mod scaling;
mod svg;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use peers::{Peer, Tools};
use reader::{Outcome, Reader};

/// Interleaved rounds of the peer storm and of the clean-exit overhead.
const ROUNDS: usize = 7;
const FORKS_PER_CORE: usize = 20_000;
/// Time for a reader to drain what a storm left in its buffer before it is stopped.
const SETTLE: Duration = Duration::from_millis(300);

fn cores() -> usize {
    thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// Forks `FORKS_PER_CORE` children exiting with `code` on every core at once; returns exits/s.
fn storm(victim: &Path, code: i32) -> Result<f64> {
    let cores = cores();
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
    if v.is_empty() {
        return f64::NAN;
    }
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

fn latency_line(what: &str, mut ns: Vec<u64>) {
    ns.sort_unstable();
    let us = |p| percentile(&ns, p) / 1000;
    println!(
        "latency {what:<24} n={:<6} p50={} µs  p99={} µs  p99.9={} µs  max={} µs",
        ns.len(),
        us(50.0),
        us(99.0),
        us(99.9),
        ns.last().copied().unwrap_or(0) / 1000
    );
}

/// Builds one of the tests crate's helper binaries; returns its path.
fn build_helper(name: &str) -> Result<PathBuf> {
    crate::run(crate::cargo().args(["build", "--release", "--package", "tests", "--bin", name]))?;
    Ok(crate::root().join("target/release").join(name))
}

/// One storm of failing exits with `peer` reading; returns exits/s, the reader's CPU time in
/// seconds (storm and settling), and what the peer reported.
fn storm_with(tools: &Tools, victim: &Path, peer: Peer) -> Result<(f64, f64, Outcome)> {
    let reader = Reader::start(tools, peer)?;
    // Deaths of other processes while it started are not the storm's.
    let _ = reader.take_latencies();
    let cpu = reader.cpu_seconds()?;
    let rate = storm(victim, 1)?;
    thread::sleep(SETTLE);
    let cpu = reader.cpu_seconds()? - cpu;
    Ok((rate, cpu, reader.stop()?))
}

/// What one peer gathered over the rounds.
#[derive(Default)]
struct Tally {
    ratios: Vec<f64>,
    /// The reader's CPU time per failing exit of the storm, in µs, one per round.
    cpu_us: Vec<f64>,
    latencies_ns: Vec<u64>,
    lost: u64,
    /// Failing exits counted in the kernel (bpftrace (count)).
    counted: u64,
    /// Rounds in which the peer saw over 1% more failing exits than the storm made: something
    /// else on the host was dying, and sharing the cores.
    disturbed: usize,
    /// Why it stopped taking part, if it failed.
    failed: Option<String>,
}

/// The peer table: the failing storm with no reader and with each peer, in rounds whose order
/// turns, so that no peer always runs first or last after a quiet machine.
fn peers_table(tools: &Tools, victim: &Path) -> Result<()> {
    let mut tallies: Vec<Tally> = Peer::ALL.iter().map(|_| Tally::default()).collect();
    let mut without_all = Vec::new();
    for round in 0..ROUNDS {
        let mut order: Vec<Option<Peer>> = std::iter::once(None)
            .chain(Peer::ALL.into_iter().map(Some))
            .collect();
        let turn = round % order.len();
        order.rotate_left(turn);
        let mut without = None;
        let mut with = Vec::new();
        for config in order {
            let Some(peer) = config else {
                without = Some(storm(victim, 1)?);
                continue;
            };
            let i = Peer::ALL.iter().position(|p| *p == peer).unwrap_or(0);
            if tools.unavailable(peer).is_some() || tallies[i].failed.is_some() {
                continue;
            }
            match storm_with(tools, victim, peer) {
                Ok((rate, cpu, outcome)) => {
                    with.push((i, rate));
                    tallies[i]
                        .cpu_us
                        .push(cpu * 1e6 / (cores() * FORKS_PER_CORE) as f64);
                    let seen = outcome.counted.unwrap_or(outcome.latencies_ns.len() as u64);
                    if seen as f64 > 1.01 * (cores() * FORKS_PER_CORE) as f64 {
                        tallies[i].disturbed += 1;
                    }
                    tallies[i].latencies_ns.extend(outcome.latencies_ns);
                    tallies[i].lost += outcome.lost;
                    tallies[i].counted += outcome.counted.unwrap_or(0);
                }
                Err(e) => tallies[i].failed = Some(format!("{e:#}")),
            }
        }
        if let Some(without) = without {
            without_all.push(without);
            for (i, rate) in with {
                tallies[i].ratios.push(rate / without);
            }
        }
    }
    print_peers(tools, without_all, tallies);
    Ok(())
}

/// Prints the peer table from the rounds' figures.
fn print_peers(tools: &Tools, without_all: Vec<f64>, tallies: Vec<Tally>) {
    println!(
        "failing-exit storm, {} cores × {FORKS_PER_CORE} forks, {ROUNDS} interleaved rounds: \
         {:.0} exits/s without a reader (median)",
        cores(),
        median(without_all)
    );
    // Every reader sees every failing exit on the host: more records than the storm made say
    // that something else was dying meanwhile, and shared the cores.
    println!(
        "  the storms make {} failing exits per reader; \"disturbed\": rounds in which the reader \
         saw over 1% more (other deaths on the host, sharing the cores)",
        ROUNDS * cores() * FORKS_PER_CORE
    );
    println!(
        "  {:<18} {:>24} {:>11} {:>9} {:>8} {:>8} {:>9} {:>6} {:>10}",
        "reader",
        "with ÷ without (range)",
        "CPU µs/exit",
        "records",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "drops",
        "disturbed"
    );
    for (peer, tally) in Peer::ALL.into_iter().zip(tallies) {
        if let Some(why) = tools.unavailable(peer) {
            println!("  {:<18} not run: {why}", peer.name());
            continue;
        }
        if let Some(why) = tally.failed {
            println!("  {:<18} failed in a round, left out: {why}", peer.name());
            continue;
        }
        let (lo, hi) = tally
            .ratios
            .iter()
            .fold((f64::INFINITY, 0.0f64), |(lo, hi), r| {
                (lo.min(*r), hi.max(*r))
            });
        let disturbed = format!("{}/{}", tally.disturbed, tally.ratios.len());
        let ratio = format!("{:.3} ({lo:.2}–{hi:.2})", median(tally.ratios));
        let cpu = format!("{:.1}", median(tally.cpu_us));
        let mut ns = tally.latencies_ns;
        ns.sort_unstable();
        let us = |p| format!("{:.0}", percentile(&ns, p) as f64 / 1000.0);
        let (records, p50, p99, p999) = if peer.has_handler() {
            (ns.len().to_string(), us(50.0), us(99.0), us(99.9))
        } else {
            let none = || "–".to_owned();
            (tally.counted.to_string(), none(), none(), none())
        };
        println!(
            "  {:<18} {ratio:>24} {cpu:>11} {records:>9} {p50:>8} {p99:>8} {p999:>9} {:>6} {disturbed:>10}",
            peer.name(),
            tally.lost
        );
    }
    println!(
        "  (latency from bpf_ktime_get_ns in the kernel to: the C reader's ring_buffer__poll \
         callback; bpftrace's printed line read here from its pipe; detector's record written \
         (its latency_us). bpftrace (count) keeps a count in the kernel (its records: that count): no handler. Drops: \
         ring-buffer reservations that failed; bpftrace's \"Lost N events\". CPU: the reader's user + system time \
         over the storm and its settling, per failing exit of the storm (median of the rounds).)"
    );
    println!(
        "  (scheduling: the C libbpf reader and bpftrace at the default policy, nice 0, as such \
         tools run; \"C reader, FIFO 1\" and detector's reader thread at SCHED_FIFO 1, which wakes \
         them at once, for every record: promptness paid in wakeups. \"detector, 400 µs\": \
         --batch-window-us 400, which in a storm reads once a window: fewer wakeups, each record \
         up to a window later)"
    );
}

/// Clean exits are filtered in the kernel: with and without the daemon, interleaved.
fn clean_overhead(tools: &Tools, victim: &Path) -> Result<()> {
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        without.push(storm(victim, 0)?);
        let d = Reader::start(tools, Peer::Detector)?;
        with.push(storm(victim, 0)?);
        d.stop()?;
    }
    let (a, b) = (median(without), median(with));
    println!(
        "overhead clean exits (filtered in kernel): {a:.0} exits/s without, {b:.0} with the daemon: ratio {:.3}",
        b / a
    );
    Ok(())
}

/// Failing exits one at a time, 5 ms apart.
fn sparse_deaths() -> Result<()> {
    for _ in 0..300 {
        Command::new("sh").args(["-c", "exit 1"]).status()?;
        thread::sleep(Duration::from_millis(5));
    }
    thread::sleep(Duration::from_millis(200));
    Ok(())
}

/// Idle latency and memory of the daemon (and of the C reader), then the daemon's drops at the
/// host's maximum rate.
fn idle(tools: &Tools, victim: &Path) -> Result<()> {
    if tools.unavailable(Peer::CReader).is_none() {
        let c = Reader::start(tools, Peer::CReader)?;
        sparse_deaths()?;
        let rss = c.rss_kb()?;
        latency_line("idle, C libbpf reader", c.stop()?.latencies_ns);
        println!("idle RSS, C libbpf reader: {rss} kB");
    }
    let d = Reader::start(tools, Peer::Detector)?;
    sparse_deaths()?;
    latency_line("idle, detector", d.take_latencies());
    println!("idle RSS, detector: {} kB", d.rss_kb()?);
    let rate = storm(victim, 1)?;
    thread::sleep(SETTLE);
    latency_line("storm, detector", d.take_latencies());
    let lost = d.stop()?.lost;
    println!("drops at the host's max failing-exit rate ({rate:.0} exits/s): {lost}");
    Ok(())
}

/// The kernel benchmarks: peers, overhead, idle, scaling.
pub(crate) fn kernel(daemon: &Path) -> Result<()> {
    let victim = build_helper("victim")?;
    let tools = peers::tools(daemon);
    for peer in Peer::ALL {
        if let Some(why) = tools.unavailable(peer) {
            println!("{}: not run: {why}", peer.name());
        }
    }
    peers_table(&tools, &victim)?;
    clean_overhead(&tools, &victim)?;
    idle(&tools, &victim)?;
    let svg = scaling::run(&tools, &victim)?;
    println!("scaling curve: {}", svg.display());
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
