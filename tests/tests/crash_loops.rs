//! Units that keep failing, on real systemd: the crash-loop limit, and systemd's own start limit.
//! Needs root; run with `cargo xtask test`.

#![expect(
    unused_crate_dependencies,
    reason = "each target of the tests package uses a part of its dependencies"
)]

use serde_json::Value;
use tests::{
    incidents::{check_recovery, demo, incident_for, journal_has, policy},
    machine::Machine,
};

/// A unit that fails at every start, under `expedite` with a crash-loop limit of two restarts:
/// restarted at once, then after a back-off, then given up.
#[test]
fn a_crash_loop_is_given_up() {
    let machine = Machine::boot_demo(
        // Half a second of startup: each restarted run is seen active before it fails.
        &[(
            "demo-loop.service",
            &demo("env", 18006, "Environment=DEMO_STARTUP_DELAY=0.5\n"),
        )],
    );
    let config = format!(
        "{}\ncrash_loop = {{ max_restarts = 2, window = \"1m\", backoff = \"300ms\" }}\n",
        policy("demo-loop.service", "expedite", 18006).trim_end()
    );
    let (daemon, _config) = machine.watch_with_config(&config);
    machine.systemctl(&["start", "--no-block", "demo-loop.service"]);
    let is_loop = |r: &Value| r["kind"] == "incident" && r["unit"] == "demo-loop.service";
    daemon.wait_for_count("three incidents of the loop", 3, is_loop);
    let (records, _) = daemon.stop();
    let incidents: Vec<&Value> = records.iter().filter(|r| is_loop(r)).collect();
    assert_eq!(incidents.len(), 3, "{incidents:?}");
    let first = ["detected", "restart_requested", "unit_active", "died_again"];
    let second = [
        "detected",
        "backoff",
        "restart_requested",
        "unit_active",
        "died_again",
    ];
    for (incident, action, want) in [
        (incidents[0], "restarted", &first[..]),
        (incidents[1], "restarted", &second),
        (incidents[2], "gave_up", &["detected", "gave_up"]),
    ] {
        assert_eq!(incident["cause"], "missing_env", "{incident}");
        assert!(
            journal_has(incident, "KeyError: 'DATABASE_URL'"),
            "{incident}"
        );
        check_recovery(incident, action, want);
    }
    // Three runs, each its own incident.
    let runs: std::collections::HashSet<&str> = incidents
        .iter()
        .filter_map(|i| i["invocation_id"].as_str())
        .collect();
    assert_eq!(runs.len(), 3, "{incidents:?}");
    let gave_up = &incidents[2]["timeline"][1]["detail"];
    assert!(
        gave_up
            .as_str()
            .is_some_and(|d| d.starts_with("2 restarts within 60s")),
        "{gave_up}"
    );
    assert_eq!(machine.is_active("demo-loop.service"), "failed");
}

/// A unit past systemd's start limit (one start a minute) fails once: detector's restart is
/// refused for the limit, so it clears it (`reset-failed`) and restarts again, and the unit
/// comes back healthy.
#[test]
fn a_unit_past_its_start_limit_is_restarted_after_reset_failed() {
    let unit = format!(
        "[Unit]\nStartLimitIntervalSec=60\nStartLimitBurst=1\n{}",
        demo(
            "segv",
            18007,
            "Environment=DEMO_FAIL_ONCE=/run/limit.failed\n"
        )
    );
    let machine = Machine::boot_demo(&[("demo-limit.service", &unit)]);
    let (daemon, _config) =
        machine.watch_with_config(&policy("demo-limit.service", "expedite", 18007));
    machine.systemctl(&["start", "--no-block", "demo-limit.service"]);
    let incident = incident_for(&daemon, "demo-limit.service");
    check_recovery(
        &incident,
        "restarted",
        &[
            "detected",
            "restart_requested",
            "restart_requested",
            "unit_active",
            "health_ok",
        ],
    );
    assert_eq!(
        incident["timeline"][2]["detail"], "after clearing systemd's start limit (reset-failed)",
        "{incident}"
    );
}
