//! A journal that is gone: with `--output journal`, detector says so once, and every record
//! still comes out, as JSON on stdout. Needs root; run with `cargo xtask test`.

#![expect(
    unused_crate_dependencies,
    reason = "each target of the tests package uses a part of its dependencies"
)]

use std::process::Command;

use tests::{Daemon, machine::tempdir, run};

#[test]
fn a_journal_that_is_gone_is_said_once_and_nothing_is_lost() {
    // A root with no journal socket in it: as a watched systemd whose journald is gone.
    let root = tempdir::Dir::new("no-journal");
    let daemon = Daemon::start_with(&[
        "--root",
        &root.path().display().to_string(),
        "--output",
        "journal",
    ]);
    let mut pids = Vec::new();
    for code in [3, 4, 5] {
        let (pid, status) = run(Command::new("/bin/sh").args(["-c", &format!("exit {code}")]));
        assert_eq!(status.code(), Some(code));
        pids.push(pid);
    }
    for &pid in &pids {
        let record = daemon.record_for(pid);
        assert_eq!(record["kind"], "exit", "{record}");
    }
    let (records, stderr) = daemon.stop();
    for pid in pids {
        assert_eq!(
            records.iter().filter(|r| r["pid"] == pid).count(),
            1,
            "pid {pid} exactly once on stdout"
        );
    }
    let said: Vec<&String> = stderr
        .iter()
        .filter(|l| l.contains("cannot write to the journal"))
        .collect();
    assert_eq!(said.len(), 1, "{stderr:?}");
    assert!(
        said[0].contains("run/systemd/journal/socket") && said[0].contains("go to stdout"),
        "{said:?}"
    );
}
