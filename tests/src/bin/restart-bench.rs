//! `cargo xtask bench` (restart part): how long detector takes to bring a crashed unit back, on
//! real systemd in a systemd-nspawn machine, against a plain restart of the same unit.
//!
//! Two services: the Python demo service (tests/demo/app.py, ~35 ms to listen once started, and
//! tens of ms of jitter), and `victim serve`, which listens within a millisecond of its start:
//! with it, what is left of crash → healthy is systemd's work and the restarter's, so an
//! overhead of a millisecond or two is not lost in the service's own start-up.
//!
//! - crash → restart requested: kernel time of the death to systemd accepting our RestartUnit,
//!   under `restart = "expedite"` (the unit's own `RestartSec=5` would wait 5 s);
//! - crash → healthy: to the first passing health check, polled every 2 ms;
//! - baselines without the daemon, polled from the host every 2 ms: the same crash with
//!   RestartUnit sent over D-Bus as soon as systemd has handled the death (an ideal restarter
//!   that needs no detection, timed from the kill), and `systemctl restart` of the running unit
//!   inside the machine.
//!
//! The overhead against the ideal is given twice: at the restart request, where both have waited
//! for systemd to handle the death and what follows is the same systemd and service work
//! whoever asked; and at healthy, which adds the service's start-up and its jitter (tens of ms
//! here) to both sides.
//!
//! Numbers are printed, not asserted. Needs root and `DETECTOR_BIN` / `DETECTOR_MACHINE_ROOT`,
//! which `cargo xtask bench` sets; `RESTART_SAMPLES` (default 100) sets the crashes per measure.

#![expect(
    unused_crate_dependencies,
    reason = "each target of the tests package uses a part of its dependencies"
)]

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use tests::{Daemon, machine::Machine};

/// Crashes per measure unless `RESTART_SAMPLES` says otherwise: enough for a p99 that is not
/// simply the slowest one.
const SAMPLES: usize = 100;
const POLL: Duration = Duration::from_millis(2);
/// Crashes come at least this far apart, with the daemon and without. Back to back, the ideal
/// restarter would crash the unit again within ~10 ms, while the kernel still has the cgroup
/// threadgroup lock in its fast mode from the restart before (`rcu_sync`, see
/// kernel/rcu/sync.c): its next restart would skip the RCU grace period (6-16 ms here) that
/// systemd's write to `cgroup.procs` otherwise waits for, and that every restart on a host
/// waits for when restarts are not that close together.
const PACE: Duration = Duration::from_millis(300);

/// A service the benchmark crashes.
struct Service {
    unit: &'static str,
    port: u16,
    what: &'static str,
    exec: &'static str,
    /// Where in the machine it writes when it listened (µs since the epoch), if it does.
    listened: Option<&'static str>,
}

const SERVICES: [Service; 2] = [
    Service {
        unit: "bench-app.service",
        port: 18008,
        what: "Python",
        exec: "Environment=DEMO_MODE=ok DEMO_PORT=18008\nExecStart=/usr/bin/python3 /opt/demo/app.py",
        listened: None,
    },
    Service {
        unit: "bench-fast.service",
        port: 18009,
        what: "fast",
        exec: "ExecStart=/opt/bench/victim serve 18009 /run/bench-fast.listen",
        listened: Some("run/bench-fast.listen"),
    },
];

impl Service {
    /// Its unit file: Restart=on-failure after 5 s. No start rate limit: the benchmark restarts
    /// it far more often than a healthy service would be.
    fn unit_file(&self) -> String {
        format!(
            "[Unit]\nStartLimitIntervalSec=0\n[Service]\nRestart=on-failure\nRestartSec=5\n{}\n",
            self.exec
        )
    }

    /// One health check from the host, as the daemon does it.
    fn healthy(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut answer = [0; 16];
        stream
            .write_all(b"GET /health HTTP/1.0\r\n\r\n")
            .and_then(|()| stream.read_exact(&mut answer))
            .is_ok_and(|()| {
                answer.starts_with(b"HTTP/1.0 200") || answer.starts_with(b"HTTP/1.1 200")
            })
    }

    /// Time from `start` until the unit answers its health check, and the wall-clock time
    /// (µs since the epoch) it answered.
    fn until_healthy(&self, start: Instant) -> (f64, i64) {
        while !self.healthy() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{} never became healthy",
                self.unit
            );
            thread::sleep(POLL);
        }
        (
            start.elapsed().as_secs_f64() * 1000.0,
            chrono::Utc::now().timestamp_micros(),
        )
    }

    /// When the running service listened (µs since the epoch), if it says.
    fn listened(&self, machine: &Machine) -> Option<i64> {
        let file = std::path::Path::new(&machine.root()).join(self.listened?);
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        Some(
            text.trim()
                .parse()
                .unwrap_or_else(|e| panic!("{}: {text:?}: {e}", file.display())),
        )
    }

    /// The pid of its main process, as the host sees it.
    fn pid(&self, machine: &Machine) -> u32 {
        machine.unit_pids(&format!("system.slice/{}", self.unit))[0]
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Prints one line, and returns (p50, p99).
fn line(what: &str, mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&v, 50.0), percentile(&v, 99.0));
    println!(
        "restart {what:<52} n={:<3} p50={p50:.2} ms  p99={p99:.2} ms  max={:.2} ms",
        v.len(),
        v.last().copied().unwrap_or(0.0)
    );
    (p50, p99)
}

fn samples() -> usize {
    match std::env::var("RESTART_SAMPLES") {
        Ok(n) => n
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or_else(|| panic!("RESTART_SAMPLES={n} is not a positive count")),
        Err(_) => SAMPLES,
    }
}

fn kill(pid: u32) {
    // SIGKILL: a crash without a core dump to write.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the unit's process");
}

/// What one restarter gave over the crashes: crash → restart requested, crash → healthy, and
/// (for a service that says when it listened) listening → healthy seen, in ms.
#[derive(Default)]
struct Figures {
    requested: Vec<f64>,
    healthy: Vec<f64>,
    seen_after_listening: Vec<f64>,
}

/// The wall-clock time of an incident's `health_ok` step, µs since the epoch.
fn health_ok_at(incident: &serde_json::Value) -> i64 {
    let step = incident["timeline"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["step"] == "health_ok"))
        .unwrap_or_else(|| panic!("no health_ok step: {incident}"));
    chrono::DateTime::parse_from_rfc3339(step["at"].as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {step}"))
        .timestamp_micros()
}

/// With the daemon: crash → restart requested and crash → healthy, from its incidents.
fn with_detector(machine: &Machine, daemon: &Daemon, service: &Service) -> Figures {
    let mut figures = Figures::default();
    for _ in 0..samples() {
        let pid = service.pid(machine);
        let next = Instant::now() + PACE;
        kill(pid);
        let incident = daemon.record_where(&format!("the incident for pid {pid}"), |r| {
            r["kind"] == "incident" && r["pid"] == pid
        });
        let ms = |field: &str| {
            incident[field]
                .as_f64()
                .unwrap_or_else(|| panic!("no {field}: {incident}"))
        };
        figures.requested.push(ms("crash_to_restart_ms"));
        figures.healthy.push(ms("crash_to_healthy_ms"));
        service.until_healthy(Instant::now());
        if let Some(listened) = service.listened(machine) {
            let lag = health_ok_at(&incident) - listened;
            figures.seen_after_listening.push(lag as f64 / 1000.0);
        }
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    figures
}

/// Without the daemon: the same crash with a restart requested at the very moment of the kill
/// (no detection at all); kill → restart requested and kill → healthy.
fn ideal(
    runtime: &tokio::runtime::Runtime,
    bus: &detector::Systemd,
    machine: &Machine,
    service: &Service,
) -> Figures {
    let mut figures = Figures::default();
    for _ in 0..samples() {
        let pid = service.pid(machine);
        let run = runtime
            .block_on(bus.unit(service.unit))
            .expect("the unit's state")
            .invocation_id;
        let start = Instant::now();
        let next = start + PACE;
        kill(pid);
        // As the daemon does: once systemd has handled the death (see `await_reaped`).
        runtime
            .block_on(async {
                bus.await_reaped(
                    service.unit,
                    run.as_deref(),
                    tokio::time::Instant::now() + Duration::from_secs(1),
                )
                .await?;
                figures
                    .requested
                    .push(start.elapsed().as_secs_f64() * 1000.0);
                bus.restart(service.unit).await
            })
            .expect("RestartUnit");
        let (ms, at) = service.until_healthy(start);
        figures.healthy.push(ms);
        if let Some(listened) = service.listened(machine) {
            figures
                .seen_after_listening
                .push((at - listened) as f64 / 1000.0);
        }
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    figures
}

/// The figures of one service, and the overhead against the ideal.
fn report(service: &Service, ours: Figures, ideal: Figures) {
    let what = service.what;
    let line = |measure: &str, v: Vec<f64>| line(&format!("{what}: {measure}"), v);
    let (asked50, asked99) = line("crash → restart requested (expedite)", ours.requested);
    let (ideal_asked50, ideal_asked99) = line("kill → restart requested (ideal)", ideal.requested);
    let (ours50, ours99) = line("crash → healthy (detector, expedite)", ours.healthy);
    let (bus50, bus99) = line(
        "kill + RestartUnit at once → healthy (ideal)",
        ideal.healthy,
    );
    let at_request = (asked50 - ideal_asked50, asked99 - ideal_asked99);
    println!(
        "restart {what}: overhead vs the ideal restart, at the request: p50 {:+.2} ms, p99 {:+.2} ms",
        at_request.0, at_request.1
    );
    println!(
        "restart {what}: overhead vs the ideal restart, at healthy: p50 {:+.2} ms, p99 {:+.2} ms",
        ours50 - bus50,
        ours99 - bus99
    );
    if ours.seen_after_listening.is_empty() {
        return;
    }
    let (seen50, seen99) = line(
        "listening → healthy seen (detector)",
        ours.seen_after_listening,
    );
    let (ideal_seen50, ideal_seen99) = line(
        "listening → healthy seen (ideal)",
        ideal.seen_after_listening,
    );
    // The service's own start-up (for this one, mostly the kernel's wait in systemd's write to
    // cgroup.procs) left out: what the restarter adds before the request and after listening.
    println!(
        "restart {what}: overhead vs the ideal restart, the service's start left out: p50 {:+.2} ms, \
         p99 {:+.2} ms",
        at_request.0 + (seen50 - ideal_seen50),
        at_request.1 + (seen99 - ideal_seen99)
    );
}

fn main() {
    let victim = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("victim")))
        .filter(|v| v.exists())
        .unwrap_or_else(|| PathBuf::from("target/release/victim"));
    let victim = victim.display().to_string();
    let units: Vec<(&str, String)> = SERVICES.iter().map(|s| (s.unit, s.unit_file())).collect();
    let units: Vec<(&str, &str)> = units.iter().map(|(u, f)| (*u, f.as_str())).collect();
    let machine = Machine::boot_with(
        &units,
        &[
            (
                concat!(env!("CARGO_MANIFEST_DIR"), "/demo/app.py"),
                "/opt/demo/app.py",
            ),
            (&victim, "/opt/bench/victim"),
        ],
    );
    // A window of 1 ms: every crash here is a first one, restarted without back-off.
    let mut config = String::new();
    for s in &SERVICES {
        let _ = write!(
            config,
            "[[unit]]\nname = \"{}\"\nrestart = \"expedite\"\n\
             health = {{ url = \"http://127.0.0.1:{}/health\", interval = \"2ms\", deadline = \"30s\" }}\n\
             crash_loop = {{ max_restarts = 1, window = \"1ms\" }}\n\n",
            s.unit, s.port
        );
    }
    let (daemon, _config) = machine.watch_with_config(&config);
    for service in &SERVICES {
        machine.systemctl(&["start", service.unit]);
        service.until_healthy(Instant::now());
    }
    let ours: Vec<_> = SERVICES
        .iter()
        .map(|s| with_detector(&machine, &daemon, s))
        .collect();

    // The baselines, without the daemon.
    drop(daemon);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let root = machine.root();
    let bus = runtime
        .block_on(detector::Systemd::connect(std::path::Path::new(&root)))
        .expect("the machine's bus");
    let ideals: Vec<_> = SERVICES
        .iter()
        .map(|s| ideal(&runtime, &bus, &machine, s))
        .collect();
    // And `systemctl restart` of the running Python service.
    let python = &SERVICES[0];
    let mut systemctl = Vec::new();
    for _ in 0..samples() {
        let start = Instant::now();
        machine.systemctl(&["restart", python.unit]);
        systemctl.push(python.until_healthy(start).0);
    }

    for ((service, ours), ideal) in SERVICES.iter().zip(ours).zip(ideals) {
        report(service, ours, ideal);
    }
    let _ = line(
        "Python: systemctl restart → healthy (plain, nsenter)",
        systemctl,
    );
}
