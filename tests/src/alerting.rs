//! The alert scenario's setting (tests/tests/alerts.rs): a recording receiver on 127.0.0.1:18401
//! whose paths answer as real receivers do (202 for PagerDuty, 503 twice then 200, always 500),
//! one that never answers on 18402, nothing on 18409, a real Alertmanager on 18490, the machine
//! with the demo service on 18405 and detector's catalog, and the daemon with one sink of each
//! kind, secrets from `env:` and `file:`.

use crate::{
    Daemon,
    alertmanager::Alertmanager,
    incidents::{demo, policy},
    machine::{Machine, tempdir},
    receiver::{Receiver, Script},
};

/// The unit the scenario kills.
pub const UNIT: &str = "demo-alert.service";

/// The configuration: the unit's policy and every sink, secrets written to `files`.
fn config(receiver: &Receiver, files: &tempdir::Dir) -> String {
    let slack = files.path().join("slack-url");
    std::fs::write(
        &slack,
        format!("{}\n", receiver.url("/slack/T000/B000/XXXXSECRET")),
    )
    .expect("slack url");
    let key = files.path().join("pd-key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").expect("routing key");
    format!(
        "{policy}
[[alert]]
kind = \"webhook\"
url = \"{hook}\"
headers = {{ Authorization = \"env:DETECTOR_TEST_HOOK_TOKEN\" }}

[[alert]]
kind = \"slack\"
url = \"file:{slack}\"

[[alert]]
kind = \"pagerduty\"
url = \"{pd}\"
routing_key = \"file:{key}\"

[[alert]]
kind = \"alertmanager\"
url = \"http://127.0.0.1:18490\"

[[alert]]
kind = \"webhook\"
name = \"flaky\"
url = \"{flaky}\"

[[alert]]
kind = \"webhook\"
name = \"answers-500\"
url = \"{fail}\"

[[alert]]
kind = \"webhook\"
name = \"never-answers\"
url = \"http://127.0.0.1:18402/hook\"
timeout = \"1s\"

[[alert]]
kind = \"webhook\"
name = \"closed-port\"
url = \"http://127.0.0.1:18409/hook\"
",
        policy = policy(UNIT, "restart", 18405),
        hook = receiver.url("/hook"),
        slack = slack.display(),
        pd = receiver.url("/pd/v2/enqueue"),
        key = key.display(),
        flaky = receiver.url("/flaky"),
        fail = receiver.url("/fail"),
    )
}

/// Everything the scenario runs against, dropped in this order: the daemon first, then the
/// machine, the receivers and the secrets' files.
pub struct World {
    pub daemon: Daemon,
    pub machine: Machine,
    pub am: Alertmanager,
    pub receiver: Receiver,
    _silent: Receiver,
    _files: tempdir::Dir,
}

/// Starts everything.
///
/// # Panics
/// If a port is taken or anything does not start.
#[must_use]
pub fn world() -> World {
    // Nothing may listen where the closed-port sink points.
    drop(std::net::TcpListener::bind("127.0.0.1:18409").expect("port 18409 is free"));
    let flaky = Script::FailFirst {
        tries: 2,
        first: 503,
        then: 200,
    };
    let receiver = Receiver::start(
        18401,
        &[
            ("/pd/v2/enqueue", Script::Status(202)),
            ("/flaky", flaky),
            ("/fail", Script::Status(500)),
        ],
    );
    let silent = Receiver::start(18402, &[("/hook", Script::Silent)]);
    let am = Alertmanager::start(18490, &receiver.url("/am-webhook"));
    // The restarted service takes 1.5 s to listen: the alert stays firing long enough to be
    // seen in Alertmanager's API.
    let unit = demo("ok", 18405, "Environment=DEMO_STARTUP_DELAY=1.5\n");
    let machine = Machine::boot_with(
        &[(UNIT, &unit)],
        &[
            (
                concat!(env!("CARGO_MANIFEST_DIR"), "/demo/app.py"),
                "/opt/demo/app.py",
            ),
            (
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../detector/catalog/detector.catalog"
                ),
                "/usr/lib/systemd/catalog/detector.catalog",
            ),
        ],
    );
    let files = tempdir::Dir::new("alert-secrets");
    let config_file = files.path().join("detector.toml");
    std::fs::write(&config_file, config(&receiver, &files)).expect("config");
    let daemon = Daemon::start_with_env(
        &[
            "--root",
            &machine.root(),
            "--config",
            &config_file.display().to_string(),
            "--output",
            "both",
        ],
        &[("DETECTOR_TEST_HOOK_TOKEN", "Bearer t0ken")],
    );
    World {
        daemon,
        machine,
        am,
        receiver,
        _silent: silent,
        _files: files,
    }
}
