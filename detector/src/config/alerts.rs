//! `[[alert]]`: where incidents are announced (webhook, Slack, Alertmanager, PagerDuty).
//!
//! Secrets come from the environment (`env:NAME`) or a file (`file:/path`), never from the
//! configuration's text: a Slack URL (its path is the credential), a `routing_key`, and headers
//! that carry credentials (`Authorization`, ...). They are read once, when the configuration is
//! loaded (`detector check-config` too: the variable or file must exist then), and never appear
//! in an error, a log line or `Debug` output: errors name the reference (`env:PD_ROUTING_KEY`),
//! not its value.
//!
//! Only `http://` URLs are accepted: detector carries no TLS stack (its HTTP client is built
//! without one, as for health checks). Slack's and PagerDuty's endpoints are https, so they are
//! reached through a relay on the host that speaks TLS onwards (see the README).

#[cfg(test)]
mod tests;

use std::{collections::BTreeMap, path::Path, time::Duration};

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Ctx};

/// PagerDuty's Events API v2; https, so only usable through a relay (see the module's docs).
pub(crate) const PAGERDUTY_URL: &str = "https://events.pagerduty.com/v2/enqueue";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a sink speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AlertKind {
    /// The incident as JSON, POSTed.
    Webhook,
    /// A Slack incoming webhook: text and blocks.
    Slack,
    /// Prometheus Alertmanager's API v2 (`POST /api/v2/alerts`).
    Alertmanager,
    /// PagerDuty Events API v2: trigger, then resolve with the same `dedup_key`.
    Pagerduty,
}

impl AlertKind {
    #[must_use]
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Slack => "slack",
            Self::Alertmanager => "alertmanager",
            Self::Pagerduty => "pagerduty",
        }
    }
}

/// A value that must not be shown: its `Debug` says only that it is secret.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret<T>(T);

impl<T> Secret<T> {
    /// The value, to put in a request; never in a message.
    #[must_use]
    pub(crate) fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> std::fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// One checked `[[alert]]`.
#[derive(Debug, Clone)]
pub(crate) struct AlertSink {
    /// How logs and `alert-test` name it: `name`, else its kind (`slack`, or `slack#2` when
    /// several share a kind).
    pub name: String,
    pub kind: AlertKind,
    /// Where to POST: the webhook's URL, Alertmanager's `.../api/v2/alerts`, PagerDuty's
    /// enqueue endpoint.
    pub url: Secret<url::Url>,
    /// The URL as logs may show it: itself when written in the file, else its reference
    /// (`file:/etc/detector/slack-url`).
    pub shown: String,
    /// Extra request headers (name, value).
    pub headers: Vec<(String, Secret<String>)>,
    /// PagerDuty's integration key.
    pub routing_key: Option<Secret<String>>,
    /// Bound on one attempt (connect, send, answer).
    pub timeout: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlert {
    kind: Spanned<String>,
    name: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    headers: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    routing_key: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
}

/// A value as written: literal, or where to read it.
enum Source<'a> {
    Literal(&'a str),
    Env(&'a str),
    File(&'a str),
}

fn source(text: &str) -> Source<'_> {
    if let Some(name) = text.strip_prefix("env:") {
        Source::Env(name)
    } else if let Some(path) = text.strip_prefix("file:") {
        Source::File(path)
    } else {
        Source::Literal(text)
    }
}

/// Reads an `env:` or `file:` reference; the error names the reference, never a value.
fn read_reference(reference: &str) -> Result<String, String> {
    let value = match source(reference) {
        Source::Literal(value) => return Ok(value.to_owned()),
        Source::Env(name) => {
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "`env:{name}` is not an environment variable name (letters, digits and _, \
                     not starting with a digit)"
                ));
            }
            match std::env::var(name) {
                Ok(value) => value,
                Err(std::env::VarError::NotPresent) => {
                    return Err(format!("env:{name} is not set in detector's environment"));
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(format!("env:{name} is not valid UTF-8"));
                }
            }
        }
        Source::File(path) => {
            if !Path::new(path).is_absolute() {
                return Err(format!("file:{path}: the path must be absolute"));
            }
            // Only the error's kind: the message of a failed read never quotes the file.
            std::fs::read_to_string(path)
                .map_err(|e| format!("file:{path} cannot be read: {}", e.kind()))?
        }
    };
    // A trailing newline is how files (and `echo`) end; it is never part of a key.
    let value = value.trim();
    if value.is_empty() {
        return Err(format!("{reference} is empty"));
    }
    Ok(value.to_owned())
}

/// Headers whose values are credentials by their name: they must not be written in the file.
fn is_credential_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "authorization",
        "cookie",
        "token",
        "secret",
        "key",
        "password",
        "auth",
    ]
    .iter()
    .any(|word| name.contains(word))
}

/// `scheme://host/…`: enough to say what is wrong with a secret URL without its credential.
fn redacted(url: &url::Url) -> String {
    format!("{}://{}/…", url.scheme(), url.host_str().unwrap_or(""))
}

impl Ctx<'_> {
    pub(super) fn alerts(&self, raws: &[Spanned<RawAlert>]) -> Result<Vec<AlertSink>, ConfigError> {
        let mut sinks: Vec<AlertSink> = Vec::with_capacity(raws.len());
        let mut named = Vec::new();
        for raw in raws {
            let sink = self.alert(raw)?;
            if let Some(name) = &raw.get_ref().name {
                if named.contains(name.get_ref()) {
                    return Err(self.at(
                        name.span(),
                        format!("alert name `{}` is used twice", name.get_ref()),
                    ));
                }
                named.push(name.get_ref().clone());
            }
            sinks.push(sink);
        }
        // Unnamed sinks of a kind that appears more than once are told apart by their rank.
        for (i, raw) in raws.iter().enumerate() {
            if raw.get_ref().name.is_some() {
                continue;
            }
            let kind = sinks[i].kind;
            let same: Vec<usize> = (0..sinks.len())
                .filter(|&j| sinks[j].kind == kind)
                .collect();
            if same.len() > 1 {
                let rank = same.iter().position(|&j| j == i).unwrap_or(0) + 1;
                sinks[i].name = format!("{}#{rank}", kind.as_str());
            }
        }
        Ok(sinks)
    }

    fn alert(&self, raw: &Spanned<RawAlert>) -> Result<AlertSink, ConfigError> {
        let RawAlert {
            kind,
            name,
            url,
            headers,
            routing_key,
            timeout,
        } = raw.get_ref();
        let kind = match kind.get_ref().as_str() {
            "webhook" => AlertKind::Webhook,
            "slack" => AlertKind::Slack,
            "alertmanager" => AlertKind::Alertmanager,
            "pagerduty" => AlertKind::Pagerduty,
            other => {
                return Err(self.at(
                    kind.span(),
                    format!(
                        "alert kind = \"{other}\": use \"webhook\", \"slack\", \"alertmanager\" \
                         or \"pagerduty\""
                    ),
                ));
            }
        };
        let label = match name {
            Some(n) => format!("alert `{}`", n.get_ref()),
            None => format!("alert ({})", kind.as_str()),
        };
        let (url, shown) = self.alert_url(&label, kind, url.as_ref(), raw.span())?;
        let routing_key = match (kind, routing_key) {
            (AlertKind::Pagerduty, None) => {
                return Err(self.at(
                    raw.span(),
                    format!(
                        "{label}: PagerDuty needs routing_key = \"env:NAME\" or \"file:/path\""
                    ),
                ));
            }
            (AlertKind::Pagerduty, Some(key)) => Some(self.secret(&label, "routing_key", key)?),
            (_, Some(key)) => {
                return Err(self.at(
                    key.span(),
                    format!("{label}: routing_key is for pagerduty only"),
                ));
            }
            (_, None) => None,
        };
        let mut checked_headers = Vec::new();
        for (header, value) in headers
            .as_ref()
            .map(|h| h.get_ref().iter())
            .into_iter()
            .flatten()
        {
            if reqwest::header::HeaderName::from_bytes(header.as_bytes()).is_err() {
                return Err(self.at(
                    value.span(),
                    format!("{label}: `{header}` is not an HTTP header name"),
                ));
            }
            let secret = if is_credential_header(header) {
                self.secret(&label, &format!("header {header}"), value)?
            } else {
                let text = read_reference(value.get_ref())
                    .map_err(|e| self.at(value.span(), format!("{label}: header {header}: {e}")))?;
                Secret(text)
            };
            if reqwest::header::HeaderValue::from_str(secret.expose()).is_err() {
                return Err(self.at(
                    value.span(),
                    format!("{label}: the value of header {header} is not a valid header value"),
                ));
            }
            checked_headers.push((header.clone(), secret));
        }
        Ok(AlertSink {
            name: name
                .as_ref()
                .map_or_else(|| kind.as_str().to_owned(), |n| n.get_ref().clone()),
            kind,
            url,
            shown,
            headers: checked_headers,
            routing_key,
            timeout: self.duration(timeout.as_ref(), DEFAULT_TIMEOUT, "alert timeout")?,
        })
    }

    /// A value that must come from `env:` or `file:`.
    fn secret(
        &self,
        label: &str,
        what: &str,
        raw: &Spanned<String>,
    ) -> Result<Secret<String>, ConfigError> {
        if matches!(source(raw.get_ref()), Source::Literal(_)) {
            return Err(self.at(
                raw.span(),
                format!(
                    "{label}: {what} is a secret: write \"env:NAME\" or \"file:/path\", not the \
                     value itself"
                ),
            ));
        }
        read_reference(raw.get_ref())
            .map(Secret)
            .map_err(|e| self.at(raw.span(), format!("{label}: {what}: {e}")))
    }

    /// The URL to POST to, and how logs may show it.
    fn alert_url(
        &self,
        label: &str,
        kind: AlertKind,
        raw: Option<&Spanned<String>>,
        whole: std::ops::Range<usize>,
    ) -> Result<(Secret<url::Url>, String), ConfigError> {
        let (text, shown, span, secret) = match raw {
            None if kind == AlertKind::Pagerduty => (
                PAGERDUTY_URL.to_owned(),
                format!("{PAGERDUTY_URL} (the default)"),
                whole,
                false,
            ),
            None => return Err(self.at(whole, format!("{label}: url is missing"))),
            Some(raw) if kind == AlertKind::Slack => {
                // A Slack incoming webhook's URL is its credential.
                let value = self.secret(label, "url (a Slack webhook URL is its secret)", raw)?;
                (value.0, raw.get_ref().clone(), raw.span(), true)
            }
            Some(raw) => {
                let secret = !matches!(source(raw.get_ref()), Source::Literal(_));
                let value = read_reference(raw.get_ref())
                    .map_err(|e| self.at(raw.span(), format!("{label}: url: {e}")))?;
                (value, raw.get_ref().clone(), raw.span(), secret)
            }
        };
        let parsed = url::Url::parse(&text).map_err(|e| {
            let what = if secret {
                format!("the URL in {shown}")
            } else {
                format!("`{text}`")
            };
            self.at(span.clone(), format!("{label}: {what} is not a URL: {e}"))
        })?;
        let what = if secret {
            format!("the URL in {shown} ({})", redacted(&parsed))
        } else {
            format!("`{shown}`")
        };
        if parsed.scheme() == "https" {
            return Err(self.at(
                span,
                format!(
                    "{label}: {what} is https, and detector carries no TLS stack: set url to a \
                     plain-HTTP relay on this host that forwards to it (see the README, \"Alerts\")"
                ),
            ));
        }
        if parsed.scheme() != "http" || parsed.host().is_none() {
            return Err(self.at(span, format!("{label}: {what} must be http:// with a host")));
        }
        let parsed = if kind == AlertKind::Alertmanager {
            alertmanager_endpoint(parsed)
        } else {
            parsed
        };
        Ok((Secret(parsed), shown))
    }
}

/// Alertmanager is configured by its base URL; alerts go to `/api/v2/alerts` under it.
fn alertmanager_endpoint(mut base: url::Url) -> url::Url {
    let path = base.path().trim_end_matches('/').to_owned();
    if !path.ends_with("/api/v2/alerts") {
        base.set_path(&format!("{path}/api/v2/alerts"));
    }
    base
}
