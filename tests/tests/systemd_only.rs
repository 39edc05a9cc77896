//! Failures only systemd sees, on real systemd: a start it cannot make (missing EnvironmentFile=,
//! ExecStart=, User=, WorkingDirectory=), and runs it ends itself (TimeoutStartSec=, WatchdogSec=).
//! Each is exactly one incident, with the cause and the journal line that proves it; an
//! operator's stop is none, and a crash systemd restarts by itself is one. Needs root; run with
//! `cargo xtask test`.

#![expect(
    unused_crate_dependencies,
    reason = "each target of the tests package uses a part of its dependencies"
)]

use std::{thread, time::Duration};

use tests::{
    incidents::{incident_for, incidents_of, journal_has},
    machine::{Machine, tempdir},
};

const SLEEPER: &str = "ExecStart=/usr/bin/python3 -c \"import time; time.sleep(1000)\"\n";

/// A Type=notify service that says READY=1, pings the watchdog a few times, then stops pinging.
const STOPS_PINGING: &str = r#"import os, socket, time
address = os.environ["NOTIFY_SOCKET"]
if address.startswith("@"):
    address = "\0" + address[1:]
notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
notify.connect(address)
notify.send(b"READY=1")
print("ready; pinging the watchdog for a second", flush=True)
for _ in range(4):
    notify.send(b"WATCHDOG=1")
    time.sleep(0.25)
print("stuck: no more pings", flush=True)
time.sleep(1000)
"#;

/// Fails its first run (exit 3, at once: a startup failure), serves after.
const CRASHES_ONCE: &str = r#"import os, sys, time
if not os.path.exists("/run/crashed-once"):
    open("/run/crashed-once", "w").close()
    print("fatal: first run fails", flush=True)
    sys.exit(3)
time.sleep(1000)
"#;

fn report(unit: &str) -> String {
    format!("[[unit]]\nname = \"{unit}\"\nrestart = \"report\"\n")
}

/// One case: a unit that fails on start, its expected cause, what its detail names, and the
/// journal line that proves it.
struct Case {
    unit: &'static str,
    service: String,
    cause: &'static str,
    /// Whose incident: `main` when the process systemd forked dies in the unit's cgroup; `unit`
    /// when no process ran (the state watcher's); None where systemd's child may fail before
    /// it is moved into the unit's cgroup (the kernel then sees it in PID 1's).
    role: Option<&'static str>,
    detail: &'static str,
    line: &'static str,
}

#[test]
fn failures_only_systemd_sees_are_one_incident_each_with_their_cause() {
    let dir = tempdir::Dir::new("systemd-only");
    let watchdog = dir.path().join("stops-pinging.py");
    std::fs::write(&watchdog, STOPS_PINGING).expect("write the watchdog script");
    let cases = [
        Case {
            unit: "demo-envfile.service",
            service: format!("[Service]\nEnvironmentFile=/etc/demo/app.env\n{SLEEPER}"),
            cause: "missing_env",
            role: Some("unit"),
            detail: "EnvironmentFile=/etc/demo/app.env is missing",
            line: "Failed to load environment files",
        },
        Case {
            unit: "demo-noexec.service",
            service: "[Service]\nExecStart=/var/www/myapp/venv/bin/uvicorn main:app\n".to_owned(),
            cause: "missing_dependency",
            role: Some("main"),
            detail: "/var/www/myapp/venv/bin/uvicorn",
            line: "Failed at step EXEC spawning /var/www/myapp/venv/bin/uvicorn",
        },
        Case {
            unit: "demo-nouser.service",
            service: format!("[Service]\nUser=nosuchuser\n{SLEEPER}"),
            cause: "unknown_user",
            role: None,
            detail: "cannot be resolved",
            line: "Failed to determine user credentials",
        },
        Case {
            unit: "demo-nowd.service",
            service: format!("[Service]\nWorkingDirectory=/var/www/missing\n{SLEEPER}"),
            cause: "missing_working_directory",
            role: None,
            detail: "WorkingDirectory=",
            line: "Changing to the requested working directory failed",
        },
        Case {
            unit: "demo-timeout.service",
            service: format!("[Service]\nType=notify\nTimeoutStartSec=2s\n{SLEEPER}"),
            cause: "timeout",
            role: Some("main"),
            detail: "TimeoutStartSec=",
            line: "start operation timed out. Terminating.",
        },
        Case {
            unit: "demo-watchdog.service",
            service: "[Service]\nType=notify\nWatchdogSec=1s\nNotifyAccess=main\n\
                      ExecStart=/usr/bin/python3 /opt/demo/stops-pinging.py\n"
                .to_owned(),
            cause: "watchdog",
            role: Some("main"),
            detail: "WatchdogSec=1s",
            line: "Watchdog timeout (limit 1s)!",
        },
    ];
    let units: Vec<(&str, &str)> = cases.iter().map(|c| (c.unit, c.service.as_str())).collect();
    let script = watchdog.display().to_string();
    let machine = Machine::boot_with(&units, &[(&script, "/opt/demo/stops-pinging.py")]);
    let config: String = cases.iter().map(|c| report(c.unit)).collect();
    let (daemon, _config) = machine.watch_with_config(&config);
    for case in &cases {
        machine.systemctl(&["start", "--no-block", case.unit]);
        let incident = incident_for(&daemon, case.unit);
        let detail = incident["detail"].as_str().unwrap_or_default();
        assert_eq!(
            incident["cause"].as_str(),
            Some(case.cause),
            "{}: {incident}",
            case.unit
        );
        if let Some(role) = case.role {
            assert_eq!(incident["role"], role, "{}: {incident}", case.unit);
        }
        assert!(detail.contains(case.detail), "{}: {incident}", case.unit);
        assert!(
            journal_has(&incident, case.line),
            "{}: {incident}",
            case.unit
        );
    }
    // No second incident for any of them: the death and systemd's word are one.
    thread::sleep(Duration::from_secs(2));
    let (records, _) = daemon.stop();
    for case in &cases {
        assert_eq!(
            incidents_of(&records, case.unit).len(),
            1,
            "{}: {records:?}",
            case.unit
        );
    }
}

#[test]
fn an_operators_stop_is_quiet_and_a_crash_systemd_restarts_is_one_incident() {
    let dir = tempdir::Dir::new("crash-once");
    let script = dir.path().join("crashes-once.py");
    std::fs::write(&script, CRASHES_ONCE).expect("write the script");
    let script = script.display().to_string();
    let sleeper = format!("[Service]\nRestart=always\nRestartSec=1\n{SLEEPER}");
    let crasher = "[Service]\nRestart=on-failure\nRestartSec=1\n\
                   ExecStart=/usr/bin/python3 /opt/demo/crashes-once.py\n";
    let machine = Machine::boot_with(
        &[
            ("demo-stopped.service", &sleeper),
            ("demo-crash.service", crasher),
        ],
        &[(&script, "/opt/demo/crashes-once.py")],
    );
    // `restart`: a stop must not be taken for a failure to undo.
    let (daemon, _config) = machine.watch_with_config(
        "[[unit]]\nname = \"demo-stopped.service\"\nrestart = \"restart\"\n\n\
         [[unit]]\nname = \"demo-crash.service\"\nrestart = \"report\"\n",
    );
    machine.systemctl(&["start", "demo-stopped.service"]);
    thread::sleep(Duration::from_millis(500));
    machine.systemctl(&["stop", "demo-stopped.service"]);
    machine.systemctl(&["start", "--no-block", "demo-crash.service"]);
    let incident = incident_for(&daemon, "demo-crash.service");
    assert_eq!(
        (incident["cause"].as_str(), incident["role"].as_str()),
        (Some("startup_failure"), Some("main")),
        "{incident}"
    );
    // systemd's own restart brings it back; that is still the same one incident.
    thread::sleep(Duration::from_secs(4));
    assert_eq!(machine.is_active("demo-crash.service"), "active");
    assert_eq!(machine.is_active("demo-stopped.service"), "inactive");
    let (records, _) = daemon.stop();
    assert_eq!(
        incidents_of(&records, "demo-stopped.service").len(),
        0,
        "{records:?}"
    );
    assert_eq!(
        incidents_of(&records, "demo-crash.service").len(),
        1,
        "{records:?}"
    );
}
