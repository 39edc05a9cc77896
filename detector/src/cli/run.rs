//! `detector run`: the daemon's options, the process settings it needs (scheduling, open files),
//! and its single-threaded runtime.

use std::path::PathBuf;

use crate::{config, daemon, sinks::Output};

/// `--output`: where records and incidents go.
#[derive(Clone, Copy, clap::ValueEnum)]
enum OutputArg {
    /// `journal` when stdout is already the journal (systemd runs the daemon), else `both`.
    Auto,
    /// JSON lines on stdout.
    Json,
    /// Structured entries in the watched systemd's journal (ROOT/run/systemd/journal/socket).
    Journal,
    /// Both.
    Both,
}

#[derive(clap::Args)]
pub(super) struct Args {
    /// Size of the kernel → daemon ring buffer in bytes (a power of two, at least one page). It
    /// counts twice in the resident memory (the kernel maps it twice for wrap-around). The
    /// default holds some 3,800 deaths: a tenth of a second at this VM's fastest fork/exit
    /// storm, and what a restart of the daemon (with `--pin-dir`) can bridge.
    #[arg(long, default_value_t = 1 << 20, value_parser = parse_ringbuf_bytes)]
    ringbuf_bytes: u32,
    /// Scheduling niceness for the daemon (-20..=19). Below 0 by default so that records stay
    /// prompt when the host's CPUs are saturated, which is when processes tend to die.
    #[arg(long, default_value_t = -10, allow_negative_numbers = true, value_parser = clap::value_parser!(i32).range(-20..=19))]
    nice: i32,
    /// Real-time priority (`SCHED_FIFO`, 1..=99) of the thread that reads the ring buffer; 0
    /// leaves it at `--nice`. At 1, the lowest, a death is read within tens of microseconds
    /// even while a storm keeps every core busy, where a niced reader waits its turn
    /// (milliseconds at the 99th percentile). The loop only ever waits in `epoll`; no other
    /// thread of the daemon is real-time.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=99))]
    realtime_priority: u8,
    /// In a storm, read the ring buffer once per this many microseconds instead of being woken
    /// for each death (0..=10000; 0, the default: off). Once two reads find deaths closer
    /// together than the window, the reader sleeps a window after each read, and goes back to
    /// waiting after a window with no death. Each wakeup then takes a window's deaths: less CPU
    /// per death in a storm (about half at 400 µs on a 2-core VM), every record up to a window
    /// later (see the README's "When the daemon wakes").
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    batch_window_us: u64,
    /// Where the watched systemd instance's files are: `/` on a host, `/host` for a daemon
    /// in a container with the host mounted there, `/proc/PID/root` for a systemd-nspawn
    /// machine watched from its host. Units are named as that systemd names them.
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// How many of a failed run's last journal lines an incident carries.
    #[arg(long, default_value_t = config::DEFAULT_JOURNAL_LINES)]
    journal_lines: usize,
    /// Unit policies, cause rules and alert sinks (TOML; see `detector check-config`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Pin the kernel programs, their links and maps in this bpffs directory (the package uses
    /// /sys/fs/bpf/detector): they keep running while no daemon does, and the next daemon reads
    /// first what they wrote meanwhile. Without it, the programs detach when the daemon exits.
    /// `detector unpin` removes the pins.
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// Where records and incidents are written. Under systemd, `auto` writes only to the
    /// journal: JSON lines on a stdout the journal already takes would be every entry twice.
    #[arg(long, value_enum, default_value = "auto")]
    output: OutputArg,
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

/// The daemon keeps a directory open per live unit cgroup (see `unit::cgroups`): lift the soft
/// limit on open files to the hard one.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit");
    }
}

/// Sets this process's niceness. Failing is not fatal: the records are the same, only later
/// under load.
fn set_nice(nice: i32) {
    // SAFETY: setpriority has no memory-safety preconditions; `0` means this process.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if rc != 0 {
        tracing::warn!(nice, error = %std::io::Error::last_os_error(), "cannot set the daemon's niceness");
    }
}

/// Runs the daemon on a single-threaded runtime (its work is one ordered stream). A bad
/// configuration stops the start with the file and line of the problem.
pub(super) fn run(args: Args) -> anyhow::Result<()> {
    let Args {
        ringbuf_bytes,
        nice,
        realtime_priority,
        batch_window_us,
        root,
        journal_lines,
        config,
        pin_dir,
        output,
    } = args;
    let config_path = config;
    let config = config_path
        .as_deref()
        .map(config::load)
        .transpose()?
        .unwrap_or_default();
    raise_fd_limit();
    set_nice(nice);
    let options = daemon::Options {
        ringbuf_bytes,
        realtime_priority,
        root,
        journal_lines,
        config,
        config_path,
        pin_dir,
        output: match output {
            OutputArg::Auto => Output::Auto,
            OutputArg::Json => Output::Json,
            OutputArg::Journal => Output::Journal,
            OutputArg::Both => Output::Both,
        },
        batch_window: std::time::Duration::from_micros(batch_window_us),
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(daemon::run(options))
}
