//! Stage 7, sinks: where finished records and incidents go. JSON lines on [`stdout`],
//! structured entries in the watched systemd's [`journal`], the [`alerts`] (webhook, Slack,
//! Alertmanager, PagerDuty), the Prometheus [`metrics`], and the incident [`history`] (SQLite, on
//! a thread of its own); [`words`] holds the sentences they share. [`Sinks`] is what the main
//! loop hands records and notices to.
//!
//! - In: anything that is done: [`crate::death::record::ExitRecord`]s, and each incident's two
//!   [`crate::incident::Notice`]s (opened, resolved).
//! - Out: bytes to the outside world: stdout, the journal, receivers, `/metrics`, the history
//!   database.
//! - Must not know: how a record was made or how a recovery runs; a sink never changes what it
//!   is given and never blocks the stages before it: the journal has its thread and the alerts
//!   their tasks, each behind a bounded queue.

pub(crate) mod alerts;
pub(crate) mod history;
pub(crate) mod journal;
pub(crate) mod metrics;
pub(crate) mod stdout;
pub(crate) mod words;

use std::{path::Path, sync::Arc, time::Duration};

use self::{
    alerts::Alerts,
    history::History,
    journal::{Journal, Taken},
    metrics::Metrics,
    stdout::Stdout,
};
use crate::{
    config::{alerts::AlertSink, journal::Journal as JournalConfig},
    death::record::ExitRecord,
    incident::{Notice, Phase},
    kernel::counters::Lost,
};

/// Where records and incidents are written (`detector run --output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Output {
    /// `journal` when stdout is already the journal (systemd runs the daemon: JSON lines there
    /// would be each entry again, unstructured), else `both`.
    Auto,
    /// JSON lines on stdout only.
    Json,
    /// Structured entries in the watched systemd's journal only.
    Journal,
    /// Both.
    Both,
}

impl Output {
    /// `Auto` decided: systemd sets `JOURNAL_STREAM` to the device and inode of the journal
    /// stream it connected stdout (or stderr) to.
    #[must_use]
    pub(crate) fn resolve(self) -> Self {
        if self != Self::Auto {
            return self;
        }
        let stdout_is_journal = std::env::var("JOURNAL_STREAM").ok().is_some_and(|stream| {
            nix::sys::stat::fstat(std::io::stdout())
                .is_ok_and(|st| stream == format!("{}:{}", st.st_dev, st.st_ino))
        });
        if stdout_is_journal {
            Self::Journal
        } else {
            Self::Both
        }
    }

    fn json(self) -> bool {
        matches!(self, Self::Json | Self::Both)
    }

    fn journal(self) -> bool {
        matches!(self, Self::Journal | Self::Both)
    }
}

/// At shutdown, how long the alert sinks may take to send what they hold.
const ALERTS_GRACE: Duration = Duration::from_secs(5);

/// Every sink, fed by the main loop.
pub(crate) struct Sinks {
    stdout: Stdout,
    json: bool,
    journal: Option<Journal>,
    alerts: Alerts,
    /// Counts deaths and resolved incidents; `/metrics` serves them.
    metrics: Arc<Metrics>,
    /// Writes resolved incidents; None when `[history]` is disabled.
    history: Option<History>,
}

impl Sinks {
    /// Starts the alert sinks' tasks, with the journal writer [`Sinks::journal`] started;
    /// `host` is the watched systemd's name in alerts.
    pub(crate) fn start(
        output: Output,
        journal: Option<Journal>,
        alerts: &[AlertSink],
        host: &str,
        metrics: Arc<Metrics>,
        history: Option<History>,
    ) -> Self {
        let output = output.resolve();
        Self {
            metrics,
            history,
            stdout: Stdout::queued(),
            json: output.json(),
            journal,
            alerts: Alerts::spawn(alerts, host),
        }
    }

    /// The journal writer, when `output` asks for one; `root` and `manager_pid` are the watched
    /// systemd's, `config` the death entries' share. Started before the daemon drops its
    /// capabilities: its relay into a machine's pid namespace needs them (the writer drops its
    /// own once the relay runs).
    pub(crate) fn journal(
        output: Output,
        (root, manager_pid): (&Path, Option<i32>),
        config: JournalConfig,
    ) -> Option<Journal> {
        let output = output.resolve();
        output
            .journal()
            .then(|| Journal::spawn(root, manager_pid, !output.json(), config))
    }

    /// A death's record: a JSON line (written at the next [`Sinks::flush`]) and a journal entry.
    /// Journal only and its queue full: the JSON line instead, so that nothing is lost. Past
    /// the journal's share, a death is counted there (and in the metrics), and the JSON line is
    /// written only if JSON lines are: under systemd stdout is the journal too.
    pub(crate) fn record(&mut self, record: &ExitRecord) {
        self.metrics.death(record);
        let taken = self.journal.as_mut().map(|j| j.exit(record));
        if let Some(Taken::LeftOut(class)) = taken {
            self.metrics.journal_left_out(class);
        }
        let kept = matches!(taken, Some(Taken::Queued | Taken::LeftOut(_)));
        if self.json || !kept {
            self.stdout.push(record);
        }
    }

    /// Each second: the journal's counts of deaths left out, for intervals that ended.
    pub(crate) fn tick(&mut self) {
        if let Some(journal) = &mut self.journal {
            journal.tick();
        }
    }

    /// An incident's notice: to the journal and every alert sink; the resolved incident is also
    /// a JSON line.
    pub(crate) fn notice(&mut self, notice: &Notice) {
        let queued = self.journal.as_ref().is_some_and(|j| j.notice(notice));
        if notice.phase == Phase::Resolved {
            if self.json || !queued {
                self.stdout.push(&*notice.incident);
            }
            // One row and one count per incident: when it is over.
            self.metrics.incident(&notice.incident);
            if let Some(history) = &self.history {
                history.push(&notice.incident);
            }
        }
        self.alerts.notice(notice);
    }

    /// Deaths the kernel could not hand over (a full ring, an older build's records): a JSON
    /// line when JSON lines are written, else a warning in the daemon's own log (which the
    /// journal takes under systemd).
    pub(crate) fn lost(&mut self, lost: &Lost) {
        if self.json {
            self.stdout.push(lost);
        } else {
            tracing::warn!(
                records = lost.records,
                reason = lost.reason,
                "deaths lost before they were read"
            );
        }
    }

    /// The metrics, for the kernel's counters and the `/metrics` endpoint.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Writes the JSON lines pushed so far.
    pub(crate) fn flush(&mut self) {
        self.stdout.flush();
    }

    /// At shutdown: everything pushed goes out; the alert sinks get [`ALERTS_GRACE`].
    pub(crate) async fn finish(mut self) {
        std::mem::take(&mut self.stdout).finish();
        if let Some(journal) = self.journal.take() {
            journal.finish();
        }
        if let Some(history) = self.history.take() {
            history.finish();
        }
        self.alerts.finish(ALERTS_GRACE).await;
    }
}
