//! The configuration's documented shape, and its errors naming file and line.

use std::{path::Path, time::Duration};

use super::{CrashLoop, RestartMode, duration::parse_duration, load, parse};

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
        config.policy("fastapi-app.service").is_some() && config.policy("other.service").is_none()
    );
}

/// (configuration, line of the error, what its message says).
const ERRORS: [(&str, usize, &str); 25] = [
    (
        "[[unit]]\nname = \"a.service\"\nhealth = { url = \"http://10.1.2.3:8000/health\" }\n",
        3,
        "host `10.1.2.3` is not loopback; add it to `health_hosts",
    ),
    (
        "[[unit]]\nname = \"a.service\"\nhealth = { url = \"http://127.0.0.1/\", deadline = \"18446744073709551615s\" }\n",
        3,
        "health deadline = \"18446744073709551615s\" is too long",
    ),
    (
        "[[unit]]\nname = \"a.service\"\ncrash_loop = { max_restarts = 2, window = \"25h\" }\n",
        3,
        "crash_loop window = \"25h\" is too long: at most 86400s",
    ),
    (
        "[[unit]]\nname = \"a.service\"\nliveness = { every = \"1s\" }\n",
        3,
        "liveness polls the unit's health check",
    ),
    (
        "[metrics]\nlisten = \"localhost\"\n",
        2,
        "is not an address and port",
    ),
    ("[metrics]\nmax_units = -3\n", 2, "use 0 to 10000"),
    (
        "[history]\n\npath = \"incidents.db\"\n",
        3,
        "must be absolute",
    ),
    ("[history]\nmax_age = \"1y\"\n", 2, "history max_age"),
    ("[journal]\ndeath_entries = -1\n", 2, "use 0 to 4294967295"),
    (
        "[journal]\ninterval = \"0s\"\n",
        2,
        "journal interval must be more than zero",
    ),
    (
        "[journal]\nintervall = \"1s\"\n",
        2,
        "unknown field `intervall`",
    ),
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
        "[[unit]]\nname = \"a.service\"\nhealth = { url = \"http://127.0.0.1/\", expect = 99 }\n",
        3,
        "not an HTTP status",
    ),
    (
        "[[unit]]\nname = \"a.service\"\nhealth = { url = \"http://127.0.0.1/\", timeout = \"1 s\" }\n",
        3,
        "is not a duration",
    ),
    (
        "[[unit]]\nname = \"a.service\"\ncrash_loop = { max_restarts = 0, window = \"5m\" }\n",
        3,
        "use 1 to 1000",
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

#[test]
fn errors_name_the_line_and_the_problem() {
    for (text, line, needle) in ERRORS {
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
fn metrics_and_history_sections() {
    let config = parse(
        "c.toml",
        "[metrics]\nlisten = \"127.0.0.1:9464\"\nmax_units = 5\n\n[history]\npath = \"/tmp/i.db\"\n\
         max_age = \"7d\"\nmax_incidents = 100\n",
    )
    .expect("valid");
    assert_eq!(
        (
            config.metrics.listen.map(|a| a.to_string()),
            config.metrics.max_units
        ),
        (Some("127.0.0.1:9464".to_owned()), 5)
    );
    assert_eq!(
        (
            config.history.path.as_deref(),
            config.history.max_age,
            config.history.max_incidents
        ),
        (
            Some(Path::new("/tmp/i.db")),
            Duration::from_hours(7 * 24),
            100
        )
    );
    // Without the sections: no endpoint, the history at its default path.
    let plain = parse("c.toml", "").expect("valid");
    assert_eq!(
        (plain.metrics.listen, plain.history.path.as_deref()),
        (None, Some(Path::new("/var/lib/detector/incidents.db")))
    );
    let off = parse("c.toml", "[history]\nenabled = false\n").expect("valid");
    assert_eq!(off.history.path, None);
}

#[test]
fn journal_section() {
    let config = parse(
        "c.toml",
        "[journal]\ndeath_entries = 0\ninterval = \"5s\"\n",
    )
    .expect("valid");
    assert_eq!(
        (config.journal.death_entries, config.journal.interval),
        (0, Duration::from_secs(5))
    );
    // Without it: a tenth of journald's default burst, over journald's default interval.
    let plain = parse("c.toml", "[journal]\n").expect("valid");
    assert_eq!(
        (plain.journal.death_entries, plain.journal.interval),
        (1000, Duration::from_secs(30))
    );
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
        ("168h", Some(604_800_000)),
        ("2d", Some(172_800_000)),
        ("3650d", Some(315_360_000_000)),
        ("18446744073709551615m", None),
        ("18446744073709551615h", None),
        ("18446744073709551615d", None),
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

#[test]
fn a_bad_reload_keeps_the_configuration_in_force() {
    let file = std::env::temp_dir().join(format!("detector-live-{}.toml", std::process::id()));
    std::fs::write(&file, "[[unit]]\nname = \"a.service\"\n").expect("write");
    let live = super::Live::new(load(&file).expect("good"));
    assert_eq!(live.version(), 0);
    std::fs::write(
        &file,
        "[[unit]]\nname = \"a.service\"\nrestart = \"sometimes\"\n",
    )
    .expect("write");
    let err = live.reload(&file).expect_err("bad");
    assert_eq!(err.line, 3, "{err}");
    assert_eq!((live.version(), live.get().units.len()), (0, 1));
    std::fs::write(
        &file,
        "[[unit]]\nname = \"a.service\"\n\n[[unit]]\nname = \"b.service\"\n",
    )
    .expect("write");
    let config = live.reload(&file).expect("good again");
    let _ = std::fs::remove_file(&file);
    assert_eq!((live.version(), config.units.len()), (1, 2));
    assert_eq!(live.get().units.len(), 2);
}

#[test]
fn the_packaged_default_configuration_is_accepted() {
    let text = include_str!("../../packaging/config.toml");
    let config = parse("/etc/detector/config.toml", text).expect("packaged config");
    assert!(config.units.is_empty() && config.rules.is_empty());
    // Every example in it, uncommented, is valid too.
    let mut examples = String::new();
    for line in text
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| l.starts_with('[') || l.contains(" = "))
    {
        examples.push_str(line.split("  #").next().unwrap_or(line));
        examples.push('\n');
    }
    let config = parse("examples", &examples).unwrap_or_else(|e| panic!("{e}\n{examples}"));
    assert_eq!(
        (config.units.len(), config.rules.len()),
        (1, 1),
        "{examples}"
    );
}

#[test]
fn health_checks_go_only_where_allowed() {
    let allowed = "health_hosts = [\"app.internal\"]\n[[unit]]\nname = \"a.service\"\n\
                   health = { url = \"http://app.internal:8000/health\", follow_redirects = true }\n";
    let config = parse("c.toml", allowed).expect("an allowed host");
    let health = config.units[0].health.as_ref().expect("health");
    assert!(health.follow_redirects);
    let local = parse(
        "c.toml",
        "[[unit]]\nname = \"a.service\"\nhealth = { url = \"http://localhost:8000/\" }\n",
    )
    .expect("loopback");
    assert!(
        !local.units[0]
            .health
            .as_ref()
            .expect("health")
            .follow_redirects
    );
}
