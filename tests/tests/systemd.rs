//! Deaths in real systemd units: a Debian machine booted with systemd-nspawn, watched from the
//! host with `detector run --root /proc/LEADER/root`. Needs root; run with `cargo xtask test`.

use serde_json::{Value, json};
use tests::{Daemon, machine::Machine};

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
    let config = std::env::temp_dir().join(format!("detector-config-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        "[[unit]]\nname = \"demo@.service\"\nrestart = \"report\"\nstartup_grace = \"1ms\"\n",
    )
    .expect("config");
    let daemon = Daemon::start_with(&[
        "--root",
        &machine.root(),
        "--config",
        &config.display().to_string(),
    ]);
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
        let shown = machine.run(&[
            "systemctl",
            "show",
            "--value",
            "--property=InvocationID",
            unit,
        ]);
        assert_eq!(
            invocation,
            String::from_utf8_lossy(&shown.stdout).trim(),
            "systemd's own id for {unit}"
        );

        check_incident(&daemon, unit, code, &record, invocation);
    }
    let _ = std::fs::remove_file(&config);
}

#[test]
fn a_worker_death_is_not_a_unit_failure() {
    // The worker exits 4; half a second later, well within the time the daemon waits for PID 1's
    // account, the main process exits 6. Only the latter failed the unit.
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
    assert_eq!(incident["pid"], main["pid"], "{incident}");
    let detail = incident["detail"].as_str().unwrap_or_default();
    assert!(detail.starts_with("exited with status 6"), "{incident}");
    let (records, _) = daemon.stop();
    let incidents: Vec<_> = records.iter().filter(|r| r["kind"] == "incident").collect();
    assert_eq!(
        incidents.len(),
        1,
        "the worker {} is not an incident: {incidents:?}",
        worker["pid"]
    );
}
