//! Telling the team: a SIGKILLed unit in the machine gives an opened and a resolved notice at
//! every kind of alert sink (real HTTP receivers on loopback, a real Alertmanager), structured
//! entries in the machine's journal that `journalctl -u UNIT` shows and `journalctl -x`
//! explains, and receivers that fail (500, never answering, a closed port) are named in the log
//! while detection goes on. Needs root; run with `cargo xtask test`.
//!
//! The setting (receivers, ports, Alertmanager, the machine, the daemon's sinks) is in
//! `tests/src/alerting.rs`.

#![expect(
    unused_crate_dependencies,
    reason = "each target of the tests package uses a part of its dependencies"
)]

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tests::{
    alerting::{UNIT, World, world},
    alertmanager::Alertmanager,
    incidents::{check_recovery, incident_for},
    machine::Machine,
    receiver::{Receiver, Request},
};

const WAIT: Duration = Duration::from_secs(20);
const OPENED_ID: &str = "5bc8706693cd41bcade611672071ea32";
const RECOVERED_ID: &str = "1a7ce902adcb495abaec48df62fb298a";
const EXIT_ID: &str = "69d4093271554fbba7ee9c450d7c6350";

/// Ms from the death (the record's kernel time) to `at`.
fn ms_after(death: &str, at: SystemTime) -> f64 {
    let death = chrono::DateTime::parse_from_rfc3339(death).expect("RFC 3339");
    let at = chrono::DateTime::<chrono::Utc>::from(at);
    (at - death.with_timezone(&chrono::Utc))
        .num_microseconds()
        .unwrap_or(i64::MAX) as f64
        / 1000.0
}

/// `journalctl ARGS -o json` inside the machine, until `pred` holds for one entry.
fn journal_entry(machine: &Machine, args: &[&str], pred: impl Fn(&Value) -> bool) -> Value {
    let started = std::time::Instant::now();
    loop {
        let mut command = vec!["journalctl", "--no-pager", "-o", "json"];
        command.extend_from_slice(args);
        let out = machine.run(&command);
        let text = String::from_utf8_lossy(&out.stdout);
        let entries: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if let Some(found) = entries.iter().find(|e| pred(e)) {
            return found.clone();
        }
        assert!(
            started.elapsed() < WAIT,
            "journalctl {args:?} in the machine never showed the entry; got {} entries, stderr {}",
            entries.len(),
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The notices `path` got, opened then resolved, with the id the incident has.
fn two_notices(
    receiver: &Receiver,
    path: &str,
    opened: impl Fn(&Request) -> bool,
    resolved: impl Fn(&Request) -> bool,
) -> (Request, Request) {
    let first = receiver.wait_for(path, WAIT, |r| {
        r.answered.is_some_and(|s| s < 300) && opened(r)
    });
    let second = receiver.wait_for(path, WAIT, |r| {
        r.answered.is_some_and(|s| s < 300) && resolved(r)
    });
    assert!(first.at <= second.at, "opened before resolved at {path}");
    (first, second)
}

fn ok(r: &Request) -> bool {
    r.answered.is_some_and(|s| s < 300)
}

/// The webhook's opened notice: the incident, with the secret header. Returns the incident id.
fn check_webhook_opened(world: &World, death: &Value) -> String {
    let opened = world
        .receiver
        .wait_for("/hook", WAIT, |r| ok(r) && r.body["event"] == "opened");
    let id = opened.body["incident"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert!(
        id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );
    assert_eq!(
        opened.headers.get("authorization").map(String::as_str),
        Some("Bearer t0ken")
    );
    assert_eq!(
        (
            &opened.body["incident"]["unit"],
            &opened.body["incident"]["cause"]
        ),
        (&json!(UNIT), &json!("signal"))
    );
    let death_time = death["time"].as_str().expect("time");
    println!(
        "first notice (webhook, opened): {:.1} ms after the death",
        ms_after(death_time, opened.at)
    );
    id
}

/// Alertmanager, through its own API, while the service restarts: the alert fires.
fn check_alertmanager_firing(am: &Alertmanager, id: &str) {
    let started = std::time::Instant::now();
    let firing = loop {
        let ours: Vec<Value> = am
            .alerts()
            .into_iter()
            .filter(|a| a["annotations"]["incident_id"] == id)
            .collect();
        if let Some(alert) = ours.first() {
            break alert.clone();
        }
        assert!(
            started.elapsed() < WAIT,
            "the alert never showed in Alertmanager"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        firing["labels"],
        json!({"alertname": "DetectorIncident", "unit": UNIT, "cause": "signal",
               "host": firing["labels"]["host"], "severity": "critical"})
    );
    assert_eq!(firing["status"]["state"], "active", "{firing}");
}

/// Every kind of sink got both notices, in order, about the same incident.
fn check_both_notices(receiver: &Receiver, id: &str, death: &Value) {
    let death_time = death["time"].as_str().expect("time");
    let (_, resolved) = two_notices(
        receiver,
        "/hook",
        |r| r.body["event"] == "opened",
        |r| r.body["event"] == "resolved",
    );
    assert_eq!(
        (&resolved.body["incident"]["id"], &resolved.body["outcome"]),
        (&json!(id), &json!("recovered")),
        "{}",
        resolved.body
    );
    let (slack_opened, slack_resolved) = two_notices(
        receiver,
        "/slack/T000/B000/XXXXSECRET",
        |r| {
            r.body["text"]
                .as_str()
                .is_some_and(|t| t.contains("failed (signal)"))
        },
        |r| {
            r.body["text"]
                .as_str()
                .is_some_and(|t| t.contains("recovered"))
        },
    );
    println!(
        "first notice (slack, opened): {:.1} ms after the death",
        ms_after(death_time, slack_opened.at)
    );
    for message in [&slack_opened.body, &slack_resolved.body] {
        assert!(
            message["blocks"]
                .as_array()
                .is_some_and(|b| !b.is_empty() && b.len() <= 50),
            "{message}"
        );
        assert!(message.to_string().contains(id), "{message}");
        println!(
            "Slack message:\n{}",
            serde_json::to_string_pretty(message).unwrap_or_default()
        );
    }
    let dedup_key = format!("detector-{id}");
    let (trigger, resolve) = two_notices(
        receiver,
        "/pd/v2/enqueue",
        |r| r.body["event_action"] == "trigger",
        |r| r.body["event_action"] == "resolve",
    );
    assert_eq!(
        (&trigger.body["dedup_key"], &resolve.body["dedup_key"]),
        (&json!(dedup_key), &json!(dedup_key))
    );
    println!(
        "first notice (pagerduty, trigger): {:.1} ms after the death",
        ms_after(death_time, trigger.at)
    );
    assert_eq!(
        trigger.body["routing_key"],
        "0123456789abcdef0123456789abcdef"
    );
    assert_eq!(trigger.body["payload"]["component"], UNIT);
    // A receiver that fails its first tries gets both in the end; one answering 500 is retried.
    let flaky = receiver.requests("/flaky");
    assert!(
        flaky.iter().take(2).all(|r| r.answered == Some(503)),
        "{flaky:?}"
    );
    let _ = two_notices(
        receiver,
        "/flaky",
        |r| r.body["event"] == "opened",
        |r| r.body["event"] == "resolved",
    );
    assert!(receiver.requests("/fail").len() >= 2, "a 500 is retried");
}

/// Once the unit is healthy, the alert is resolved: gone from the API, and Alertmanager's own
/// notifications said firing, then resolved.
fn check_alertmanager_resolved(world: &World, id: &str) {
    let started = std::time::Instant::now();
    while world
        .am
        .alerts()
        .iter()
        .any(|a| a["annotations"]["incident_id"] == id)
    {
        assert!(
            started.elapsed() < WAIT,
            "the alert never resolved in Alertmanager"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let unit_alerts = |status: &'static str| {
        move |r: &Request| r.body["status"] == status && r.body["commonLabels"]["unit"] == UNIT
    };
    let firing = world
        .receiver
        .wait_for("/am-webhook", WAIT, unit_alerts("firing"));
    let resolved = world
        .receiver
        .wait_for("/am-webhook", WAIT, unit_alerts("resolved"));
    assert!(firing.at < resolved.at);
}

/// The machine's journal: our entries with their fields, shown by `journalctl -u`, explained by
/// `journalctl -x` once the catalog is in.
fn check_journal(machine: &Machine, id: &str, death: &Value) {
    let incident_id = format!("DETECTOR_INCIDENT_ID={id}");
    let opened = journal_entry(machine, &[&incident_id], |e| e["MESSAGE_ID"] == OPENED_ID);
    println!(
        "journal entry, opened:\n{}",
        serde_json::to_string_pretty(&opened).unwrap_or_default()
    );
    for (field, want) in [
        ("DETECTOR_UNIT", UNIT),
        ("DETECTOR_CAUSE", "signal"),
        ("OBJECT_SYSTEMD_UNIT", UNIT),
        ("PRIORITY", "3"),
        ("_UID", "0"),
    ] {
        assert_eq!(opened[field], want, "{field}: {opened}");
    }
    assert_eq!(opened["DETECTOR_PID"], json!(death["pid"].to_string()));
    let recovered = journal_entry(machine, &[&incident_id], |e| {
        e["MESSAGE_ID"] == RECOVERED_ID
    });
    assert!(
        recovered["DETECTOR_CRASH_TO_HEALTHY_MS"]
            .as_str()
            .is_some_and(|ms| ms.parse::<f64>().is_ok()),
        "{recovered}"
    );
    let exit = journal_entry(
        machine,
        &[
            &format!("MESSAGE_ID={EXIT_ID}"),
            &format!("DETECTOR_PID={}", death["pid"]),
        ],
        |_| true,
    );
    assert_eq!(
        (&exit["DETECTOR_SIGNAL"], &exit["DETECTOR_UNIT"]),
        (&json!("SIGKILL"), &json!(UNIT)),
        "{exit}"
    );
    let by_unit = journal_entry(machine, &["-u", UNIT], |e| e["MESSAGE_ID"] == OPENED_ID);
    assert_eq!(by_unit["DETECTOR_INCIDENT_ID"], json!(id));
    let update = machine.run(&["journalctl", "--update-catalog"]);
    assert!(update.status.success(), "{update:?}");
    let explained = machine.run(&["journalctl", "--no-pager", "-x", "-u", UNIT, &incident_id]);
    let explained = String::from_utf8_lossy(&explained.stdout);
    assert!(
        explained.contains(&format!("detector opened incident {id}")),
        "{explained}"
    );
}

#[test]
fn a_killed_unit_is_announced_everywhere_opened_then_resolved() {
    let world = world();
    world.machine.systemctl(&["start", UNIT]);
    world.machine.wait_healthy("http://127.0.0.1:18405/health");
    let main = world.machine.show(UNIT, "MainPID");
    let kill = world
        .machine
        .run(&["sh", "-c", &format!("kill -KILL {main}")]);
    assert!(kill.status.success(), "kill {main}: {kill:?}");
    let death = world.daemon.record_where("the SIGKILL", |r| {
        r["kind"] == "exit" && r["unit"] == UNIT && r["signal"] == "SIGKILL"
    });

    let id = check_webhook_opened(&world, &death);
    check_alertmanager_firing(&world.am, &id);
    check_both_notices(&world.receiver, &id, &death);
    let incident = incident_for(&world.daemon, UNIT);
    assert_eq!(incident["id"], json!(id));
    check_recovery(
        &incident,
        "restarted",
        &["detected", "restart_requested", "unit_active", "health_ok"],
    );
    check_alertmanager_resolved(&world, &id);
    check_journal(&world.machine, &id, &death);

    // Detection went on: the daemon names every failing sink, shows no secret, and stdout holds
    // everything.
    let World { daemon, .. } = world;
    let (records, stderr) = daemon.stop();
    for sink in ["answers-500", "never-answers", "closed-port"] {
        assert!(
            stderr
                .iter()
                .any(|l| l.contains("alert not delivered")
                    && l.contains(&format!("sink=\"{sink}\""))),
            "{sink} is not named: {stderr:?}"
        );
    }
    assert!(
        !stderr.iter().any(|l| l.contains("XXXXSECRET")
            || l.contains("t0ken")
            || l.contains("0123456789abcdef")),
        "a secret leaked: {stderr:?}"
    );
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "incident" && r["id"] == id.as_str())
    );
}
