//! The alert sinks' commands, run as an operator would: `check-config` naming a bad `env:`
//! reference, and `alert-test` against a real receiver on loopback (port 18420).

#![expect(
    unused_crate_dependencies,
    reason = "each target of the tests package uses a part of its dependencies"
)]

use serde_json::json;
use tests::{
    machine::tempdir,
    receiver::{Receiver, Script},
};

#[test]
fn check_config_names_a_bad_env_reference() {
    let dir = tempdir::Dir::new("alert-check");
    let file = dir.path().join("detector.toml");
    std::fs::write(
        &file,
        "[[alert]]\nkind = \"pagerduty\"\nurl = \"http://127.0.0.1:18401/pd\"\nrouting_key = \"env:PD-KEY\"\n\n\
         [[alert]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:18401/hook\"\n",
    )
    .expect("config");
    let out = std::process::Command::new(tests::detector_bin())
        .arg("check-config")
        .arg(&file)
        .output()
        .expect("check-config");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:4: alert (pagerduty): routing_key: `env:PD-KEY` is not an environment variable name",
            file.display()
        )),
        "{stderr}"
    );
}

#[test]
fn alert_test_sends_the_sample_to_every_sink_and_says_what_each_answered() {
    let receiver = Receiver::start(
        18420,
        &[
            ("/pd", Script::Status(202)),
            ("/refuses", Script::Status(400)),
        ],
    );
    let dir = tempdir::Dir::new("alert-test");
    let key = dir.path().join("key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").expect("key");
    let file = dir.path().join("detector.toml");
    std::fs::write(
        &file,
        format!(
            "[[alert]]\nkind = \"webhook\"\nurl = \"{}\"\n\n\
             [[alert]]\nkind = \"pagerduty\"\nurl = \"{}\"\nrouting_key = \"file:{}\"\n\n\
             [[alert]]\nkind = \"webhook\"\nname = \"picky\"\nurl = \"{}\"\n",
            receiver.url("/hook"),
            receiver.url("/pd"),
            key.display(),
            receiver.url("/refuses"),
        ),
    )
    .expect("config");
    let out = std::process::Command::new(tests::detector_bin())
        .arg("alert-test")
        .arg(&file)
        .output()
        .expect("alert-test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "one sink refuses: {stdout}");
    for line in [
        &format!("webhook#1 → {}", receiver.url("/hook")),
        "  opened: accepted: status 200: ok",
        "  resolved: accepted: status 200: ok",
        &format!("pagerduty → {}", receiver.url("/pd")),
        "  opened: accepted: status 202: ok",
        &format!("picky → {}", receiver.url("/refuses")),
        "  opened: NOT accepted: status 400: ok",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "no {line:?} in:\n{stdout}"
        );
    }
    let hook = receiver.requests("/hook");
    assert_eq!(
        hook.iter()
            .map(|r| r.body["event"].clone())
            .collect::<Vec<_>>(),
        [json!("opened"), json!("resolved")]
    );
    assert_eq!(
        hook[0].body["incident"]["unit"],
        "detector-alert-test.service"
    );
    let pd = receiver.requests("/pd");
    assert_eq!(pd[1].body["event_action"], "resolve", "{:?}", pd[1].body);
}
