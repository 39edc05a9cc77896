//! The Debian package in a real systemd: `dpkg -i` in the bookworm machine, the unit verified
//! and its `systemd-analyze security` exposure recorded, then the daemon started by systemd with
//! the unit's whole sandbox (Type=notify, watchdog, reload, restart after a SIGKILL with nothing
//! lost), and `dpkg -r` removing its pins. Needs root and `DETECTOR_DEB` (`cargo xtask test`
//! builds the package).
//!
//! systemd-nspawn keeps neither CAP_BPF nor CAP_PERFMON, filters `bpf` and `perf_event_open`,
//! and mounts neither tracefs nor bpffs in the machine; the machine is booted with those four
//! (`--capability`, `--system-call-filter`, the host's tracefs read-only, a pin directory of the
//! host's bpffs at /sys/fs/bpf), which is what a host's own systemd has.

#![expect(
    unused_crate_dependencies,
    reason = "each target of the tests package uses a part of its dependencies"
)]

use std::{
    path::PathBuf,
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use tests::{detector_bin, machine::Machine};

/// The unit's watchdog, shortened so that the test sees pings; the rest is the packaged unit.
const WATCHDOG_DROP_IN: &str = "[Service]\nWatchdogSec=2s\n";

fn deb() -> String {
    std::env::var("DETECTOR_DEB").unwrap_or_else(|_| {
        panic!("DETECTOR_DEB is not set: run with `cargo xtask test`, which builds the package")
    })
}

/// The host bpffs directory the machine sees as /sys/fs/bpf; the daemon's pins are removed
/// when the test ends however it ends.
struct HostPins(PathBuf);

impl Drop for HostPins {
    fn drop(&mut self) {
        let pins = self.0.join("detector");
        if pins.exists() {
            let _ = Command::new(detector_bin())
                .args(["unpin", "--pin-dir"])
                .arg(&pins)
                .output();
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(machine: &Machine, argv: &[&str]) -> String {
    let out = machine.run(argv);
    assert!(out.status.success(), "{argv:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn show(machine: &Machine, property: &str) -> String {
    machine.show("detector.service", property)
}

/// A thread's scheduling policy and real-time priority, as the kernel shows them in
/// /proc/PID/task/TID/stat (fields 41 and 40, see proc_pid_stat(5)).
fn scheduling(machine: &Machine, pid: &str, tid: &str) -> (u32, u32) {
    let stat = ok(machine, &["cat", &format!("/proc/{pid}/task/{tid}/stat")]);
    // Fields after the command name, which may hold spaces: field 3 is the first.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap_or_else(|| panic!("no command name in {stat}"))
        .1
        .split_whitespace()
        .collect();
    let field = |n: usize| -> u32 {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .unwrap_or_else(|| panic!("no field {n} in {stat}"))
    };
    (field(41), field(40))
}

/// The daemon's journal (its records and its log).
fn journal(machine: &Machine) -> String {
    ok(
        machine,
        &["journalctl", "-u", "detector", "--no-pager", "-o", "cat"],
    )
}

fn wait_for(machine: &Machine, what: &str, done: impl Fn(&Machine) -> bool) {
    let started = Instant::now();
    while !done(machine) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}; the daemon's journal:\n{}",
            journal(machine)
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// `dpkg -i`, the default configuration checked, the unit verified, its exposure recorded.
fn install_and_verify(machine: &Machine) {
    let installed = machine.run(&["dpkg", "-i", "/opt/detector.deb"]);
    assert!(installed.status.success(), "{}", text(&installed));
    ok(
        machine,
        &["detector", "check-config", "/etc/detector/config.toml"],
    );
    let verify = machine.run(&[
        "systemd-analyze",
        "verify",
        "/usr/lib/systemd/system/detector.service",
    ]);
    assert!(
        verify.status.success() && text(&verify).trim().is_empty(),
        "systemd-analyze verify: {}",
        text(&verify)
    );
    let security = ok(
        machine,
        &[
            "systemd-analyze",
            "security",
            "--no-pager",
            "detector.service",
        ],
    );
    let exposure = security
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for detector.service: ")
                .nth(1)
        })
        .unwrap_or_else(|| panic!("no exposure in:\n{security}"));
    eprintln!("systemd-analyze security detector.service: {exposure}");
    let level: f64 = exposure
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a number");
    assert!(level <= 4.0, "exposure {exposure}:\n{security}");
}

#[test]
fn the_package_installs_verifies_and_runs_under_systemd() {
    let pins = HostPins(PathBuf::from(format!(
        "/sys/fs/bpf/detector-test-wt-package-deb-{}",
        std::process::id()
    )));
    std::fs::create_dir_all(&pins.0).expect("host pin directory");
    let drop_in =
        std::env::temp_dir().join(format!("detector-watchdog-{}.conf", std::process::id()));
    std::fs::write(&drop_in, WATCHDOG_DROP_IN).expect("drop-in");
    let bpffs = format!("--bind={}:/sys/fs/bpf", pins.0.display());
    let machine = Machine::boot_with_args(
        &[],
        &[
            (&deb(), "/opt/detector.deb"),
            (
                drop_in.to_str().expect("utf-8"),
                "/etc/systemd/system/detector.service.d/watchdog.conf",
            ),
        ],
        &[
            "--capability=CAP_BPF,CAP_PERFMON",
            "--system-call-filter=bpf perf_event_open open_by_handle_at",
            "--bind-ro=/sys/kernel/tracing",
            &bpffs,
        ],
    );
    let _ = std::fs::remove_file(&drop_in);

    install_and_verify(&machine);

    // The package enabled and started it; Type=notify: active once READY=1 came.
    let _ = machine.run(&["systemctl", "start", "detector"]);
    wait_for(&machine, "the unit to be active", |m| {
        show(m, "ActiveState") == "active"
    });
    assert_eq!(show(&machine, "StatusText"), "watching process deaths");
    // systemd stamps the watchdog at READY=1 and at every WATCHDOG=1 after it.
    let armed = show(&machine, "WatchdogTimestampMonotonic");
    wait_for(&machine, "a watchdog ping", |m| {
        show(m, "WatchdogTimestampMonotonic") != armed
    });
    let status = machine.run(&["systemctl", "status", "detector", "--no-pager"]);
    eprintln!("{}", text(&status));
    // Under the packaged unit the loop reads the ring buffer at SCHED_FIFO 1 (the unit has no
    // RestrictRealtime=), and the threads it started later do not.
    let pid = show(&machine, "MainPID");
    assert_eq!(
        scheduling(&machine, &pid, &pid),
        (1, 1),
        "the daemon's main thread is not SCHED_FIFO 1 (policy, priority)"
    );
    let threads = ok(&machine, &["ls", &format!("/proc/{pid}/task")]);
    let later: Vec<&str> = threads.split_whitespace().filter(|t| *t != pid).collect();
    assert!(
        !later.is_empty(),
        "the daemon has no other thread: {threads}"
    );
    for tid in later {
        assert_eq!(
            scheduling(&machine, &pid, tid).0,
            0,
            "thread {tid} of the daemon is not SCHED_OTHER"
        );
    }

    // A death in the machine is an entry in the unit's journal (under systemd, `--output auto`
    // writes journal entries, not JSON lines: their message is what `-o cat` shows).
    let _ = machine.run(&["sh", "-c", "exit 77"]);
    wait_for(&machine, "the record of a death", |m| {
        journal(m).contains("exited with status 77")
    });

    // Reload: a good file is read again.
    ok(&machine, &["systemctl", "reload", "detector"]);
    wait_for(&machine, "the reload", |m| {
        journal(m).contains("configuration reloaded")
    });

    // SIGKILL: systemd restarts it (Restart=always), and it reattaches to its pinned programs;
    // the death while it was down is reported by the new daemon.
    let first = show(&machine, "MainPID");
    let restarts: u32 = show(&machine, "NRestarts").parse().expect("NRestarts");
    ok(&machine, &["systemctl", "kill", "-s", "KILL", "detector"]);
    let _ = machine.run(&["sh", "-c", "exit 78"]);
    wait_for(&machine, "the restart", |m| {
        show(m, "ActiveState") == "active" && show(m, "MainPID") != first
    });
    assert_eq!(show(&machine, "NRestarts"), (restarts + 1).to_string());
    wait_for(&machine, "the death while no daemon ran", |m| {
        journal(m).contains("exited with status 78")
    });
    assert!(journal(&machine).contains("reattached=true"));
    assert!(
        std::fs::read_dir(pins.0.join("detector"))
            .expect("pins on the host's bpffs")
            .count()
            == 1,
        "one generation"
    );

    // Removal stops it and unpins: the programs are detached.
    let removed = machine.run(&["dpkg", "-r", "detector"]);
    assert!(removed.status.success(), "{}", text(&removed));
    assert!(
        !pins.0.join("detector").exists(),
        "dpkg -r left pins: {}",
        text(&removed)
    );
}
