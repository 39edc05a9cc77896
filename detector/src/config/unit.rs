//! `[[unit]]`: what to do when a unit fails (restart mode, health check, crash-loop limits).

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Ctx};

/// What to do when a listed unit fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RestartMode {
    /// Report only; never restart.
    Report,
    /// Restart when systemd will not (no `Restart=`, or past its start limit); otherwise watch
    /// systemd's own restart.
    Restart,
    /// Restart at once, instead of waiting out the unit's `RestartSec=`.
    Expedite,
}

/// How to tell that a restarted unit is healthy again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Health {
    pub url: url::Url,
    /// Follow HTTP redirects (off unless the configuration asks: a redirect may lead anywhere).
    pub follow_redirects: bool,
    /// Hosts besides loopback that a redirect may lead to (`health_hosts`).
    pub hosts: Vec<String>,
    pub expect: u16,
    pub timeout: Duration,
    pub interval: Duration,
    pub deadline: Duration,
}

/// Whether a health check may go to `url`'s host: loopback, or one of `hosts` (`health_hosts`).
/// Checked at load for the configured URL, and by the check for each redirect it follows.
#[must_use]
pub(crate) fn host_allowed(url: &url::Url, hosts: &[String]) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) if ip.is_loopback() => true,
        Some(url::Host::Ipv6(ip)) if ip.is_loopback() => true,
        Some(url::Host::Domain("localhost")) => true,
        Some(_) => url
            .host_str()
            .is_some_and(|host| hosts.iter().any(|h| h == host)),
        None => false,
    }
}

/// How a running unit is watched for hangs: its health check every `every`, and `failures`
/// failures in a row (a timeout, a refusal, a wrong status) make an `unhealthy` incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Liveness {
    pub every: Duration,
    pub failures: u32,
}

/// When restarting stops: after `max_restarts` restarts within `window`, the next failure is
/// not restarted (`gave_up`). Restarts after the first in a window wait `backoff`, doubled for
/// each further one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CrashLoop {
    pub max_restarts: u32,
    pub window: Duration,
    pub backoff: Duration,
}

/// The policy for one unit (or every instance of a template, `app@.service`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UnitPolicy {
    pub name: String,
    pub restart: RestartMode,
    pub journal_lines: usize,
    pub startup_grace: Duration,
    pub health: Option<Health>,
    /// Poll the health check while the unit runs; `failures` failures in a row are an incident.
    pub liveness: Option<Liveness>,
    pub crash_loop: CrashLoop,
}

impl UnitPolicy {
    /// Whether the policy may restart the unit (anything but `report`).
    #[must_use]
    pub(crate) fn restarts(&self) -> bool {
        self.restart != RestartMode::Report
    }

    /// Whether this policy covers `unit`: the same name, or an instance of this template.
    #[must_use]
    pub(crate) fn covers(&self, unit: &str) -> bool {
        if self.name == unit {
            return true;
        }
        match self.name.split_once("@.") {
            Some((template, suffix)) => unit
                .strip_prefix(template)
                .and_then(|rest| rest.strip_prefix('@'))
                .and_then(|rest| rest.strip_suffix(suffix))
                .and_then(|rest| rest.strip_suffix('.'))
                .is_some_and(|instance| !instance.is_empty()),
            None => false,
        }
    }
}

pub(crate) const DEFAULT_JOURNAL_LINES: usize = 30;
const DEFAULT_STARTUP_GRACE: Duration = Duration::from_secs(10);
const DEFAULT_CRASH_LOOP: CrashLoop = CrashLoop {
    max_restarts: 5,
    window: Duration::from_mins(5),
    backoff: Duration::from_secs(1),
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUnit {
    pub(super) name: Spanned<String>,
    restart: Option<Spanned<String>>,
    journal_lines: Option<Spanned<i64>>,
    startup_grace: Option<Spanned<String>>,
    health: Option<Spanned<RawHealth>>,
    crash_loop: Option<Spanned<RawCrashLoop>>,
    liveness: Option<Spanned<RawLiveness>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLiveness {
    every: Spanned<String>,
    failures: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    url: Spanned<String>,
    expect: Option<Spanned<i64>>,
    timeout: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
    deadline: Option<Spanned<String>>,
    follow_redirects: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCrashLoop {
    max_restarts: Spanned<i64>,
    window: Spanned<String>,
    backoff: Option<Spanned<String>>,
}

/// A systemd unit name we can act on: `name.service`, `app@1.service`, or a template
/// `app@.service` standing for all its instances.
fn check_unit_name(name: &str) -> Result<(), String> {
    let valid_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c));
    let suffix = [
        ".service", ".scope", ".socket", ".mount", ".swap", ".slice", ".timer", ".path",
    ]
    .iter()
    .find(|s| name.ends_with(*s));
    match suffix {
        _ if name.is_empty() => Err("the unit name is empty".to_owned()),
        _ if !valid_chars => Err(format!(
            "`{name}` is not a systemd unit name (letters, digits and :-_.\\@ only)"
        )),
        None => Err(format!(
            "`{name}` is not a systemd unit name: it needs a type suffix such as .service"
        )),
        Some(s) if name.len() == s.len() || name.starts_with('@') => {
            Err(format!("`{name}` is not a systemd unit name"))
        }
        Some(_) => Ok(()),
    }
}

impl Ctx<'_> {
    fn health(&self, raw: &Spanned<RawHealth>) -> Result<Health, ConfigError> {
        let RawHealth {
            url,
            expect,
            timeout,
            interval,
            deadline,
            follow_redirects,
        } = raw.get_ref();
        let parsed = url::Url::parse(url.get_ref()).map_err(|e| {
            self.at(
                url.span(),
                format!("health url `{}` is not a URL: {e}", url.get_ref()),
            )
        })?;
        if parsed.scheme() == "https" {
            return Err(self.at(
                url.span(),
                format!(
                    "health url `{}`: https is not supported; health checks are meant for the \
                     service's local plain-HTTP endpoint (detector carries no TLS stack)",
                    url.get_ref()
                ),
            ));
        }
        if parsed.scheme() != "http" || parsed.host().is_none() {
            return Err(self.at(
                url.span(),
                format!("health url `{}` must be http:// with a host", url.get_ref()),
            ));
        }
        // A health check is the unit's own local endpoint: anywhere else must be asked for, so a
        // typo (or a hostile configuration fragment) cannot make detector probe other hosts.
        let host = parsed.host_str().unwrap_or_default();
        if !host_allowed(&parsed, &self.health_hosts) {
            return Err(self.at(
                url.span(),
                format!(
                    "health url `{}`: host `{host}` is not loopback; add it to `health_hosts = [...]` \
                     at the top of the file to allow health checks there",
                    url.get_ref()
                ),
            ));
        }
        let expect = match expect {
            None => 200,
            Some(e) => u16::try_from(*e.get_ref())
                .ok()
                .filter(|s| (100..=599).contains(s))
                .ok_or_else(|| {
                    self.at(
                        e.span(),
                        format!(
                            "health expect {} is not an HTTP status (100-599)",
                            e.get_ref()
                        ),
                    )
                })?,
        };
        let timeout = self.duration(timeout.as_ref(), Duration::from_secs(1), "health timeout")?;
        let interval = self.duration(
            interval.as_ref(),
            Duration::from_millis(200),
            "health interval",
        )?;
        let deadline = self.duration(
            deadline.as_ref(),
            Duration::from_secs(30),
            "health deadline",
        )?;
        if deadline < timeout {
            return Err(self.at(
                raw.span(),
                "health deadline is shorter than its timeout: no check could pass",
            ));
        }
        Ok(Health {
            url: parsed,
            follow_redirects: follow_redirects.unwrap_or(false),
            hosts: self.health_hosts.clone(),
            expect,
            timeout,
            interval,
            deadline,
        })
    }

    pub(super) fn unit(&self, raw: &Spanned<RawUnit>) -> Result<UnitPolicy, ConfigError> {
        let RawUnit {
            name,
            restart,
            journal_lines,
            startup_grace,
            health,
            crash_loop,
            liveness,
        } = raw.get_ref();
        check_unit_name(name.get_ref()).map_err(|e| self.at(name.span(), e))?;
        let restart = match restart.as_ref().map(|r| (r.get_ref().as_str(), r.span())) {
            None | Some(("restart", _)) => RestartMode::Restart,
            Some(("report", _)) => RestartMode::Report,
            Some(("expedite", _)) => RestartMode::Expedite,
            Some((other, span)) => {
                return Err(self.at(
                    span,
                    format!("restart = \"{other}\": use \"report\", \"restart\" or \"expedite\""),
                ));
            }
        };
        let journal_lines = match journal_lines {
            None => DEFAULT_JOURNAL_LINES,
            Some(n) => usize::try_from(*n.get_ref())
                .ok()
                .filter(|n| (1..=10_000).contains(n))
                .ok_or_else(|| {
                    self.at(
                        n.span(),
                        format!("journal_lines = {}: use 1 to 10000", n.get_ref()),
                    )
                })?,
        };
        let crash_loop = match crash_loop {
            None => DEFAULT_CRASH_LOOP,
            Some(c) => {
                let RawCrashLoop {
                    max_restarts,
                    window,
                    backoff,
                } = c.get_ref();
                let max_restarts = u32::try_from(*max_restarts.get_ref())
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| {
                        self.at(
                            max_restarts.span(),
                            "crash_loop max_restarts: use 1 to 1000",
                        )
                    })?;
                CrashLoop {
                    max_restarts,
                    window: self.duration(
                        Some(window),
                        DEFAULT_CRASH_LOOP.window,
                        "crash_loop window",
                    )?,
                    backoff: self.duration(
                        backoff.as_ref(),
                        DEFAULT_CRASH_LOOP.backoff,
                        "crash_loop backoff",
                    )?,
                }
            }
        };
        Ok(UnitPolicy {
            name: name.get_ref().clone(),
            restart,
            journal_lines,
            startup_grace: self.duration(
                startup_grace.as_ref(),
                DEFAULT_STARTUP_GRACE,
                "startup_grace",
            )?,
            liveness: match liveness {
                None => None,
                Some(l) if health.is_none() => {
                    return Err(self.at(
                        l.span(),
                        "liveness polls the unit's health check: add `health = { url = ... }`",
                    ));
                }
                Some(l) => Some(self.liveness(l)?),
            },
            health: health.as_ref().map(|h| self.health(h)).transpose()?,
            crash_loop,
        })
    }

    fn liveness(&self, raw: &Spanned<RawLiveness>) -> Result<Liveness, ConfigError> {
        let RawLiveness { every, failures } = raw.get_ref();
        let failures = match failures {
            None => 3,
            Some(n) => u32::try_from(*n.get_ref())
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| {
                    self.at(
                        n.span(),
                        format!("liveness failures = {}: use 1 to 1000", n.get_ref()),
                    )
                })?,
        };
        Ok(Liveness {
            every: self.duration(Some(every), Duration::from_secs(10), "liveness every")?,
            failures,
        })
    }
}
