//! Remembered and measured: a real incident in a systemd machine, scraped by a real Prometheus
//! (Debian's, started here on loopback) and queried over its HTTP API; and the incident history,
//! read with `detector incidents` while the daemon runs, after it was SIGKILLed and started
//! again. Needs root; run with `cargo xtask test`. Ports 18300-18399.

#![expect(
    unused_crate_dependencies,
    reason = "each target of the tests package uses a part of its dependencies"
)]

use std::{path::Path, process::Command};

use serde_json::Value;
use tests::{
    Daemon, detector_bin,
    incidents::{demo, incident_for, policy, steps},
    machine::{Machine, tempdir},
    prometheus::Prometheus,
};

const SEGV: &str = "demo-metrics-segv.service";
const ENV: &str = "demo-metrics-env.service";
const METRICS: &str = "127.0.0.1:18390";
const PROMETHEUS: &str = "127.0.0.1:18391";

/// `detector incidents --db DB ARGS`: its stdout, once it succeeded.
fn incidents(db: &Path, args: &[&str]) -> String {
    let out = Command::new(detector_bin())
        .arg("incidents")
        .arg("--db")
        .arg(db)
        .args(args)
        .output()
        .expect("run detector incidents");
    assert!(
        out.status.success(),
        "detector incidents {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn listed_ids(db: &Path, args: &[&str]) -> Vec<String> {
    let mut all = vec!["list", "--json"];
    all.extend(args);
    let list: Value = serde_json::from_str(&incidents(db, &all)).expect("JSON list");
    list.as_array()
        .expect("an array")
        .iter()
        .map(|i| i["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The figures Prometheus scraped match the two incidents that happened.
fn check_prometheus(prometheus: &Prometheus, segv: &Value, env: &Value) {
    prometheus.wait_for("sum(detector_incidents_total)", 2.0);
    prometheus.wait_for(r#"detector_sink_deliveries_total{sink="history"}"#, 2.0);
    let name = |unit: &str| format!(r#"name="{unit}""#);
    for (expr, want) in [
        (r#"up{job="detector"}"#.to_owned(), 1.0),
        ("detector_build_info".to_owned(), 1.0),
        (
            format!(
                r#"detector_incidents_total{{{},cause="signal"}}"#,
                name(SEGV)
            ),
            1.0,
        ),
        (
            format!(
                r#"detector_incidents_total{{{},cause="missing_env"}}"#,
                name(ENV)
            ),
            1.0,
        ),
        (
            format!(r#"detector_deaths_total{{{},how="signal"}}"#, name(SEGV)),
            1.0,
        ),
        (
            format!(r#"detector_deaths_total{{{},how="exit"}}"#, name(ENV)),
            1.0,
        ),
        (
            format!(
                r#"detector_restarts_total{{{},by="detector",result="healthy"}}"#,
                name(SEGV)
            ),
            1.0,
        ),
        (format!("detector_unit_healthy{{{}}}", name(SEGV)), 1.0),
        (
            format!("detector_crash_to_healthy_seconds_count{{{}}}", name(SEGV)),
            1.0,
        ),
        ("detector_events_lost_total".to_owned(), 0.0),
        (
            r#"detector_sink_drops_total{sink="history"}"#.to_owned(),
            0.0,
        ),
    ] {
        assert_eq!(prometheus.value(&expr), Some(want), "{expr}");
    }
    // A report is no restart.
    assert!(
        prometheus
            .query(&format!("detector_restarts_total{{{}}}", name(ENV)))
            .is_empty()
    );
    assert_eq!(env["action"], "reported", "{env}");
    // The histograms hold the incident's own durations: the sum is the figure, and each bucket
    // counts it exactly when its bound is at or above it.
    for (metric, field) in [
        ("detector_crash_to_healthy_seconds", "crash_to_healthy_ms"),
        ("detector_crash_to_restart_seconds", "crash_to_restart_ms"),
    ] {
        let seconds = segv[field]
            .as_f64()
            .unwrap_or_else(|| panic!("no {field}: {segv}"))
            / 1000.0;
        let sum = prometheus
            .value(&format!("{metric}_sum{{{}}}", name(SEGV)))
            .expect("a sum");
        assert!(
            (sum - seconds).abs() < 1e-9,
            "{metric}: {sum} against {seconds} ({segv})"
        );
        let buckets = prometheus.query(&format!("{metric}_bucket{{{}}}", name(SEGV)));
        assert!(buckets.len() > 10, "{buckets:?}");
        for (labels, count) in buckets {
            let le = labels["le"].as_str().unwrap_or_default();
            let bound: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().expect("le")
            };
            assert_eq!(
                count.round() as u64,
                u64::from(seconds <= bound),
                "{metric} le={le} against {seconds}"
            );
        }
        let p50 = prometheus
            .value(&format!(
                "histogram_quantile(0.5, {metric}_bucket{{{}}})",
                name(SEGV)
            ))
            .expect("a quantile");
        assert!(p50 > 0.0 && p50.is_finite(), "{metric} p50 {p50}");
    }
}

/// `incidents show` tells the incident's story: its fields, each step in order, the journal.
fn check_show(db: &Path, incident: &Value) {
    let id = incident["id"].as_str().expect("an id");
    let text = incidents(db, &["show", &id[..8]]);
    eprintln!("detector incidents show {}:\n{text}", &id[..8]);
    assert!(!text.contains('\x1b'), "no colour into a pipe: {text}");
    for wanted in [
        format!("incident {id}\n"),
        format!("unit      {SEGV}  run "),
        format!(
            "cause     signal: {}\n",
            incident["detail"].as_str().unwrap_or_default()
        ),
        "ended     restarted, healthy\n".to_owned(),
        "restarts\n  1 requested by detector: crash→restart ".to_owned(),
    ] {
        assert!(text.contains(&wanted), "show lacks {wanted:?}:\n{text}");
    }
    // The timeline: one line per step, in order, the first at +0 ms.
    let timeline: Vec<&str> = text
        .split("timeline\n")
        .nth(1)
        .and_then(|t| t.split("\n\n").next())
        .expect("a timeline")
        .lines()
        .collect();
    let words = ["died", "restart requested", "active again", "healthy"];
    assert_eq!(steps(incident).len(), words.len(), "{incident}");
    assert_eq!(timeline.len(), words.len(), "{text}");
    assert!(timeline[0].trim_start().starts_with("+0 ms  ●"), "{text}");
    for (line, word) in timeline.iter().zip(words) {
        assert!(
            line.contains(&format!("  {word}")),
            "{line:?} is not {word}"
        );
    }
    for line in incident["journal"].as_array().expect("journal lines") {
        let line = line.as_str().unwrap_or_default();
        assert!(
            text.contains(&format!("│ {line}\n")),
            "show lacks the journal line {line:?}"
        );
    }
    let json: Value = serde_json::from_str(&incidents(db, &["show", id, "--json"])).expect("JSON");
    assert_eq!(&json, incident, "show --json is the incident as written");
}

#[test]
fn prometheus_scrapes_the_incidents_and_the_history_keeps_them() {
    let machine = Machine::boot_demo(&[
        (
            SEGV,
            &demo(
                "segv",
                18300,
                "Environment=DEMO_FAIL_ONCE=/run/metrics-segv.failed\n",
            ),
        ),
        (ENV, &demo("env", 18301, "")),
    ]);
    let dir = tempdir::Dir::new("metrics");
    let db = dir.path().join("history/incidents.db");
    let config = dir.path().join("detector.toml");
    std::fs::write(
        &config,
        format!(
            "{}{}[metrics]\nlisten = \"{METRICS}\"\n\n[history]\npath = \"{}\"\n",
            policy(SEGV, "expedite", 18300),
            policy(ENV, "report", 18301),
            db.display()
        ),
    )
    .expect("config");
    let args = [
        "--root",
        &machine.root(),
        "--config",
        &config.display().to_string(),
    ];
    let daemon = Daemon::start_with(&args);
    let prometheus = Prometheus::start(PROMETHEUS, METRICS);
    machine.systemctl(&["start", "--no-block", SEGV]);
    let segv = incident_for(&daemon, SEGV);
    assert_eq!(segv["action"], "restarted", "{segv}");
    machine.systemctl(&["start", "--no-block", ENV]);
    let env = incident_for(&daemon, ENV);
    check_prometheus(&prometheus, &segv, &env);

    // The history, read while the daemon runs.
    let (segv_id, env_id) = (
        segv["id"].as_str().expect("id"),
        env["id"].as_str().expect("id"),
    );
    assert_eq!(segv_id.len(), 32, "{segv}");
    assert_eq!(listed_ids(&db, &[]), [env_id, segv_id], "newest first");
    let table = incidents(&db, &["list"]);
    eprintln!("detector incidents list:\n{table}");
    assert!(table.starts_with("WHEN "), "{table}");
    let row = table
        .lines()
        .find(|l| l.contains(&segv_id[..8]))
        .unwrap_or_else(|| panic!("no row for {segv_id}:\n{table}"));
    assert!(
        row.contains(SEGV) && row.contains("signal") && row.contains("restarted, healthy"),
        "{row}"
    );
    assert!(
        row.trim_end().ends_with(" ms"),
        "crash→healthy shown: {row}"
    );

    // SIGKILL: nothing of the daemon's shutdown runs; the incidents were already on disk.
    let _ = daemon.kill();
    let daemon = Daemon::start_with(&args);
    assert_eq!(
        listed_ids(&db, &[]),
        [env_id, segv_id],
        "kept across the daemon's death"
    );
    assert_eq!(listed_ids(&db, &["--unit", "demo-metrics-env"]), [env_id]);
    assert_eq!(
        listed_ids(&db, &["--cause", "signal", "--since", "1h"]),
        [segv_id]
    );
    check_show(&db, &segv);
    let (records, _) = daemon.stop();
    assert!(
        records.iter().all(|r| r["kind"] != "incident"),
        "no new incident: {records:?}"
    );
    check_show(&db, &segv);
}

#[test]
fn a_corrupt_history_costs_its_incidents_not_the_detection() {
    let machine = Machine::boot_demo(&[(ENV, &demo("env", 18302, ""))]);
    let dir = tempdir::Dir::new("corrupt-history");
    let db = dir.path().join("incidents.db");
    let garbage = "this file is no database\n".repeat(400);
    std::fs::write(&db, &garbage).expect("write the corrupt file");
    let config = dir.path().join("detector.toml");
    std::fs::write(
        &config,
        format!(
            "{}[metrics]\nlisten = \"{METRICS}\"\n\n[history]\npath = \"{}\"\n",
            policy(ENV, "report", 18302),
            db.display()
        ),
    )
    .expect("config");
    let daemon = Daemon::start_with(&[
        "--root",
        &machine.root(),
        "--config",
        &config.display().to_string(),
    ]);
    machine.systemctl(&["start", "--no-block", ENV]);
    let incident = incident_for(&daemon, ENV);
    assert_eq!(incident["cause"], "missing_env", "{incident}");
    // The incident still went to stdout and the metrics; the history counted it dropped.
    let started = std::time::Instant::now();
    let body = loop {
        let (status, body) = tests::prometheus::get(METRICS, "/metrics").expect("/metrics");
        assert_eq!(status, 200, "{body}");
        if body.contains("detector_sink_drops_total{sink=\"history\"} 1\n") {
            break body;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the drop is not counted:\n{body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let counted = format!("detector_incidents_total{{name=\"{ENV}\",cause=\"missing_env\"}} 1\n");
    assert!(body.contains(&counted), "{body}");
    let (_, stderr) = daemon.stop();
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("not an SQLite database") && l.contains("detection goes on")),
        "no clear error: {stderr:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&db).expect("read"),
        garbage,
        "the file is left as it was"
    );
}
