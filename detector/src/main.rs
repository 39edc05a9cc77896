use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Sees every process crash and OOM kill through eBPF and says what died and why.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the kernel programs and print one JSON record per process death on stdout.
    Run {
        /// Size of the kernel → daemon ring buffer in bytes (a power of two, at least one page). It
        /// counts twice in the resident memory (the kernel maps it twice for wrap-around).
        #[arg(long, default_value_t = 2 << 20, value_parser = parse_ringbuf_bytes)]
        ringbuf_bytes: u32,
        /// Scheduling niceness for the daemon (-20..=19). Below 0 by default so that records stay
        /// prompt when the host's CPUs are saturated, which is when processes tend to die.
        #[arg(long, default_value_t = -10, allow_negative_numbers = true, value_parser = clap::value_parser!(i32).range(-20..=19))]
        nice: i32,
        /// Where the watched systemd instance's files are: `/` on a host, `/host` for a daemon
        /// in a container with the host mounted there, `/proc/PID/root` for a systemd-nspawn
        /// machine watched from its host. Units are named as that systemd names them.
        #[arg(long, default_value = "/")]
        root: std::path::PathBuf,
        /// How many of a failed run's last journal lines an incident carries.
        #[arg(long, default_value_t = detector::config::DEFAULT_JOURNAL_LINES)]
        journal_lines: usize,
        /// Unit policies and cause rules (TOML; see `detector check-config`).
        #[arg(long)]
        config: Option<std::path::PathBuf>,
    },
    /// Check a configuration file; name the line of any error.
    CheckConfig { file: std::path::PathBuf },
}

fn parse_ringbuf_bytes(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|e| format!("`{s}` is not a byte count: {e}"))?;
    if n < 4096 || !n.is_power_of_two() {
        return Err(format!("{n} is not a power of two of at least 4096 bytes"));
    }
    Ok(n)
}

/// `detector run`: the daemon, on a single-threaded runtime (its work is one ordered stream).
fn run(options: detector::daemon::Options) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(detector::daemon::run(options))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            EnvFilter::try_from_env("DETECTOR_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let result = match cli.command {
        Command::Run {
            ringbuf_bytes,
            nice,
            root,
            journal_lines,
            config,
        } => {
            // A bad configuration stops the start with the file and line of the problem.
            match config.as_deref().map(detector::config::load).transpose() {
                Ok(config) => run(detector::daemon::Options {
                    ringbuf_bytes,
                    nice,
                    root,
                    journal_lines,
                    config: config.unwrap_or_default(),
                }),
                Err(e) => Err(e.into()),
            }
        }
        Command::CheckConfig { file } => detector::config::load(&file)
            .map(|config| {
                println!(
                    "{}: ok ({} units, {} rules)",
                    file.display(),
                    config.units.len(),
                    config.rules.len()
                );
            })
            .map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
