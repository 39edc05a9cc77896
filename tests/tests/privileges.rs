//! Least privilege: once its programs are attached, the running daemon keeps only the
//! capabilities it needs, in every thread and every set. Needs root; run with `cargo xtask test`.

#![expect(
    unused_crate_dependencies,
    reason = "each target of the tests package uses a part of its dependencies"
)]

use std::process::Command;

use tests::{Daemon, run};

/// `CAP_DAC_READ_SEARCH` (2) and `CAP_SYS_PTRACE` (19), plus `CAP_BPF` (39) before kernel 6.5.
fn expected_mask() -> u64 {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut parts = release.trim().split(['.', '-']);
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).expect("major");
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).expect("minor");
    let base = (1 << 2) | (1 << 19);
    if (major, minor) < (6, 5) {
        base | (1 << 39)
    } else {
        base
    }
}

/// The capability sets of every thread of `pid`, by name (`CapEff`, ...), as masks.
fn capability_sets(pid: u32) -> Vec<(String, String, u64)> {
    let mut sets = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let task = task
            .expect("task")
            .file_name()
            .to_string_lossy()
            .into_owned();
        let status =
            std::fs::read_to_string(format!("/proc/{pid}/task/{task}/status")).expect("status");
        for line in status.lines() {
            if let Some((name, value)) = line.split_once(":\t")
                && name.starts_with("Cap")
            {
                let mask = u64::from_str_radix(value.trim(), 16).expect("hex mask");
                sets.push((task.clone(), name.to_owned(), mask));
            }
        }
    }
    sets
}

#[test]
fn the_running_daemon_keeps_only_what_it_needs() {
    let daemon = Daemon::start();
    let kept = expected_mask();
    let sets = capability_sets(daemon.pid());
    assert!(!sets.is_empty());
    for (task, set, mask) in &sets {
        let want = match set.as_str() {
            "CapEff" | "CapPrm" | "CapBnd" => kept,
            "CapInh" | "CapAmb" => 0,
            _ => continue,
        };
        assert_eq!(
            *mask, want,
            "thread {task} {set} is {mask:#x}, want {want:#x}: {sets:?}"
        );
    }
    // And it still works: a death is reported, the counters are read.
    let (pid, _) = run(Command::new("sh").args(["-c", "exit 5"]));
    let record = daemon.record_for(pid);
    assert_eq!(record["exit_code"], 5, "{record}");
    let (_, stderr) = daemon.stop();
    assert!(
        !stderr
            .iter()
            .any(|l| l.contains("cannot read kernel counter")),
        "{stderr:?}"
    );
    let summary = stderr
        .iter()
        .find(|l| l.contains("detector stopped"))
        .expect("summary");
    assert!(!summary.contains(" emitted=0 "), "{summary}");
}
