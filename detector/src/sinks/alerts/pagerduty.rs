//! `kind = "pagerduty"`: PagerDuty Events API v2 (developer.pagerduty.com, "Send an Alert
//! Event"). Opened: `trigger` with `dedup_key` = `detector-<incident id>`. Resolved:
//!
//! - the unit is back (or failed again, and the next incident carries on): `resolve` with the
//!   same key;
//! - the unit is still down (given up, health check failed, restart refused, report-only) or
//!   detector stopped mid-recovery: a second `trigger` with the same key, which PagerDuty folds
//!   into the open alert with the new summary. Resolving would close the page of a service
//!   that is down.
//!
//! Limits: `summary` ≤ 1024 characters, `dedup_key` ≤ 255, the event ≤ 512 KB (the journal's
//! tail and the timeline are cut well below).

use serde_json::{Value, json};

use crate::{
    incident::{Incident, Notice, Outcome, Phase},
    sinks::words::{self, truncate},
};

pub(crate) const MAX_SUMMARY: usize = 1024;
pub(crate) const MAX_DEDUP_KEY: usize = 255;
/// Journal lines and timeline steps in `custom_details`.
const DETAILS: usize = 30;

/// The key PagerDuty groups the incident's events by.
#[must_use]
pub(crate) fn dedup_key(incident: &Incident) -> String {
    truncate(&format!("detector-{}", incident.id), MAX_DEDUP_KEY)
}

/// The event for one notice.
#[must_use]
pub(crate) fn body(notice: &Notice, host: &str, routing_key: &str) -> Value {
    let incident = &*notice.incident;
    let outcome = (notice.phase == Phase::Resolved).then(|| incident.outcome());
    if matches!(outcome, Some(Outcome::Recovered | Outcome::Superseded)) {
        return json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": dedup_key(incident),
        });
    }
    let summary = match outcome {
        None => words::opened(incident),
        Some(_) => words::resolved(incident),
    };
    let journal: Vec<String> = incident
        .journal
        .iter()
        .rev()
        .take(DETAILS)
        .rev()
        .map(|l| truncate(l, 500))
        .collect();
    let timeline: Vec<String> = incident
        .timeline
        .iter()
        .take(DETAILS)
        .map(|s| match &s.detail {
            Some(d) => format!("{} {}: {}", s.at, s.step, truncate(d, 500)),
            None => format!("{} {}", s.at, s.step),
        })
        .collect();
    json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key(incident),
        "client": "detector",
        "payload": {
            "summary": truncate(&format!("{summary} (on {host})"), MAX_SUMMARY),
            "source": host,
            "severity": words::severity(incident),
            "timestamp": incident.first_death.as_ref().or(incident.timeline.first().map(|s| &s.at)),
            "component": incident.unit,
            "group": host,
            "class": incident.cause,
            "custom_details": {
                "incident_id": incident.id,
                "detail": truncate(&incident.detail, 4000),
                "role": incident.role,
                "pid": incident.pid,
                "deaths": incident.deaths,
                "invocation_id": incident.invocation_id,
                "outcome": outcome.map(Outcome::as_str),
                "journal": journal,
                "timeline": timeline,
                "crash_to_healthy_ms": incident.crash_to_healthy_ms,
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::alerts::sample;

    /// The Events API v2 schema's required fields and enumerations.
    fn check_trigger(event: &Value) {
        assert_eq!(event["event_action"], "trigger");
        assert_eq!(event["routing_key"], "R");
        let key = event["dedup_key"].as_str().expect("dedup_key");
        assert!(!key.is_empty() && key.chars().count() <= MAX_DEDUP_KEY);
        let payload = &event["payload"];
        let summary = payload["summary"].as_str().expect("summary is required");
        assert!(!summary.is_empty() && summary.chars().count() <= MAX_SUMMARY);
        assert!(payload["source"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(
            ["critical", "error", "warning", "info"]
                .contains(&payload["severity"].as_str().unwrap_or("")),
            "{event}"
        );
        assert!(event.to_string().len() < 512 * 1024);
    }

    #[test]
    fn trigger_then_resolve_with_the_same_key() {
        let (opened, resolved) = sample::notices();
        let trigger = body(&opened, "web-1", "R");
        check_trigger(&trigger);
        assert_eq!(
            trigger["payload"]["component"],
            "detector-alert-test.service"
        );
        assert_eq!(
            trigger["payload"]["custom_details"]["incident_id"],
            json!(opened.incident.id)
        );
        let resolve = body(&resolved, "web-1", "R");
        assert_eq!(
            resolve,
            json!({"routing_key": "R", "event_action": "resolve", "dedup_key": trigger["dedup_key"]})
        );
    }

    #[test]
    fn a_unit_left_down_is_triggered_again_not_resolved() {
        let (_, resolved) = sample::notices();
        let mut incident = (*resolved.incident).clone();
        incident.timeline.truncate(1);
        incident.action = crate::incident::Action::GaveUp;
        incident.timeline.push(crate::incident::Step {
            at: "2026-01-01T00:00:00.000000Z".to_owned(),
            step: "gave_up",
            detail: Some("5 restarts within 300s".to_owned()),
        });
        let notice = Notice {
            phase: Phase::Resolved,
            incident: std::sync::Arc::new(incident),
        };
        let event = body(&notice, "web-1", "R");
        check_trigger(&event);
        let summary = event["payload"]["summary"].as_str().unwrap_or_default();
        assert!(summary.contains("is still down: gave_up"), "{summary}");
        assert_eq!(event["payload"]["custom_details"]["outcome"], "down");
    }

    #[test]
    fn a_huge_incident_stays_within_the_limits() {
        let (opened, _) = sample::huge();
        check_trigger(&body(&opened, &"h".repeat(2000), "R"));
    }
}
