//! Why a unit failed, in words an operator can act on.
//!
//! From the death itself: `oom_kill`, `signal`, `exit_code`, and `startup_failure` for a death
//! within the unit's startup grace. From the failed run's journal lines, by rules kept as data
//! (`rules.toml`, and operators' own `[[rule]]`s): `missing_dependency`, `port_in_use`,
//! `missing_env`, and whatever causes operators add. Precedence: an OOM kill is always reported as
//! one; then a matching journal rule (it names the fix); then a signal; then a startup failure;
//! then the exit code.
//!
//! Over 400 lines because half of it is its tests: tables of real journal lines and the causes
//! they give, which belong beside the precedence they check.

use std::time::Duration;

use serde::Deserialize;

use super::exit_status;
use crate::{config::rules::Rule, death::record::ExitRecord};

/// A cause (`oom_kill`, `missing_env`, ...) and its detail in words an operator reads once.
pub(crate) type Cause = (String, String);

#[derive(Deserialize)]
struct RuleFile {
    rule: Vec<RawRule>,
}

#[derive(Deserialize)]
struct RawRule {
    cause: String,
    pattern: String,
    detail: String,
}

/// The built-in rules, from `rules.toml`.
///
/// # Panics
/// Never at run time: a test checks the embedded file parses.
#[must_use]
pub(crate) fn builtin() -> Vec<Rule> {
    let file: RuleFile =
        toml::from_str(include_str!("rules.toml")).unwrap_or_else(|e| panic!("rules.toml: {e}"));
    file.rule
        .into_iter()
        .map(
            |RawRule {
                 cause,
                 pattern,
                 detail,
             }| {
                Rule::new(&cause, &pattern, &detail).unwrap_or_else(|e| panic!("rules.toml: {e}"))
            },
        )
        .collect()
}

/// What a death tells besides its journal.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Context {
    /// Time from the unit's start to the death, when known.
    pub uptime: Option<Duration>,
    /// A death sooner than this after start is a startup failure.
    pub startup_grace: Duration,
}

fn death_cause(record: &ExitRecord) -> Cause {
    if let Some(signal) = &record.signal {
        let core = if record.core_dumped {
            ", core dumped"
        } else {
            ""
        };
        let by = match &record.killed_by {
            Some(k) if k.kernel && k.pid == record.pid => {
                " raised by the kernel (a fault in the process)".to_owned()
            }
            Some(k) if k.kernel => " sent by the kernel".to_owned(),
            Some(k) if k.pid == record.pid => " sent by the process itself".to_owned(),
            Some(k) => format!(" sent by {} (pid {})", k.comm, k.pid),
            None => String::new(),
        };
        return ("signal".to_owned(), format!("killed by {signal}{by}{core}"));
    }
    let code = record
        .exit_code
        .map_or_else(|| "?".to_owned(), |c| c.to_string());
    ("exit_code".to_owned(), format!("exited with status {code}"))
}

/// The cause and its detail for a death, its run's journal lines (oldest first), and `rules`
/// (operators' first, then the built-in ones).
#[must_use]
pub(crate) fn classify(
    record: &ExitRecord,
    journal: &[String],
    rules: &[Rule],
    context: Context,
) -> Cause {
    if let Some(oom) = &record.oom {
        let memory = oom.anon_rss_kb.map_or_else(String::new, |kb| {
            format!(" with {kb} kB of anonymous memory")
        });
        let place = match (oom.constraint.as_deref(), oom.memcg.as_deref()) {
            (Some("memcg"), Some(memcg)) => format!(": memory cgroup {memcg} reached its limit"),
            (Some("global"), _) => ": the host ran out of memory".to_owned(),
            _ => String::new(),
        };
        return (
            "oom_kill".to_owned(),
            format!("killed by the OOM killer{memory}{place}"),
        );
    }
    for line in journal.iter().rev() {
        if let Some((rule, detail)) = rules.iter().find_map(|r| r.apply(line).map(|d| (r, d))) {
            return (rule.cause.clone(), detail);
        }
    }
    // systemd's own verdict, when it ended the run itself (a timeout, the watchdog, ...).
    if let Some(outcome) = systemd_result(journal)
        .and_then(exit_status::outcome)
        .filter(|o| !matches!(o.cause.as_str(), "none" | "from_status" | "signal"))
    {
        return (
            outcome.cause.clone(),
            format!(
                "systemd ended the run with Result={}: {}",
                outcome.result, outcome.meaning
            ),
        );
    }
    // A status systemd's own child exited with, before the program ran.
    if let Some(status) = record
        .exit_code
        .and_then(exit_status::status)
        .filter(|s| s.cause != "app_exit")
    {
        return (
            status.cause.clone(),
            format!(
                "exited with status {}/{}: {}",
                status.code, status.name, status.meaning
            ),
        );
    }
    let (cause, detail) = death_cause(record);
    if cause == "exit_code"
        && let Some(uptime) = context.uptime.filter(|u| *u < context.startup_grace)
    {
        return (
            "startup_failure".to_owned(),
            format!("{detail} {} ms after it started", uptime.as_millis()),
        );
    }
    (cause, detail)
}

/// The cause of a run systemd failed without a death of ours (no process ran, or none failed):
/// a journal rule, else systemd's `Result=`, else a plain failure.
#[must_use]
pub(crate) fn classify_run(journal: &[String], rules: &[Rule]) -> Cause {
    for line in journal.iter().rev() {
        if let Some((rule, detail)) = rules.iter().find_map(|r| r.apply(line).map(|d| (r, d))) {
            return (rule.cause.clone(), detail);
        }
    }
    match systemd_result(journal).and_then(exit_status::outcome) {
        Some(outcome) => (
            outcome.cause.clone(),
            format!(
                "systemd failed the unit with Result={}: {}",
                outcome.result, outcome.meaning
            ),
        ),
        None => (
            "failed".to_owned(),
            "systemd reports the unit failed; no process of it died".to_owned(),
        ),
    }
}

/// systemd's `Result=` for the run, from PID 1's "Failed with result 'timeout'." (the newest).
#[must_use]
pub(crate) fn systemd_result(journal: &[String]) -> Option<&str> {
    journal.iter().rev().find_map(|line| {
        let rest = line.split_once("Failed with result '")?.1;
        rest.split_once('\'').map(|(result, _)| result)
    })
}

/// The cause told by the death alone (`oom_kill`, `signal`, `exit_code`), before its journal
/// lines and its run's start are known.
#[must_use]
pub(crate) fn from_death(record: &ExitRecord) -> Cause {
    let unknown = Context {
        uptime: None,
        startup_grace: Duration::ZERO,
    };
    classify(record, &[], &[], unknown)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::death::record::{KilledBy, OomRecord};

    pub(crate) fn record() -> ExitRecord {
        ExitRecord {
            kind: "exit",
            time: "t".into(),
            pid: 10,
            ppid: 1,
            tid: 10,
            comm: "python3".into(),
            cgroup: None,
            cgroup_id: 1,
            unit: Some("app.service".into()),
            user_unit: None,
            invocation_id: None,
            role: Some("main"),
            exit_code: Some(1),
            signal: None,
            core_dumped: false,
            wait_status: 1 << 8,
            oom: None,
            killed_by: None,
            latency_us: 0,
            ktime_ns: 0,
            spawned: true,
            ns_pid: 0,
        }
    }

    const LATE: Context = Context {
        uptime: Some(Duration::from_mins(10)),
        startup_grace: Duration::from_secs(10),
    };

    fn lines(text: &[&str]) -> Vec<String> {
        text.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn journal_rules_name_the_common_causes() {
        let rules = builtin();
        let cases: [(&[&str], &str, &str); 6] = [
            (
                &[
                    "Traceback (most recent call last):",
                    "ModuleNotFoundError: No module named 'fastapi'",
                ],
                "missing_dependency",
                "Python module 'fastapi' is not installed",
            ),
            (
                &[
                    "/opt/app/bin: error while loading shared libraries: libssl.so.3: cannot open shared object file",
                ],
                "missing_dependency",
                "shared library libssl.so.3 is missing",
            ),
            (
                &[
                    "ERROR:    [Errno 98] error while attempting to bind on address ('0.0.0.0', 8000): address already in use",
                ],
                "port_in_use",
                "the address it listens on is already in use",
            ),
            (
                &[
                    "    raise KeyError(key) from None",
                    "KeyError: 'DATABASE_URL'",
                ],
                "missing_env",
                "environment variable DATABASE_URL is not set",
            ),
            (
                &["fatal: environment variable \"API_TOKEN\" not set"],
                "missing_env",
                "environment variable API_TOKEN is not set",
            ),
            (
                &["starting", "all good"],
                "exit_code",
                "exited with status 1",
            ),
        ];
        for (journal, cause, detail) in cases {
            assert_eq!(
                classify(&record(), &lines(journal), &rules, LATE),
                (cause.to_owned(), detail.to_owned()),
                "{journal:?}"
            );
        }
    }

    #[test]
    fn systemd_s_own_failures_are_named() {
        let rules = builtin();
        let mut r = record();
        let cases: [(Option<u8>, &[&str], &str, &str); 7] = [
            (
                Some(203),
                &[
                    "app.service: Failed at step EXEC spawning /opt/venv/bin/uvicorn: No such file or directory",
                    "app.service: Main process exited, code=exited, status=203/EXEC",
                ],
                "missing_dependency",
                "systemd cannot run the ExecStart= program /opt/venv/bin/uvicorn (No such file or directory): is its package or virtualenv installed?",
            ),
            (
                Some(217),
                &["app.service: Failed to determine user credentials: No such process"],
                "unknown_user",
                "the unit's user cannot be resolved (No such process): does it exist on this host?",
            ),
            (
                Some(200),
                &[
                    "app.service: Changing to the requested working directory failed: No such file or directory",
                ],
                "missing_working_directory",
                "the unit's WorkingDirectory= cannot be entered (No such file or directory)",
            ),
            (
                None,
                &[
                    "app.service: Failed to load environment files: No such file or directory",
                    "app.service: Failed with result 'resources'.",
                ],
                "missing_env",
                "the unit's EnvironmentFile= cannot be read (No such file or directory)",
            ),
            (
                None,
                &[
                    "app.service: start operation timed out. Terminating.",
                    "app.service: Failed with result 'timeout'.",
                ],
                "timeout",
                "the unit did not finish starting within TimeoutStartSec=: systemd stopped it",
            ),
            (
                Some(226),
                &["app.service: Main process exited, code=exited, status=226/NAMESPACE"],
                "sandbox_setup",
                "exited with status 226/NAMESPACE: ",
            ),
            (
                Some(1),
                &["app.service: Failed with result 'start-limit-hit'."],
                "start_limit",
                "systemd ended the run with Result=start-limit-hit: ",
            ),
        ];
        for (code, journal, cause, detail) in cases {
            r.exit_code = code;
            let (got, words) = classify(&r, &lines(journal), &rules, LATE);
            assert_eq!(got, cause, "{journal:?}: {words}");
            assert!(words.starts_with(detail), "{journal:?}: {words}");
        }
    }

    #[test]
    fn precedence() {
        let rules = builtin();
        let mut r = record();
        let early = Context {
            uptime: Some(Duration::from_millis(1500)),
            startup_grace: Duration::from_secs(10),
        };
        // A crash during start-up with no better explanation.
        assert_eq!(
            classify(&r, &lines(&["ValueError: boom"]), &rules, early),
            (
                "startup_failure".into(),
                "exited with status 1 1500 ms after it started".into()
            )
        );
        // A journal rule beats the startup failure: it names the fix.
        assert_eq!(
            classify(&r, &lines(&["KeyError: 'DATABASE_URL'"]), &rules, early).0,
            "missing_env"
        );
        // The newest matching line wins.
        let both = lines(&[
            "ModuleNotFoundError: No module named 'old'",
            "KeyError: 'NEW_VAR'",
        ]);
        assert_eq!(classify(&r, &both, &rules, LATE).0, "missing_env");
        // Signals are themselves the explanation.
        r.exit_code = None;
        r.signal = Some("SIGKILL".into());
        r.killed_by = Some(KilledBy {
            pid: 77,
            comm: "bash".into(),
            kernel: false,
            si_code: 0,
        });
        assert_eq!(
            classify(&r, &[], &rules, early),
            (
                "signal".into(),
                "killed by SIGKILL sent by bash (pid 77)".into()
            )
        );
        // An OOM kill is always one.
        r.oom = Some(OomRecord {
            total_vm_kb: Some(1),
            anon_rss_kb: Some(65000),
            file_rss_kb: None,
            shmem_rss_kb: None,
            oom_score_adj: None,
            constraint: Some("memcg".into()),
            memcg: Some("/system.slice/app.service".into()),
            memcg_id: Some(5),
            trigger_pid: 10,
            trigger_comm: "python3".into(),
        });
        assert_eq!(
            classify(&r, &lines(&["KeyError: 'X'"]), &rules, early),
            ("oom_kill".into(), "killed by the OOM killer with 65000 kB of anonymous memory: memory cgroup /system.slice/app.service reached its limit".into())
        );
    }

    #[test]
    fn operator_rules_come_first() {
        let mut rules = vec![
            Rule::new(
                "database_down",
                "could not connect to server: (.+)",
                "the database is unreachable: $1",
            )
            .expect("rule"),
        ];
        rules.extend(builtin());
        let journal =
            lines(&["psycopg2.OperationalError: could not connect to server: Connection refused"]);
        assert_eq!(
            classify(&record(), &journal, &rules, LATE),
            (
                "database_down".into(),
                "the database is unreachable: Connection refused".into()
            )
        );
    }
}
