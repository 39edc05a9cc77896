//! One POST to a receiver, retried as Alertmanager retries its own notifications: exponential
//! backoff with jitter (0.5 s, ×1.5, ±50 %, at most 30 s apart) until a deadline. 2xx is
//! delivered; 5xx, 429 and network errors (refused, reset, no answer within the timeout) are
//! retried; any other status is final, and its body is kept for the log. Nothing here names the
//! URL: it may be a secret (Slack's), so errors are stripped of it.

use std::time::Duration;

use tokio::time::Instant;

use crate::kernel::random;

/// How one notice is retried.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retry {
    /// The first wait; each next one is `factor` times longer, at most `max_wait`.
    pub first: Duration,
    pub factor: f64,
    pub max_wait: Duration,
    /// No attempt starts later than this after the first.
    pub deadline: Duration,
}

impl Retry {
    /// Alertmanager's figures (cenkalti/backoff defaults), over two minutes: a receiver down
    /// for longer than that is not coming back for this notice, and later ones are waiting.
    pub(crate) const DEFAULT: Self = Self {
        first: Duration::from_millis(500),
        factor: 1.5,
        max_wait: Duration::from_secs(30),
        deadline: Duration::from_mins(2),
    };

    /// The wait after failed attempt `n` (0-based), before jitter.
    #[must_use]
    pub(crate) fn base_wait(&self, n: u32) -> Duration {
        let factor = self.factor.powi(i32::try_from(n).unwrap_or(i32::MAX));
        self.first.mul_f64(factor.min(1e6)).min(self.max_wait)
    }

    /// The wait after failed attempt `n`, spread ±50 % so that many daemons that lost the same
    /// receiver do not come back at the same instant.
    #[must_use]
    pub(crate) fn wait(&self, n: u32) -> Duration {
        self.base_wait(n).mul_f64(0.5 + random::unit_f64())
    }
}

/// What a receiver did with one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// A status and the start of its body.
    Status(u16, String),
    /// No HTTP answer: the cause, without the URL.
    Network(String),
}

impl Answer {
    /// Whether another attempt may get a different answer.
    #[must_use]
    pub(crate) fn retryable(&self) -> bool {
        match self {
            Self::Status(status, _) => *status == 429 || (500..=599).contains(status),
            Self::Network(_) => true,
        }
    }

    #[must_use]
    pub(crate) fn delivered(&self) -> bool {
        matches!(self, Self::Status(200..=299, _))
    }
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Status(status, body) if body.is_empty() => write!(f, "status {status}"),
            Self::Status(status, body) => write!(f, "status {status}: {body}"),
            Self::Network(cause) => f.write_str(cause),
        }
    }
}

/// How much of an error body is kept for the log.
const BODY_KEPT: usize = 512;

/// One attempt, bounded by the request's timeout.
pub(crate) async fn attempt(request: reqwest::RequestBuilder, timeout: Duration) -> Answer {
    match request.timeout(timeout).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            let body = super::super::words::truncate(body.trim(), BODY_KEPT);
            Answer::Status(status, body)
        }
        Err(e) => Answer::Network(describe(e, timeout)),
    }
}

/// The innermost cause ("Connection refused (os error 111)"), never the URL.
fn describe(error: reqwest::Error, timeout: Duration) -> String {
    if error.is_timeout() {
        return format!("no answer within {timeout:?}");
    }
    let error = error.without_url();
    let mut cause: &dyn std::error::Error = &error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

/// How a notice's delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Delivery {
    pub answer: Answer,
    pub attempts: u32,
}

/// Sends `make()` until it is delivered, refused for good, or the deadline passes. `make`
/// builds the request afresh for each attempt. `failed` is called once, at the first failed
/// attempt, so that a receiver that is down shows in the log at once.
pub(crate) async fn with_retries(
    make: impl Fn() -> reqwest::RequestBuilder,
    timeout: Duration,
    retry: Retry,
    mut failed: impl FnMut(&Answer),
) -> Delivery {
    let started = Instant::now();
    let mut attempts = 0;
    loop {
        let answer = attempt(make(), timeout).await;
        attempts += 1;
        if answer.delivered() || !answer.retryable() {
            return Delivery { answer, attempts };
        }
        if attempts == 1 {
            failed(&answer);
        }
        let wait = retry.wait(attempts - 1);
        if started.elapsed() + wait > retry.deadline {
            return Delivery { answer, attempts };
        }
        tracing::debug!(attempts, %answer, ?wait, "alert not delivered yet; retrying");
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
#[path = "deliver_tests.rs"]
mod tests;
