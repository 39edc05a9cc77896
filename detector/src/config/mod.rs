//! The configuration operators write (`detector run --config FILE`), checked by
//! `detector check-config FILE`. Every error names the file and line.
//!
//! ```toml
//! [[unit]]
//! name = "fastapi-app.service"
//! restart = "expedite"        # "report" (never restart) | "restart" | "expedite"
//! journal_lines = 30
//! startup_grace = "10s"       # a death this soon after start is a startup failure
//! health = { url = "http://127.0.0.1:8000/health", expect = 200, timeout = "1s", interval = "200ms", deadline = "30s" }
//! crash_loop = { max_restarts = 5, window = "5m", backoff = "1s" }
//!
//! [[rule]]                    # more causes recognised in a failed run's journal lines
//! cause = "database_down"
//! pattern = "could not connect to server: (.+)"
//! detail = "the database is unreachable: $1"
//!
//! [[alert]]                   # as many as you like; secrets from env: or file: only
//! kind = "webhook"            # "webhook" | "slack" | "alertmanager" | "pagerduty"
//! url = "http://127.0.0.1:9099/hook"
//! headers = { Authorization = "env:HOOK_TOKEN" }
//!
//! [metrics]
//! listen = "127.0.0.1:9464"   # serves /metrics; not served without it
//! max_units = 50              # units outside [[unit]] named before the rest are "other"
//!
//! [history]
//! path = "/var/lib/detector/incidents.db"
//! max_age = "30d"
//! max_incidents = 10000
//!
//! [journal]
//! death_entries = 1000        # per interval and class; past it deaths are counted, not written
//! interval = "30s"
//! ```
//!
//! Deaths in units not listed are still reported (records and incidents), never restarted.
//!
//! One file per section: [`unit`] (`[[unit]]`), [`rules`] (`[[rule]]`), [`alerts`]
//! (`[[alert]]`: webhook, Slack, Alertmanager, PagerDuty), [`metrics`] (`[metrics]`), [`history`]
//! (`[history]`), [`journal`] (`[journal]`); [`duration`] for the durations they share.
//!
//! - In: the operator's TOML file.
//! - Out: a checked [`Config`], or a [`ConfigError`] naming file and line.
//! - Must not know: any stage of the flow. Every stage may read the configuration; the
//!   configuration imports none of them.

pub(crate) mod alerts;
mod duration;
pub(crate) mod history;
pub(crate) mod journal;
pub(crate) mod metrics;
pub(crate) mod rules;
#[cfg(test)]
mod tests;
mod unit;

use std::{
    path::Path,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::Deserialize;
use toml::Spanned;

use self::{
    alerts::{AlertSink, RawAlert},
    history::{History, RawHistory},
    journal::{Journal, RawJournal},
    metrics::{Metrics, RawMetrics},
    rules::{RawRule, Rule},
    unit::RawUnit,
};
pub(crate) use self::{
    duration::{MAX as MAX_DURATION, parse_duration},
    unit::{CrashLoop, DEFAULT_JOURNAL_LINES, Health, RestartMode, UnitPolicy, host_allowed},
};

/// A checked configuration.
#[derive(Debug, Clone, Default)]
pub(crate) struct Config {
    pub units: Vec<UnitPolicy>,
    /// The operator's cause rules; they are tried before the built-in ones.
    pub rules: Vec<Rule>,
    /// Where incidents are announced.
    pub alerts: Vec<AlertSink>,
    pub metrics: Metrics,
    pub history: History,
    pub journal: Journal,
}

impl Config {
    /// The policy for `unit`, if it is listed.
    #[must_use]
    pub(crate) fn policy(&self, unit: &str) -> Option<&UnitPolicy> {
        self.units.iter().find(|p| p.covers(unit))
    }
}

/// The configuration in force. A reload (SIGHUP) replaces it whole, or not at all; each reader
/// takes the one in force for what it decides next.
#[derive(Debug, Default)]
pub(crate) struct Live {
    current: RwLock<Arc<Config>>,
    /// Counts replacements, so that what is built from the configuration (the journal's rules)
    /// is built again.
    version: AtomicU64,
}

impl Live {
    #[must_use]
    pub(crate) fn new(config: Config) -> Self {
        Self {
            current: RwLock::new(Arc::new(config)),
            version: AtomicU64::new(0),
        }
    }

    /// The configuration in force.
    #[must_use]
    pub(crate) fn get(&self) -> Arc<Config> {
        // A writer that panicked left a whole `Arc` behind: still a configuration.
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// How many times it was replaced.
    #[must_use]
    pub(crate) fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Reads `path` again and puts it in force; a bad file changes nothing and says where it is
    /// wrong.
    pub(crate) fn reload(&self, path: &Path) -> Result<Arc<Config>, ConfigError> {
        let config = Arc::new(load(path)?);
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::clone(&config);
        self.version.fetch_add(1, Ordering::AcqRel);
        Ok(config)
    }
}

/// A configuration error, with where it is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}:{line}: {message}")]
pub(crate) struct ConfigError {
    pub file: String,
    /// 1-based; 0 when the file could not be read at all.
    pub line: usize,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    unit: Vec<Spanned<RawUnit>>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
    /// Hosts other than loopback that health checks may go to.
    #[serde(default)]
    health_hosts: Vec<String>,
    #[serde(default)]
    alert: Vec<Spanned<RawAlert>>,
    metrics: Option<Spanned<RawMetrics>>,
    history: Option<Spanned<RawHistory>>,
    journal: Option<Spanned<RawJournal>>,
}

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
    /// `health_hosts`: where health checks may go besides loopback.
    health_hosts: Vec<String>,
}

impl Ctx<'_> {
    fn at(&self, span: std::ops::Range<usize>, message: impl Into<String>) -> ConfigError {
        let line = self
            .text
            .get(..span.start)
            .map_or(0, |before| before.matches('\n').count())
            + 1;
        ConfigError {
            file: self.file.to_owned(),
            line,
            message: message.into(),
        }
    }

    /// A duration from more than zero to at most the bound [`max_duration`] gives `what`: a
    /// bound on every duration keeps the daemon's deadlines (`Instant + duration`) from
    /// overflowing, and catches a unit typed wrong (`30h` for `30s`).
    fn duration(
        &self,
        value: Option<&Spanned<String>>,
        default: Duration,
        what: &str,
    ) -> Result<Duration, ConfigError> {
        let Some(value) = value else {
            return Ok(default);
        };
        let max = max_duration(what);
        match parse_duration(value.get_ref()) {
            Ok(d) if d.is_zero() => {
                Err(self.at(value.span(), format!("{what} must be more than zero")))
            }
            Ok(d) if d > max => Err(self.at(
                value.span(),
                format!(
                    "{what} = \"{}\" is too long: at most {max:?}",
                    value.get_ref()
                ),
            )),
            Ok(d) => Ok(d),
            Err(e) => Err(self.at(value.span(), format!("{what}: {e}"))),
        }
    }
}

/// The longest each duration may be: ten years of history, a crash-loop window of a day, five
/// minutes for one health check's or one alert's timeout, an hour for the rest.
fn max_duration(what: &str) -> Duration {
    match what {
        "history max_age" => MAX_DURATION,
        "crash_loop window" => Duration::from_hours(24),
        "health timeout" | "alert timeout" => Duration::from_mins(5),
        _ => Duration::from_hours(1),
    }
}

/// Parses and checks a configuration; `file` names it in errors.
pub(crate) fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
    let mut ctx = Ctx {
        file,
        text,
        health_hosts: Vec::new(),
    };
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let message = e.message().to_owned();
        ctx.at(e.span().unwrap_or(0..0), message)
    })?;
    ctx.health_hosts.clone_from(&raw.health_hosts);
    let mut config = Config::default();
    for unit in &raw.unit {
        let policy = ctx.unit(unit)?;
        if config.units.iter().any(|p| p.name == policy.name) {
            return Err(ctx.at(
                unit.get_ref().name.span(),
                format!("unit `{}` is listed twice", policy.name),
            ));
        }
        config.units.push(policy);
    }
    for rule in &raw.rule {
        config.rules.push(ctx.rule(rule)?);
    }
    config.alerts = ctx.alerts(&raw.alert)?;
    if let Some(metrics) = &raw.metrics {
        config.metrics = ctx.metrics(metrics)?;
    }
    if let Some(history) = &raw.history {
        config.history = ctx.history(history)?;
    }
    if let Some(journal) = &raw.journal {
        config.journal = ctx.journal(journal)?;
    }
    Ok(config)
}

/// Reads and checks a configuration file.
pub(crate) fn load(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        line: 0,
        message: format!("cannot read the configuration: {e}"),
    })?;
    parse(&file, &text)
}
