//! The one-line sentences every sink shows a person: the journal's `MESSAGE`, Slack's text,
//! PagerDuty's summary, Alertmanager's summary. Written once so that they say the same thing.

use super::journal::share::{Class, LeftOut};
use crate::{
    death::record::ExitRecord,
    incident::{Action, Incident, Outcome},
};

/// A death: `python3[2262] of fastapi-app.service was killed by SIGSEGV (core dumped)`.
#[must_use]
pub(crate) fn exit(record: &ExitRecord) -> String {
    let who = match record.user_unit.as_deref().or(record.unit.as_deref()) {
        Some(unit) => format!("{}[{}] of {unit}", record.comm, record.pid),
        None => format!("{}[{}]", record.comm, record.pid),
    };
    let how = match (&record.signal, record.exit_code) {
        (Some(signal), _) if record.oom.is_some() => {
            format!("was killed by the OOM killer ({signal})")
        }
        (Some(signal), _) if record.core_dumped => {
            format!("was killed by {signal} (core dumped)")
        }
        (Some(signal), _) => match &record.killed_by {
            Some(k) if !k.kernel && k.pid != record.pid => {
                format!("was killed by {signal} sent by {}[{}]", k.comm, k.pid)
            }
            _ => format!("was killed by {signal}"),
        },
        (None, Some(code)) => format!("exited with status {code}"),
        (None, None) => format!("died with wait status {}", record.wait_status),
    };
    format!("{who} {how}")
}

/// An incident opened: `fastapi-app.service failed (signal): killed by SIGKILL sent by sh ...`.
#[must_use]
pub(crate) fn opened(incident: &Incident) -> String {
    let what = if incident.role == "worker" {
        "lost a worker"
    } else {
        "failed"
    };
    format!(
        "{} {what} ({}): {}",
        incident.unit, incident.cause, incident.detail
    )
}

/// An incident over: whether the unit is back, and how long it took.
#[must_use]
pub(crate) fn resolved(incident: &Incident) -> String {
    let unit = &incident.unit;
    let last_detail = || {
        incident
            .timeline
            .last()
            .and_then(|s| s.detail.as_deref())
            .unwrap_or("")
    };
    match incident.outcome() {
        Outcome::Recovered => {
            let by = match incident.action {
                Action::Watched if incident.role == "worker" => "its supervisor respawned workers",
                Action::Watched => "systemd restarted it",
                _ => "detector restarted it",
            };
            match (incident.crash_to_healthy_ms, incident.crash_to_active_ms) {
                (Some(ms), _) => {
                    format!("{unit} recovered: healthy {ms:.1} ms after the failure ({by})")
                }
                (None, Some(ms)) => {
                    format!("{unit} recovered: active {ms:.1} ms after the failure ({by})")
                }
                (None, None) => format!("{unit} recovered ({by}): {}", last_detail()),
            }
        }
        Outcome::Superseded => {
            format!("{unit} failed again before it recovered; the next incident carries on")
        }
        Outcome::Interrupted => {
            format!("{unit}: detector stopped before the recovery ended; check the unit")
        }
        Outcome::Down => match (incident.last_step(), incident.action) {
            ("detected", Action::Reported) => format!(
                "{unit} failed ({}) and detector did not restart it: its policy only reports",
                incident.cause
            ),
            (step, _) => format!("{unit} is still down: {step}: {}", last_detail()),
        },
    }
}

/// Deaths left out of the journal: `detector left 4812 deaths out of the journal from
/// 03:22:05 to 03:22:35 UTC (failing commands outside any service): past its share of 1000 per
/// 30s; detector_deaths_total counts each`.
#[must_use]
pub(crate) fn left_out(left_out: &LeftOut) -> String {
    let what = match left_out.class {
        Class::Routine => "failing commands outside any service",
        Class::Notable => "deaths in services, by signals, OOM kills, core dumps",
    };
    format!(
        "detector left {} deaths out of the journal from {} to {} UTC ({what}): past its share \
         of {} per {:?}; detector_deaths_total counts each",
        left_out.deaths,
        left_out.since.format("%H:%M:%S"),
        left_out.until.format("%H:%M:%S"),
        left_out.share,
        left_out.interval,
    )
}

/// How bad: `critical` when the service failed (its main process, or it stopped answering);
/// `warning` when a worker died and its supervisor lives on.
#[must_use]
pub(crate) fn severity(incident: &Incident) -> &'static str {
    if incident.role == "worker" {
        "warning"
    } else {
        "critical"
    }
}

/// `text` cut to at most `max` characters (not bytes), with `…` at the cut.
#[must_use]
pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The host detector watches: the watched root's `/etc/hostname`, else this machine's name.
#[must_use]
pub(crate) fn host(root: &std::path::Path) -> String {
    std::fs::read_to_string(root.join("etc/hostname"))
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn left_out_says_how_many_when_and_why() {
        let at = |s| {
            chrono::DateTime::parse_from_rfc3339(s)
                .expect("time")
                .to_utc()
        };
        let said = left_out(&LeftOut {
            class: Class::Routine,
            deaths: 4812,
            share: 1000,
            interval: std::time::Duration::from_secs(30),
            since: at("2026-11-26T03:22:05.5Z"),
            until: at("2026-11-26T03:22:35.7Z"),
        });
        assert_eq!(
            said,
            "detector left 4812 deaths out of the journal from 03:22:05 to 03:22:35 UTC \
             (failing commands outside any service): past its share of 1000 per 30s; \
             detector_deaths_total counts each"
        );
    }

    #[test]
    fn truncation_counts_characters() {
        assert_eq!(truncate("héllo", 5), "héllo");
        assert_eq!(truncate("héllo wörld", 5), "héll…");
        assert_eq!(truncate("héllo wörld", 5).chars().count(), 5);
    }
}
