//! `cargo xtask bench` (restart part): how long detector takes to bring a crashed unit back, on
//! real systemd in a systemd-nspawn machine, against a plain restart of the same unit.
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
    io::{Read as _, Write as _},
    net::TcpStream,
    thread,
    time::{Duration, Instant},
};

use tests::machine::Machine;

/// Crashes per measure unless `RESTART_SAMPLES` says otherwise: enough for a p99 that is not
/// simply the slowest one.
const SAMPLES: usize = 100;
const PORT: u16 = 18008;
const UNIT: &str = "bench-app.service";
const POLL: Duration = Duration::from_millis(2);

/// One health check from the host, as the daemon does it.
fn healthy() -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", PORT)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut answer = [0; 16];
    stream
        .write_all(b"GET /health HTTP/1.0\r\n\r\n")
        .and_then(|()| stream.read_exact(&mut answer))
        .is_ok_and(|()| answer.starts_with(b"HTTP/1.0 200") || answer.starts_with(b"HTTP/1.1 200"))
}

/// Time from `start` until the unit answers its health check.
fn until_healthy(start: Instant) -> f64 {
    while !healthy() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{UNIT} never became healthy"
        );
        thread::sleep(POLL);
    }
    start.elapsed().as_secs_f64() * 1000.0
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
        "restart {what:<44} n={:<3} p50={p50:.2} ms  p99={p99:.2} ms  max={:.2} ms",
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

fn main() {
    let samples = samples();
    // The seed's unit: Restart=on-failure after 5 s. No start rate limit: the benchmark restarts
    // it far more often than a healthy service would be.
    let unit = format!(
        "[Unit]\nStartLimitIntervalSec=0\n[Service]\nEnvironment=DEMO_MODE=ok DEMO_PORT={PORT}\n\
         Restart=on-failure\nRestartSec=5\nExecStart=/usr/bin/python3 /opt/demo/app.py\n"
    );
    let machine = Machine::boot_demo(&[(UNIT, &unit)]);
    // A window of 1 ms: every crash here is a first one, restarted without back-off.
    let config = format!(
        "[[unit]]\nname = \"{UNIT}\"\nrestart = \"expedite\"\n\
         health = {{ url = \"http://127.0.0.1:{PORT}/health\", interval = \"2ms\", deadline = \"30s\" }}\n\
         crash_loop = {{ max_restarts = 1, window = \"1ms\" }}\n"
    );
    let (daemon, _config) = machine.watch_with_config(&config);
    machine.systemctl(&["start", UNIT]);
    until_healthy(Instant::now());

    let (mut requested, mut recovered) = (Vec::new(), Vec::new());
    for _ in 0..samples {
        let pid = machine.unit_pids(&format!("system.slice/{UNIT}"))[0];
        // SIGKILL: a crash without a core dump to write.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill the unit's process");
        let incident = daemon.record_where(&format!("the incident for pid {pid}"), |r| {
            r["kind"] == "incident" && r["pid"] == pid
        });
        let ms = |field: &str| {
            incident[field]
                .as_f64()
                .unwrap_or_else(|| panic!("no {field}: {incident}"))
        };
        requested.push(ms("crash_to_restart_ms"));
        recovered.push(ms("crash_to_healthy_ms"));
        until_healthy(Instant::now());
    }

    // The baselines, without the daemon: the same crash with a restart requested at the very
    // moment of the kill (no detection at all), and `systemctl restart` of the running unit.
    drop(daemon);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let root = machine.root();
    let bus = runtime
        .block_on(detector::Systemd::connect(std::path::Path::new(&root)))
        .expect("the machine's bus");
    let (mut over_bus, mut over_bus_asked) = (Vec::new(), Vec::new());
    for _ in 0..samples {
        let pid = machine.unit_pids(&format!("system.slice/{UNIT}"))[0];
        let run = runtime
            .block_on(bus.unit(UNIT))
            .expect("the unit's state")
            .invocation_id;
        let start = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill the unit's process");
        // As the daemon does: once systemd has handled the death (see `await_reaped`).
        runtime
            .block_on(async {
                bus.await_reaped(
                    UNIT,
                    run.as_deref(),
                    tokio::time::Instant::now() + Duration::from_secs(1),
                )
                .await?;
                over_bus_asked.push(start.elapsed().as_secs_f64() * 1000.0);
                bus.restart(UNIT).await
            })
            .expect("RestartUnit");
        over_bus.push(until_healthy(start));
    }
    let mut systemctl = Vec::new();
    for _ in 0..samples {
        let start = Instant::now();
        machine.systemctl(&["restart", UNIT]);
        systemctl.push(until_healthy(start));
    }

    let (asked50, asked99) = line("crash → restart requested (expedite)", requested);
    let (ideal_asked50, ideal_asked99) = line("kill → restart requested (ideal)", over_bus_asked);
    let (ours50, ours99) = line("crash → healthy (detector, expedite)", recovered);
    let (bus50, bus99) = line("kill + RestartUnit at once → healthy (ideal)", over_bus);
    let _ = line("systemctl restart → healthy (plain, nsenter)", systemctl);
    println!(
        "restart overhead vs the ideal restart, at the request: p50 {:+.2} ms, p99 {:+.2} ms",
        asked50 - ideal_asked50,
        asked99 - ideal_asked99
    );
    println!(
        "restart overhead vs the ideal restart, at healthy: p50 {:+.2} ms, p99 {:+.2} ms",
        ours50 - bus50,
        ours99 - bus99
    );
}
