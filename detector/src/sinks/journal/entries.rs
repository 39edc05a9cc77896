//! What each journal entry holds: its `MESSAGE`, `MESSAGE_ID`, `PRIORITY` and `DETECTOR_*`
//! fields, for a death, an incident's notice, and a count of deaths left out. The catalog
//! (`detector/catalog/detector.catalog`) explains each `MESSAGE_ID` to `journalctl -x`.

use chrono::{SecondsFormat, Utc};

use super::{
    native::field,
    share::{Class, LeftOut},
};
use crate::{
    death::record::ExitRecord,
    incident::{Incident, Notice, Outcome, Phase},
    sinks::words,
};

/// `MESSAGE_ID`s, made once with `uuid4().hex`; the catalog has an entry for each.
const MESSAGE_EXIT: &str = "69d4093271554fbba7ee9c450d7c6350";
const MESSAGE_OPENED: &str = "5bc8706693cd41bcade611672071ea32";
const MESSAGE_RECOVERED: &str = "1a7ce902adcb495abaec48df62fb298a";
const MESSAGE_NOT_RECOVERED: &str = "ebcf3d35e8604b2995917f4ba772ad98";
const MESSAGE_LEFT_OUT: &str = "c4ac5fec9f414d779dea8d0e6a286524";

fn optional(entry: &mut Vec<u8>, key: &str, value: Option<impl ToString>) {
    if let Some(value) = value {
        field(entry, key, &value.to_string());
    }
}

/// Which share a death's entry comes out of: a failing command outside any service, or a
/// death worth more.
pub(super) fn class(record: &ExitRecord) -> Class {
    let in_service = record
        .unit
        .as_deref()
        .is_some_and(|u| u.ends_with(".service"));
    if record.oom.is_some() || record.core_dumped || record.signal.is_some() || in_service {
        Class::Notable
    } else {
        Class::Routine
    }
}

/// A death's priority: an OOM kill or a core dump always matters; a failing command line
/// (exit 1) rarely does.
fn priority(record: &ExitRecord) -> &'static str {
    if record.oom.is_some() || record.core_dumped {
        "3"
    } else if record.signal.is_some() {
        "4"
    } else if class(record) == Class::Notable {
        "5"
    } else {
        "6"
    }
}

/// A death's entry.
pub(super) fn exit_entry(entry: &mut Vec<u8>, record: &ExitRecord) {
    field(entry, "MESSAGE", &words::exit(record));
    field(entry, "MESSAGE_ID", MESSAGE_EXIT);
    field(entry, "PRIORITY", priority(record));
    field(entry, "SYSLOG_IDENTIFIER", "detector");
    field(entry, "DETECTOR_KIND", "exit");
    field(entry, "DETECTOR_TIME", &record.time);
    field(entry, "DETECTOR_PID", &record.pid.to_string());
    field(entry, "DETECTOR_COMM", &record.comm);
    optional(entry, "DETECTOR_UNIT", record.unit.as_ref());
    optional(entry, "DETECTOR_USER_UNIT", record.user_unit.as_ref());
    optional(
        entry,
        "DETECTOR_INVOCATION_ID",
        record.invocation_id.as_ref(),
    );
    optional(entry, "DETECTOR_ROLE", record.role);
    optional(entry, "DETECTOR_SIGNAL", record.signal.as_ref());
    optional(entry, "DETECTOR_EXIT_CODE", record.exit_code);
    field(
        entry,
        "DETECTOR_WAIT_STATUS",
        &record.wait_status.to_string(),
    );
    if record.core_dumped {
        field(entry, "DETECTOR_CORE_DUMPED", "1");
    }
    if record.oom.is_some() {
        field(entry, "DETECTOR_OOM", "1");
    }
    object_fields(
        entry,
        record.unit.as_deref(),
        record.invocation_id.as_deref(),
    );
    optional(entry, "OBJECT_SYSTEMD_USER_UNIT", record.user_unit.as_ref());
    if let Ok(json) = serde_json::to_string(record) {
        field(entry, "DETECTOR_RECORD", &json);
    }
}

/// The count of deaths a class left out over an interval.
pub(super) fn left_out_entry(entry: &mut Vec<u8>, left_out: &LeftOut) {
    let LeftOut {
        class,
        deaths,
        share,
        interval,
        since,
        until,
    } = left_out;
    field(entry, "MESSAGE", &words::left_out(left_out));
    field(entry, "MESSAGE_ID", MESSAGE_LEFT_OUT);
    field(entry, "PRIORITY", "4");
    field(entry, "SYSLOG_IDENTIFIER", "detector");
    field(entry, "DETECTOR_KIND", "left_out");
    field(entry, "DETECTOR_CLASS", class.as_str());
    field(entry, "DETECTOR_LEFT_OUT", &deaths.to_string());
    field(entry, "DETECTOR_SHARE", &share.to_string());
    field(
        entry,
        "DETECTOR_INTERVAL_SEC",
        &interval.as_secs_f64().to_string(),
    );
    let time = |t: &chrono::DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Micros, true);
    field(entry, "DETECTOR_SINCE", &time(since));
    field(entry, "DETECTOR_UNTIL", &time(until));
}

/// `journalctl -u UNIT` matches `OBJECT_SYSTEMD_UNIT=UNIT` on entries from uid 0.
fn object_fields(entry: &mut Vec<u8>, unit: Option<&str>, invocation: Option<&str>) {
    optional(entry, "OBJECT_SYSTEMD_UNIT", unit);
    optional(entry, "OBJECT_SYSTEMD_INVOCATION_ID", invocation);
}

/// An incident's entry: opened, or resolved (recovered or not).
pub(super) fn notice_entry(entry: &mut Vec<u8>, notice: &Notice) {
    let incident: &Incident = &notice.incident;
    let (message, id, priority) = match notice.phase {
        Phase::Opened => (
            words::opened(incident),
            MESSAGE_OPENED,
            if incident.role == "worker" { "4" } else { "3" },
        ),
        Phase::Resolved => {
            let outcome = incident.outcome();
            let (id, priority) = match outcome {
                Outcome::Recovered => (MESSAGE_RECOVERED, "5"),
                Outcome::Down => (MESSAGE_NOT_RECOVERED, "2"),
                Outcome::Superseded | Outcome::Interrupted => (MESSAGE_NOT_RECOVERED, "4"),
            };
            (words::resolved(incident), id, priority)
        }
    };
    field(entry, "MESSAGE", &message);
    field(entry, "MESSAGE_ID", id);
    field(entry, "PRIORITY", priority);
    field(entry, "SYSLOG_IDENTIFIER", "detector");
    field(entry, "DETECTOR_KIND", "incident");
    let phase = match notice.phase {
        Phase::Opened => "opened",
        Phase::Resolved => "resolved",
    };
    field(entry, "DETECTOR_PHASE", phase);
    field(entry, "DETECTOR_INCIDENT_ID", &incident.id);
    field(entry, "DETECTOR_UNIT", &incident.unit);
    field(entry, "DETECTOR_CAUSE", &incident.cause);
    field(entry, "DETECTOR_DETAIL", &incident.detail);
    field(entry, "DETECTOR_ROLE", incident.role);
    optional(entry, "DETECTOR_PID", incident.pid);
    field(entry, "DETECTOR_DEATHS", &incident.deaths.to_string());
    optional(
        entry,
        "DETECTOR_INVOCATION_ID",
        incident.invocation_id.as_ref(),
    );
    if notice.phase == Phase::Resolved {
        field(entry, "DETECTOR_OUTCOME", incident.outcome().as_str());
        field(entry, "DETECTOR_LAST_STEP", incident.last_step());
        if let Ok(action) = serde_json::to_value(incident.action)
            && let Some(action) = action.as_str()
        {
            field(entry, "DETECTOR_ACTION", action);
        }
        optional(
            entry,
            "DETECTOR_CRASH_TO_RESTART_MS",
            incident.crash_to_restart_ms,
        );
        optional(
            entry,
            "DETECTOR_CRASH_TO_ACTIVE_MS",
            incident.crash_to_active_ms,
        );
        optional(
            entry,
            "DETECTOR_CRASH_TO_HEALTHY_MS",
            incident.crash_to_healthy_ms,
        );
    }
    object_fields(
        entry,
        Some(&incident.unit),
        incident.invocation_id.as_deref(),
    );
    if let Ok(json) = serde_json::to_string(incident) {
        field(entry, "DETECTOR_INCIDENT", &json);
    }
}
