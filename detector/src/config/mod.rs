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
//! [metrics]
//! listen = "127.0.0.1:9464"   # serves /metrics; not served without it
//! max_units = 50              # units outside [[unit]] named before the rest are "other"
//!
//! [history]
//! path = "/var/lib/detector/incidents.db"
//! max_age = "30d"
//! max_incidents = 10000
//! ```
//!
//! Deaths in units not listed are still reported (records and incidents), never restarted.
//!
//! One file per section: [`unit`] (`[[unit]]`), [`rules`] (`[[rule]]`), [`metrics`]
//! (`[metrics]`), [`history`] (`[history]`); [`duration`] for the durations they share.
//!
//! - In: the operator's TOML file.
//! - Out: a checked [`Config`], or a [`ConfigError`] naming file and line.
//! - Must not know: any stage of the flow. Every stage may read the configuration; the
//!   configuration imports none of them.

mod duration;
pub(crate) mod history;
pub(crate) mod metrics;
pub(crate) mod rules;
#[cfg(test)]
mod tests;
mod unit;

use std::{path::Path, time::Duration};

use serde::Deserialize;
use toml::Spanned;

pub(crate) use self::{
    duration::parse_duration,
    unit::{CrashLoop, DEFAULT_JOURNAL_LINES, Health, RestartMode, UnitPolicy},
};
use self::{
    history::{History, RawHistory},
    metrics::{Metrics, RawMetrics},
    rules::{RawRule, Rule},
    unit::RawUnit,
};

/// A checked configuration.
#[derive(Debug, Clone, Default)]
pub(crate) struct Config {
    pub units: Vec<UnitPolicy>,
    /// The operator's cause rules; they are tried before the built-in ones.
    pub rules: Vec<Rule>,
    pub metrics: Metrics,
    pub history: History,
}

impl Config {
    /// The policy for `unit`, if it is listed.
    #[must_use]
    pub(crate) fn policy(&self, unit: &str) -> Option<&UnitPolicy> {
        self.units.iter().find(|p| p.covers(unit))
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
    metrics: Option<Spanned<RawMetrics>>,
    history: Option<Spanned<RawHistory>>,
}

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
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

    fn duration(
        &self,
        value: Option<&Spanned<String>>,
        default: Duration,
        what: &str,
    ) -> Result<Duration, ConfigError> {
        let Some(value) = value else {
            return Ok(default);
        };
        match parse_duration(value.get_ref()) {
            Ok(d) if d.is_zero() => {
                Err(self.at(value.span(), format!("{what} must be more than zero")))
            }
            Ok(d) => Ok(d),
            Err(e) => Err(self.at(value.span(), format!("{what}: {e}"))),
        }
    }
}

/// Parses and checks a configuration; `file` names it in errors.
pub(crate) fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
    let ctx = Ctx { file, text };
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let message = e.message().to_owned();
        ctx.at(e.span().unwrap_or(0..0), message)
    })?;
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
    if let Some(metrics) = &raw.metrics {
        config.metrics = ctx.metrics(metrics)?;
    }
    if let Some(history) = &raw.history {
        config.history = ctx.history(history)?;
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
