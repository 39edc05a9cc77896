//! `cargo xtask bench` (soak part): the daemon's memory, file descriptors and caches over many unit
//! runs and many deaths, printed as a table, not asserted.
//!
//! In the nspawn machine (real systemd), `soak@N.service` is started `SOAK_CYCLES` times (10,000
//! by default), 100 instances per `systemctl start`: a oneshot that exits at once, one in ten with
//! status 3 (a death record and an incident, with its journal account). systemd creates and
//! removes each instance's cgroup, sends its state changes over D-Bus and collects the unit
//! (`CollectMode=inactive-or-failed`), so the daemon's cgroup resolver, unit tables and D-Bus
//! caches see every one. Meanwhile `victim storm` makes `SOAK_DEATHS` failing exits on the host
//! (1,000,000 by default), one record each. Both are spread over `SOAK_ROUNDS` rounds (20); after
//! each, the daemon's VmRSS, its open fds and its cache sizes (`detector_cache_entries` on its
//! `/metrics`, 127.0.0.1:18650) are sampled.
//!
//! Flat means: after the first rounds (allocator and caches warming up), RSS and fds stop growing
//! and every cache stays under its bound. The last lines say how much each grew from the end of
//! the warm-up to the end, and the daemon's own summary.
//!
//! Needs root and `DETECTOR_BIN` / `DETECTOR_MACHINE_ROOT`, which `cargo xtask bench` sets, and
//! the `victim` helper beside this binary.

#![expect(
    unused_crate_dependencies,
    reason = "each target of the tests package uses a part of its dependencies"
)]

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use tests::{
    detector_bin,
    machine::{Machine, tempdir},
};

const METRICS: &str = "127.0.0.1:18650";
/// Instances per `systemctl start`.
const BATCH: usize = 100;
/// Children per `victim storm`.
const STORM: u64 = 5000;
/// The caches `detector_cache_entries` reports, in the table's order, with their bounds.
const CACHES: [(&str, &str, &str); 7] = [
    ("cgroup_paths", "paths", "16384/hierarchy"),
    ("cgroups_known", "known", "alive + 1 min"),
    ("unit_tracks", "tracks", "4096"),
    ("unit_object_paths", "objpaths", "4096"),
    ("unit_states", "states", "4096"),
    ("unit_failures_handled", "handled", "4096"),
    ("metric_names", "names", "max_units"),
];

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// A `kB` figure of `/proc/PID/status`: `VmRSS`, and its parts `RssAnon` (the heap: what a leak
/// grows) and `RssFile` (mapped files: the journal files the readers map grow with the journal,
/// and are given back under pressure).
fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// `/metrics` as text, over a plain HTTP/1.0 request.
fn scrape() -> String {
    let Ok(mut stream) = TcpStream::connect(METRICS) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text
}

/// The value of a series, exactly as named (labels included).
fn series(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The daemon, its stdout counted (never kept: a million records would not fit the bench), its
/// stderr's notable lines kept.
struct Daemon {
    child: Child,
    /// Reads the stdout to its end.
    reader: Option<thread::JoinHandle<()>>,
    exits: Arc<AtomicU64>,
    incidents: Arc<AtomicU64>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(machine: &Machine, config: &str) -> Self {
        let mut child = Command::new(detector_bin())
            .args([
                "run",
                "--output",
                "json",
                "--root",
                &machine.root(),
                "--config",
                config,
            ])
            .env("DETECTOR_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the daemon");
        let (exits, incidents) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let stdout = child.stdout.take().expect("stdout");
        let (e, i) = (Arc::clone(&exits), Arc::clone(&incidents));
        let reader = thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with(r#"{"kind":"exit""#) {
                    e.fetch_add(1, Ordering::Relaxed);
                } else if line.starts_with(r#"{"kind":"incident""#) {
                    i.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let l = Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let notable = line.contains("detector ready")
                    || line.contains("detector stopped")
                    || line.contains(" WARN ")
                    || line.contains(" ERROR ");
                let mut log = l.lock().expect("lock");
                if notable && log.len() < 200 {
                    log.push(line);
                }
            }
        });
        let daemon = Self {
            child,
            reader: Some(reader),
            exits,
            incidents,
            log,
        };
        let started = Instant::now();
        while !daemon.said("detector ready") {
            assert!(
                started.elapsed() < Duration::from_mins(1),
                "the daemon did not become ready: {:?}",
                daemon.log.lock().expect("lock")
            );
            thread::sleep(Duration::from_millis(100));
        }
        daemon
    }

    fn said(&self, text: &str) -> bool {
        self.log
            .lock()
            .expect("lock")
            .iter()
            .any(|l| l.contains(text))
    }

    fn exits(&self) -> u64 {
        self.exits.load(Ordering::Relaxed)
    }

    /// Waits until the records stop coming (the ring and the stdout queue are drained).
    fn settle(&self) {
        let started = Instant::now();
        let mut last = self.exits();
        loop {
            thread::sleep(Duration::from_millis(500));
            let now = self.exits();
            if now == last || started.elapsed() > Duration::from_mins(2) {
                return;
            }
            last = now;
        }
    }

    /// Stops the daemon; its stderr's notable lines, once its stdout (the incidents it finished
    /// at shutdown included) is read to the end.
    fn stop(mut self) -> Vec<String> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let started = Instant::now();
        while !self.said("detector stopped") && started.elapsed() < Duration::from_secs(10) {
            thread::sleep(Duration::from_millis(100));
        }
        self.log.lock().expect("lock").clone()
    }
}

/// One row of the table.
struct Sample {
    label: String,
    cycles: u64,
    deaths: u64,
    records: u64,
    rss_kb: u64,
    anon_kb: u64,
    file_kb: u64,
    fds: usize,
    caches: BTreeMap<&'static str, f64>,
    lost: f64,
}

fn sample(daemon: &Daemon, label: String, cycles: u64, deaths: u64) -> Sample {
    let pid = daemon.child.id();
    let text = scrape();
    let caches = CACHES
        .iter()
        .filter_map(|(cache, _, _)| {
            series(
                &text,
                &format!(r#"detector_cache_entries{{cache="{cache}"}}"#),
            )
            .map(|v| (*cache, v))
        })
        .collect();
    Sample {
        label,
        cycles,
        deaths,
        records: daemon.exits(),
        rss_kb: status_kb(pid, "VmRSS"),
        anon_kb: status_kb(pid, "RssAnon"),
        file_kb: status_kb(pid, "RssFile"),
        fds: fds(pid),
        caches,
        lost: series(&text, "detector_events_lost_total").unwrap_or(f64::NAN),
    }
}

fn print_header() {
    print!(
        "{:<8} {:>7} {:>9} {:>9} {:>8} {:>8} {:>8} {:>4}",
        "soak", "cycles", "deaths", "records", "RSS kB", "anon kB", "file kB", "fds"
    );
    for (_, short, _) in CACHES {
        print!(" {short:>8}");
    }
    println!(" {:>6}", "lost");
}

fn print_row(s: &Sample) {
    print!(
        "{:<8} {:>7} {:>9} {:>9} {:>8} {:>8} {:>8} {:>4}",
        s.label, s.cycles, s.deaths, s.records, s.rss_kb, s.anon_kb, s.file_kb, s.fds
    );
    for (cache, _, _) in CACHES {
        match s.caches.get(cache) {
            Some(v) => print!(" {v:>8}"),
            None => print!(" {:>8}", "-"),
        }
    }
    println!(" {:>6}", s.lost);
}

/// Starts instances `from..to` of `soak@.service`, `BATCH` per `systemctl start`, each call
/// returning once its oneshots are over.
fn cycle_units(machine: &Machine, from: u64, to: u64) {
    let mut n = from;
    while n < to {
        let end = (n + BATCH as u64).min(to);
        let units: Vec<String> = (n..end).map(|i| format!("soak@{i}.service")).collect();
        let mut argv = vec!["systemctl", "start"];
        argv.extend(units.iter().map(String::as_str));
        // One in ten fails by design: systemctl's status says so, and is not an error here.
        let _ = machine.run(&argv);
        n = end;
    }
}

fn storm(victim: &std::path::Path, deaths: u64) {
    let mut left = deaths;
    while left > 0 {
        let n = left.min(STORM);
        let status = Command::new(victim)
            .args(["storm", &n.to_string(), "1"])
            .stdout(Stdio::null())
            .status()
            .expect("victim storm");
        assert!(status.success(), "storm: {status}");
        left -= n;
    }
}

fn main() {
    let cycles = env_or("SOAK_CYCLES", 10_000);
    let deaths = env_or("SOAK_DEATHS", 1_000_000);
    let rounds = env_or("SOAK_ROUNDS", 20).max(2);
    let victim = std::env::current_exe()
        .expect("own path")
        .with_file_name("victim");
    // Instances ending in 0 fail: one in ten. Collected even when failed, as transient work is.
    let unit = "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'case %i in *0) exit 3;; esac'\nCollectMode=inactive-or-failed\n";
    let machine = Machine::boot(&[("soak@.service", unit)]);
    let dir = tempdir::Dir::new("soak");
    let config = dir.path().join("detector.toml");
    std::fs::write(
        &config,
        format!(
            "[[unit]]\nname = \"soak@.service\"\nrestart = \"report\"\n\n[metrics]\nlisten = \"{METRICS}\"\n\n[history]\npath = \"{}\"\n",
            dir.path().join("incidents.db").display()
        ),
    )
    .expect("write the configuration");
    let daemon = Daemon::start(&machine, &config.display().to_string());
    // The first tick fills the gauges.
    thread::sleep(Duration::from_millis(1500));
    println!(
        "soak: {cycles} unit start/stop cycles (one in ten failing) in the machine and {deaths} failing exits on the host, over {rounds} rounds"
    );
    print_header();
    let mut samples = vec![sample(&daemon, "start".to_owned(), 0, 0)];
    print_row(&samples[0]);
    let started = Instant::now();
    let (mut done_cycles, mut done_deaths) = (0, 0);
    for round in 1..=rounds {
        let (c, d) = (cycles * round / rounds, deaths * round / rounds);
        let units = thread::scope(|s| {
            let units = s.spawn(|| cycle_units(&machine, done_cycles, c));
            storm(&victim, d - done_deaths);
            units.join()
        });
        units.expect("unit cycles");
        (done_cycles, done_deaths) = (c, d);
        daemon.settle();
        // A tick for the gauges after the last records.
        thread::sleep(Duration::from_millis(1100));
        let s = sample(&daemon, format!("round {round}"), c, d);
        print_row(&s);
        samples.push(s);
    }
    let took = started.elapsed();
    let (exits, incidents) = (Arc::clone(&daemon.exits), Arc::clone(&daemon.incidents));
    let log = daemon.stop();
    let (records, incidents) = (
        exits.load(Ordering::Relaxed),
        incidents.load(Ordering::Relaxed),
    );
    // Warm-up: the first quarter of the rounds.
    let warm = &samples[(samples.len() / 4).max(1)];
    let (first, last) = (&samples[0], samples.last().expect("samples"));
    println!(
        "soak: {:.0} s; {records} exit records (of every failing exit on the host, other work's too: {} failing units, {deaths} storm exits), {incidents} incidents",
        took.as_secs_f64(),
        cycles / 10
    );
    for (what, of) in [
        ("RSS", (|s: &Sample| s.rss_kb) as fn(&Sample) -> u64),
        ("RssAnon", |s: &Sample| s.anon_kb),
        ("RssFile", |s: &Sample| s.file_kb),
    ] {
        let (a, w, z) = (of(first), of(warm), of(last));
        println!(
            "soak: {what} {a} kB at start, {w} kB after warm-up ({}), {z} kB at the end: {:+} kB ({:+.1}%) since the warm-up",
            warm.label,
            z as i64 - w as i64,
            (z as f64 - w as f64) * 100.0 / w.max(1) as f64
        );
    }
    println!(
        "soak: fds {} at start, {} after warm-up, {} at the end; most at once {}",
        first.fds,
        warm.fds,
        last.fds,
        samples.iter().map(|s| s.fds).max().unwrap_or(0)
    );
    for (cache, _, bound) in CACHES {
        let most = samples
            .iter()
            .filter_map(|s| s.caches.get(cache))
            .fold(0.0_f64, |a, b| a.max(*b));
        println!(
            "soak: cache {cache}: at most {most} entries (bound {bound}), {} at the end",
            last.caches
                .get(cache)
                .map_or("-".to_owned(), f64::to_string)
        );
    }
    let warnings = log.iter().filter(|l| l.contains(" WARN ")).count();
    println!("soak: {warnings} warnings from the daemon");
    for line in log.iter().filter(|l| l.contains(" WARN ")).take(5) {
        println!("soak:   {line}");
    }
    match log.iter().find(|l| l.contains("detector stopped")) {
        Some(summary) => println!("soak: {summary}"),
        None => println!("soak: the daemon wrote no summary"),
    }
}
