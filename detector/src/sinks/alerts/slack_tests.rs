//! Slack's documented shape and limits, for a real-looking incident and one far past them.

use serde_json::Value;

use super::{MAX_BLOCKS, MAX_FIELD, MAX_HEADER, MAX_SECTION, body};
use crate::sinks::alerts::sample;

fn chars(value: &Value) -> usize {
    value.as_str().map_or(0, |s| s.chars().count())
}

/// Checks one message against Block Kit's rules for the blocks we use.
fn check(message: &Value) {
    let text = message["text"]
        .as_str()
        .expect("text is the notification fallback");
    assert!(!text.is_empty() && chars(&message["text"]) <= MAX_SECTION);
    let blocks = message["blocks"].as_array().expect("blocks");
    assert!(
        !blocks.is_empty() && blocks.len() <= MAX_BLOCKS,
        "{} blocks",
        blocks.len()
    );
    for block in blocks {
        match block["type"].as_str() {
            Some("header") => {
                assert_eq!(block["text"]["type"], "plain_text");
                assert!(chars(&block["text"]["text"]) <= MAX_HEADER, "{block}");
            }
            Some("section") => {
                if let Some(fields) = block["fields"].as_array() {
                    assert!(fields.len() <= 10);
                    for field in fields {
                        assert_eq!(field["type"], "mrkdwn");
                        assert!(chars(&field["text"]) <= MAX_FIELD);
                    }
                } else {
                    assert_eq!(block["text"]["type"], "mrkdwn");
                    let n = chars(&block["text"]["text"]);
                    assert!(n > 0 && n <= MAX_SECTION, "section of {n} characters");
                }
            }
            Some("context") => {
                let elements = block["elements"].as_array().expect("elements");
                assert!(!elements.is_empty() && elements.len() <= 10);
            }
            other => panic!("unexpected block type {other:?}"),
        }
    }
    // Slack refuses messages near 13,000 characters in all (msg_blocks_too_long).
    let total = message.to_string().chars().count();
    assert!(total < 12_000, "{total} characters");
}

#[test]
fn a_real_incident_fits_and_says_what_happened() {
    let (opened, resolved) = sample::notices();
    let message = body(&opened, "web-1");
    check(&message);
    let text = message["text"].as_str().unwrap_or_default();
    assert!(
        text.starts_with(
            ":red_circle: detector-alert-test.service failed (signal): killed by SIGKILL"
        ),
        "{text}"
    );
    let journal = message["blocks"][3]["text"]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(journal.contains("status=9/KILL"), "{journal}");
    assert!(message.to_string().contains(&opened.incident.id));

    let message = body(&resolved, "web-1");
    check(&message);
    let text = message["text"].as_str().unwrap_or_default();
    assert_eq!(
        text,
        ":large_green_circle: detector-alert-test.service recovered: healthy 72.1 ms after the \
         failure (detector restarted it)"
    );
    let timeline = message["blocks"][3]["text"]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(timeline.contains("health_ok"), "{timeline}");
}

#[test]
fn a_huge_incident_stays_within_the_limits_and_escapes_markup() {
    let (opened, resolved) = sample::huge();
    for notice in [opened, resolved] {
        let message = body(&notice, "web-1");
        check(&message);
        let all = message.to_string();
        assert!(
            !all.contains("<tag>") && !all.contains("<b>"),
            "markup is escaped"
        );
    }
    let message = body(&sample::huge().0, "web-1");
    // The journal's last line is kept, not its first.
    let journal = message["blocks"][3]["text"]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(
        journal.contains("line 9999 ") && !journal.contains("line 0 "),
        "{journal}"
    );
    let message = body(&sample::huge().1, "web-1");
    let timeline = message["blocks"][3]["text"]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(timeline.contains("more steps"), "{timeline}");
}
