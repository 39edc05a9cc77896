//! Remembered and measured: a real incident in a systemd machine, scraped by a real Prometheus
//! (Debian's, started here on loopback) and queried over its HTTP API; and the incident history,
//! read with `detector incidents` while the daemon runs, after it was SIGKILLed and started
//! again. Needs root; run with `cargo xtask test`. Ports 18300-18399.

#![expect(
    unused_crate_dependencies,
    reason = "each target of the tests package uses a part of its dependencies"
)]

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tests::{
    Daemon, detector_bin,
    incidents::{demo, incident_for, policy, steps},
    machine::{Machine, tempdir},
};

const SEGV: &str = "demo-metrics-segv.service";
const ENV: &str = "demo-metrics-env.service";
const METRICS: &str = "127.0.0.1:18390";
const PROMETHEUS: &str = "127.0.0.1:18391";

/// A GET over plain HTTP/1.0; returns the status code and body.
fn get(addr: &str, target: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {target} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Percent-encodes a query parameter.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Debian's Prometheus, scraping the daemon every second; killed when dropped.
struct Prometheus {
    child: Child,
    addr: &'static str,
    _dir: tempdir::Dir,
}

impl Prometheus {
    fn start() -> Self {
        let dir = tempdir::Dir::new("prometheus");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  \
                 - job_name: detector\n    static_configs:\n      - targets: ['{METRICS}']\n"
            ),
        )
        .expect("prometheus.yml");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={PROMETHEUS}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start prometheus (cargo xtask installs it): {e}"));
        let prometheus = Self {
            child,
            addr: PROMETHEUS,
            _dir: dir,
        };
        let started = Instant::now();
        while get(PROMETHEUS, "/-/ready").is_none_or(|(status, _)| status != 200) {
            assert!(
                started.elapsed() < Duration::from_mins(1),
                "prometheus never got ready"
            );
            thread::sleep(Duration::from_millis(200));
        }
        prometheus
    }

    /// An instant query: each series' labels and value.
    fn query(&self, expr: &str) -> Vec<(Value, f64)> {
        let (status, body) = get(self.addr, &format!("/api/v1/query?query={}", encode(expr)))
            .unwrap_or_else(|| panic!("prometheus did not answer {expr}"));
        let answer: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(
            (status, &answer["status"]),
            (200, &json!("success")),
            "{expr}: {body}"
        );
        answer["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let value = r["value"][1].as_str().and_then(|v| v.parse().ok());
                (r["metric"].clone(), value.unwrap_or(f64::NAN))
            })
            .collect()
    }

    /// The one value of `expr`, None while it has no series.
    fn value(&self, expr: &str) -> Option<f64> {
        let result = self.query(expr);
        assert!(result.len() <= 1, "{expr} has several series: {result:?}");
        result.first().map(|(_, v)| *v)
    }

    /// Waits until `expr` is `want` (new scrapes come every second).
    fn wait_for(&self, expr: &str, want: f64) {
        let started = Instant::now();
        loop {
            let got = self.value(expr);
            if got == Some(want) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{expr} is {got:?}, not {want}"
            );
            thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
    let prometheus = Prometheus::start();
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
