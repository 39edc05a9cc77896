//! What the end-to-end tests on real systemd share: the demo service's units and policies, and
//! checks of an incident's recovery and journal lines.

use serde_json::Value;

use crate::Daemon;

/// A unit running the demo service (tests/demo/app.py) in `mode` on `port`.
/// The machines share the host's network: the tests use ports 18000-18009, unlikely to be taken
/// there.
#[must_use]
pub fn demo(mode: &str, port: u16, extra: &str) -> String {
    format!(
        "[Service]\nEnvironment=DEMO_MODE={mode} DEMO_PORT={port}\n{extra}ExecStart=/usr/bin/python3 /opt/demo/app.py\n"
    )
}

/// A policy for `unit`, health-checked on `port` (deadline 20 s, polled every 50 ms).
#[must_use]
pub fn policy(unit: &str, restart: &str, port: u16) -> String {
    format!(
        "[[unit]]\nname = \"{unit}\"\nrestart = \"{restart}\"\nhealth = {{ url = \"http://127.0.0.1:{port}/health\", interval = \"50ms\", deadline = \"20s\" }}\n\n"
    )
}

/// The steps of an incident's timeline, in order.
///
/// # Panics
/// If it has no timeline.
#[must_use]
pub fn steps(incident: &Value) -> Vec<&str> {
    incident["timeline"]
        .as_array()
        .unwrap_or_else(|| panic!("no timeline: {incident}"))
        .iter()
        .map(|s| s["step"].as_str().unwrap_or_default())
        .collect()
}

/// The incident shows the policy carried out: `action`, and `want` as the timeline's steps.
///
/// # Panics
/// If it does not.
pub fn check_recovery(incident: &Value, action: &str, want: &[&str]) {
    assert_eq!(
        (incident["action"].as_str(), steps(incident)),
        (Some(action), want.to_vec()),
        "{incident}"
    );
    let ms = |field: &str| incident[field].as_f64();
    if want.contains(&"health_ok") {
        // Each duration is positive, and each step no earlier than the one before.
        let (restart, active, healthy) = (
            ms("crash_to_restart_ms"),
            ms("crash_to_active_ms"),
            ms("crash_to_healthy_ms"),
        );
        assert!(
            matches!((restart, active, healthy), (Some(r), Some(a), Some(h)) if 0.0 < r && r <= a && a <= h),
            "{incident}"
        );
    } else if action == "reported" {
        assert_eq!(
            (ms("crash_to_restart_ms"), ms("crash_to_healthy_ms")),
            (None, None),
            "{incident}"
        );
    }
}

/// The first incident for `unit`.
///
/// # Panics
/// If none comes in time.
#[must_use]
pub fn incident_for(daemon: &Daemon, unit: &str) -> Value {
    daemon.record_where(&format!("the incident for {unit}"), |r| {
        r["kind"] == "incident" && r["unit"] == unit
    })
}

/// Whether the incident's journal lines include `text`.
#[must_use]
pub fn journal_has(incident: &Value, text: &str) -> bool {
    incident["journal"].as_array().is_some_and(|lines| {
        lines
            .iter()
            .any(|l| l.as_str().is_some_and(|l| l.contains(text)))
    })
}

/// The incidents of `unit` among `records`.
#[must_use]
pub fn incidents_of(records: &[Value], unit: &str) -> Vec<Value> {
    records
        .iter()
        .filter(|r| r["kind"] == "incident" && r["unit"] == unit)
        .cloned()
        .collect()
}
