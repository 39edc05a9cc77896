//! What `incidents list` and `show` print, checked against the incident they print.

use serde_json::json;

use super::{Paint, table, timeline};
use crate::sinks::history::store::Row;

/// The README's incident: SIGKILL from another process, restarted by detector, healthy.
fn record() -> serde_json::Value {
    json!({
        "kind": "incident", "id": "3f2a9c1e0b7d4c55a1e2f3b4c5d6e7f8",
        "unit": "fastapi-app.service", "invocation_id": "a1f3f39ae7bf4abcb837c92a855e161a",
        "pid": 2262, "role": "main", "deaths": 1, "pids": [2262],
        "first_death": "2026-11-24T22:37:33.766464Z", "last_death": "2026-11-24T22:37:33.766464Z",
        "cause": "signal", "detail": "killed by SIGKILL sent by sh (pid 812)",
        "journal": ["Started fastapi-app.service.", "demo starting, mode=ok",
                    "fastapi-app.service: Main process exited, code=killed, status=9/KILL"],
        "port_holder": null, "action": "restarted",
        "crash_to_restart_ms": 2.371, "crash_to_active_ms": 20.518, "crash_to_healthy_ms": 72.138,
        "timeline": [
            {"at": "2026-11-24T22:37:33.766464Z", "step": "detected"},
            {"at": "2026-11-24T22:37:33.768835Z", "step": "restart_requested"},
            {"at": "2026-11-24T22:37:33.786982Z", "step": "unit_active"},
            {"at": "2026-11-24T22:37:33.838602Z", "step": "health_ok",
             "detail": "http://127.0.0.1:18009/health answered 200 (attempt 2)"}
        ]
    })
}

#[test]
fn show_draws_the_timeline_on_a_scale() {
    let text = timeline::render(&record(), "healthy", Paint::new(false));
    let want = "\
incident 3f2a9c1e0b7d4c55a1e2f3b4c5d6e7f8
unit      fastapi-app.service  run a1f3f39ae7bf, pid 2262 (main)
when      2026-11-24 22:37:33.766 UTC
cause     signal: killed by SIGKILL sent by sh (pid 812)
ended     restarted, healthy

timeline
    +0 ms  ●───────────────────────  died: killed by SIGKILL sent by sh (pid 812)
  +2.4 ms  ●───────────────────────  restart requested
   +21 ms  ──────●─────────────────  active again
   +72 ms  ───────────────────────●  healthy: http://127.0.0.1:18009/health answered 200 (attempt 2)

restarts
  1 requested by detector: crash→restart 2.4 ms, crash→active 21 ms, crash→healthy 72 ms

journal (3 lines)
  │ Started fastapi-app.service.
  │ demo starting, mode=ok
  │ fastapi-app.service: Main process exited, code=killed, status=9/KILL
";
    assert_eq!(text, want, "\n{text}");
}

#[test]
fn show_colours_only_when_asked() {
    let plain = timeline::render(&record(), "healthy", Paint::new(false));
    let coloured = timeline::render(&record(), "healthy", Paint::new(true));
    assert!(!plain.contains('\x1b'));
    assert!(coloured.contains("\x1b[32mhealthy\x1b[0m"), "{coloured}");
}

#[test]
fn a_hang_and_a_report() {
    let mut hang = record();
    hang["role"] = json!("unit");
    hang["pid"] = json!(null);
    hang["cause"] = json!("unhealthy");
    hang["action"] = json!("reported");
    hang["timeline"] = json!([{"at": "2026-11-24T22:37:33.766464Z", "step": "detected"}]);
    let text = timeline::render(&hang, "reported", Paint::new(false));
    assert!(
        text.contains("+0 ms  ●───────────────────────  stopped answering: killed by"),
        "{text}"
    );
    assert!(text.contains("ended     reported\n"), "{text}");
    assert!(
        text.contains("restarts\n  none (action: reported)\n"),
        "{text}"
    );
}

#[test]
fn list_is_a_table() {
    let row = |id: &str, unit: &str, outcome: &str, healthy: Option<f64>| {
        let mut record = record();
        record["id"] = json!(id);
        if outcome == "reported" {
            record["action"] = json!("reported");
        }
        Row {
            id: id.to_owned(),
            at: "2026-11-24T22:37:33.766464Z".to_owned(),
            unit: unit.to_owned(),
            cause: "signal".to_owned(),
            outcome: outcome.to_owned(),
            crash_to_healthy_ms: healthy,
            record,
        }
    };
    let rows = [
        row(
            "3f2a9c1e0b7d",
            "fastapi-app.service",
            "healthy",
            Some(72.138),
        ),
        row("00aa11bb22cc", "batch.service", "reported", None),
    ];
    let text = table(&rows, Paint::new(false));
    let want = "\
WHEN                     ID        UNIT                 CAUSE   ENDED               CRASH→HEALTHY
2026-11-24 22:37:33 UTC  3f2a9c1e  fastapi-app.service  signal  restarted, healthy          72 ms
2026-11-24 22:37:33 UTC  00aa11bb  batch.service        signal  reported                        -
";
    assert_eq!(text, want, "\n{text}");
    assert_eq!(table(&[], Paint::new(false)), "no incidents\n");
}
