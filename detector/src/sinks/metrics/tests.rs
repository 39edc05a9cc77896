//! The exposition after real records and incidents, and the Grafana dashboard checked against
//! it.
//!
//! Just over 400 lines: the tests share their fixtures (a `Metrics`, records, incidents, a
//! reader of the encoded text), and each reads the whole exposition, so they stay together.

use std::{collections::BTreeSet, sync::Arc};

use detector_common::counter;
use serde_json::Value;

use super::Metrics;
use crate::{
    config,
    death::record::ExitRecord,
    incident::{Action, Incident, Step},
    kernel::counters::Totals,
    recovery::HealthBoard,
};

/// Kernel failure totals: 3 lost deaths, 4 failed task reads, 1 refused sender update.
fn errors() -> [(u32, u64); counter::ERRORS.len()] {
    counter::ERRORS.map(|kind| {
        let n = match kind {
            counter::RINGBUF_FULL => 3,
            counter::READ_TASK => 4,
            counter::MAP_SENDERS => 1,
            _ => 0,
        };
        (kind, n)
    })
}

/// Metrics for a configuration listing `web.service`.
pub(crate) fn metrics() -> Metrics {
    let config = config::parse("c.toml", "[[unit]]\nname = \"web.service\"\n").expect("valid");
    Metrics::new(Arc::new(config), HealthBoard::default())
}

/// The journal's test death, in `unit`, ended by `signal` (else exit 1).
pub(crate) fn record(unit: Option<&str>, signal: Option<&str>) -> ExitRecord {
    let mut record = crate::journal::causes::tests::record();
    record.time = "2026-11-24T22:37:33.766464Z".into();
    record.unit = unit.map(str::to_owned);
    record.exit_code = signal.is_none().then_some(1);
    record.signal = signal.map(str::to_owned);
    record.wait_status = 9;
    record
}

/// A `web.service` incident restarted by detector and healthy after `healthy_ms`.
pub(crate) fn restarted(healthy_ms: f64) -> Incident {
    let mut incident = Incident::from_death(
        "web.service",
        &record(Some("web.service"), Some("SIGKILL")),
        ("signal".to_owned(), "killed by SIGKILL".to_owned()),
    );
    incident.action = Action::Restarted;
    incident.crash_to_restart_ms = Some(2.5);
    incident.crash_to_active_ms = Some(20.0);
    incident.crash_to_healthy_ms = Some(healthy_ms);
    for (at, step) in [
        ("2026-11-24T22:37:33.768964Z", "restart_requested"),
        ("2026-11-24T22:37:33.786464Z", "unit_active"),
        ("2026-11-24T22:37:33.838602Z", "health_ok"),
    ] {
        incident.timeline.push(Step {
            at: at.to_owned(),
            step,
            detail: None,
        });
    }
    incident
}

/// Sample lines (name and labels → value).
fn samples(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(series, value)| (series.to_owned(), value.to_owned()))
        .collect()
}

fn value(text: &str, series: &str) -> Option<String> {
    samples(text)
        .into_iter()
        .find(|(s, _)| s == series)
        .map(|(_, v)| v)
}

#[test]
fn cache_sizes_are_gauges_with_the_names_own() {
    let metrics = metrics();
    let _ = metrics.names.of(Some("a.service"));
    metrics.caches(&[("cgroup_paths", 12), ("unit_tracks", 3)]);
    metrics.caches(&[("cgroup_paths", 5), ("unit_tracks", 3)]);
    let text = metrics.encode();
    for (series, want) in [
        (r#"detector_cache_entries{cache="cgroup_paths"}"#, "5"),
        (r#"detector_cache_entries{cache="unit_tracks"}"#, "3"),
        (r#"detector_cache_entries{cache="metric_names"}"#, "1"),
    ] {
        assert_eq!(value(&text, series).as_deref(), Some(want), "{series}");
    }
}

#[test]
fn batch_windows_are_a_total_fed_by_differences() {
    let metrics = metrics();
    let text = metrics.encode();
    assert_eq!(
        value(&text, "detector_ring_batch_windows_total").as_deref(),
        Some("0"),
        "exported from the start: {text}"
    );
    metrics.batch_windows(4);
    metrics.batch_windows(6);
    let text = metrics.encode();
    assert_eq!(
        value(&text, "detector_ring_batch_windows_total").as_deref(),
        Some("6"),
        "{text}"
    );
}

#[test]
fn the_exposition_counts_what_happened() {
    let metrics = metrics();
    metrics.death(&record(Some("web.service"), Some("SIGKILL")));
    metrics.death(&record(Some("web.service"), Some("SIGKILL")));
    metrics.death(&record(None, None));
    metrics.incident(&restarted(31.25));
    metrics.incident(&restarted(125.0));
    let mut reported = Incident::from_death(
        "batch.service",
        &record(Some("batch.service"), None),
        ("exit_code".to_owned(), "exited with status 1".to_owned()),
    );
    reported.action = Action::Reported;
    metrics.incident(&reported);
    metrics.kernel(
        Totals {
            emitted: 7,
            lost: 2,
            ..Totals::default()
        },
        1,
    );
    // A later, larger total adds only the difference.
    metrics.kernel(
        Totals {
            emitted: 9,
            lost: 3,
            errors: errors(),
        },
        1,
    );
    let history = metrics.sink("history");
    history.dropped.inc();
    let text = metrics.encode();
    for (series, want) in [
        (
            r#"detector_deaths_total{name="web.service",how="signal"}"#,
            "2",
        ),
        (r#"detector_deaths_total{name="none",how="exit"}"#, "1"),
        (
            r#"detector_incidents_total{name="web.service",cause="signal"}"#,
            "2",
        ),
        (
            r#"detector_incidents_total{name="batch.service",cause="exit_code"}"#,
            "1",
        ),
        (
            r#"detector_restarts_total{name="web.service",by="detector",result="healthy"}"#,
            "2",
        ),
        (
            r#"detector_crash_to_healthy_seconds_count{name="web.service"}"#,
            "2",
        ),
        (
            r#"detector_crash_to_healthy_seconds_sum{name="web.service"}"#,
            "0.15625",
        ),
        (
            r#"detector_crash_to_healthy_seconds_bucket{le="0.05",name="web.service"}"#,
            "1",
        ),
        (
            r#"detector_crash_to_restart_seconds_count{name="web.service"}"#,
            "2",
        ),
        ("detector_events_total", "9"),
        ("detector_events_lost_total", "3"),
        ("detector_events_undecodable_total", "1"),
        ("detector_kernel_read_failures_total", "4"),
        ("detector_kernel_map_update_failures_total", "1"),
        (r#"detector_kernel_errors_total{kind="read_task"}"#, "4"),
        (
            r#"detector_kernel_errors_total{kind="ringbuf_full_death"}"#,
            "3",
        ),
        (r#"detector_kernel_errors_total{kind="map_senders"}"#, "1"),
        (r#"detector_kernel_errors_total{kind="read_memcg"}"#, "0"),
        (r#"detector_sink_drops_total{sink="history"}"#, "1"),
        (r#"detector_sink_deliveries_total{sink="history"}"#, "0"),
        (
            &format!(
                r#"detector_build_info{{version="{}"}}"#,
                env!("CARGO_PKG_VERSION")
            ),
            "1",
        ),
    ] {
        assert_eq!(
            value(&text, series).as_deref(),
            Some(want),
            "{series}\n{text}"
        );
    }
    // A reported incident is no restart.
    assert!(
        !text.contains(r#"detector_restarts_total{name="batch.service""#),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
}

/// What the dispatcher coalesced and the notices' queue dropped: exported at 0 from the start,
/// then as the totals given.
#[test]
fn coalesced_deaths_and_dropped_notices_are_totals() {
    let metrics = metrics();
    let text = metrics.encode();
    // Exported at 0 before anything was coalesced or dropped.
    for series in [
        r#"detector_incidents_coalesced_total{into="folded"}"#,
        r#"detector_incidents_coalesced_total{into="unopened"}"#,
        r#"detector_notices_dropped_total{phase="opened"}"#,
        r#"detector_notices_dropped_total{phase="resolved"}"#,
    ] {
        assert_eq!(
            value(&text, series).as_deref(),
            Some("0"),
            "{series}\n{text}"
        );
    }
    metrics.pressure(
        crate::recovery::Coalesced {
            folded: 5,
            unopened: 2,
        },
        crate::incident::outbox::Dropped {
            opened: 1,
            resolved: 0,
        },
    );
    // Totals: a later call adds only the difference.
    metrics.pressure(
        crate::recovery::Coalesced {
            folded: 7,
            unopened: 2,
        },
        crate::incident::outbox::Dropped {
            opened: 1,
            resolved: 0,
        },
    );
    let text = metrics.encode();
    for (series, want) in [
        (r#"detector_incidents_coalesced_total{into="folded"}"#, "7"),
        (
            r#"detector_incidents_coalesced_total{into="unopened"}"#,
            "2",
        ),
        (r#"detector_notices_dropped_total{phase="opened"}"#, "1"),
        (r#"detector_notices_dropped_total{phase="resolved"}"#, "0"),
    ] {
        assert_eq!(
            value(&text, series).as_deref(),
            Some(want),
            "{series}\n{text}"
        );
    }
}

#[test]
fn health_verdicts_are_a_gauge() {
    let config = config::parse("c.toml", "").expect("valid");
    let board = HealthBoard::default();
    let metrics = Metrics::new(Arc::new(config), Arc::clone(&board));
    board.lock().expect("lock").extend([
        ("up.service".to_owned(), true),
        ("hung.service".to_owned(), false),
    ]);
    let text = metrics.encode();
    assert_eq!(
        value(&text, r#"detector_unit_healthy{name="up.service"}"#).as_deref(),
        Some("1")
    );
    assert_eq!(
        value(&text, r#"detector_unit_healthy{name="hung.service"}"#).as_deref(),
        Some("0")
    );
}

/// Every metric name in an exposition, from its `# TYPE` lines with the suffixes each type's
/// samples carry.
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let Some((name, kind)) = rest.split_once(' ') else {
            continue;
        };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            "info" => &["_info"],
            _ => &[""],
        };
        names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    names
}

/// Each panel, rows' panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        all.push(panel);
        all.extend(panel["panels"].as_array().into_iter().flatten());
    }
    all
}

#[test]
fn the_grafana_dashboard_uses_only_exported_metrics() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../contrib/grafana/detector.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let dashboard: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    // Grafana's dashboard JSON model: these make it importable.
    for field in ["title", "uid", "schemaVersion", "panels", "templating"] {
        assert!(!dashboard[field].is_null(), "{path} has no {field}");
    }
    // One of everything: a family without series is not in the exposition.
    let board = HealthBoard::default();
    let config = config::parse("c.toml", "").expect("valid");
    let metrics = Metrics::new(Arc::new(config), Arc::clone(&board));
    board
        .lock()
        .expect("lock")
        .insert("web.service".to_owned(), true);
    metrics.death(&record(Some("web.service"), None));
    metrics.incident(&restarted(50.0));
    let _ = metrics.sink("history");
    let exported = exported_names(&metrics.encode());
    let metric = regex::Regex::new(r"\bdetector_[a-z_]+").expect("regex");
    let mut used = BTreeSet::new();
    let panels = panels(&dashboard);
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "a panel without a title: {panel}");
        if panel["type"] == "row" {
            continue;
        }
        assert!(
            panel["gridPos"]["w"].as_u64().is_some() && panel["gridPos"]["h"].as_u64().is_some(),
            "{title}: no gridPos"
        );
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_default();
            let names: Vec<&str> = metric.find_iter(expr).map(|m| m.as_str()).collect();
            assert!(
                !names.is_empty(),
                "{title}: `{expr}` queries no detector metric"
            );
            for name in names {
                assert!(
                    exported.contains(name),
                    "{title}: `{expr}` uses {name}, which the daemon does not export \
                     ({exported:?})"
                );
                used.insert(name.to_owned());
            }
        }
    }
    // What the issue asks the dashboard to show: deaths, incidents, recovery time and losses.
    for wanted in [
        "detector_deaths_total",
        "detector_incidents_total",
        "detector_crash_to_healthy_seconds_bucket",
        "detector_crash_to_restart_seconds_bucket",
        "detector_events_lost_total",
    ] {
        assert!(used.contains(wanted), "no panel shows {wanted}");
    }
}
