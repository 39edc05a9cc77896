//! detector: sees every process death and OOM kill through eBPF, names the systemd unit that
//! died and why, recovers it as its policy says, and writes one record per death and one
//! incident per unit failure.
//!
//! One folder per stage of the flow, in order; a stage may import an earlier one, never a later
//! one (`tests/layout.rs` checks it). ARCHITECTURE.md at the repository root draws the flow.
//!
//! [`kernel`] → [`death`] → [`unit`] → [`journal`] → [`incident`] → [`recovery`] → [`sinks`],
//! configured by [`config`], wired by [`daemon`], started from [`cli`].

pub mod cli;
mod config;
mod daemon;
mod death;
mod incident;
mod journal;
mod kernel;
mod recovery;
mod sinks;
mod unit;

/// The D-Bus client for the watched systemd, for the end-to-end tests that act on a machine's
/// units directly.
pub use recovery::systemd::{Systemd, UnitState};

/// Entry points for the fuzz targets in `fuzz/` (cargo-fuzz), which cannot reach the private
/// stages: each feeds arbitrary input to one parser of untrusted data and must never panic.
/// Not an API: hidden from the docs, and nothing else may use it.
#[doc(hidden)]
pub mod fuzzing {
    use crate::{
        config,
        death::correlate::correlate,
        journal::{causes, exit_status},
        kernel::decode::{Event, decode},
        recovery::policy::backoff,
    };

    /// Ring-buffer bytes → record → death record → JSON, as the daemon's loop does.
    pub fn record(bytes: &[u8]) {
        if let Ok(Event::Death(event)) = decode(bytes) {
            let record = correlate(&event);
            let _ = serde_json::to_string(&record);
        }
    }

    /// A configuration file's text, and the deadlines the daemon computes from a good one
    /// (`Instant::now()` plus each duration, the crash-loop back-offs).
    pub fn config(text: &str) {
        let Ok(config) = config::parse("fuzz.toml", text) else {
            return;
        };
        let now = std::time::Instant::now();
        let _ = now + config.history.max_age;
        for unit in &config.units {
            let _ = now + unit.startup_grace;
            if let Some(health) = &unit.health {
                let _ = now + health.deadline + health.timeout + health.interval;
            }
            if let Some(liveness) = &unit.liveness {
                let _ = now + liveness.every;
            }
            for recent in 0..40 {
                let _ = now + unit.crash_loop.window + backoff(unit.crash_loop, recent);
            }
        }
    }

    /// An operator's rule (first line: its pattern, second: its detail) and a run's journal lines
    /// (the rest), classified with the built-in rules as for a failed run.
    pub fn journal_rules(text: &str) {
        // Built once: compiling the built-in rules costs far more than one input.
        static BUILTIN: std::sync::OnceLock<Vec<config::rules::Rule>> = std::sync::OnceLock::new();
        let mut lines = text.lines();
        let pattern = lines.next().unwrap_or_default();
        let detail = lines.next().unwrap_or_default();
        let journal: Vec<String> = lines.map(str::to_owned).collect();
        let mut rules: Vec<config::rules::Rule> = config::rules::Rule::new("fuzz", pattern, detail)
            .into_iter()
            .collect();
        rules.extend(BUILTIN.get_or_init(causes::builtin).iter().cloned());
        let _ = causes::classify_run(&journal, &rules);
        if let Some(result) = causes::systemd_result(&journal) {
            let _ = exit_status::outcome(result);
        }
    }
}
