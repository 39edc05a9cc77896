//! A storm of deaths neither floods the watched journal nor crowds the incidents out of it:
//! death entries come out of a share per interval and class (`[journal]`), what is past it is
//! counted in a `left_out` entry, and a service's death and its incident are written whatever
//! the storm. Needs root; run with `cargo xtask test`.

#![expect(
    unused_crate_dependencies,
    reason = "each target of the tests package uses a part of its dependencies"
)]

use std::{
    collections::HashSet,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{incidents::incident_for, machine::Machine};

const UNIT: &str = "journal-share.service";
const OPENED_ID: &str = "5bc8706693cd41bcade611672071ea32";
const RECOVERED_ID: &str = "1a7ce902adcb495abaec48df62fb298a";
const EXIT_ID: &str = "69d4093271554fbba7ee9c450d7c6350";
const LEFT_OUT_ID: &str = "c4ac5fec9f414d779dea8d0e6a286524";
/// Death entries per interval and class, and the interval.
const SHARE: usize = 50;
const INTERVAL_S: u64 = 2;
const STORM: usize = 3000;

/// The entries of this boot of the machine that match `args`, as JSON.
fn entries(machine: &Machine, args: &[&str]) -> Vec<Value> {
    let mut command = vec!["journalctl", "--no-pager", "-b", "-o", "json"];
    command.extend_from_slice(args);
    let out = machine.run(&command);
    assert!(out.status.success(), "journalctl {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// How long journald may take to show what the daemon sent before it stopped.
const JOURNAL_WAIT: Duration = Duration::from_secs(10);

/// `look` until it gives `Ok`, for at most [`JOURNAL_WAIT`]; then its last `Err` is the panic.
fn eventually<T>(mut look: impl FnMut() -> Result<T, String>) -> T {
    let started = Instant::now();
    loop {
        match look() {
            Ok(found) => return found,
            Err(e) if started.elapsed() > JOURNAL_WAIT => panic!("{e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

/// A failing command outside any service: the share a storm of them comes out of.
fn routine(record: &Value) -> bool {
    record["kind"] == "exit"
        && record["signal"].is_null()
        && record["oom"].is_null()
        && record["core_dumped"] == false
        && !record["unit"]
            .as_str()
            .is_some_and(|u| u.ends_with(".service"))
}

fn field_u64(entry: &Value, name: &str) -> u64 {
    entry[name]
        .as_str()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{name} in {entry}"))
}

/// The incident's two entries and the service's death (`pid`, as the host sees it) are in the
/// journal.
fn incident_written(machine: &Machine, id: &str, pid: &str) {
    let field = format!("DETECTOR_INCIDENT_ID={id}");
    eventually(|| {
        let ours = entries(machine, &[&field]);
        for (what, message_id) in [("opened", OPENED_ID), ("resolved", RECOVERED_ID)] {
            if !ours.iter().any(|e| e["MESSAGE_ID"] == message_id) {
                return Err(format!(
                    "incident {id}: no {what} entry in the journal: {ours:?}"
                ));
            }
        }
        let death = entries(
            machine,
            &[
                &format!("MESSAGE_ID={EXIT_ID}"),
                &format!("DETECTOR_PID={pid}"),
            ],
        );
        if death.iter().any(|e| e["DETECTOR_SIGNAL"] == "SIGKILL") {
            Ok(())
        } else {
            Err(format!(
                "the service's death is not in the journal: {death:?}"
            ))
        }
    });
}

/// Every failing command among `records` is a journal entry or in a `left_out` entry's count;
/// returns the death entries and those `left_out` entries.
fn routine_accounted(machine: &Machine, records: &[Value]) -> (Vec<Value>, Vec<Value>) {
    let routine_records = records.iter().filter(|r| routine(r)).count();
    eventually(|| {
        let exits = entries(machine, &[&format!("MESSAGE_ID={EXIT_ID}")]);
        let routine_entries = exits
            .iter()
            .filter(|e| {
                e["DETECTOR_RECORD"]
                    .as_str()
                    .is_some_and(|r| routine(&serde_json::from_str(r).expect("DETECTOR_RECORD")))
            })
            .count();
        let left_out = entries(
            machine,
            &[
                &format!("MESSAGE_ID={LEFT_OUT_ID}"),
                "DETECTOR_CLASS=routine",
            ],
        );
        let counted: u64 = left_out
            .iter()
            .map(|e| field_u64(e, "DETECTOR_LEFT_OUT"))
            .sum();
        if routine_entries as u64 + counted == routine_records as u64 {
            Ok((exits, left_out))
        } else {
            Err(format!(
                "failing commands: {routine_entries} entries and {counted} counted in {} \
                 left_out entries, against {routine_records} records on stdout",
                left_out.len()
            ))
        }
    })
}

#[test]
fn a_storm_of_deaths_is_counted_not_written_and_the_incident_is_written() {
    let machine = Machine::boot(&[(UNIT, "[Service]\nExecStart=/bin/sleep infinity\n")]);
    let (daemon, _config) = machine.watch_with_config(&format!(
        "[[unit]]\nname = \"{UNIT}\"\nrestart = \"restart\"\n\n\
         [journal]\ndeath_entries = {SHARE}\ninterval = \"{INTERVAL_S}s\"\n"
    ));
    machine.systemctl(&["start", UNIT]);
    let main = machine.show(UNIT, "MainPID");

    // Failing commands on the host, far past the share; then, within the same interval, the
    // service's main process is killed.
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_victim"))
        .args(["storm", &STORM.to_string()])
        .output()
        .expect("storm");
    let storm_took = started.elapsed();
    assert!(out.status.success(), "storm: {out:?}");
    let storm: HashSet<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.parse().expect("pid"))
        .collect();
    assert_eq!(storm.len(), STORM);
    let kill = machine.run(&["sh", "-c", &format!("kill -KILL {main}")]);
    assert!(kill.status.success(), "kill {main}: {kill:?}");
    let incident = incident_for(&daemon, UNIT);
    let id = incident["id"].as_str().expect("id").to_owned();
    daemon.wait_for_count("every storm death", STORM, |r| {
        r["pid"].as_u64().is_some_and(|p| storm.contains(&p))
    });
    // The storm's interval ends while the daemon runs: its count is written then.
    eventually(|| {
        let found = entries(
            &machine,
            &[
                &format!("MESSAGE_ID={LEFT_OUT_ID}"),
                "DETECTOR_CLASS=routine",
            ],
        );
        if found.is_empty() {
            Err(format!(
                "no count of the storm's deaths in the journal {INTERVAL_S} s after it"
            ))
        } else {
            Ok(())
        }
    });
    // Stopping writes the count of an interval still under way.
    let (records, _) = daemon.stop();

    // The incident and the service's death are in the journal, storm or not.
    let death = records
        .iter()
        .find(|r| r["kind"] == "exit" && r["unit"] == UNIT && r["signal"] == "SIGKILL")
        .unwrap_or_else(|| panic!("no record of {UNIT}'s SIGKILL"));
    incident_written(&machine, &id, &death["pid"].to_string());
    // The storm: at most a share per interval it spanned, and the rest counted. Every failing
    // command the daemon saw is either an entry or in a count, exactly.
    let (exits, left_out) = routine_accounted(&machine, &records);
    let storm_entries = exits
        .iter()
        .filter(|e| storm.contains(&field_u64(e, "DETECTOR_PID")))
        .count();
    let intervals = usize::try_from(storm_took.as_secs() / INTERVAL_S).unwrap_or(usize::MAX) + 2;
    assert!(
        (1..=SHARE * intervals).contains(&storm_entries),
        "{storm_entries} storm deaths in the journal; at most {SHARE} in each of the {intervals} \
         intervals a storm of {storm_took:?} can touch"
    );
    println!(
        "storm of {STORM} failing commands in {storm_took:?}: {storm_entries} in the journal, \
         {} left_out entries",
        left_out.len()
    );
    let said = left_out[0]["MESSAGE"].as_str().expect("MESSAGE");
    assert!(
        said.contains("deaths out of the journal")
            && said.contains(&format!("share of {SHARE} per 2s")),
        "{said}"
    );
    assert_eq!(left_out[0]["PRIORITY"], "4", "{}", left_out[0]);
}
