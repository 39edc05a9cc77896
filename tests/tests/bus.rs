//! detector and the watched systemd's bus: configured units checked and restarted over D-Bus, and
//! recoveries that fail (a bus that is gone, health that does not come back, the daemon stopping)
//! reported, never lost. Needs root; run with `cargo xtask test`.

#![expect(
    unused_crate_dependencies,
    reason = "each target of the tests package uses a part of its dependencies"
)]

use serde_json::Value;
use tests::{
    incidents::{check_recovery, demo, incident_for, policy},
    machine::Machine,
};

#[test]
fn configured_units_are_checked_and_restartable_over_the_bus() {
    let machine = Machine::boot(&[(
        "demo-sleep.service",
        "[Service]\nExecStart=/bin/sleep 600\n",
    )]);
    let (daemon, _config) = machine.watch_with_config(
        "[[unit]]\nname = \"demo-sleep.service\"\n\n[[unit]]\nname = \"no-such-thing.service\"\n",
    );
    let (_, stderr) = daemon.stop();
    let unknown: Vec<&String> = stderr
        .iter()
        .filter(|l| l.contains("does not know"))
        .collect();
    assert_eq!(unknown.len(), 1, "{stderr:?}");
    assert!(
        unknown[0].contains("unit=\"no-such-thing.service\""),
        "{stderr:?}"
    );

    // The same bus, through the daemon's own client: a unit's state, and a restart.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let bus = detector::Systemd::connect(std::path::Path::new(&machine.root()))
            .await
            .expect("bus");
        machine.systemctl(&["start", "demo-sleep.service"]);
        let before = bus.unit("demo-sleep.service").await.expect("state");
        assert_eq!(
            (before.load_state.as_str(), before.active_state.as_str()),
            ("loaded", "active"),
            "{before:?}"
        );
        assert_eq!(before.restart.as_deref(), Some("no"), "{before:?}");
        bus.restart("demo-sleep.service").await.expect("restart");
        let started = std::time::Instant::now();
        loop {
            let now = bus.unit("demo-sleep.service").await.expect("state");
            if now.active_state == "active" && now.invocation_id != before.invocation_id {
                break;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "no new run after the restart: {now:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    });
}

/// A restart that does not bring health back is `health_failed`. And two ways to lose an
/// incident, neither of which does: the daemon stopping while a unit is still being recovered (the incident goes out as far as it got, `interrupted`), and the watched
/// systemd's bus gone (the restart fails with an error naming the socket; the daemon goes on).
#[test]
fn failed_recoveries_are_reported_and_never_lost() {
    let machine = Machine::boot_demo(&[
        // Serves on 18008 after one segfault; its health check asks 18009, where nobody is.
        (
            "demo-slow.service",
            &demo(
                "segv",
                18008,
                "Environment=DEMO_FAIL_ONCE=/run/slow.failed\n",
            ),
        ),
        ("demo-nobus.service", &demo("exception", 18009, "")),
        // Serves on 18006 after one segfault, but its check asks a path it answers 404.
        (
            "demo-sick.service",
            &demo(
                "segv",
                18006,
                "Environment=DEMO_FAIL_ONCE=/run/sick.failed\n",
            ),
        ),
    ]);
    let sick = "[[unit]]\nname = \"demo-sick.service\"\nrestart = \"expedite\"\n\
                health = { url = \"http://127.0.0.1:18006/ready\", interval = \"50ms\", deadline = \"1s\" }\n";
    let (daemon, _config) = machine.watch_with_config(&format!(
        "{}{sick}",
        policy("demo-slow.service", "expedite", 18009)
    ));
    // A restart that does not make the unit healthy says so, with what the check got.
    machine.systemctl(&["start", "--no-block", "demo-sick.service"]);
    let incident = incident_for(&daemon, "demo-sick.service");
    check_recovery(
        &incident,
        "restarted",
        &[
            "detected",
            "restart_requested",
            "unit_active",
            "health_failed",
        ],
    );
    let failed = incident["timeline"][3]["detail"]
        .as_str()
        .unwrap_or_default();
    assert!(
        failed.starts_with("http://127.0.0.1:18006/ready not healthy within 1s (")
            && failed.ends_with("; last: status 404 (expected 200))"),
        "{incident}"
    );
    assert_eq!(incident["crash_to_healthy_ms"], Value::Null, "{incident}");

    machine.systemctl(&["start", "--no-block", "demo-slow.service"]);
    let _ = daemon.record_where("the segfault", |r| {
        r["kind"] == "exit" && r["unit"] == "demo-slow.service"
    });
    machine.wait_healthy("http://127.0.0.1:18008/health");
    let (records, _) = daemon.stop();
    let slow = records
        .iter()
        .find(|r| r["kind"] == "incident" && r["unit"] == "demo-slow.service")
        .unwrap_or_else(|| panic!("no incident after the stop: {records:?}"));
    check_recovery(
        slow,
        "restarted",
        &[
            "detected",
            "restart_requested",
            "unit_active",
            "interrupted",
        ],
    );
    assert_eq!(slow["cause"], "signal", "{slow}");

    check_gone_bus(&machine);
}

/// With the machine's bus stopped, restarts fail with an error naming the socket, and the daemon
/// goes on to the next incident.
fn check_gone_bus(machine: &Machine) {
    // The bus goes; systemctl as root still reaches systemd on its private socket.
    machine.systemctl(&["stop", "dbus.socket", "dbus.service"]);
    let (daemon, _config) =
        machine.watch_with_config(&policy("demo-nobus.service", "expedite", 18009));
    let socket = format!("{}/run/dbus/system_bus_socket", machine.root());
    for run in 1..=2 {
        machine.systemctl(&["start", "--no-block", "demo-nobus.service"]);
        daemon.wait_for_count(&format!("incident {run} without a bus"), run, |r| {
            r["kind"] == "incident" && r["unit"] == "demo-nobus.service"
        });
    }
    let (records, stderr) = daemon.stop();
    let incidents: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "incident" && r["unit"] == "demo-nobus.service")
        .collect();
    for incident in &incidents {
        check_recovery(incident, "failed", &["detected", "restart_failed"]);
        assert_eq!(incident["cause"], "startup_failure", "{incident}");
        let detail = incident["timeline"][1]["detail"]
            .as_str()
            .unwrap_or_default();
        assert!(
            detail.starts_with(&format!("cannot reach systemd's bus at {socket}: ")),
            "{incident}"
        );
    }
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("cannot reach systemd's bus")),
        "{stderr:?}"
    );
}

/// A machine that plants symlinks where its bus socket should be: an absolute one, and one that
/// climbs with `..`. Resolved naively from the host (`/proc/LEADER/root/...`), the absolute one
/// leads to the HOST's `/run/dbus/...`; detector resolves both inside the machine, so it reaches
/// the machine's own bus (this host runs no D-Bus of its own: there is nothing else to reach).
#[test]
fn planted_symlinks_cannot_lead_the_daemon_out_of_the_machine() {
    let machine = Machine::boot(&[]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let root = machine.root();
    for target in [
        "/run/dbus/real_socket",
        "../../../../../../../../run/dbus/real_socket",
    ] {
        let plant = format!(
            "set -e; cd /run/dbus; [ -S real_socket ] || mv system_bus_socket real_socket; \
             rm -f system_bus_socket; ln -s {target} system_bus_socket"
        );
        let out = machine.run(&["sh", "-c", &plant]);
        assert!(
            out.status.success(),
            "{target}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let state = runtime
            .block_on(async {
                let bus = detector::Systemd::connect(std::path::Path::new(&root)).await?;
                bus.unit("dbus.service").await
            })
            .unwrap_or_else(|e| panic!("{target}: the machine's bus, resolved inside it: {e}"));
        assert_eq!(state.load_state, "loaded", "{target}: {state:?}");
        // The absolute symlink is the one a plain join resolves on the host (where there is no
        // bus): it shows what resolving inside the machine saves.
        if target.starts_with('/') {
            let naive = std::path::Path::new(&root).join("run/dbus/system_bus_socket");
            assert!(
                std::os::unix::net::UnixStream::connect(&naive).is_err(),
                "{target}: a plain join should not have reached a bus from the host"
            );
        }
    }
}
