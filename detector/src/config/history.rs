//! `[history]`: where incidents are kept (SQLite), and for how long.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Ctx};

/// Where the daemon keeps incidents, and `detector incidents` reads them, by default.
pub(crate) const DEFAULT_PATH: &str = "/var/lib/detector/incidents.db";
const DEFAULT_MAX_AGE: Duration = Duration::from_hours(30 * 24);
const DEFAULT_MAX_INCIDENTS: usize = 10_000;

/// The incident history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct History {
    /// The database; None with `enabled = false`.
    pub path: Option<PathBuf>,
    /// Incidents older than this are deleted.
    pub max_age: Duration,
    /// Beyond this many, the oldest incidents are deleted.
    pub max_incidents: usize,
}

impl Default for History {
    fn default() -> Self {
        Self {
            path: Some(PathBuf::from(DEFAULT_PATH)),
            max_age: DEFAULT_MAX_AGE,
            max_incidents: DEFAULT_MAX_INCIDENTS,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHistory {
    enabled: Option<bool>,
    path: Option<Spanned<String>>,
    max_age: Option<Spanned<String>>,
    max_incidents: Option<Spanned<i64>>,
}

impl Ctx<'_> {
    pub(super) fn history(&self, raw: &Spanned<RawHistory>) -> Result<History, ConfigError> {
        let RawHistory {
            enabled,
            path,
            max_age,
            max_incidents,
        } = raw.get_ref();
        let path = match path {
            None => PathBuf::from(DEFAULT_PATH),
            // The daemon's working directory is wherever it was started from: a relative path
            // would move with it.
            Some(p) if !p.get_ref().starts_with('/') => {
                return Err(self.at(
                    p.span(),
                    format!("history path \"{}\" must be absolute", p.get_ref()),
                ));
            }
            Some(p) => PathBuf::from(p.get_ref()),
        };
        let max_incidents = match max_incidents {
            None => DEFAULT_MAX_INCIDENTS,
            Some(n) => usize::try_from(*n.get_ref())
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    self.at(
                        n.span(),
                        format!("history max_incidents = {}: use 1 or more", n.get_ref()),
                    )
                })?,
        };
        Ok(History {
            path: enabled.unwrap_or(true).then_some(path),
            max_age: self.duration(max_age.as_ref(), DEFAULT_MAX_AGE, "history max_age")?,
            max_incidents,
        })
    }
}
