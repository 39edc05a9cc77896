//! The incident history's database: one SQLite file in WAL mode, so that `detector incidents`
//! reads while the daemon writes, and neither waits for the other. One row per incident: the
//! columns the list filters and shows, and the incident itself as JSON (timeline and journal
//! lines included), exactly as it went to stdout.

use std::{
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use rusqlite::{Connection, ErrorCode, OpenFlags, params};
use serde_json::Value;

use crate::incident::Incident;

/// The schema's version, in SQLite's `user_version`.
const SCHEMA: i64 = 1;
/// How long a statement waits for another connection's lock (a reader checkpointing, another
/// daemon on the same file) before failing.
const BUSY: Duration = Duration::from_secs(5);

/// An error with the database's path and, for the failures an operator can fix, what to do.
#[derive(Debug, thiserror::Error)]
#[error("incident history {}: {message}", path.display())]
pub(crate) struct StoreError {
    pub path: PathBuf,
    pub message: String,
}

impl StoreError {
    fn new(path: &Path, e: &rusqlite::Error) -> Self {
        let message = match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) => format!(
                "not an SQLite database ({e}): the file is damaged or is something else; move \
                 it aside and detector starts a new one"
            ),
            Some(ErrorCode::DatabaseCorrupt) => format!(
                "the database is corrupt ({e}): move it aside (and its -wal and -shm files) and \
                 detector starts a new one"
            ),
            Some(ErrorCode::ReadOnly) => format!(
                "cannot write: the file or its directory is read-only ({e}); set [history] path \
                 to a writable place"
            ),
            Some(ErrorCode::DiskFull) => format!("the disk is full ({e})"),
            Some(ErrorCode::CannotOpen) => {
                format!("cannot open or create the file ({e}): is it, or its directory, writable?")
            }
            _ => e.to_string(),
        };
        Self {
            path: path.to_owned(),
            message,
        }
    }

    fn io(path: &Path, what: &str, e: &std::io::Error) -> Self {
        Self {
            path: path.to_owned(),
            message: format!("{what}: {e}"),
        }
    }
}

/// One incident in the list: what the table shows, and the incident itself.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub id: String,
    /// RFC 3339: the first death, or when the incident was detected.
    pub at: String,
    pub unit: String,
    pub cause: String,
    pub outcome: String,
    pub crash_to_healthy_ms: Option<f64>,
    pub record: Value,
}

/// What to list.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    pub unit: Option<String>,
    /// Only incidents at or after this, Unix ms.
    pub since_ms: Option<i64>,
    pub cause: Option<String>,
    pub limit: Option<usize>,
}

/// An open history.
pub(crate) struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens the history for writing, making it (and its directory) if needed.
    pub(crate) fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(dir)
                .map_err(|e| StoreError::io(path, "cannot make its directory", &e))?;
        }
        let err = |e: rusqlite::Error| StoreError::new(path, &e);
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(BUSY).map_err(err)?;
        // The first statement to read the file: a file that is not a database fails here.
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError {
                path: path.to_owned(),
                message: format!("cannot switch the database to WAL (it stays in {mode} mode)"),
            });
        }
        // In WAL mode, NORMAL never corrupts the file; a power cut may lose the last incidents.
        conn.execute_batch(
            // A small page cache: one row is written per incident and `incidents` reads run in
            // their own process; SQLite's default (2 MiB) would be most of the daemon's memory.
            "PRAGMA synchronous = NORMAL;
             PRAGMA cache_size = -256;
             CREATE TABLE IF NOT EXISTS incidents (
                 id TEXT PRIMARY KEY,
                 at_ms INTEGER NOT NULL,
                 at TEXT NOT NULL,
                 unit TEXT NOT NULL,
                 cause TEXT NOT NULL,
                 action TEXT NOT NULL,
                 outcome TEXT NOT NULL,
                 crash_to_healthy_ms REAL,
                 record TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS incidents_at ON incidents (at_ms);",
        )
        .map_err(err)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err)?;
        match version {
            0 => conn
                .pragma_update(None, "user_version", SCHEMA)
                .map_err(err)?,
            SCHEMA => {}
            other => {
                return Err(StoreError {
                    path: path.to_owned(),
                    message: format!(
                        "written by a newer detector (schema {other}; this one knows {SCHEMA})"
                    ),
                });
            }
        }
        Ok(Self {
            conn,
            path: path.to_owned(),
        })
    }

    /// Opens the history to read it, never changing it.
    pub(crate) fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        if !path.exists() {
            return Err(StoreError {
                path: path.to_owned(),
                message: "no such file: detector has recorded no incident there yet (is the \
                          daemon's [history] path another one? pass its --config or --db)"
                    .to_owned(),
            });
        }
        let err = |e: rusqlite::Error| StoreError::new(path, &e);
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        conn.busy_timeout(BUSY).map_err(err)?;
        Ok(Self {
            conn,
            path: path.to_owned(),
        })
    }

    fn err(&self, e: &rusqlite::Error) -> StoreError {
        StoreError::new(&self.path, e)
    }

    /// Keeps `incident` (again, if it was kept before: the later version wins).
    pub(crate) fn record(&self, incident: &Incident) -> Result<(), StoreError> {
        let json = serde_json::to_string(incident).map_err(|e| StoreError {
            path: self.path.clone(),
            message: format!("cannot serialise incident {}: {e}", incident.id),
        })?;
        let at = incident
            .first_death
            .clone()
            .or_else(|| incident.timeline.first().map(|s| s.at.clone()))
            .unwrap_or_default();
        let action = serde_json::to_value(incident.action)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        self.conn
            .execute(
                "INSERT OR REPLACE INTO incidents
                     (id, at_ms, at, unit, cause, action, outcome, crash_to_healthy_ms, record)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    incident.id,
                    unix_ms(&at).unwrap_or_else(now_ms),
                    at,
                    incident.unit,
                    incident.cause,
                    action,
                    incident.ending(),
                    incident.crash_to_healthy_ms,
                    json,
                ],
            )
            .map_err(|e| self.err(&e))?;
        Ok(())
    }

    /// Deletes incidents older than `max_age` (before `now_ms`), then all but the newest
    /// `max_incidents`; returns how many went.
    pub(crate) fn prune(
        &self,
        now_ms: i64,
        max_age: Duration,
        max_incidents: usize,
    ) -> Result<usize, StoreError> {
        let oldest = now_ms.saturating_sub(i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX));
        let aged = self
            .conn
            .execute("DELETE FROM incidents WHERE at_ms < ?1", [oldest])
            .map_err(|e| self.err(&e))?;
        let counted = self
            .conn
            .execute(
                "DELETE FROM incidents WHERE id NOT IN
                     (SELECT id FROM incidents ORDER BY at_ms DESC, rowid DESC LIMIT ?1)",
                [i64::try_from(max_incidents).unwrap_or(i64::MAX)],
            )
            .map_err(|e| self.err(&e))?;
        Ok(aged + counted)
    }

    /// The incidents `filter` selects, newest first.
    pub(crate) fn list(&self, filter: &Filter) -> Result<Vec<Row>, StoreError> {
        let limit = filter
            .limit
            .map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
        self.rows(
            "WHERE (?1 IS NULL OR unit = ?1) AND (?2 IS NULL OR at_ms >= ?2)
               AND (?3 IS NULL OR cause = ?3)
             ORDER BY at_ms DESC, rowid DESC LIMIT ?4",
            params![filter.unit, filter.since_ms, filter.cause, limit],
        )
    }

    /// The incident whose id is `id` or starts with it; an error if several do.
    pub(crate) fn get(&self, id: &str) -> Result<Option<Row>, StoreError> {
        let mut found = self.rows("WHERE substr(id, 1, length(?1)) = ?1 LIMIT 2", params![id])?;
        if found.len() > 1 {
            return Err(StoreError {
                path: self.path.clone(),
                message: format!("several incidents have ids starting with {id}: give more of it"),
            });
        }
        Ok(found.pop())
    }

    /// The rows `clause` (after FROM) selects.
    fn rows(&self, clause: &str, params: &[&dyn rusqlite::ToSql]) -> Result<Vec<Row>, StoreError> {
        let sql = format!(
            "SELECT id, at, unit, cause, outcome, crash_to_healthy_ms, record FROM incidents {clause}"
        );
        let mut statement = self.conn.prepare(&sql).map_err(|e| self.err(&e))?;
        let rows = statement
            .query_map(params, |r| {
                Ok((
                    Row {
                        id: r.get(0)?,
                        at: r.get(1)?,
                        unit: r.get(2)?,
                        cause: r.get(3)?,
                        outcome: r.get(4)?,
                        crash_to_healthy_ms: r.get(5)?,
                        record: Value::Null,
                    },
                    r.get::<_, String>(6)?,
                ))
            })
            .map_err(|e| self.err(&e))?;
        let mut out = Vec::new();
        for row in rows {
            let (mut row, json) = row.map_err(|e| self.err(&e))?;
            row.record = self.parse(&row.id, &json)?;
            out.push(row);
        }
        Ok(out)
    }

    /// How many incidents are kept.
    #[cfg(test)]
    pub(crate) fn count(&self) -> Result<usize, StoreError> {
        self.conn
            .query_row("SELECT count(*) FROM incidents", [], |r| r.get::<_, i64>(0))
            .map(|n| usize::try_from(n).unwrap_or(0))
            .map_err(|e| self.err(&e))
    }

    fn parse(&self, id: &str, json: &str) -> Result<Value, StoreError> {
        serde_json::from_str(json).map_err(|e| StoreError {
            path: self.path.clone(),
            message: format!("incident {id} is not readable JSON: {e}"),
        })
    }
}

/// RFC 3339 → Unix ms.
#[must_use]
pub(crate) fn unix_ms(at: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(at)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Now, Unix ms.
#[must_use]
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
