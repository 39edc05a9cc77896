//! `cargo xtask bench` (load part): the daemon bounded under load, printed, not asserted.
//!
//! - A crash storm across 200 units at once, in the nspawn machine (`storm@1..200.service`, each
//!   failing at start): every death has its record, each unit failure its incident, and the
//!   daemon's resident memory before and after.
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
    stopped_reader();
}
