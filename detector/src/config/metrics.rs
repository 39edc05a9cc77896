//! `[metrics]`: where `/metrics` is served, and how many units not in the configuration get a
//! label value of their own.

use std::net::SocketAddr;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Ctx};

/// Units outside the configuration named in metrics before the rest fold into `other`.
pub(crate) const DEFAULT_MAX_UNITS: usize = 50;

/// The Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Metrics {
    /// Where `/metrics` is served; None: not served (the figures are still kept).
    pub listen: Option<SocketAddr>,
    /// How many units that no `[[unit]]` lists get their own `name` label; later ones are
    /// `name="other"`. Configured units always have their own.
    pub max_units: usize,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            listen: None,
            max_units: DEFAULT_MAX_UNITS,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    listen: Option<Spanned<String>>,
    max_units: Option<Spanned<i64>>,
}

impl Ctx<'_> {
    pub(super) fn metrics(&self, raw: &Spanned<RawMetrics>) -> Result<Metrics, ConfigError> {
        let RawMetrics { listen, max_units } = raw.get_ref();
        let listen = listen
            .as_ref()
            .map(|l| {
                l.get_ref().parse::<SocketAddr>().map_err(|_| {
                    self.at(
                        l.span(),
                        format!(
                            "metrics listen = \"{}\" is not an address and port, like \
                             \"127.0.0.1:9464\"",
                            l.get_ref()
                        ),
                    )
                })
            })
            .transpose()?;
        let max_units = match max_units {
            None => DEFAULT_MAX_UNITS,
            Some(n) => usize::try_from(*n.get_ref())
                .ok()
                .filter(|n| *n <= 10_000)
                .ok_or_else(|| {
                    self.at(
                        n.span(),
                        format!("metrics max_units = {}: use 0 to 10000", n.get_ref()),
                    )
                })?,
        };
        Ok(Metrics { listen, max_units })
    }
}
