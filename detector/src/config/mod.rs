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
//! ```
//!
//! Deaths in units not listed are still reported (records and incidents), never restarted.
//!
//! One file per section: [`unit`] (`[[unit]]`), [`rules`] (`[[rule]]`); [`duration`] for the
//! durations they share.
//!
//! - In: the operator's TOML file.
//! - Out: a checked [`Config`], or a [`ConfigError`] naming file and line.
//! - Must not know: any stage of the flow. Every stage may read the configuration; the
//!   configuration imports none of them.

mod duration;
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

pub(crate) use self::{
    duration::{MAX as MAX_DURATION, parse_duration},
    unit::{CrashLoop, DEFAULT_JOURNAL_LINES, Health, RestartMode, UnitPolicy},
};
use self::{
    rules::{RawRule, Rule},
    unit::RawUnit,
};

/// A checked configuration.
#[derive(Debug, Clone, Default)]
pub(crate) struct Config {
    pub units: Vec<UnitPolicy>,
    /// The operator's cause rules; they are tried before the built-in ones.
    pub rules: Vec<Rule>,
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
