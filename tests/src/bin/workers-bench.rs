//! `cargo xtask bench` (workers part), on real systemd in a systemd-nspawn machine with the
//! guide's unit (`uvicorn --workers 4`, `Restart=always`, `RestartSec=5`):
//!
//! - crash → healthy after the uvicorn main process is SIGKILLed, under `restart = "expedite"`
//!   (detector restarts once systemd has stopped the old run's workers), against `systemctl
//!   restart` of the running unit;
//! - hang → incident: every worker's event loop blocked, caught by `liveness = { every = "1s",
//!   failures = 3 }`, timed from the hang to the incident's `detected` step, set against
//!   `every × failures`.
//!
//! Numbers are printed, not asserted. Needs root and `DETECTOR_BIN` / `DETECTOR_MACHINE_ROOT`, which
//! `cargo xtask bench` sets; the machine root needs the Python packages xtask installs.

#![expect(
    unused_crate_dependencies,
    reason = "each target of the tests package uses a part of its dependencies"
)]

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    thread,
    time::{Duration, Instant, SystemTime},
};

use tests::machine::Machine;

const PORT: u16 = 18016;
const UNIT: &str = "fastapi-app.service";
const CRASHES: usize = 10;
const HANGS: usize = 3;
const POLL: Duration = Duration::from_millis(5);

fn get(path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", PORT)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut answer = [0; 12];
    stream.read_exact(&mut answer).ok()?;
    std::str::from_utf8(&answer[9..12]).ok()?.parse().ok()
}

fn until_healthy(start: Instant) -> f64 {
    while get("/health") != Some(200) {
        assert!(
            start.elapsed() < Duration::from_mins(1),
            "{UNIT} never became healthy"
        );
        thread::sleep(POLL);
    }
    start.elapsed().as_secs_f64() * 1000.0
}

/// Days from 1970-01-01 to a civil date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2026-11-25T19:10:04.325313Z` → µs since the epoch.
fn rfc3339_us(text: &str) -> Option<i64> {
    let (date, time) = text.trim_end_matches('Z').split_once('T')?;
    let mut ymd = date.split('-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut clock = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (hour, minute, second) = (clock.next()??, clock.next()??, clock.next()??);
    let micros: i64 = format!("{frac:0<6}").get(..6)?.parse().ok()?;
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    Some(seconds * 1_000_000 + micros)
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(0))
}

/// Prints one line, with p50 / p99 / max.
fn line(what: &str, mut v: Vec<f64>) {
    v.sort_by(f64::total_cmp);
    let at = |p: f64| v[(((p / 100.0) * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)];
    println!(
        "workers {what:<52} n={:<3} p50={:.1} ms  p99={:.1} ms  max={:.1} ms",
        v.len(),
        at(50.0),
        at(99.0),
        v.last().copied().unwrap_or(0.0)
    );
}

/// The uvicorn main process: the unit's process whose parent is the machine's PID 1.
fn main_pid(machine: &Machine) -> u32 {
    let leader = machine
        .root()
        .trim_start_matches("/proc/")
        .trim_end_matches("/root")
        .to_owned();
    machine
        .unit_pids(&format!("system.slice/{UNIT}"))
        .into_iter()
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit(')')
                    .next()
                    .and_then(|rest| rest.split_whitespace().nth(1))
                    == Some(leader.as_str())
            })
        })
        .expect("the uvicorn main process")
}

fn main() {
    let unit = format!(
        "[Unit]\nStartLimitIntervalSec=0\n[Service]\nUser=www-data\nWorkingDirectory=/opt/demo\n\
         ExecStart=/usr/bin/python3 -m uvicorn fastapi_app:app --host 127.0.0.1 --port {PORT} --workers 4\n\
         Restart=always\nRestartSec=5\nEnvironment=PYTHONUNBUFFERED=1\n\
         Environment=PYTHONPATH=/opt/detector-py\nEnvironment=DEMO_HANG_FILE=/tmp/demo-hang\n"
    );
    let machine = Machine::boot_with(
        &[(UNIT, &unit)],
        &[(
            concat!(env!("CARGO_MANIFEST_DIR"), "/demo/fastapi_app.py"),
            "/opt/demo/fastapi_app.py",
        )],
    );
    let config = format!(
        "[[unit]]\nname = \"{UNIT}\"\nrestart = \"expedite\"\n\
         health = {{ url = \"http://127.0.0.1:{PORT}/health\", interval = \"5ms\", deadline = \"60s\" }}\n\
         crash_loop = {{ max_restarts = 1, window = \"1ms\" }}\n\
         liveness = {{ every = \"1s\", failures = 3 }}\n"
    );
    let (daemon, _config) = machine.watch_with_config(&config);
    machine.systemctl(&["start", UNIT]);
    until_healthy(Instant::now());

    let (mut restarted, mut healthy) = (Vec::new(), Vec::new());
    for _ in 0..CRASHES {
        let pid = main_pid(&machine);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill the uvicorn main");
        let incident = daemon.record_where(&format!("the incident for pid {pid}"), |r| {
            r["kind"] == "incident" && r["pid"] == pid
        });
        let ms = |field: &str| incident[field].as_f64().unwrap_or(f64::NAN);
        restarted.push(ms("crash_to_restart_ms"));
        healthy.push(ms("crash_to_healthy_ms"));
        until_healthy(Instant::now());
    }

    let mut hangs = Vec::new();
    for n in 0..HANGS {
        hangs.push(now_us());
        let _ = get("/hang");
        thread::sleep(Duration::from_millis(300));
        // The restarted run must not hang again.
        let _ = machine.run(&["rm", "-f", "/tmp/demo-hang"]);
        daemon.wait_for_count(&format!("hang incident {}", n + 1), n + 1, |r| {
            r["kind"] == "incident" && r["cause"] == "unhealthy"
        });
        until_healthy(Instant::now());
        thread::sleep(Duration::from_secs(2));
    }
    let (records, _) = daemon.stop();
    // Each hang against the first `unhealthy` incident begun after it: an incident of the
    // crash phase above (a restart the check caught still starting) must not pair with a hang.
    let begun: Vec<i64> = records
        .iter()
        .filter(|r| r["kind"] == "incident" && r["cause"] == "unhealthy")
        .filter_map(|r| r["timeline"][0]["at"].as_str().and_then(rfc3339_us))
        .collect();
    let detected: Vec<f64> = hangs
        .iter()
        .filter_map(|&hung| {
            let at = begun.iter().copied().filter(|&at| at >= hung).min()?;
            Some((at - hung) as f64 / 1000.0)
        })
        .collect();

    let mut systemctl = Vec::new();
    for _ in 0..CRASHES {
        let start = Instant::now();
        machine.systemctl(&["restart", UNIT]);
        systemctl.push(until_healthy(start));
    }

    line("main SIGKILL → restart requested (expedite)", restarted);
    line("main SIGKILL → healthy (detector, expedite)", healthy);
    line("systemctl restart → healthy (plain, nsenter)", systemctl);
    // From each hang's trigger to its incident's first step.
    line(
        "hang → unhealthy incident (every 1s × failures 3)",
        detected,
    );
}
