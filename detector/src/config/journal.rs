//! `[journal]`: how many death entries the journal gets per interval.
//!
//! Every failing death is a journal entry, and a storm of them (a shell loop gone wrong, a
//! crash-looping worker) would flood it: the journal rotates the host's other logs away, and
//! journald's own rate limit (per unit and priority, by default 10,000 per 30 s) then drops
//! entries without looking at them, the incidents' among them. The daemon keeps to a share of
//! its own, well under journald's, and says how many it left out.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Ctx};

/// Death entries per interval and per class (see [`Journal`]) by default: a tenth of journald's
/// default burst, so that the incidents' entries are never past journald's limit.
pub(crate) const DEFAULT_DEATH_ENTRIES: u32 = 1000;
/// journald's own default `RateLimitIntervalSec=`.
pub(crate) const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// The journal's share of death entries. It counts two classes apart, so that a storm of
/// failing commands never crowds out a service's death: failing exits outside any service,
/// and every other death (in a service, by a signal, an OOM kill, a core dump). Incidents'
/// entries are never counted or left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Journal {
    /// Death entries of one class written per `interval`; past it they are counted and the
    /// count is written when the interval ends. 0: no death entries, only the counts.
    pub death_entries: u32,
    pub interval: Duration,
}

impl Default for Journal {
    fn default() -> Self {
        Self {
            death_entries: DEFAULT_DEATH_ENTRIES,
            interval: DEFAULT_INTERVAL,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJournal {
    death_entries: Option<Spanned<i64>>,
    interval: Option<Spanned<String>>,
}

impl Ctx<'_> {
    pub(super) fn journal(&self, raw: &Spanned<RawJournal>) -> Result<Journal, ConfigError> {
        let RawJournal {
            death_entries,
            interval,
        } = raw.get_ref();
        let death_entries = match death_entries {
            None => DEFAULT_DEATH_ENTRIES,
            Some(n) => u32::try_from(*n.get_ref()).map_err(|_| {
                self.at(
                    n.span(),
                    format!(
                        "journal death_entries = {}: use 0 to {}",
                        n.get_ref(),
                        u32::MAX
                    ),
                )
            })?,
        };
        Ok(Journal {
            death_entries,
            interval: self.duration(interval.as_ref(), DEFAULT_INTERVAL, "journal interval")?,
        })
    }
}
