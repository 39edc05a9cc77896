//! `kind = "alertmanager"`: Prometheus Alertmanager's API v2, `POST /api/v2/alerts` with a list
//! of alerts. Opened: the alert fires (`startsAt` = the first death, no `endsAt`). Resolved:
//!
//! - the unit is back (or failed again, and the next incident carries on): the same alert with
//!   `endsAt` = now, which resolves it;
//! - the unit is still down: the alert is posted again, still firing, with the outcome in its
//!   annotations. Alertmanager resolves an alert nobody re-posts after its `resolve_timeout`
//!   (5 m by default); detector does not re-post.
//!
//! An alert is its label set: `alertname`, `unit`, `cause`, `host`, `severity` (no incident id:
//! alerts of one unit and cause group together). So that an incident never resolves an alert a
//! newer incident fired with the same labels, this remembers which incident fired each label
//! set last, and every label set an incident fired (its cause can change when a main process's
//! death takes over a worker's incident).

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};

use crate::{
    incident::{Incident, Notice, Outcome, Phase},
    sinks::words::{self, truncate},
};

pub(crate) const ALERTNAME: &str = "DetectorIncident";
/// Label sets remembered at most; the oldest state is forgotten past it (a lost resolve is
/// then taken care of by Alertmanager's `resolve_timeout`).
const REMEMBERED: usize = 4096;

type Labels = BTreeMap<&'static str, String>;

fn labels(incident: &Incident, host: &str) -> Labels {
    BTreeMap::from([
        ("alertname", ALERTNAME.to_owned()),
        ("unit", incident.unit.clone()),
        ("cause", incident.cause.clone()),
        ("host", host.to_owned()),
        ("severity", words::severity(incident).to_owned()),
    ])
}

fn annotations(incident: &Incident, summary: &str, outcome: Option<Outcome>) -> Value {
    let journal: Vec<&str> = incident
        .journal
        .iter()
        .rev()
        .take(10)
        .rev()
        .map(String::as_str)
        .collect();
    let mut annotations = json!({
        "summary": truncate(summary, 1024),
        "description": truncate(&incident.detail, 4000),
        "incident_id": incident.id,
        "journal": truncate(&journal.join("\n"), 4000),
        "last_step": incident.last_step(),
    });
    if let Some(outcome) = outcome {
        annotations["outcome"] = json!(outcome.as_str());
    }
    if let Some(ms) = incident.crash_to_healthy_ms {
        annotations["crash_to_healthy_ms"] = json!(format!("{ms:.3}"));
    }
    annotations
}

/// What the sink remembers between notices.
#[derive(Default)]
pub(crate) struct State {
    /// Every label set each open incident fired.
    fired: HashMap<String, Vec<Labels>>,
    /// Which incident fired each label set last.
    owner: HashMap<Labels, String>,
}

impl State {
    /// The request body for one notice: a list of alerts (empty when there is nothing to say).
    /// `now` is RFC 3339, the resolution's `endsAt`.
    pub(crate) fn body(&mut self, notice: &Notice, host: &str, now: &str) -> Value {
        let incident = &*notice.incident;
        let starts_at = incident
            .first_death
            .clone()
            .or_else(|| incident.timeline.first().map(|s| s.at.clone()));
        let current = labels(incident, host);
        if self.owner.len() >= REMEMBERED {
            self.owner.clear();
            self.fired.clear();
        }
        match notice.phase {
            Phase::Opened => {
                let fired = self.fired.entry(incident.id.clone()).or_default();
                if !fired.contains(&current) {
                    fired.push(current.clone());
                }
                self.owner.insert(current.clone(), incident.id.clone());
                json!([{
                    "labels": current,
                    "annotations": annotations(incident, &words::opened(incident), None),
                    "startsAt": starts_at,
                }])
            }
            Phase::Resolved => {
                let outcome = incident.outcome();
                let mut sets = self.fired.remove(&incident.id).unwrap_or_default();
                if !sets.contains(&current) {
                    sets.push(current.clone());
                }
                let summary = words::resolved(incident);
                let back = matches!(outcome, Outcome::Recovered | Outcome::Superseded);
                // A newer incident fired a label set since: it is that one's to resolve.
                sets.retain(|set| self.owner.get(set).is_none_or(|id| *id == incident.id));
                let alerts: Vec<Value> = sets
                    .into_iter()
                    .map(|set| {
                        self.owner.remove(&set);
                        let mut alert = json!({
                            "labels": set,
                            "annotations": annotations(incident, &summary, Some(outcome)),
                            "startsAt": starts_at,
                        });
                        if back {
                            alert["endsAt"] = json!(now);
                        }
                        alert
                    })
                    .collect();
                Value::Array(alerts)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::sinks::alerts::sample;

    const NOW: &str = "2030-01-01T00:00:00.000000Z";

    #[test]
    fn fired_then_resolved_with_the_documented_labels() {
        let (opened, resolved) = sample::notices();
        let mut state = State::default();
        let firing = state.body(&opened, "web-1", NOW);
        let alert = &firing[0];
        assert_eq!(
            alert["labels"],
            json!({"alertname": "DetectorIncident", "unit": "detector-alert-test.service",
                   "cause": "signal", "host": "web-1", "severity": "critical"})
        );
        assert_eq!(alert["startsAt"], json!(opened.incident.first_death));
        assert!(alert.get("endsAt").is_none(), "firing: no endsAt");
        assert_eq!(
            alert["annotations"]["incident_id"],
            json!(opened.incident.id)
        );
        let done = state.body(&resolved, "web-1", NOW);
        assert_eq!(done.as_array().map(Vec::len), Some(1));
        assert_eq!(
            (&done[0]["labels"], &done[0]["endsAt"]),
            (&alert["labels"], &json!(NOW))
        );
        assert!(
            state.owner.is_empty() && state.fired.is_empty(),
            "nothing left behind"
        );
    }

    #[test]
    fn an_older_incident_does_not_resolve_a_newer_ones_alert() {
        let (first_opened, first_resolved) = sample::notices();
        let (second_opened, _) = sample::notices();
        assert_ne!(first_opened.incident.id, second_opened.incident.id);
        let mut state = State::default();
        let _ = state.body(&first_opened, "h", NOW);
        let _ = state.body(&second_opened, "h", NOW);
        assert_eq!(state.body(&first_resolved, "h", NOW), json!([]));
    }

    #[test]
    fn a_changed_cause_resolves_both_label_sets() {
        let (opened, resolved) = sample::notices();
        let mut state = State::default();
        let _ = state.body(&opened, "h", NOW);
        let mut later = (*resolved.incident).clone();
        later.cause = "exit_code".to_owned();
        let resolved = Notice {
            phase: Phase::Resolved,
            incident: Arc::new(later),
        };
        let done = state.body(&resolved, "h", NOW);
        let causes: Vec<&str> = done
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["labels"]["cause"].as_str())
            .collect();
        assert_eq!(causes, ["signal", "exit_code"]);
    }
}
