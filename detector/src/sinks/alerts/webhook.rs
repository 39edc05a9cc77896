//! `kind = "webhook"`: the incident itself, as JSON, with which notice this is.
//!
//! ```json
//! {"event": "opened", "host": "web-1", "summary": "app.service failed (signal): ...",
//!  "severity": "critical", "outcome": null, "incident": { ...the incident record... }}
//! ```

use serde_json::{Value, json};

use crate::{
    incident::{Notice, Phase},
    sinks::words,
};

/// The body for one notice.
#[must_use]
pub(crate) fn body(notice: &Notice, host: &str) -> Value {
    let incident = &*notice.incident;
    let (event, summary, outcome) = match notice.phase {
        Phase::Opened => ("opened", words::opened(incident), None),
        Phase::Resolved => (
            "resolved",
            words::resolved(incident),
            Some(incident.outcome().as_str()),
        ),
    };
    json!({
        "event": event,
        "host": host,
        "summary": summary,
        "severity": words::severity(incident),
        "outcome": outcome,
        "incident": incident,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::alerts::sample;

    #[test]
    fn carries_the_incident_and_its_phase() {
        let (opened, resolved) = sample::notices();
        let body = body(&opened, "web-1");
        assert_eq!(
            (&body["event"], &body["host"], &body["outcome"]),
            (&json!("opened"), &json!("web-1"), &Value::Null)
        );
        assert_eq!(body["incident"]["id"], json!(opened.incident.id));
        assert_eq!(body["incident"]["kind"], json!("incident"));
        let body = super::body(&resolved, "web-1");
        assert_eq!(
            (&body["event"], &body["outcome"]),
            (&json!("resolved"), &json!("recovered"))
        );
        assert_eq!(
            body["incident"]["id"],
            json!(opened.incident.id),
            "the same id"
        );
        assert_eq!(body["incident"]["timeline"][3]["step"], json!("health_ok"));
    }
}
