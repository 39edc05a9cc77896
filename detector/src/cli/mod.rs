//! The command line: one file per subcommand. `main.rs` only calls [`main`].
//!
//! - In: arguments and the environment (`DETECTOR_LOG`).
//! - Out: an exit code; `run` hands over to [`crate::daemon`]; `incidents` reads the history
//!   the daemon's sink writes.
//! - Must not know: how any stage works inside.

mod alert_test;
mod check_config;
mod incidents;
mod journal_relay;
mod run;
mod unpin;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Sees every process crash and OOM kill through eBPF and says what died and why.
#[derive(Parser)]
#[command(name = "detector", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the kernel programs and print one JSON record per process death on stdout.
    Run(run::Args),
    /// Check a configuration file; name the line of any error.
    CheckConfig(check_config::Args),
    /// Detach the kernel programs `run --pin-dir` left running, and remove their pins.
    Unpin(unpin::Args),
    /// Send a sample incident (opened, then resolved) to every alert sink of a configuration,
    /// and print what each receiver answered.
    AlertTest(alert_test::Args),
    /// Internal: started by `run` in a watched machine's pid namespace to write its journal.
    #[command(hide = true)]
    JournalRelay(journal_relay::Args),
    /// The incident history: `list` them, `show` one as a timeline.
    Incidents(incidents::Args),
}

/// Parses the command line, sets up logging on stderr, and runs the subcommand.
#[must_use]
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            EnvFilter::try_from_env("DETECTOR_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::CheckConfig(args) => check_config::run(&args),
        Command::Unpin(args) => unpin::run(&args),
        Command::AlertTest(args) => alert_test::run(&args),
        Command::JournalRelay(args) => journal_relay::run(&args),
        Command::Incidents(args) => incidents::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
