//! Deaths in real systemd units, named with their unit, run and cause: a Debian machine booted
//! with systemd-nspawn, watched from the host with `detector run --root /proc/LEADER/root`. Needs
//! root; run with `cargo xtask test`.

#![expect(
    unused_crate_dependencies,
    reason = "each target of the tests package uses a part of its dependencies"
)]

use serde_json::{Value, json};
use tests::{
    Daemon,
    incidents::{check_recovery, demo, incident_for, journal_has, policy},
    machine::Machine,
};

/// The incident for `record`'s death in `unit`: the cause, and the failed run's own lines from
/// the journal, including what the process wrote just before it died and PID 1's account.
fn check_incident(daemon: &Daemon, unit: &str, code: u8, record: &Value, invocation: &str) {
    let incident = daemon.record_where(&format!("the incident for {unit}"), |r| {
        r["kind"] == "incident" && r["unit"] == unit
    });
    assert_eq!(
        (incident["pid"].clone(), incident["invocation_id"].clone()),
        (record["pid"].clone(), json!(invocation)),
        "{incident}"
    );
    let (cause, detail) = (
        incident["cause"].as_str(),
        incident["detail"].as_str().unwrap_or_default(),
    );
    let exited = format!("exited with status {code}");
    if unit == "demo-exit.service" {
        assert_eq!(cause, Some("startup_failure"), "{incident}");
        assert!(
            detail.starts_with(&exited) && detail.ends_with("ms after it started"),
            "{incident}"
        );
    } else {
        assert_eq!(
            (cause, detail),
            (Some("exit_code"), exited.as_str()),
            "{incident}"
        );
    }
    let journal: Vec<&str> = incident["journal"]
        .as_array()
        .unwrap_or_else(|| panic!("no journal: {incident}"))
        .iter()
        .filter_map(|l| l.as_str())
        .collect();
    let pid1 = format!("{unit}: Main process exited, code=exited, status={code}/");
    for wanted in ["starting", "fatal: cannot go on", &pid1] {
        assert!(
            journal.iter().any(|l| l.contains(wanted)),
            "journal lacks {wanted:?}: {journal:?}"
        );
    }
    assert_eq!(
        incident["timeline"][0],
        json!({"at": record["time"], "step": "detected"}),
        "{incident}"
    );
}

#[test]
fn deaths_in_units_are_named_with_their_unit() {
    let exits = |code: u8| {
        format!(
            "[Service]\nExecStart=/usr/bin/python3 -c \"import sys; print('starting', flush=True); \
             print('fatal: cannot go on', file=sys.stderr); sys.exit({code})\"\n"
        )
    };
    let machine = Machine::boot(&[
        ("demo-exit.service", &exits(3)),
        ("demo@.service", &exits(5)),
    ]);
    // The template's instances get a startup grace of 1 ms: their deaths are plain exit codes,
    // while demo-exit.service keeps the default grace (10 s) and fails at startup.
    let (daemon, _config) = machine.watch_with_config(
        "[[unit]]\nname = \"demo@.service\"\nrestart = \"report\"\nstartup_grace = \"1ms\"\n",
    );
    let cgroup_root = machine.cgroup_root();
    // (unit to start, unit in the record, exit code)
    for (start, unit, code) in [
        ("demo-exit.service", "demo-exit.service", 3),
        ("demo@2.service", "demo@2.service", 5),
    ] {
        machine.systemctl(&["start", "--no-block", start]);
        let record = daemon.record_where(&format!("a death in {unit}"), |r| {
            r["kind"] == "exit" && r["unit"] == unit
        });
        assert_eq!(
            (record["exit_code"].clone(), record["comm"].clone()),
            (json!(code), json!("python3")),
            "{record}"
        );
        let cgroup = record["cgroup"]
            .as_str()
            .unwrap_or_else(|| panic!("no cgroup: {record}"));
        let slice = if unit.contains('@') {
            "system.slice/system-demo.slice"
        } else {
            "system.slice"
        };
        assert_eq!(
            cgroup,
            format!("{}/{slice}/{unit}", cgroup_root.display()).replace("//", "/"),
            "{record}"
        );
        assert_eq!(record["user_unit"], Value::Null, "{record}");
        let invocation = record["invocation_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no invocation_id: {record}"));
        assert_eq!(
            invocation,
            machine.show(unit, "InvocationID"),
            "systemd's own id for {unit}"
        );

        check_incident(&daemon, unit, code, &record, invocation);
    }
}

#[test]
fn a_worker_death_then_the_mains_is_one_incident_for_the_main() {
    // The worker exits 4; half a second later, while the worker's incident is still open, the
    // main process exits 6: one failure, one incident, the main's, counting both deaths.
    let unit = "[Service]\nExecStart=/bin/sh -c \"sh -c 'exit 4'; sleep 0.5; exit 6\"\n";
    let machine = Machine::boot(&[("demo-worker.service", unit)]);
    let daemon = Daemon::start_with(&["--root", &machine.root()]);
    machine.systemctl(&["start", "--no-block", "demo-worker.service"]);
    let worker = daemon.record_where("the worker's death", |r| {
        r["kind"] == "exit" && r["unit"] == "demo-worker.service" && r["exit_code"] == 4
    });
    let main = daemon.record_where("the main process's death", |r| {
        r["kind"] == "exit" && r["unit"] == "demo-worker.service" && r["exit_code"] == 6
    });
    let incident = daemon.record_where("the incident", |r| r["kind"] == "incident");
    assert_eq!(
        (
            incident["pid"].clone(),
            incident["role"].clone(),
            incident["deaths"].clone()
        ),
        (main["pid"].clone(), json!("main"), json!(2)),
        "{incident}"
    );
    assert_eq!(worker["role"], "worker", "{worker}");
    let detail = incident["detail"].as_str().unwrap_or_default();
    assert!(detail.starts_with("exited with status 6"), "{incident}");
    let (records, _) = daemon.stop();
    let incidents: Vec<_> = records.iter().filter(|r| r["kind"] == "incident").collect();
    assert_eq!(
        incidents.len(),
        1,
        "the worker {} is not an incident of its own: {incidents:?}",
        worker["pid"]
    );
}

/// The port's first holder, then a second service on the same port: the incident names the
/// holder's process and unit.
fn check_port_in_use(machine: &Machine, daemon: &Daemon) {
    machine.systemctl(&["start", "demo-holder.service"]);
    machine.wait_healthy("http://127.0.0.1:18000/health");
    let holder_pid = machine.unit_pids("system.slice/demo-holder.service")[0];
    machine.systemctl(&["start", "--no-block", "demo-port.service"]);
    let port = incident_for(daemon, "demo-port.service");
    assert_eq!(port["cause"], "port_in_use", "{port}");
    assert!(
        journal_has(&port, "OSError: [Errno 98] Address already in use"),
        "{port}"
    );
    assert_eq!(
        port["port_holder"],
        json!({"pid": holder_pid, "comm": "python3", "unit": "demo-holder.service"}),
        "{port}"
    );
    let detail = port["detail"].as_str().unwrap_or_default();
    // demo-port.service has no health check: only its own log names the port.
    let held = format!(
        "port 18000 (claimed by its log) is held by python3 (pid {holder_pid}) of demo-holder.service"
    );
    assert!(detail.ends_with(&held), "{port}");
}

/// Killed by another process: a shell's `kill` inside the machine.
fn check_killed_by_another(machine: &Machine, daemon: &Daemon) -> Value {
    machine.systemctl(&["start", "demo-victim.service"]);
    machine.wait_healthy("http://127.0.0.1:18001/health");
    let main = machine.show("demo-victim.service", "MainPID");
    // The minbase machine has no kill(1): the shell's builtin sends it. SIGKILL, because systemd
    // counts SIGTERM (like SIGHUP, SIGINT, SIGPIPE) as a clean exit of a service: no failure.
    let kill = machine.run(&["sh", "-c", &format!("kill -KILL {main}")]);
    assert!(kill.status.success(), "kill {main}: {kill:?}");
    let victim = incident_for(daemon, "demo-victim.service");
    assert_eq!(victim["cause"], "signal", "{victim}");
    let detail = victim["detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with("killed by SIGKILL sent by sh (pid "),
        "{victim}"
    );
    victim
}

/// The units of the common failures, each on its own port.
fn common_failure_units() -> [(&'static str, String); 7] {
    let once = |name: &str| format!("Environment=DEMO_FAIL_ONCE=/run/{name}.failed\n");
    [
        ("demo-import.service", demo("import", 18002, "")),
        (
            "demo-exception.service",
            demo("exception", 18003, &once("exception")),
        ),
        ("demo-env.service", demo("env", 18004, "")),
        ("demo-holder.service", demo("ok", 18000, "")),
        ("demo-port.service", demo("ok", 18000, "")),
        // The seed's unit: systemd itself would restart it, but only after 5 s.
        (
            "demo-segv.service",
            demo(
                "segv",
                18005,
                &format!("{}Restart=on-failure\nRestartSec=5\n", once("segv")),
            ),
        ),
        (
            "demo-victim.service",
            demo("ok", 18001, "Restart=on-failure\nRestartSec=1\n"),
        ),
    ]
}

#[test]
fn common_failures_are_named_and_recovered_as_the_policy_says() {
    let units = common_failure_units();
    let units: Vec<(&str, &str)> = units.iter().map(|(n, c)| (*n, c.as_str())).collect();
    let machine = Machine::boot_demo(&units);
    let config = [
        policy("demo-import.service", "report", 18002),
        policy("demo-exception.service", "restart", 18003),
        policy("demo-segv.service", "expedite", 18005),
        policy("demo-victim.service", "restart", 18001),
    ]
    .concat();
    let (daemon, _config) = machine.watch_with_config(&config);
    check_port_in_use(&machine, &daemon);
    let restarted = ["detected", "restart_requested", "unit_active", "health_ok"];
    // (unit, cause, start of the detail, a line the journal must show, action, steps)
    let cases = [
        (
            "demo-import.service",
            "missing_dependency",
            "Python module 'fastapi_settings_plugin' is not installed",
            "ModuleNotFoundError: No module named 'fastapi_settings_plugin'",
            "reported",
            &["detected"][..],
        ),
        (
            "demo-env.service",
            "missing_env",
            "environment variable DATABASE_URL is not set",
            "KeyError: 'DATABASE_URL'",
            "reported",
            &["detected"],
        ),
        // Restart=no: systemd leaves it down, detector restarts it.
        (
            "demo-exception.service",
            "startup_failure",
            "exited with status 1 ",
            "RuntimeError: startup hook failed: cannot load settings",
            "restarted",
            &restarted,
        ),
        // expedite: restarted at once instead of after RestartSec=5.
        (
            "demo-segv.service",
            "signal",
            "killed by SIGSEGV raised by the kernel (a fault in the process)",
            "mode=segv",
            "restarted",
            &restarted,
        ),
    ];
    for (unit, cause, detail, line, action, want) in cases {
        machine.systemctl(&["start", "--no-block", unit]);
        let incident = incident_for(&daemon, unit);
        assert_eq!(incident["cause"], cause, "{incident}");
        assert!(
            incident["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with(detail)),
            "{incident}"
        );
        assert!(
            journal_has(&incident, line),
            "journal lacks {line:?}: {incident}"
        );
        check_recovery(&incident, action, want);
        if unit == "demo-segv.service" {
            // Not a timing: systemd's own restart comes after RestartSec=5; ours must not wait
            // for it (a restart requested before systemd handled the death once did).
            let active = incident["crash_to_active_ms"].as_f64().unwrap_or(f64::MAX);
            assert!(
                active < 5000.0,
                "expedite waited out RestartSec=: {incident}"
            );
        }
    }
    // The port's would-be second user and the units that recovered, as systemd sees them now.
    let port = incident_for(&daemon, "demo-port.service");
    check_recovery(&port, "reported", &["detected"]);
    for (unit, state) in [
        ("demo-exception.service", "active"),
        ("demo-segv.service", "active"),
        ("demo-import.service", "failed"),
    ] {
        assert_eq!(machine.is_active(unit), state, "{unit}");
    }
    let victim = check_killed_by_another(&machine, &daemon);
    // Restart=on-failure brings it back after 1 s; detector watches rather than restarting.
    check_recovery(
        &victim,
        "watched",
        &["detected", "unit_active", "health_ok"],
    );
}

#[test]
fn oom_kill_in_a_unit_is_named() {
    // Fails once: the run after the restart serves without hoarding.
    let machine = Machine::boot_demo(&[(
        "demo-hog.service",
        &demo("hog", 18007, "Environment=DEMO_FAIL_ONCE=/run/hog.failed\n"),
    )]);
    let (daemon, _config) =
        machine.watch_with_config(&policy("demo-hog.service", "expedite", 18007));
    machine.systemctl(&["start", "demo-hog.service"]);
    // The unit's process moves into a host cgroup v1 memory cgroup with a 96 MiB limit; its
    // growing hoard then meets the OOM killer.
    let parent = tests::own_memcg_v1_path()
        .expect("the cgroup v1 memory controller is mounted on the project's machines");
    let memcg = format!(
        "{}/detector-unit-oom-{}",
        parent.trim_end_matches('/'),
        std::process::id()
    );
    let dir = std::path::PathBuf::from(format!("/sys/fs/cgroup/memory{memcg}"));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    std::fs::write(dir.join("memory.limit_in_bytes"), (96u64 << 20).to_string()).expect("limit");
    let pid = machine.unit_pids("system.slice/demo-hog.service")[0];
    std::fs::write(dir.join("cgroup.procs"), pid.to_string()).expect("move the hog");
    let incident = daemon.record_where("the OOM incident", |r| {
        r["kind"] == "incident" && r["unit"] == "demo-hog.service"
    });
    let _ = std::fs::remove_dir(&dir);
    assert_eq!(
        (incident["cause"].clone(), incident["pid"].clone()),
        (json!("oom_kill"), json!(pid)),
        "{incident}"
    );
    let detail = incident["detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with("killed by the OOM killer with ")
            && detail.ends_with(&format!("memory cgroup {memcg} reached its limit")),
        "{incident}"
    );
    assert!(
        incident["journal"]
            .as_array()
            .is_some_and(|l| l.iter().any(|l| l
                .as_str()
                .is_some_and(|l| l.contains("code=killed, status=9/KILL")))),
        "{incident}"
    );
    check_recovery(
        &incident,
        "restarted",
        &["detected", "restart_requested", "unit_active", "health_ok"],
    );
}
