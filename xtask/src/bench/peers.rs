//! The peers detector is measured against in every bench run: bpftrace (Debian's package) and a
//! plain C libbpf ring-buffer reader (`xtask/peers/`), built here with Debian's clang and
//! libbpf-dev. What is missing is installed; what still cannot run is named, not fatal.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// Finds or installs bpftrace, builds the C reader, and says why either is unavailable.
pub(super) fn tools(daemon: &Path) -> Tools {
    let installed = crate::setup::bench_packages().map_err(|e| format!("{e:#}"));
    let bpftrace = installed.clone().and_then(|()| {
        let bin = PathBuf::from("/usr/bin/bpftrace");
        if bin.exists() {
            Ok(bin)
        } else {
            Err("/usr/bin/bpftrace is missing".to_owned())
        }
    });
    let c_reader = installed.and_then(|()| build_c_reader().map_err(|e| format!("{e:#}")));
    Tools {
        daemon: daemon.to_owned(),
        c_reader,
        bpftrace,
    }
}

/// Compiles `xtask/peers/exit_ringbuf.bpf.c` (BPF object) and `exit_reader.c` (its loader and
/// reader) into `target/bench/peers`; returns (reader, object).
fn build_c_reader() -> Result<(PathBuf, PathBuf)> {
    let src = crate::root().join("xtask/peers");
    let out = crate::root().join("target/bench/peers");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let multiarch = Command::new("clang")
        .arg("-print-multiarch")
        .output()
        .context("running clang")?;
    if !multiarch.status.success() {
        bail!("clang -print-multiarch failed");
    }
    let multiarch = String::from_utf8_lossy(&multiarch.stdout).trim().to_owned();
    let object = out.join("exit_ringbuf.bpf.o");
    // The BPF target has no multiarch include directory of its own: <asm/types.h> is the
    // host's. -g keeps the BTF that libbpf needs for the CO-RE relocations.
    crate::run(
        Command::new("clang")
            .args(["-O2", "-g", "-Wall", "-target", "bpf"])
            .arg(format!("-I/usr/include/{multiarch}"))
            .arg("-c")
            .arg(src.join("exit_ringbuf.bpf.c"))
            .arg("-o")
            .arg(&object),
    )?;
    let reader = out.join("exit-reader");
    crate::run(
        Command::new("clang")
            .args(["-O2", "-Wall", "-Wextra"])
            .arg(src.join("exit_reader.c"))
            .arg("-o")
            .arg(&reader)
            .arg("-lbpf"),
    )?;
    Ok((reader, object))
}

/// The readers every bench run compares.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Peer {
    /// `xtask/peers/exit_reader.c`: libbpf's `ring_buffer__poll` on a ring buffer fed by a
    /// `tp_btf/sched_process_exit` program that keeps failing exits only.
    CReader,
    /// The same reader at the scheduling detector's reader thread runs at (`SCHED_FIFO` 1, see
    /// `detector run --realtime-priority`): what promptness costs any reader, not only ours.
    CReaderRealtime,
    /// bpftrace counting failing exits in a map: no record leaves the kernel.
    BpftraceCount,
    /// bpftrace printing each failing exit's kernel time.
    BpftracePrint,
    /// The daemon, its records on stdout.
    Detector,
    /// The daemon with a storm batch window of [`BATCH_WINDOW_US`] (`--batch-window-us`): in a
    /// storm it reads once a window instead of being woken for each death.
    DetectorBatched,
}

/// The batch window of [`Peer::DetectorBatched`], in µs: about where, on a 2-core VM, the
/// daemon's CPU per death comes down to the default-policy C reader's (README, "When the daemon
/// wakes").
pub(super) const BATCH_WINDOW_US: u32 = 400;

impl Peer {
    pub(super) const ALL: [Self; 6] = [
        Self::CReader,
        Self::CReaderRealtime,
        Self::BpftraceCount,
        Self::BpftracePrint,
        Self::Detector,
        Self::DetectorBatched,
    ];

    pub(super) fn name(self) -> &'static str {
        match self {
            Self::CReader => "C libbpf reader",
            Self::CReaderRealtime => "C reader, FIFO 1",
            Self::BpftraceCount => "bpftrace (count)",
            Self::BpftracePrint => "bpftrace (print)",
            Self::Detector => "detector",
            Self::DetectorBatched => "detector, 400 µs",
        }
    }

    /// Whether this is the daemon (with any options): its records, its summary line.
    pub(super) fn is_detector(self) -> bool {
        matches!(self, Self::Detector | Self::DetectorBatched)
    }

    /// Whether each record reaches a handler in userspace, so that it has a latency.
    pub(super) fn has_handler(self) -> bool {
        self != Self::BpftraceCount
    }

    /// The line that says the reader is attached (and on which stream).
    pub(super) fn ready_marker(self) -> (&'static str, bool) {
        match self {
            Self::CReader | Self::CReaderRealtime => ("ready", false),
            // Printed by BEGIN, which bpftrace fires once every probe is attached.
            Self::BpftraceCount | Self::BpftracePrint => ("ready", true),
            Self::Detector | Self::DetectorBatched => ("detector ready", false),
        }
    }
}

/// bpftrace's programs. `curtask` is the exiting task (the tracepoint runs in `do_exit()`, see
/// kernel/exit.c), and its `exit_code` is set by then: the same failing exits detector and the
/// C reader keep (the storm's children are single-threaded, so every exit ends a group).
/// `nsecs` is `bpf_ktime_get_ns()`, CLOCK_MONOTONIC.
pub(super) const BPFTRACE_COUNT: &str = r#"BEGIN { printf("ready\n"); }
tracepoint:sched:sched_process_exit /curtask->exit_code != 0/ { @failing = count(); }"#;
pub(super) const BPFTRACE_PRINT: &str = r#"BEGIN { printf("ready\n"); }
tracepoint:sched:sched_process_exit /curtask->exit_code != 0/ { printf("%llu\n", nsecs); }"#;

/// How to start each reader, or why it cannot run here.
pub(super) struct Tools {
    pub(super) daemon: PathBuf,
    /// The reader's binary and its BPF object.
    pub(super) c_reader: Result<(PathBuf, PathBuf), String>,
    pub(super) bpftrace: Result<PathBuf, String>,
}

impl Tools {
    pub(super) fn command(&self, peer: Peer) -> Result<Command, String> {
        Ok(match peer {
            Peer::CReader => {
                let (bin, object) = self.c_reader.as_ref().map_err(Clone::clone)?;
                let mut cmd = Command::new(bin);
                cmd.arg(object);
                cmd
            }
            Peer::CReaderRealtime => {
                let (bin, object) = self.c_reader.as_ref().map_err(Clone::clone)?;
                // util-linux's chrt (essential on Debian): the policy is set before the exec.
                let mut cmd = Command::new("chrt");
                cmd.args(["--fifo", "1"]).arg(bin).arg(object);
                cmd
            }
            Peer::BpftraceCount | Peer::BpftracePrint => {
                let bin = self.bpftrace.as_ref().map_err(Clone::clone)?;
                let mut cmd = Command::new(bin);
                // Line-buffered: the latency is taken when the line arrives here.
                cmd.args(["-B", "line", "-e"])
                    .arg(if peer == Peer::BpftraceCount {
                        BPFTRACE_COUNT
                    } else {
                        BPFTRACE_PRINT
                    });
                cmd
            }
            Peer::Detector | Peer::DetectorBatched => {
                let mut cmd = Command::new(&self.daemon);
                // JSON lines only, as the peers print theirs: this host has no journald to
                // write to (the default `auto` would also try it for every record).
                cmd.args(["run", "--output", "json"]);
                if peer == Peer::DetectorBatched {
                    cmd.args(["--batch-window-us", &BATCH_WINDOW_US.to_string()]);
                }
                cmd
            }
        })
    }

    /// Why `peer` cannot run on this machine, if it cannot.
    pub(super) fn unavailable(&self, peer: Peer) -> Option<String> {
        self.command(peer).err()
    }
}
