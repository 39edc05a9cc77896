//! Nothing lost across the daemon's own restart: with `--pin-dir` the kernel programs, their
//! links and ring buffer outlive the daemon, and the next daemon reads first what they wrote
//! while none ran. Needs root; run with `cargo xtask test`.

#![expect(
    unused_crate_dependencies,
    reason = "each target of the tests package uses a part of its dependencies"
)]

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;
use tests::{Daemon, detector_bin};

/// A ring that holds the test's deaths and the other deaths on a busy host while no daemon runs.
const RING: &str = "16777216";

/// A pin directory of this test's own (never the packaged /sys/fs/bpf/detector), unpinned when
/// the test ends however it ends.
struct Pins(PathBuf);

impl Pins {
    fn new(name: &str) -> Self {
        Self(PathBuf::from(format!(
            "/sys/fs/bpf/detector-test-wt-package-{name}-{}",
            std::process::id()
        )))
    }

    fn arg(&self) -> &str {
        self.0.to_str().expect("utf-8 path")
    }

    fn generations(&self) -> Vec<String> {
        std::fs::read_dir(&self.0)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `detector unpin`; returns its output.
    fn unpin(&self) -> std::process::Output {
        Command::new(detector_bin())
            .args(["unpin", "--pin-dir", self.arg()])
            .output()
            .expect("run detector unpin")
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = self.unpin();
        }
    }
}

fn start(pins: &Pins, ring: &str) -> Daemon {
    Daemon::start_with(&["--pin-dir", pins.arg(), "--ringbuf-bytes", ring])
}

/// `n` processes that each exit 1; their pids.
fn storm(n: usize) -> HashSet<u64> {
    let out = Command::new(env!("CARGO_BIN_EXE_victim"))
        .args(["storm", &n.to_string()])
        .output()
        .expect("storm");
    assert!(out.status.success(), "{out:?}");
    let pids: HashSet<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.parse().expect("pid"))
        .collect();
    assert_eq!(pids.len(), n);
    pids
}

/// How many times each of `pids` was reported in `records`.
fn counts(records: &[Value], pids: &HashSet<u64>) -> HashMap<u64, usize> {
    let mut seen = HashMap::new();
    for record in records {
        if record["kind"] == "exit"
            && let Some(pid) = record["pid"].as_u64().filter(|p| pids.contains(p))
        {
            assert_eq!(record["exit_code"], 1, "{record}");
            *seen.entry(pid).or_default() += 1;
        }
    }
    seen
}

fn assert_each_once(records: &[Value], pids: &HashSet<u64>, what: &str) {
    let seen = counts(records, pids);
    let twice: Vec<_> = seen.iter().filter(|&(_, &n)| n > 1).collect();
    assert!(
        twice.is_empty(),
        "{what}: reported more than once: {twice:?}"
    );
    let missing = pids.iter().filter(|p| !seen.contains_key(p)).count();
    assert_eq!(
        missing,
        0,
        "{what}: {missing} of {} never reported",
        pids.len()
    );
}

fn is_ours(pids: &HashSet<u64>) -> impl Fn(&Value) -> bool + '_ {
    |r| r["kind"] == "exit" && r["pid"].as_u64().is_some_and(|p| pids.contains(&p))
}

#[test]
fn kill_9_then_1000_deaths_then_a_new_daemon_reports_each_once() {
    let pins = Pins::new("kill9");
    let first = start(&pins, RING);
    let before = storm(100);
    first.wait_for_count("the deaths before the kill", before.len(), is_ours(&before));
    let written = first.kill();
    assert_each_once(&written, &before, "before the kill");

    // No daemon runs: the pinned programs go on writing into the pinned ring.
    let during = storm(1000);
    let second = start(&pins, RING);
    let ready = second.log_line("detector ready");
    assert!(ready.contains("reattached=true"), "{ready}");
    second.wait_for_count(
        "the deaths while no daemon ran",
        during.len(),
        is_ours(&during),
    );
    let (records, stderr) = second.stop();
    assert_each_once(&records, &during, "while no daemon ran");
    let again = counts(&records, &before);
    assert!(
        again.is_empty(),
        "{} deaths the first daemon had written were written again",
        again.len()
    );
    let summary = stderr
        .iter()
        .find(|l| l.contains("detector stopped"))
        .expect("summary");
    assert!(summary.contains(" lost=0 "), "{summary}");
    assert!(
        !records.iter().any(|r| r["kind"] == "lost"),
        "nothing was lost, so no lost record"
    );
    assert_eq!(pins.generations().len(), 1, "{:?}", pins.generations());
}

#[test]
fn another_build_takes_over_the_pins_and_loses_nothing() {
    // Another ring size is another generation, as another build is: the new daemon attaches its
    // own programs, detaches the old ones, and reads the old ring first.
    let pins = Pins::new("takeover");
    let first = start(&pins, RING);
    let old = pins.generations();
    assert_eq!(old.len(), 1, "{old:?}");
    let _ = first.kill();
    let during = storm(1000);
    let second = start(&pins, "33554432");
    let ready = second.log_line("detector ready");
    assert!(ready.contains("reattached=false"), "{ready}");
    let took = second.log_line("took over the pins of another build");
    assert!(took.contains("decodable=true"), "{took}");
    second.wait_for_count(
        "the deaths while no daemon ran",
        during.len(),
        is_ours(&during),
    );
    // Deaths while both generations are attached are in both rings: written once.
    let after = storm(300);
    second.wait_for_count(
        "the deaths after the takeover",
        after.len(),
        is_ours(&after),
    );
    let (records, _) = second.stop();
    assert_each_once(&records, &during, "while no daemon ran");
    assert_each_once(&records, &after, "after the takeover");
    let now = pins.generations();
    assert_eq!(now.len(), 1, "the old generation is gone: {now:?}");
    assert_ne!(now, old);
}

#[test]
fn pins_are_locked_while_a_daemon_runs_and_unpin_removes_them() {
    let pins = Pins::new("unpin");
    let daemon = start(&pins, RING);
    let out = Command::new(detector_bin())
        .args(["run", "--pin-dir", pins.arg()])
        .output()
        .expect("a second daemon");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("another detector holds the pins"),
        "{out:?}"
    );
    let refused = pins.unpin();
    assert!(
        !refused.status.success(),
        "unpin while a daemon runs: {refused:?}"
    );
    let _ = daemon.stop();

    // Stopped, the daemon left its programs attached: their links are pinned.
    let generation = pins.generations().pop().expect("a generation");
    let links = std::fs::read_dir(pins.0.join(&generation))
        .expect("generation dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("link_"))
        .count();
    assert!(links >= 3, "{links} links pinned");
    let out = pins.unpin();
    assert!(out.status.success(), "{out:?}");
    assert!(!Path::new(&pins.0).exists(), "unpin removes the directory");
}
