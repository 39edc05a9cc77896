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

use std::{path::Path, time::Duration};

use serde::Deserialize;
use toml::Spanned;

use crate::causes::Rule;

/// What to do when a listed unit fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartMode {
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
pub struct Health {
    pub url: url::Url,
    pub expect: u16,
    pub timeout: Duration,
    pub interval: Duration,
    pub deadline: Duration,
}

/// When restarting stops: after `max_restarts` restarts within `window`, the next failure is
/// not restarted (`gave_up`). Restarts after the first in a window wait `backoff`, doubled for
/// each further one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashLoop {
    pub max_restarts: u32,
    pub window: Duration,
    pub backoff: Duration,
}

/// The policy for one unit (or every instance of a template, `app@.service`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitPolicy {
    pub name: String,
    pub restart: RestartMode,
    pub journal_lines: usize,
    pub startup_grace: Duration,
    pub health: Option<Health>,
    pub crash_loop: CrashLoop,
}

impl UnitPolicy {
    /// Whether the policy may restart the unit (anything but `report`).
    #[must_use]
    pub fn restarts(&self) -> bool {
        self.restart != RestartMode::Report
    }

    /// Whether this policy covers `unit`: the same name, or an instance of this template.
    #[must_use]
    pub fn covers(&self, unit: &str) -> bool {
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

/// A checked configuration.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub units: Vec<UnitPolicy>,
    /// The operator's cause rules; they are tried before the built-in ones.
    pub rules: Vec<Rule>,
}

impl Config {
    /// The policy for `unit`, if it is listed.
    #[must_use]
    pub fn policy(&self, unit: &str) -> Option<&UnitPolicy> {
        self.units.iter().find(|p| p.covers(unit))
    }
}

/// A configuration error, with where it is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}:{line}: {message}")]
pub struct ConfigError {
    pub file: String,
    /// 1-based; 0 when the file could not be read at all.
    pub line: usize,
    pub message: String,
}

pub const DEFAULT_JOURNAL_LINES: usize = 30;
const DEFAULT_STARTUP_GRACE: Duration = Duration::from_secs(10);
const DEFAULT_CRASH_LOOP: CrashLoop = CrashLoop {
    max_restarts: 5,
    window: Duration::from_mins(5),
    backoff: Duration::from_secs(1),
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    unit: Vec<Spanned<RawUnit>>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUnit {
    name: Spanned<String>,
    restart: Option<Spanned<String>>,
    journal_lines: Option<Spanned<i64>>,
    startup_grace: Option<Spanned<String>>,
    health: Option<Spanned<RawHealth>>,
    crash_loop: Option<Spanned<RawCrashLoop>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    url: Spanned<String>,
    expect: Option<Spanned<i64>>,
    timeout: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
    deadline: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCrashLoop {
    max_restarts: Spanned<i64>,
    window: Spanned<String>,
    backoff: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    cause: Spanned<String>,
    pattern: Spanned<String>,
    detail: Spanned<String>,
}

/// `200ms`, `1s`, `5m`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "`{text}` is not a duration: write a whole number with ms, s, m or h, like 200ms, 1s, 5m"
        )
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs).ok_or_else(bad),
        "h" => n.checked_mul(3600).map(Duration::from_secs).ok_or_else(bad),
        _ => Err(bad()),
    }
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

    fn health(&self, raw: &Spanned<RawHealth>) -> Result<Health, ConfigError> {
        let RawHealth {
            url,
            expect,
            timeout,
            interval,
            deadline,
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
            expect,
            timeout,
            interval,
            deadline,
        })
    }

    fn unit(&self, raw: &Spanned<RawUnit>) -> Result<UnitPolicy, ConfigError> {
        let RawUnit {
            name,
            restart,
            journal_lines,
            startup_grace,
            health,
            crash_loop,
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
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| {
                        self.at(
                            max_restarts.span(),
                            "crash_loop max_restarts must be at least 1",
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
            health: health.as_ref().map(|h| self.health(h)).transpose()?,
            crash_loop,
        })
    }

    fn rule(&self, raw: &Spanned<RawRule>) -> Result<Rule, ConfigError> {
        let RawRule {
            cause,
            pattern,
            detail,
        } = raw.get_ref();
        Rule::new(cause.get_ref(), pattern.get_ref(), detail.get_ref()).map_err(|e| {
            let span = if e.contains("pattern") {
                pattern.span()
            } else {
                cause.span()
            };
            self.at(span, e)
        })
    }
}

/// Parses and checks a configuration; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
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
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        line: 0,
        message: format!("cannot read the configuration: {e}"),
    })?;
    parse(&file, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUE_EXAMPLE: &str = r#"
[[unit]]
name = "fastapi-app.service"
restart = "expedite"        # "report" (never restart) | "restart" | "expedite"
journal_lines = 30
health = { url = "http://127.0.0.1:8000/health", expect = 200, timeout = "1s", interval = "200ms", deadline = "30s" }
crash_loop = { max_restarts = 5, window = "5m" }
"#;

    #[test]
    fn the_documented_shape_parses() {
        let config = parse("c.toml", ISSUE_EXAMPLE).expect("valid");
        let unit = &config.units[0];
        assert_eq!(
            (unit.name.as_str(), unit.restart, unit.journal_lines),
            ("fastapi-app.service", RestartMode::Expedite, 30)
        );
        let health = unit.health.as_ref().expect("health");
        assert_eq!(health.url.as_str(), "http://127.0.0.1:8000/health");
        assert_eq!(
            (
                health.expect,
                health.timeout,
                health.interval,
                health.deadline
            ),
            (
                200,
                Duration::from_secs(1),
                Duration::from_millis(200),
                Duration::from_secs(30)
            )
        );
        assert_eq!(
            unit.crash_loop,
            CrashLoop {
                max_restarts: 5,
                window: Duration::from_mins(5),
                backoff: Duration::from_secs(1)
            }
        );
        assert!(
            config.policy("fastapi-app.service").is_some()
                && config.policy("other.service").is_none()
        );
    }

    #[test]
    fn errors_name_the_line_and_the_problem() {
        let cases: [(&str, usize, &str); 14] = [
            ("[[unit]]\nname = \"app\"\n", 2, "needs a type suffix"),
            (
                "[[unit]]\nname = \"a/b.service\"\n",
                2,
                "not a systemd unit name",
            ),
            (
                "[[unit]]\nname = \"a.service\"\nrestart = \"always\"\n",
                3,
                "use \"report\", \"restart\" or \"expedite\"",
            ),
            (
                "[[unit]]\nname = \"a.service\"\n\nhealth = { url = \"localhost:8000\" }\n",
                4,
                "must be http:// with a host",
            ),
            (
                "[[unit]]\nname = \"a.service\"\nhealth = { url = \"https://h/\" }\n",
                3,
                "https is not supported",
            ),
            (
                "[[unit]]\nname = \"a.service\"\ncrash_loop = { max_restarts = 2, window = \"1m\", backoff = \"0s\" }\n",
                3,
                "crash_loop backoff must be more than zero",
            ),
            (
                "[[unit]]\nname = \"a.service\"\nhealth = { url = \"http://h/\", expect = 99 }\n",
                3,
                "not an HTTP status",
            ),
            (
                "[[unit]]\nname = \"a.service\"\nhealth = { url = \"http://h/\", timeout = \"1 s\" }\n",
                3,
                "is not a duration",
            ),
            (
                "[[unit]]\nname = \"a.service\"\ncrash_loop = { max_restarts = 0, window = \"5m\" }\n",
                3,
                "at least 1",
            ),
            (
                "[[unit]]\nname = \"a.service\"\njournal_lines = -1\n",
                3,
                "use 1 to 10000",
            ),
            (
                "[[unit]]\nname = \"a.service\"\n[[unit]]\nname = \"a.service\"\n",
                4,
                "listed twice",
            ),
            (
                "[[unit]]\nname = \"a.service\"\nrestrat = \"report\"\n",
                3,
                "unknown field `restrat`",
            ),
            ("[[unit]]\nname = \"a.service\n", 2, ""),
            (
                "[[rule]]\ncause = \"x\"\npattern = \"(unclosed\"\ndetail = \"d\"\n",
                3,
                "pattern",
            ),
        ];
        for (text, line, needle) in cases {
            let err = parse("c.toml", text).expect_err(text);
            assert_eq!(
                (err.file.as_str(), err.line),
                ("c.toml", line),
                "{text:?}: {err}"
            );
            assert!(err.message.contains(needle), "{text:?}: {err}");
            assert!(
                err.to_string().starts_with(&format!("c.toml:{line}: ")),
                "{err}"
            );
        }
    }

    #[test]
    fn templates_cover_their_instances() {
        let config = parse("c.toml", "[[unit]]\nname = \"app@.service\"\n").expect("valid");
        for (unit, covered) in [
            ("app@1.service", true),
            ("app@web.service", true),
            ("app@.service", true),
            ("app.service", false),
            ("apps@1.service", false),
            ("app@1.socket", false),
        ] {
            assert_eq!(config.policy(unit).is_some(), covered, "{unit}");
        }
    }

    #[test]
    fn durations() {
        for (text, want) in [
            ("200ms", Some(200_u64)),
            ("1s", Some(1000)),
            ("5m", Some(300_000)),
            ("1h", Some(3_600_000)),
            ("5", None),
            ("s", None),
            ("1.5s", None),
            ("-1s", None),
        ] {
            assert_eq!(
                parse_duration(text).ok().map(|d| d.as_millis()),
                want.map(u128::from),
                "{text}"
            );
        }
    }

    #[test]
    fn missing_file_is_named() {
        let err = load(Path::new("/nonexistent/detector.toml")).expect_err("missing");
        assert_eq!(
            (
                err.line,
                err.to_string()
                    .starts_with("/nonexistent/detector.toml:0: cannot read")
            ),
            (0, true),
            "{err}"
        );
    }
}
