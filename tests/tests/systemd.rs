//! Deaths in real systemd units: a Debian machine booted with systemd-nspawn, watched from the
//! host with `detector run --root /proc/LEADER/root`. Needs root; run with `cargo xtask test`.

use serde_json::json;
use tests::{Daemon, machine::Machine};

#[test]
fn deaths_in_units_are_named_with_their_unit() {
    let exits = |code: u8| {
        format!(
            "[Service]\nExecStart=/usr/bin/python3 -c \"import sys; print('starting', flush=True); sys.exit({code})\"\n"
        )
    };
    let machine = Machine::boot(&[
        ("demo-exit.service", &exits(3)),
        ("demo@.service", &exits(5)),
    ]);
    let daemon = Daemon::start_with(&["--root", &machine.root()]);
    let cgroup_root = machine.cgroup_root();
    // (unit to start, unit in the record, exit code)
    for (start, unit, code) in [
        ("demo-exit.service", "demo-exit.service", 3),
        ("demo@2.service", "demo@2.service", 5),
    ] {
        machine.systemctl(&["start", "--no-block", start]);
        let record = daemon.record_where(&format!("a death in {unit}"), |r| r["unit"] == unit);
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
        assert_eq!(record["user_unit"], serde_json::Value::Null, "{record}");
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
    }
}
