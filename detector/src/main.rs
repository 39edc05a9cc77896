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
        /// Size of the kernel → daemon ring buffer in bytes (a power of two, at least one page).
        #[arg(long, default_value_t = 4 << 20, value_parser = parse_ringbuf_bytes)]
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
        #[arg(long, default_value_t = 30)]
        journal_lines: usize,
    },
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
        } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                rt.block_on(detector::daemon::run(detector::daemon::Options {
                    ringbuf_bytes,
                    nice,
                    root,
                    journal_lines,
                }))
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
