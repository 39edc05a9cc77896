//! systemd's own exit statuses (200-255, its child failing before `execve()`) and its `Result=`
//! values, as data (`exit_status.toml`): what a "status=203/EXEC" or a "Failed with result
//! 'timeout'" means for an operator, and the cause it gives.

use std::sync::OnceLock;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Status {
    pub code: u8,
    pub name: String,
    pub cause: String,
    pub meaning: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Outcome {
    pub result: String,
    pub cause: String,
    pub meaning: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    status: Vec<Status>,
    result: Vec<Outcome>,
}

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        toml::from_str(include_str!("exit_status.toml")).unwrap_or_else(|e| {
            // A test parses the embedded file; this only keeps a broken build from panicking.
            tracing::error!(error = %e, "exit_status.toml does not parse; systemd's statuses go unnamed");
            Table::default()
        })
    })
}

/// systemd's own status `code` (200-255), if it is one.
pub(crate) fn status(code: u8) -> Option<&'static Status> {
    table().status.iter().find(|s| s.code == code)
}

/// A `Result=` value's entry.
pub(crate) fn outcome(result: &str) -> Option<&'static Outcome> {
    table().result.iter().find(|r| r.result == result)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_table_parses_and_names_the_common_failures() {
        let t = super::table();
        assert!(t.status.len() > 40, "{}", t.status.len());
        for (code, name, cause) in [
            (200, "CHDIR", "missing_working_directory"),
            (203, "EXEC", "missing_dependency"),
            (217, "USER", "unknown_user"),
            (226, "NAMESPACE", "sandbox_setup"),
        ] {
            let s = super::status(code).unwrap_or_else(|| panic!("{code}"));
            assert_eq!((s.name.as_str(), s.cause.as_str()), (name, cause));
        }
        assert!(
            super::status(1).is_none(),
            "the program's own codes are not systemd's"
        );
        for (result, cause) in [
            ("timeout", "timeout"),
            ("watchdog", "watchdog"),
            ("resources", "bad_config"),
            ("start-limit-hit", "start_limit"),
            ("oom-kill", "oom_kill"),
        ] {
            assert_eq!(
                super::outcome(result).map(|o| o.cause.as_str()),
                Some(cause),
                "{result}"
            );
        }
    }
}
