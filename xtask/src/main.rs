//! `cargo xtask`: the one entry point for building, running, testing and benchmarking detector.
//!
//! On a fresh machine it installs what the kernel side needs, saying what it does:
//! the nightly toolchain's `rust-src` (for `-Z build-std=core`), and bpf-linker built against
//! the nightly rustc's own LLVM (so the bitcode it links is one LLVM version).

mod bench;
mod fuzz;
mod package;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, run, test and benchmark detector")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the BPF toolchain if needed and build the daemon (release).
    Build,
    /// Build, then run `detector` as root with the given arguments (default: `run`).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Every check and test: formatting, clippy, unit tests, then the root tests against the
    /// real kernel.
    Test {
        /// Extra arguments for the root test binaries (a test name filter, say).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Overhead, latency and drop benchmarks next to peers (a C libbpf reader, bpftrace), the
    /// scaling curve, then restarts on real systemd; numbers are printed, not asserted.
    Bench {
        /// Only this part (both when omitted).
        #[arg(value_enum)]
        part: Option<BenchPart>,
    },
    /// The Debian package (cargo-deb): binary, unit, default configuration, state directory.
    Package,
    /// Runs each cargo-fuzz target (record decoder, configuration, journal rules) for a while.
    Fuzz {
        /// How long each target runs.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
    },
}

/// A part of `cargo xtask bench`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BenchPart {
    /// Peers, overhead, latency, memory and the scaling curve (about 3 minutes).
    Kernel,
    /// Restarts, workers and load on real systemd in a systemd-nspawn machine.
    Restart,
}

/// The workspace root (xtask's parent directory).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Runs a command in the workspace root, echoing it, and fails with its exit status.
fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: $ {}", display(cmd));
    if cmd.get_current_dir().is_none() {
        cmd.current_dir(root());
    }
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", display(cmd)))?;
    if !status.success() {
        bail!("`{}` failed: {status}", display(cmd));
    }
    Ok(())
}

fn display(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Builds the daemon as it ships (the `dist` profile: release with whole-program LTO) and
/// returns its path.
pub(crate) fn build_daemon() -> Result<PathBuf> {
    setup::bpf_toolchain()?;
    setup::build_packages()?;
    run(cargo().args(["build", "--profile", "dist", "--package", "detector"]))?;
    Ok(root().join("target/dist/detector"))
}

fn require_root(what: &str) -> Result<()> {
    let uid = nix::unistd::geteuid().as_raw();
    if uid != 0 {
        bail!(
            "{what} needs root: it loads eBPF programs (running as uid {uid}); try `sudo -E cargo xtask ...`"
        );
    }
    Ok(())
}

fn test(args: &[String]) -> Result<()> {
    setup::bpf_toolchain()?;
    setup::build_packages()?;
    run(Command::new("rustup").args(["run", "nightly", "cargo", "fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "detector-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The kernel programs only build for the BPF target, with nightly.
    run(Command::new("rustup")
        .args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "--package",
            "detector-ebpf",
            "--release",
        ])
        .args(["-Z", "build-std=core", "--target", "bpfel-unknown-none"])
        .args(["--", "-D", "warnings"]))?;
    // Unit tests, no root needed.
    run(cargo().args([
        "test",
        "--package",
        "detector-common",
        "--package",
        "detector",
        "--package",
        "xtask",
    ]))?;
    require_root("the kernel tests")?;
    setup::host_for_tests()?;
    let daemon = build_daemon()?;
    // Root tests share the kernel (cgroups, core_pattern, the host's exit rate): one at a time.
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--release",
        "--package",
        "tests",
        "--",
        "--test-threads=1",
    ])
    .args(args);
    cmd.env("DETECTOR_BIN", &daemon);
    cmd.env("DETECTOR_DEB", package::deb()?);
    setup::test_packages()?;
    cmd.env("DETECTOR_KERNEL_6_1", setup::kernel_6_1()?);
    cmd.env("DETECTOR_MACHINE_ROOT", setup::machine_root()?);
    setup::python_apps(&setup::machine_root()?)?;
    run(&mut cmd)
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Build => build_daemon().map(|path| eprintln!("xtask: built {}", path.display())),
        Cmd::Run { args } => {
            require_root("detector")?;
            setup::host_for_tests()?;
            let daemon = build_daemon()?;
            let args = if args.is_empty() {
                vec!["run".to_owned()]
            } else {
                args
            };
            run(Command::new(daemon).args(args))
        }
        Cmd::Test { args } => test(&args),
        Cmd::Package => package::deb().map(drop),
        Cmd::Fuzz { seconds } => fuzz::all(seconds),
        Cmd::Bench { part } => {
            require_root("the benchmarks")?;
            setup::host_for_tests()?;
            let daemon = build_daemon()?;
            if part != Some(BenchPart::Restart) {
                bench::kernel(&daemon)?;
            }
            if part == Some(BenchPart::Kernel) {
                return Ok(());
            }
            setup::test_packages()?;
            setup::python_apps(&setup::machine_root()?)?;
            bench::restart(&daemon, &setup::machine_root()?)
        }
    }
}
