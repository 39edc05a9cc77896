//! Alert sinks (`[[alert]]`): each incident's two notices, opened and resolved, to a webhook,
//! Slack, Alertmanager or PagerDuty.
//!
//! Each sink runs on a task of its own, fed by a bounded [`queue`] the main loop pushes into
//! without waiting (past the bound the oldest notice is dropped, counted and logged). The task
//! sends one notice at a time, in order, retrying as [`deliver`] says; a receiver that is down,
//! slow or refuses is logged with the sink's name, never with a secret. Delivery never holds up
//! detection or recovery.

mod alertmanager;
mod deliver;
mod pagerduty;
mod queue;
pub(crate) mod sample;
mod slack;
mod webhook;

use std::{sync::Arc, time::Duration};

use serde_json::Value;
use tokio::task::JoinHandle;

use self::{
    deliver::{Answer, Retry},
    queue::Queue,
};
use crate::{
    config::alerts::{AlertKind, AlertSink},
    incident::{Notice, Phase},
};

/// Notices a sink may hold before the oldest is dropped: a receiver down for a while still
/// gets the latest of a crash loop's conversation.
const QUEUE: usize = 256;

/// The HTTP client of every sink. No proxy from the environment (`HTTP_PROXY`): receivers are
/// named by the configuration, and TLS would be needed to reach most proxies' far side anyway.
/// Redirects are not followed: a POST redirected is a wrong URL, better said than guessed.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("detector/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_else(|e| {
            // Building fails only when the TLS backend or resolver cannot start; we have neither.
            tracing::error!(error = %e, "cannot build the alerts' HTTP client; using the default");
            reqwest::Client::new()
        })
}

/// How one sink turns notices into request bodies; Alertmanager's remembers what it fired.
enum Format {
    Webhook,
    Slack,
    Alertmanager(alertmanager::State),
    Pagerduty,
}

impl Format {
    fn new(kind: AlertKind) -> Self {
        match kind {
            AlertKind::Webhook => Self::Webhook,
            AlertKind::Slack => Self::Slack,
            AlertKind::Alertmanager => Self::Alertmanager(alertmanager::State::default()),
            AlertKind::Pagerduty => Self::Pagerduty,
        }
    }

    /// The body to POST, or None when this notice needs none.
    fn body(&mut self, sink: &AlertSink, notice: &Notice, host: &str) -> Option<Value> {
        match self {
            Self::Webhook => Some(webhook::body(notice, host)),
            Self::Slack => Some(slack::body(notice, host)),
            Self::Alertmanager(state) => {
                let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
                let body = state.body(notice, host, &now);
                body.as_array()
                    .is_some_and(|a| !a.is_empty())
                    .then_some(body)
            }
            Self::Pagerduty => {
                let key = sink
                    .routing_key
                    .as_ref()
                    .map_or("", |k| k.expose().as_str());
                Some(pagerduty::body(notice, host, key))
            }
        }
    }
}

fn request(client: &reqwest::Client, sink: &AlertSink, body: &[u8]) -> reqwest::RequestBuilder {
    let mut request = client
        .post(sink.url.expose().clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_vec());
    for (name, value) in &sink.headers {
        request = request.header(name.as_str(), value.expose().as_str());
    }
    request
}

/// `opened 3f2a…` / `resolved 3f2a…`: which notice, in a log line.
fn what(notice: &Notice) -> String {
    let phase = match notice.phase {
        Phase::Opened => "opened",
        Phase::Resolved => "resolved",
    };
    format!(
        "{phase} notice of incident {} ({})",
        notice.incident.id, notice.incident.unit
    )
}

/// A sink's task: one notice at a time, in order, until the queue is closed and empty.
async fn run(sink: AlertSink, host: String, queue: Arc<Queue<Notice>>, retry: Retry) {
    let client = client();
    let mut format = Format::new(sink.kind);
    while let Some(notice) = queue.pop().await {
        let Some(body) = format.body(&sink, &notice, &host) else {
            continue;
        };
        let body = body.to_string().into_bytes();
        let what = what(&notice);
        let delivery = deliver::with_retries(
            || request(&client, &sink, &body),
            sink.timeout,
            retry,
            |answer| {
                tracing::warn!(sink = sink.name, to = sink.shown, %answer, "alert not delivered ({what}); retrying");
            },
        )
        .await;
        let (answer, attempts) = (delivery.answer, delivery.attempts);
        if answer.delivered() {
            tracing::debug!(sink = sink.name, attempts, %answer, "alert delivered ({what})");
        } else if answer.retryable() {
            tracing::error!(sink = sink.name, to = sink.shown, attempts, %answer, "alert dropped after {:?} of retries ({what})", retry.deadline);
        } else {
            tracing::error!(sink = sink.name, to = sink.shown, %answer, "alert refused, not retried ({what})");
        }
    }
}

struct Running {
    name: String,
    queue: Arc<Queue<Notice>>,
    task: JoinHandle<()>,
}

/// Every configured sink's task and queue.
pub(crate) struct Alerts {
    sinks: Vec<Running>,
}

impl Alerts {
    /// Starts one task per sink, on the current tokio runtime.
    pub(crate) fn spawn(sinks: &[AlertSink], host: &str) -> Self {
        let sinks = sinks
            .iter()
            .map(|sink| {
                let queue = Arc::new(Queue::new(QUEUE));
                let task = tokio::spawn(run(
                    sink.clone(),
                    host.to_owned(),
                    Arc::clone(&queue),
                    Retry::DEFAULT,
                ));
                Running {
                    name: sink.name.clone(),
                    queue,
                    task,
                }
            })
            .collect();
        Self { sinks }
    }

    /// Queues a notice for every sink; never waits.
    pub(crate) fn notice(&self, notice: &Notice) {
        for sink in &self.sinks {
            if let Some((old, dropped)) = sink.queue.push(notice.clone()) {
                tracing::warn!(
                    sink = sink.name,
                    dropped,
                    "alert queue full ({QUEUE}): dropped the oldest notice, the {}",
                    what(&old)
                );
            }
        }
    }

    /// At shutdown: the sinks have `grace` to send what they hold; what is left is counted.
    pub(crate) async fn finish(self, grace: Duration) {
        for sink in &self.sinks {
            sink.queue.close();
        }
        let deadline = tokio::time::Instant::now() + grace;
        for mut sink in self.sinks {
            let ended = tokio::time::timeout_at(deadline, &mut sink.task).await;
            if let Ok(Err(e)) = &ended {
                // A panic: what it held is lost; it is said, not dropped.
                tracing::error!(sink = sink.name, error = %e, "an alert sink's task failed");
            }
            if ended.is_err() {
                sink.task.abort();
                let (left, dropped) = sink.queue.counts();
                tracing::warn!(
                    sink = sink.name,
                    left,
                    dropped,
                    "stopping with alerts not sent"
                );
            }
        }
    }
}

/// `detector alert-test`: the sample incident's two notices to every sink, one attempt each;
/// returns, per sink, what its receiver answered to each.
pub(crate) async fn test(sinks: &[AlertSink], host: &str) -> Vec<(String, Vec<(Phase, Answer)>)> {
    let client = client();
    let (opened, resolved) = sample::notices();
    let mut report = Vec::new();
    for sink in sinks {
        let mut format = Format::new(sink.kind);
        let mut answers = Vec::new();
        for notice in [&opened, &resolved] {
            if let Some(body) = format.body(sink, notice, host) {
                let body = body.to_string().into_bytes();
                let answer = deliver::attempt(request(&client, sink, &body), sink.timeout).await;
                answers.push((notice.phase, answer));
            }
        }
        report.push((format!("{} → {}", sink.name, sink.shown), answers));
    }
    report
}
