//! `cargo xtask bench` (load part): the daemon bounded under load, printed, not asserted.
//!
//! - A crash storm across 200 units at once, in the nspawn machine (`storm@1..200.service`, each
//!   failing at start): every death has its record, each unit failure its incident, and the
//!   daemon's resident memory before and after.
//! - 200 units crash-looping at once, 2,000 failures in seconds: more incidents at once than the
//!   dispatcher opens; what was coalesced (folded into an open incident, or in none) and what
//!   the notices' queue dropped, from the daemon's summary.
//! - A stdout reader stopped for 30 s while 20,000 processes fail on the host: the ring buffer
//!   must lose nothing to it (the kernel's `lost` counter in the daemon's summary); what did not
//!   fit the stdout queue is dropped, counted and said.
//!
//! Needs root and `DETECTOR_BIN` / `DETECTOR_MACHINE_ROOT`, which `cargo xtask bench` sets, and
//! the `victim` helper beside this binary.

#![expect(
    unused_crate_dependencies,
    reason = "each target of the tests package uses a part of its dependencies"
)]

use std::{
    io::Read as _,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use tests::{detector_bin, machine::Machine};

const UNITS: usize = 200;

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn storm_across_units() {
    let unit = "[Service]\nExecStart=/bin/sh -c 'echo failing; exit 3'\n";
    let machine = Machine::boot(&[("storm@.service", unit)]);
    let (daemon, _config) =
        machine.watch_with_config("[[unit]]\nname = \"storm@.service\"\nrestart = \"report\"\n");
    let before = rss_kb(daemon.pid());
    let started = Instant::now();
    let all: Vec<String> = (1..=UNITS).map(|n| format!("storm@{n}.service")).collect();
    let mut args = vec!["start", "--no-block"];
    args.extend(all.iter().map(String::as_str));
    machine.systemctl(&args);
    daemon.wait_for_count("every unit's incident", UNITS, |r| r["kind"] == "incident");
    let took = started.elapsed();
    let peak = rss_kb(daemon.pid());
    let (records, _) = daemon.stop();
    let deaths = records
        .iter()
        .filter(|r| {
            r["kind"] == "exit" && r["unit"].as_str().is_some_and(|u| u.starts_with("storm@"))
        })
        .count();
    let incidents = records.iter().filter(|r| r["kind"] == "incident").count();
    let with_lines = records
        .iter()
        .filter(|r| {
            r["kind"] == "incident" && r["journal"].as_array().is_some_and(|j| !j.is_empty())
        })
        .count();
    // An incident no death opened would be systemd's account of a failure a death's incident
    // already covered: name any.
    for extra in records
        .iter()
        .filter(|r| r["kind"] == "incident" && r["role"] == "unit")
    {
        println!(
            "load: an incident no death opened: {} run {} ({})",
            extra["unit"], extra["invocation_id"], extra["cause"]
        );
    }
    println!(
        "load: {UNITS} units failing at once: {deaths} death records, {incidents} incidents ({with_lines} with journal lines) in {:.1} s; RSS {before} kB before, {peak} kB after",
        took.as_secs_f64()
    );
}

/// A field of the daemon's summary line (`detector stopped ... NAME=VALUE ...`).
fn summary_field(summary: &str, name: &str) -> u64 {
    summary
        .split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// 200 units crash-looping at once (`Restart=always`, 20 ms apart, until systemd's start limit
/// of 10 starts stops each): 2,000 failures in a few seconds, more incidents at once than the
/// dispatcher opens (1024). What did not open an incident of its own is counted: folded into its
/// unit's open incident, or in none.
fn crash_loops_across_units() {
    const FAILURES: usize = 10;
    let unit = format!(
        "[Unit]\nStartLimitIntervalSec=120\nStartLimitBurst={FAILURES}\n[Service]\n\
         ExecStart=/bin/sh -c 'echo failing; exit 3'\nRestart=always\nRestartSec=20ms\n"
    );
    let machine = Machine::boot(&[("loop@.service", &unit)]);
    let (daemon, _config) =
        machine.watch_with_config("[[unit]]\nname = \"loop@.service\"\nrestart = \"report\"\n");
    let before = rss_kb(daemon.pid());
    let started = Instant::now();
    let all: Vec<String> = (1..=UNITS).map(|n| format!("loop@{n}.service")).collect();
    let mut args = vec!["start", "--no-block"];
    args.extend(all.iter().map(String::as_str));
    machine.systemctl(&args);
    let ours = |r: &serde_json::Value| r["unit"].as_str().is_some_and(|u| u.starts_with("loop@"));
    let is_death = |r: &serde_json::Value| r["kind"] == "exit" && ours(r);
    let is_incident = |r: &serde_json::Value| r["kind"] == "incident" && ours(r);
    // Every failure's record, then incidents until none came for 5 s (at most 3 minutes).
    let mut peak = before;
    let mut last = ((0, 0), Instant::now());
    while started.elapsed() < Duration::from_mins(3) {
        peak = peak.max(rss_kb(daemon.pid()));
        let now = (daemon.count(is_death), daemon.count(is_incident));
        if now != last.0 {
            last = (now, Instant::now());
        } else if now.0 >= UNITS * FAILURES && last.1.elapsed() >= Duration::from_secs(5) {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    let took = last.1.duration_since(started);
    let (records, stderr) = daemon.stop();
    let deaths = records.iter().filter(|r| is_death(r)).count();
    let incidents: Vec<&serde_json::Value> = records.iter().filter(|r| is_incident(r)).collect();
    let counted: u64 = incidents.iter().filter_map(|i| i["deaths"].as_u64()).sum();
    let has_step = |i: &serde_json::Value, step: &str| {
        i["timeline"]
            .as_array()
            .is_some_and(|t| t.iter().any(|s| s["step"] == step))
    };
    let interrupted = incidents
        .iter()
        .filter(|i| has_step(i, "interrupted"))
        .count();
    let unread = incidents
        .iter()
        .filter(|i| has_step(i, "journal_unread"))
        .count();
    let summary = stderr
        .iter()
        .find(|l| l.contains("detector stopped"))
        .map_or("", String::as_str);
    println!(
        "load: {UNITS} units crash-looping ({FAILURES} failures each): {deaths} death records, \
         {} incidents counting {counted} deaths ({interrupted} interrupted, {unread} without \
         journal lines for a full queue) in {:.1} s; coalesced: {} folded into an open incident, \
         {} in none; notices: {} opened folded into resolved, {} lost; RSS {before} kB before, \
         {peak} kB at most",
        incidents.len(),
        took.as_secs_f64(),
        summary_field(summary, "coalesced_folded"),
        summary_field(summary, "coalesced_unopened"),
        summary_field(summary, "notices_folded"),
        summary_field(summary, "notices_lost"),
    );
}

fn stopped_reader() {
    let victim = std::env::current_exe()
        .expect("own path")
        .with_file_name("victim");
    let mut child = Command::new(detector_bin())
        .args(["run"])
        .env("DETECTOR_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the daemon");
    // Ready once its stderr says so; the stderr is read on, the stdout not at all.
    let mut stderr = child.stderr.take().expect("stderr");
    let log = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    thread::sleep(Duration::from_secs(3));
    let started = Instant::now();
    let mut stormed = 0;
    while started.elapsed() < Duration::from_secs(30) {
        let status = Command::new(&victim)
            .args(["storm", "2000", "1"])
            .stdout(Stdio::null())
            .status()
            .expect("storm");
        assert!(status.success(), "storm: {status}");
        stormed += 2000;
        if stormed >= 20_000 {
            break;
        }
    }
    thread::sleep(Duration::from_secs(
        30_u64.saturating_sub(started.elapsed().as_secs()),
    ));
    let pid = child.id();
    let rss = rss_kb(pid);
    // Now the reader comes back: everything queued is read, then the daemon stops.
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text.lines().count()
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("stop the daemon");
    let _ = child.wait();
    let lines = reader.join().unwrap_or(0);
    let log = log.join().unwrap_or_default();
    let summary = log
        .lines()
        .find(|l| l.contains("detector stopped"))
        .unwrap_or("(no summary)");
    let said = log
        .lines()
        .filter(|l| l.contains("stdout is not being read"))
        .count();
    println!(
        "load: stdout unread for 30 s during {stormed} failing exits: {lines} lines read after, RSS {rss} kB while stopped, {said} warnings about it; {summary}"
    );
}

fn main() {
    storm_across_units();
    crash_loops_across_units();
    stopped_reader();
}
