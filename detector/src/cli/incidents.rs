//! `detector incidents list|show`: the incident history, read from the daemon's database (read
//! only, so it works while the daemon runs and when it does not). A table or a timeline for a
//! person, with colour on a terminal (not with `NO_COLOR`); `--json` for scripts.

mod paint;
#[cfg(test)]
mod tests;
mod timeline;

use std::{io::IsTerminal as _, path::PathBuf};

use anyhow::{Context as _, bail};
use serde_json::Value;

use self::paint::Paint;
use crate::{
    config::{self, history::DEFAULT_PATH},
    sinks::history::store::{Filter, Row, Store, now_ms},
};

#[derive(clap::Args)]
pub(super) struct Args {
    /// The history database [default: the configuration's `[history] path`, else
    /// /var/lib/detector/incidents.db].
    #[arg(long, global = true)]
    db: Option<PathBuf>,
    /// The daemon's configuration, for its `[history] path`.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Print JSON instead of a table or a timeline.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// The incidents, newest first: when, unit, cause, how it ended, crash→healthy.
    List {
        /// Only this unit (`app` means `app.service`).
        #[arg(long)]
        unit: Option<String>,
        /// Only incidents this recent: 30m, 1h, 7d.
        #[arg(long)]
        since: Option<String>,
        /// Only this cause (signal, oom_kill, exit_code, ...).
        #[arg(long)]
        cause: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One incident as a timeline: what died, why, what detector did, the journal's lines.
    Show {
        /// Its id, or enough of its start to name one incident (as `list` shows it).
        id: String,
    },
}

pub(super) fn run(args: Args) -> anyhow::Result<()> {
    let path = match (&args.db, &args.config) {
        (Some(db), _) => db.clone(),
        (None, Some(file)) => config::load(file)?
            .history
            .path
            .with_context(|| format!("{}: [history] is disabled there", file.display()))?,
        (None, None) => PathBuf::from(DEFAULT_PATH),
    };
    let store = Store::open_read_only(&path)?;
    let paint = Paint::new(
        std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
    );
    match args.command {
        Command::List {
            unit,
            since,
            cause,
            limit,
        } => {
            let since_ms = since
                .map(|s| {
                    config::parse_duration(&s)
                        .map(|d| now_ms() - i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                        .map_err(|e| anyhow::anyhow!("--since: {e}"))
                })
                .transpose()?;
            let filter = Filter {
                unit: unit.map(|u| {
                    if u.contains('.') {
                        u
                    } else {
                        format!("{u}.service")
                    }
                }),
                since_ms,
                cause,
                limit: Some(limit),
            };
            let rows = store.list(&filter)?;
            if args.json {
                let records: Vec<&Value> = rows.iter().map(|r| &r.record).collect();
                println!("{}", serde_json::to_string(&records)?);
            } else {
                print!("{}", table(&rows, paint));
            }
        }
        Command::Show { id } => {
            let id = id.to_ascii_lowercase();
            if id.len() < 4 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
                bail!("`{id}` is not an incident id: give at least 4 of its hex digits");
            }
            let Some(row) = store.get(&id)? else {
                bail!("no incident {id} in {}", path.display());
            };
            if args.json {
                println!("{}", serde_json::to_string_pretty(&row.record)?);
            } else {
                print!("{}", timeline::render(&row.record, &row.outcome, paint));
            }
        }
    }
    Ok(())
}

/// How an incident ended, in words: the action, and for a restart what came of it.
fn ended(record: &Value, outcome: &str) -> String {
    let outcome = outcome.replace('_', " ");
    match record["action"].as_str().unwrap_or_default() {
        "restarted" => format!("restarted, {outcome}"),
        "watched" => format!("systemd restarted, {outcome}"),
        "failed" => "restart failed".to_owned(),
        "gave_up" => "gave up".to_owned(),
        other => other.replace('_', " "),
    }
}

/// A duration in ms, as a person reads it.
fn duration(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

/// `2026-11-24 22:37:33 UTC` from RFC 3339 (UTC: the same on every host an operator compares).
fn when(at: &str, with_ms: bool) -> String {
    chrono::DateTime::parse_from_rfc3339(at).map_or_else(
        |_| at.to_owned(),
        |t| {
            let format = if with_ms {
                "%Y-%m-%d %H:%M:%S%.3f UTC"
            } else {
                "%Y-%m-%d %H:%M:%S UTC"
            };
            t.with_timezone(&chrono::Utc).format(format).to_string()
        },
    )
}

/// The list as a table, columns as wide as their widest cell.
fn table(rows: &[Row], paint: Paint) -> String {
    if rows.is_empty() {
        return "no incidents\n".to_owned();
    }
    let header = ["WHEN", "ID", "UNIT", "CAUSE", "ENDED", "CRASH→HEALTHY"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                when(&r.at, false),
                r.id.chars().take(8).collect(),
                r.unit.clone(),
                r.cause.clone(),
                ended(&r.record, &r.outcome),
                r.crash_to_healthy_ms
                    .map_or_else(|| "-".to_owned(), duration),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String; 6], style: &dyn Fn(usize, &str) -> String| {
        let mut out = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            let pad = width - cell.chars().count();
            if i + 1 == cells.len() {
                // Right-aligned figures, no trailing space.
                out.push_str(&" ".repeat(pad));
                out.push_str(&style(i, cell));
            } else {
                out.push_str(&style(i, cell));
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(&header.map(str::to_owned), &|_, c| paint.bold(c));
    for (row, data) in cells.iter().zip(rows) {
        out.push_str(&line(row, &|i, c| match i {
            1 => paint.dim(c),
            3 => paint.yellow(c),
            4 => paint.outcome(&data.outcome, c),
            _ => c.to_owned(),
        }));
    }
    out
}
