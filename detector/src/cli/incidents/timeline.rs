//! `detector incidents show`: one incident drawn as a timeline. Each step at its time after the
//! death (`+0 ms died: ...`, `+72 ms healthy`), placed on a scale from the death to the last
//! step, then the restarts and the failed run's journal lines.

use std::fmt::Write as _;

use serde_json::Value;

use super::{Paint, duration, ended, when};

/// Width of the scale, in characters.
const SCALE: usize = 24;

/// What a timeline step means, in words.
fn words(step: &str, unhealthy: bool) -> &str {
    match step {
        "detected" if unhealthy => "stopped answering",
        "detected" => "died",
        "backoff" => "backing off",
        "restart_requested" => "restart requested",
        "unit_active" => "active again",
        "health_ok" => "healthy",
        "health_failed" => "not healthy",
        "restart_failed" => "restart failed",
        "systemd_gave_up" => "systemd left it down",
        "unit_inactive" => "still down",
        "died_again" => "died again",
        "gave_up" => "gave up",
        "interrupted" => "interrupted",
        "respawn_loop" => "workers keep dying",
        "workers_stable" => "workers stable",
        "killed" => "killed",
        other => other,
    }
}

fn micros(at: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(at)
        .ok()
        .map(|t| t.timestamp_micros())
}

fn text<'a>(record: &'a Value, field: &str) -> &'a str {
    record[field].as_str().unwrap_or_default()
}

/// The incident as a person reads it; `outcome` is how it ended ([`crate::incident::Incident::outcome`]).
pub(super) fn render(record: &Value, outcome: &str, paint: Paint) -> String {
    let mut out = String::new();
    let unhealthy = text(record, "role") == "unit";
    let steps = record["timeline"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let _ = writeln!(out, "{} {}", paint.bold("incident"), text(record, "id"));
    let mut unit = text(record, "unit").to_owned();
    if let Some(run) = record["invocation_id"].as_str() {
        let _ = write!(unit, "  run {}", &run[..run.len().min(12)]);
    }
    if let Some(pid) = record["pid"].as_u64() {
        let _ = write!(unit, ", pid {pid} ({})", text(record, "role"));
    }
    let _ = writeln!(out, "unit      {}", paint.bold(&unit));
    let at = record["first_death"]
        .as_str()
        .or_else(|| steps.first().and_then(|s| s["at"].as_str()))
        .unwrap_or_default();
    let _ = writeln!(out, "when      {}", when(at, true));
    let _ = writeln!(
        out,
        "cause     {}: {}",
        paint.yellow(text(record, "cause")),
        text(record, "detail")
    );
    if let Some(deaths) = record["deaths"].as_u64().filter(|d| *d > 1) {
        let pids: Vec<String> = record["pids"]
            .as_array()
            .into_iter()
            .flatten()
            .map(ToString::to_string)
            .collect();
        let _ = writeln!(out, "deaths    {deaths} (pids {})", pids.join(", "));
    }
    if let Some(holder) = record["port_holder"].as_object() {
        let _ = writeln!(
            out,
            "port      held by {} (pid {}) of {}",
            holder.get("comm").and_then(Value::as_str).unwrap_or("?"),
            holder
                .get("pid")
                .and_then(Value::as_u64)
                .unwrap_or_default(),
            holder
                .get("unit")
                .and_then(Value::as_str)
                .unwrap_or("no unit")
        );
    }
    let _ = writeln!(
        out,
        "ended     {}",
        paint.outcome(outcome, &ended(record, outcome))
    );
    out.push('\n');
    out.push_str(&paint.bold("timeline"));
    out.push('\n');
    out.push_str(&scale(steps, record, unhealthy, paint));
    out.push('\n');
    out.push_str(&paint.bold("restarts"));
    out.push('\n');
    out.push_str(&restarts(record, steps));
    let journal: Vec<&str> = record["journal"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    out.push('\n');
    let _ = writeln!(out, "{} ({} lines)", paint.bold("journal"), journal.len());
    for line in journal {
        let _ = writeln!(out, "  {} {line}", paint.dim("│"));
    }
    out
}

/// The steps on a scale from the first (the death) to the last.
fn scale(steps: &[Value], record: &Value, unhealthy: bool, paint: Paint) -> String {
    let start = steps.first().and_then(|s| micros(text(s, "at")));
    let offsets: Vec<Option<i64>> = steps
        .iter()
        .map(|s| Some(micros(text(s, "at"))? - start?))
        .collect();
    let span = offsets.iter().flatten().copied().max().unwrap_or(0).max(1);
    let times: Vec<String> = offsets
        .iter()
        .map(|o| o.map_or_else(|| "?".to_owned(), |us| format!("+{}", relative(us))))
        .collect();
    let width = times.iter().map(String::len).max().unwrap_or(0);
    let mut out = String::new();
    for ((step, offset), time) in steps.iter().zip(&offsets).zip(&times) {
        let name = text(step, "step");
        let at = offset.map_or(0, |us| {
            usize::try_from(us * (SCALE as i64 - 1) / span).unwrap_or(0)
        });
        let bar = format!("{}●{}", "─".repeat(at), "─".repeat(SCALE - 1 - at));
        // The death's detail is the incident's cause detail.
        let detail = match (name, step["detail"].as_str()) {
            ("detected", _) => Some(text(record, "detail")),
            (_, detail) => detail,
        };
        let what = words(name, unhealthy);
        let what = match name {
            "health_ok" | "workers_stable" | "unit_active" => paint.green(what),
            "health_failed" | "restart_failed" | "died_again" | "gave_up" | "systemd_gave_up"
            | "interrupted" | "unit_inactive" | "respawn_loop" => paint.red(what),
            "detected" => paint.bold(what),
            _ => what.to_owned(),
        };
        let _ = write!(
            out,
            "  {}  {}  {what}",
            paint.dim(&format!("{time:>width$}")),
            paint.dim(&bar)
        );
        match detail.filter(|d| !d.is_empty()) {
            Some(d) => {
                let _ = writeln!(out, ": {d}");
            }
            None => out.push('\n'),
        }
    }
    out
}

/// µs after the death, as `0 ms`, `2.4 ms`, `72 ms`, `1.25 s`.
fn relative(us: i64) -> String {
    if us == 0 {
        return "0 ms".to_owned();
    }
    duration(us as f64 / 1000.0)
}

/// What was restarted, by whom, and how long each phase took.
fn restarts(record: &Value, steps: &[Value]) -> String {
    let requested = steps
        .iter()
        .filter(|s| s["step"] == "restart_requested")
        .count();
    let by_systemd = record["action"] == "watched";
    let phases: Vec<String> = [
        ("crash→restart", "crash_to_restart_ms"),
        ("crash→active", "crash_to_active_ms"),
        ("crash→healthy", "crash_to_healthy_ms"),
    ]
    .iter()
    .filter_map(|(name, field)| Some(format!("{name} {}", duration(record[*field].as_f64()?))))
    .collect();
    let who = if by_systemd {
        "1 by systemd (its own Restart=), watched by detector".to_owned()
    } else if requested > 0 {
        format!(
            "{requested} requested by detector{}",
            if requested > 1 {
                " (once more after reset-failed)"
            } else {
                ""
            }
        )
    } else {
        return format!(
            "  none (action: {})\n",
            text(record, "action").replace('_', " ")
        );
    };
    if phases.is_empty() {
        format!("  {who}\n")
    } else {
        format!("  {who}: {}\n", phases.join(", "))
    }
}
