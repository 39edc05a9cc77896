//! `kind = "slack"`: a Slack incoming webhook's message, `{"text", "blocks"}`. `text` is the
//! notification's fallback (one line); the blocks say the same at length: a header, the cause
//! or the outcome, facts as fields, the journal's tail (opened) or the timeline (resolved), and
//! the incident id. Within Slack's documented limits (api.slack.com/reference/block-kit): at
//! most 50 blocks, 3000 characters a section's text, 10 fields of 2000, a header's 150; and well
//! under the ~13,000 characters in all past which Slack refuses a message.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::{
    incident::{Incident, Notice, Outcome, Phase},
    sinks::words::{self, truncate},
};

pub(crate) const MAX_BLOCKS: usize = 50;
pub(crate) const MAX_SECTION: usize = 3000;
pub(crate) const MAX_HEADER: usize = 150;
pub(crate) const MAX_FIELD: usize = 2000;
/// The cause's detail is a sentence; a very long one is cut well before the section limit so
/// that the whole message stays small.
const MAX_DETAIL: usize = 1000;
/// Journal lines shown (the last ones).
const JOURNAL_LINES: usize = 15;

/// `&`, `<` and `>` are Slack's markup characters; everything else is shown as written.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn mrkdwn(text: &str, max: usize) -> Value {
    json!({"type": "mrkdwn", "text": truncate(text, max)})
}

fn section(text: &str) -> Value {
    json!({"type": "section", "text": mrkdwn(text, MAX_SECTION)})
}

fn fields(facts: &[(&str, String)]) -> Value {
    let fields: Vec<Value> = facts
        .iter()
        .take(10)
        .map(|(name, value)| mrkdwn(&format!("*{name}*\n{}", escape(value)), MAX_FIELD))
        .collect();
    json!({"type": "section", "fields": fields})
}

/// Lines in a code block, the last ones kept when they do not all fit in a section.
fn code_block(title: &str, lines: &[String]) -> String {
    let room = MAX_SECTION - title.len() - 10;
    let mut kept: Vec<String> = Vec::new();
    let mut used = 0;
    for line in lines.iter().rev().take(JOURNAL_LINES) {
        let line = escape(&truncate(line, 300));
        if used + line.chars().count() + 1 > room {
            break;
        }
        used += line.chars().count() + 1;
        kept.push(line);
    }
    kept.reverse();
    format!("*{title}*\n```{}```", kept.join("\n"))
}

/// The timeline as a list, from the start; cut with a count of what is left out.
fn timeline(incident: &Incident) -> String {
    let mut text = String::from("*Timeline*");
    for (n, step) in incident.timeline.iter().enumerate() {
        let time = step.at.get(11..23).unwrap_or(&step.at);
        let line = match &step.detail {
            Some(detail) => format!(
                "\n• `{time}` {} — {}",
                step.step,
                escape(&truncate(detail, 200))
            ),
            None => format!("\n• `{time}` {}", step.step),
        };
        let left = incident.timeline.len() - n;
        if text.chars().count() + line.chars().count() > MAX_SECTION - 40 {
            let _ = write!(text, "\n• … {left} more steps");
            break;
        }
        text.push_str(&line);
    }
    text
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "—".to_owned(), |ms| format!("{ms:.1} ms"))
}

/// The message for one notice.
#[must_use]
pub(crate) fn body(notice: &Notice, host: &str) -> Value {
    let incident = &*notice.incident;
    let context = json!({
        "type": "context",
        "elements": [mrkdwn(&format!("incident `{}` · detector on {}", incident.id, escape(host)), MAX_SECTION)],
    });
    let (text, blocks) = match notice.phase {
        Phase::Opened => {
            let (mark, what) = if incident.role == "worker" {
                (":warning:", "lost a worker")
            } else {
                (":red_circle:", "failed")
            };
            let header = format!("{} {what} on {host}", incident.unit);
            let facts = [
                ("Cause", incident.cause.clone()),
                ("Host", host.to_owned()),
                (
                    "Process",
                    incident.pid.map_or_else(
                        || "—".to_owned(),
                        |p| format!("pid {p} ({})", incident.role),
                    ),
                ),
                ("Deaths", incident.deaths.to_string()),
            ];
            let blocks = vec![
                json!({"type": "header", "text": {"type": "plain_text", "text": truncate(&header, MAX_HEADER)}}),
                section(&format!(
                    "{mark} {}",
                    escape(&truncate(&incident.detail, MAX_DETAIL))
                )),
                fields(&facts),
                section(&code_block("Journal", &incident.journal)),
                context,
            ];
            (
                format!("{mark} {} on {host}", words::opened(incident)),
                blocks,
            )
        }
        Phase::Resolved => {
            let outcome = incident.outcome();
            let mark = match outcome {
                Outcome::Recovered => ":large_green_circle:",
                Outcome::Superseded => ":repeat:",
                Outcome::Down | Outcome::Interrupted => ":red_circle:",
            };
            let header = match outcome {
                Outcome::Recovered => format!("{} recovered on {host}", incident.unit),
                Outcome::Superseded => format!("{} failed again on {host}", incident.unit),
                Outcome::Down | Outcome::Interrupted => {
                    format!("{} still down on {host}", incident.unit)
                }
            };
            let line = words::resolved(incident);
            let facts = [
                ("Cause", incident.cause.clone()),
                (
                    "Outcome",
                    format!("{} ({})", outcome.as_str(), incident.last_step()),
                ),
                ("Crash → restart", ms(incident.crash_to_restart_ms)),
                ("Crash → active", ms(incident.crash_to_active_ms)),
                ("Crash → healthy", ms(incident.crash_to_healthy_ms)),
                ("Deaths", incident.deaths.to_string()),
            ];
            let blocks = vec![
                json!({"type": "header", "text": {"type": "plain_text", "text": truncate(&header, MAX_HEADER)}}),
                section(&format!("{mark} {}", escape(&truncate(&line, MAX_DETAIL)))),
                fields(&facts),
                section(&timeline(incident)),
                context,
            ];
            (format!("{mark} {line}"), blocks)
        }
    };
    debug_assert!(blocks.len() <= MAX_BLOCKS);
    json!({"text": truncate(&escape(&text), MAX_SECTION), "blocks": blocks})
}

#[cfg(test)]
#[path = "slack_tests.rs"]
mod tests;
