//! `[[alert]]`: the documented shape, and errors that name the reference, never the secret.

use std::time::Duration;

use super::{super::parse, AlertKind};

/// A file holding `text`, removed on drop.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(tag: &str, text: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("detector-alert-test-{tag}-{}", std::process::id()));
        std::fs::write(&path, text).expect("write the temporary file");
        Self(path)
    }

    fn reference(&self) -> String {
        format!("file:{}", self.0.display())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn the_documented_shape_parses() {
    let slack = TempFile::new("slack", "http://127.0.0.1:9098/services/T0/B0/XXXX\n");
    let key = TempFile::new("key", "0123456789abcdef0123456789abcdef\n");
    let text = format!(
        r#"
[[alert]]
kind = "webhook"
url = "http://127.0.0.1:9099/hook"
headers = {{ Authorization = "env:PATH", X-Source = "detector" }}

[[alert]]
kind = "slack"
url = "{slack}"

[[alert]]
kind = "alertmanager"
url = "http://127.0.0.1:9093"

[[alert]]
kind = "pagerduty"
name = "on-call"
url = "http://127.0.0.1:9097/v2/enqueue"
routing_key = "{key}"
timeout = "3s"
"#,
        slack = slack.reference(),
        key = key.reference()
    );
    let config = parse("c.toml", &text).expect("valid");
    let kinds: Vec<_> = config
        .alerts
        .iter()
        .map(|a| (a.kind, a.name.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            (AlertKind::Webhook, "webhook"),
            (AlertKind::Slack, "slack"),
            (AlertKind::Alertmanager, "alertmanager"),
            (AlertKind::Pagerduty, "on-call"),
        ]
    );
    let [webhook, slack_sink, am, pd] = &config.alerts[..] else {
        panic!("four sinks");
    };
    assert_eq!(webhook.headers[0].0, "Authorization");
    assert_eq!(
        webhook.headers[0].1.expose(),
        &std::env::var("PATH").expect("PATH")
    );
    assert_eq!(webhook.headers[1].1.expose(), "detector");
    // The file's trailing newline is not part of the URL; logs show the reference.
    assert_eq!(
        slack_sink.url.expose().as_str(),
        "http://127.0.0.1:9098/services/T0/B0/XXXX"
    );
    assert_eq!(slack_sink.shown, slack.reference());
    assert_eq!(
        am.url.expose().as_str(),
        "http://127.0.0.1:9093/api/v2/alerts"
    );
    assert_eq!(
        pd.routing_key.as_ref().map(|k| k.expose().as_str()),
        Some("0123456789abcdef0123456789abcdef")
    );
    assert_eq!(
        (pd.timeout, webhook.timeout),
        (Duration::from_secs(3), Duration::from_secs(10))
    );
    // Debug output (a log of the config) shows no secret.
    let debug = format!("{config:?}");
    assert!(
        !debug.contains("XXXX") && !debug.contains("0123456789abcdef"),
        "{debug}"
    );
}

#[test]
fn sinks_of_one_kind_are_numbered() {
    let text = "[[alert]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:1/a\"\n\
                [[alert]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:1/b\"\n";
    let config = parse("c.toml", text).expect("valid");
    let names: Vec<_> = config.alerts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["webhook#1", "webhook#2"]);
}

/// The error for `alert` (a TOML `[[alert]]` table body), which must contain `want`.
fn error(alert: &str) -> String {
    let text = format!("\n[[alert]]\n{alert}\n");
    parse("c.toml", &text)
        .map(|_| ())
        .expect_err("must be refused")
        .to_string()
}

#[test]
fn bad_sinks_are_refused_with_file_and_line() {
    let secret_file = TempFile::new(
        "https",
        "https://hooks.slack.com/services/T0/B0/SECRETPART\n",
    );
    let cases = [
        (
            "kind = \"email\"\nurl = \"http://x/\"",
            "c.toml:3: alert kind = \"email\": use",
        ),
        (
            "kind = \"webhook\"",
            "c.toml:2: alert (webhook): url is missing",
        ),
        (
            "kind = \"webhook\"\nurl = \"http://127.0.0.1:1/\"\ncolour = \"red\"",
            "c.toml:5: unknown field `colour`",
        ),
        (
            "kind = \"webhook\"\nurl = \"ftp://127.0.0.1/\"",
            "c.toml:4: alert (webhook): `ftp://127.0.0.1/` must be http:// with a host",
        ),
        (
            "kind = \"alertmanager\"\nurl = \"https://am.example:9093\"",
            "c.toml:4: alert (alertmanager): `https://am.example:9093` is https, and detector \
             carries no TLS stack",
        ),
        (
            "kind = \"pagerduty\"\nrouting_key = \"env:PATH\"",
            "alert (pagerduty): `https://events.pagerduty.com/v2/enqueue (the default)` is https",
        ),
        (
            "kind = \"pagerduty\"\nurl = \"http://127.0.0.1:1/\"\nrouting_key = \"R0UT1NGKEY\"",
            "c.toml:5: alert (pagerduty): routing_key is a secret: write \"env:NAME\" or \
             \"file:/path\", not the value itself",
        ),
        (
            "kind = \"pagerduty\"\nurl = \"http://127.0.0.1:1/\"",
            "alert (pagerduty): PagerDuty needs routing_key",
        ),
        (
            "kind = \"webhook\"\nurl = \"http://127.0.0.1:1/\"\nrouting_key = \"env:PATH\"",
            "c.toml:5: alert (webhook): routing_key is for pagerduty only",
        ),
        (
            "kind = \"slack\"\nurl = \"http://127.0.0.1:1/services/T/B/LITERALSECRET\"",
            "alert (slack): url (a Slack webhook URL is its secret) is a secret",
        ),
        (
            "kind = \"webhook\"\nurl = \"http://127.0.0.1:1/\"\n\
             headers = { Authorization = \"Bearer LITERALTOKEN\" }",
            "c.toml:5: alert (webhook): header Authorization is a secret",
        ),
        (
            "kind = \"webhook\"\nurl = \"http://127.0.0.1:1/\"\nheaders = { \"Bad Name\" = \"x\" }",
            "`Bad Name` is not an HTTP header name",
        ),
        (
            "kind = \"webhook\"\nurl = \"http://127.0.0.1:1/\"\ntimeout = \"soon\"",
            "c.toml:5: alert timeout: `soon` is not a duration",
        ),
    ];
    for (alert, want) in cases {
        let got = error(alert);
        assert!(got.contains(want), "{alert:?}\n got: {got}\nwant: {want}");
    }
    let got = error(&format!(
        "kind = \"slack\"\nurl = \"{}\"",
        secret_file.reference()
    ));
    assert!(
        got.contains(&format!(
            "the URL in {} (https://hooks.slack.com/…) is https",
            secret_file.reference()
        )),
        "{got}"
    );
    for leaked in ["SECRETPART", "R0UT1NGKEY", "LITERALTOKEN", "LITERALSECRET"] {
        assert!(!got.contains(leaked), "{got}");
    }
}

#[test]
fn bad_references_are_named_and_never_their_value() {
    let empty = TempFile::new("empty", "\n");
    let cases = [
        (
            "env:NOT-A-NAME".to_owned(),
            "`env:NOT-A-NAME` is not an environment variable name".to_owned(),
        ),
        (
            "env:DETECTOR_TEST_SURELY_UNSET_9F2".to_owned(),
            "env:DETECTOR_TEST_SURELY_UNSET_9F2 is not set in detector's environment".to_owned(),
        ),
        (
            "file:/nonexistent/detector/key".to_owned(),
            "file:/nonexistent/detector/key cannot be read: entity not found".to_owned(),
        ),
        (
            "file:relative/key".to_owned(),
            "file:relative/key: the path must be absolute".to_owned(),
        ),
        (empty.reference(), format!("{} is empty", empty.reference())),
    ];
    for (reference, want) in cases {
        let got = error(&format!(
            "kind = \"pagerduty\"\nurl = \"http://127.0.0.1:1/\"\nrouting_key = \"{reference}\""
        ));
        assert!(
            got.starts_with("c.toml:5: alert (pagerduty): routing_key: ") && got.contains(&want),
            "{reference}: {got}"
        );
    }
    // An env: URL that is set but is not a URL: the error names the variable, not its value.
    let got = error("kind = \"webhook\"\nurl = \"env:PATH\"");
    assert!(got.contains("the URL in env:PATH is not a URL"), "{got}");
    assert!(!got.contains("/usr"), "{got}");
}
