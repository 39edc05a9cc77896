//! The history on real files: kept across reopening, pruned, refused clearly when the file is
//! not a database or cannot be written, and the writer thread going on after such failures.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use super::{
    History,
    store::{Filter, Store, now_ms},
};
use crate::{
    config::history::History as HistoryConfig,
    incident::{Action, Incident, Step},
    sinks::metrics::tests::{metrics, record},
};

/// A directory removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("detector-history-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An incident of `unit` whose death was `at`.
pub(crate) fn incident(unit: &str, cause: &str, at: &str) -> Incident {
    let mut death = record(Some(unit), Some("SIGKILL"));
    death.time = at.to_owned();
    let mut incident = Incident::from_death(unit, &death, (cause.to_owned(), "detail".to_owned()));
    incident.action = Action::Restarted;
    incident.crash_to_healthy_ms = Some(72.138);
    incident.timeline.push(Step {
        at: at.to_owned(),
        step: "health_ok",
        detail: None,
    });
    incident
}

#[test]
fn incidents_are_kept_across_reopening_and_found_by_prefix() {
    let dir = TempDir::new("reopen");
    let path = dir.path().join("sub/incidents.db");
    let first = incident("web.service", "signal", "2026-11-24T22:37:33.766464Z");
    let second = incident("db.service", "oom_kill", "2026-11-24T22:40:00.000000Z");
    {
        let store = Store::open(&path).expect("open");
        store.record(&first).expect("record");
        store.record(&second).expect("record");
    }
    let store = Store::open_read_only(&path).expect("reopen");
    let all = store.list(&Filter::default()).expect("list");
    assert_eq!(
        all.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        [second.id.as_str(), first.id.as_str()],
        "newest first"
    );
    let row = &all[1];
    assert_eq!(
        (
            row.unit.as_str(),
            row.cause.as_str(),
            row.outcome.as_str(),
            row.at.as_str(),
            row.crash_to_healthy_ms
        ),
        (
            "web.service",
            "signal",
            "healthy",
            "2026-11-24T22:37:33.766464Z",
            Some(72.138)
        )
    );
    // The record is the incident as it went to stdout.
    assert_eq!(row.record, serde_json::to_value(&first).expect("json"));
    let by_unit = Filter {
        unit: Some("db.service".to_owned()),
        ..Filter::default()
    };
    assert_eq!(store.list(&by_unit).expect("list").len(), 1);
    let by_cause = Filter {
        cause: Some("signal".to_owned()),
        ..Filter::default()
    };
    assert_eq!(store.list(&by_cause).expect("list")[0].id, first.id);
    let since = Filter {
        since_ms: super::store::unix_ms("2026-11-24T22:39:00Z"),
        ..Filter::default()
    };
    assert_eq!(store.list(&since).expect("list")[0].id, second.id);
    let found = store.get(&first.id[..8]).expect("get").expect("found");
    assert_eq!(found.record["id"], first.id.as_str());
    assert!(
        store
            .get("ffffffffffffffffffffffffffffffff")
            .expect("get")
            .is_none()
    );
}

#[test]
fn retention_prunes_by_age_and_by_count() {
    let dir = TempDir::new("prune");
    let store = Store::open(&dir.path().join("incidents.db")).expect("open");
    for minute in 0..5 {
        let at = format!("2026-11-24T22:0{minute}:00.000000Z");
        store
            .record(&incident("web.service", "signal", &at))
            .expect("record");
    }
    let now = super::store::unix_ms("2026-11-24T22:10:00Z").expect("time");
    // Older than 8 minutes: the first two (22:00, 22:01).
    assert_eq!(
        store
            .prune(now, Duration::from_mins(8), 100)
            .expect("prune"),
        2
    );
    // Then the newest two of the three left.
    assert_eq!(
        store.prune(now, Duration::from_hours(1), 2).expect("prune"),
        1
    );
    let left: Vec<String> = store
        .list(&Filter::default())
        .expect("list")
        .into_iter()
        .map(|r| r.at)
        .collect();
    assert_eq!(
        left,
        ["2026-11-24T22:04:00.000000Z", "2026-11-24T22:03:00.000000Z"]
    );
}

#[test]
fn a_file_that_is_not_a_database_is_named_and_left_alone() {
    let dir = TempDir::new("corrupt");
    let path = dir.path().join("incidents.db");
    let garbage = "this is no database, but a file someone wrote here\n".repeat(100);
    std::fs::write(&path, &garbage).expect("write");
    let err = Store::open(&path).err().expect("refused");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("incident history {}: ", path.display()))
            && text.contains("not an SQLite database")
            && text.contains("move it aside"),
        "{text}"
    );
    assert!(
        Store::open_read_only(&path)
            .and_then(|s| s.count())
            .is_err()
    );
    assert_eq!(std::fs::read_to_string(&path).expect("read"), garbage);
}

#[test]
fn a_path_that_cannot_be_written_is_named() {
    // /proc refuses new files even to root, as a read-only mount would.
    let path = Path::new("/proc/self/detector-incidents.db");
    let text = Store::open(path).err().expect("refused").to_string();
    assert!(
        text.starts_with("incident history /proc/self/detector-incidents.db: ")
            && text.contains("writable"),
        "{text}"
    );
    let missing = Store::open_read_only(Path::new("/nonexistent/incidents.db"));
    assert!(
        missing
            .err()
            .is_some_and(|e| e.to_string().contains("no such file")),
        "a history not there yet says so"
    );
}

/// The writer thread: a good file gets the incident; a corrupt one costs the incident (counted
/// as a drop), never the daemon.
#[test]
fn the_writer_counts_what_it_kept_and_what_it_could_not() {
    let dir = TempDir::new("writer");
    let good = dir.path().join("good.db");
    let bad = dir.path().join("bad.db");
    std::fs::write(&bad, "x".repeat(4096)).expect("write");
    let metrics = metrics();
    for (path, sink) in [(&good, "history"), (&bad, "history-bad")] {
        let stats = metrics.sink(sink);
        let config = HistoryConfig {
            path: Some(path.clone()),
            ..HistoryConfig::default()
        };
        let history = History::spawn(&config, stats.clone()).expect("spawned");
        history.push(&incident(
            "web.service",
            "signal",
            &chrono::Utc::now().to_rfc3339(),
        ));
        history.finish();
        let kept = usize::from(path == &good);
        assert_eq!(
            (stats.delivered.get(), stats.dropped.get()),
            (kept as u64, 1 - kept as u64),
            "{}",
            path.display()
        );
    }
    let store = Store::open_read_only(&good).expect("open");
    assert_eq!(store.count().expect("count"), 1);
    assert!(now_ms() > 0);
}
