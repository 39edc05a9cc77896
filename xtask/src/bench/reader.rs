//! A reader of exit events under test, run as a child process: detector itself, or one of its
//! peers. Each reports, on its own terms, the latency from the kernel's timestamp to its handler
//! and the records it lost.

use std::{
    io::{BufRead as _, BufReader, Read},
    process::{Child, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use nix::{
    sys::signal::{Signal, kill},
    time::{ClockId, clock_gettime},
    unistd::Pid,
};

use super::peers::{Peer, Tools};

fn clock_ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

/// What a reader reported once stopped.
pub(super) struct Outcome {
    /// Kernel → handler, in nanoseconds (detector's are whole microseconds).
    pub(super) latencies_ns: Vec<u64>,
    /// Records lost: the daemon's and the C reader's ring-buffer reservations that failed,
    /// bpftrace's "Lost N events".
    pub(super) lost: u64,
    /// The failing exits bpftrace (count) counted in the kernel (`@failing: N` when it stops).
    pub(super) counted: Option<u64>,
}

/// A running reader.
pub(super) struct Reader {
    peer: Peer,
    child: Child,
    latencies: Arc<Mutex<Vec<u64>>>,
    /// stderr, and stdout lines that are not latencies.
    lines: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
}

fn monotonic_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        (t.tv_sec() as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(t.tv_nsec() as u64)
    })
}

/// The `latency_us` field of one of detector's records. A substring, not a JSON parse: this
/// reader shares the cores with what it measures.
pub(super) fn latency_us(line: &str) -> Option<u64> {
    let rest = &line[line.find("\"latency_us\":")? + "\"latency_us\":".len()..];
    rest[..rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len())]
        .parse()
        .ok()
}

/// A stdout line's kernel → handler latency, if it carries one.
fn latency_ns(peer: Peer, line: &str) -> Option<u64> {
    match peer {
        Peer::Detector | Peer::DetectorBatched => latency_us(line).map(|us| us * 1000),
        // The exit-reader's own measure, printed when it stops.
        Peer::CReader | Peer::CReaderRealtime => line.trim().parse().ok(),
        // bpftrace prints the kernel's time; the handler here is this line being read.
        Peer::BpftracePrint => line
            .trim()
            .parse::<u64>()
            .ok()
            .map(|t| monotonic_ns().saturating_sub(t)),
        Peer::BpftraceCount => None,
    }
}

/// Sums the `Lost N events` lines bpftrace prints when its output buffer overflowed.
fn bpftrace_lost(lines: &[String]) -> u64 {
    lines
        .iter()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("Lost ")?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

/// The `@failing: N` line bpftrace (count) prints when it stops.
fn bpftrace_count(lines: &[String]) -> Option<u64> {
    lines.iter().find_map(|l| {
        l.trim()
            .strip_prefix("@failing:")
            .and_then(|n| n.trim().parse().ok())
    })
}

/// The `lost=N` word of a summary line.
fn lost_field(line: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("lost="))
        .and_then(|n| n.parse().ok())
}

/// Detector's stdout read as a log shipper reads it: whatever is there, then a pause. Read line
/// by line instead, this harness would wake for every record the daemon writes, and that wakeup
/// (some 15 µs of CPU on a small VM) would be charged to the daemon's throughput. The pause
/// does not touch its latencies, stamped in the daemon as each record is handled. bpftrace's
/// are taken here as its line is read, so its stdout is read at once, line by line: its print
/// probe pays that wakeup; the C reader prints nothing until it stops.
struct Paced<R>(R);

impl<R: Read> Read for Paced<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.read(buf)?;
        if n > 0 {
            thread::sleep(Duration::from_millis(2));
        }
        Ok(n)
    }
}

impl Reader {
    pub(super) fn start(tools: &Tools, peer: Peer) -> Result<Self> {
        let mut cmd = tools.command(peer).map_err(anyhow::Error::msg)?;
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", peer.name()))?;
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (marker, on_stdout) = peer.ready_marker();
        let stdout = child.stdout.take().context("reader stdout")?;
        // Room for some 1,500 records between two reads (see `Paced`); a full pipe would make
        // the reader wait on this harness instead.
        if let Err(e) = nix::fcntl::fcntl(&stdout, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20)) {
            eprintln!("xtask: cannot enlarge the pipe from {}: {e}", peer.name());
        }
        let stderr = child.stderr.take().context("reader stderr")?;
        let mut threads = Vec::new();
        for (stream, is_stdout) in [
            (
                if peer.is_detector() {
                    Box::new(Paced(stdout)) as Box<dyn Read + Send>
                } else {
                    Box::new(stdout)
                },
                true,
            ),
            (Box::new(stderr), false),
        ] {
            let (latencies, lines, ready_tx) =
                (Arc::clone(&latencies), Arc::clone(&lines), ready_tx.clone());
            threads.push(thread::spawn(move || {
                for line in BufReader::with_capacity(1 << 20, stream)
                    .lines()
                    .map_while(Result::ok)
                {
                    if is_stdout && let Some(ns) = latency_ns(peer, &line) {
                        if let Ok(mut l) = latencies.lock() {
                            l.push(ns);
                        }
                        continue;
                    }
                    if is_stdout == on_stdout && line.contains(marker) {
                        let _ = ready_tx.send(());
                    }
                    if peer.is_detector() && is_stdout {
                        // Records without a latency: nothing to keep.
                        continue;
                    }
                    if let Ok(mut l) = lines.lock() {
                        l.push(line);
                    }
                }
            }));
        }
        drop(ready_tx);
        let mut reader = Self {
            peer,
            child,
            latencies,
            lines,
            threads,
        };
        if ready_rx.recv_timeout(Duration::from_mins(1)).is_err() {
            // Killing a child that already exited (a zombie until waited for) is harmless, and
            // the wait then returns its own exit status.
            let _ = reader.child.kill();
            let status = reader.child.wait()?;
            for t in reader.threads.drain(..) {
                let _ = t.join();
            }
            let said = reader
                .lines
                .lock()
                .map(|l| l.join(" | "))
                .unwrap_or_default();
            bail!(
                "{} did not become ready ({status}); it said: {:?}",
                peer.name(),
                said.trim()
            );
        }
        Ok(reader)
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The latencies gathered so far (none for the C reader before it stops).
    pub(super) fn take_latencies(&self) -> Vec<u64> {
        self.latencies
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }

    pub(super) fn rss_kb(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS")
    }

    /// The CPU time the reader has used so far (user + system, every thread), in seconds.
    pub(super) fn cpu_seconds(&self) -> Result<f64> {
        Ok(self.cpu_ticks()? as f64 / clock_ticks_per_second())
    }

    /// The same, in clock ticks.
    fn cpu_ticks(&self) -> Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // The command name may hold spaces and parentheses: fields are counted after the last
        // ')'. utime and stime are fields 14 and 15 (proc_pid_stat(5)); the first after ')' is
        // field 3.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .context("odd /proc/PID/stat")?
            .1
            .split_whitespace()
            .collect();
        let field = |n: usize| -> Result<u64> {
            fields
                .get(n - 3)
                .and_then(|f| f.parse().ok())
                .with_context(|| format!("no field {n} in /proc/PID/stat"))
        };
        Ok(field(14)? + field(15)?)
    }

    /// Sends `signal` until the reader exits: bpftrace 0.17 can miss a SIGINT that comes just
    /// before it waits for events (seen once: it waited on, handler run, until a second one).
    /// Past 20 s it is killed, and the round fails.
    fn signal_until_exit(&mut self, signal: Signal) -> Result<std::process::ExitStatus> {
        let pid = Pid::from_raw(self.child.id() as i32);
        for _ in 0..20 {
            kill(pid, signal)?;
            for _ in 0..10 {
                if let Some(status) = self.child.try_wait()? {
                    return Ok(status);
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = self.child.kill();
        let status = self.child.wait()?;
        bail!(
            "{} did not stop on {signal} in 20 s; killed ({status})",
            self.peer.name()
        )
    }

    /// Stops the reader and gathers what it reported.
    pub(super) fn stop(mut self) -> Result<Outcome> {
        let signal = match self.peer {
            // bpftrace prints its maps and exits on SIGINT.
            Peer::BpftraceCount | Peer::BpftracePrint => Signal::SIGINT,
            Peer::CReader | Peer::CReaderRealtime | Peer::Detector | Peer::DetectorBatched => {
                Signal::SIGTERM
            }
        };
        let status = self.signal_until_exit(signal)?;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let lines = self.lines.lock().map(|l| l.clone()).unwrap_or_default();
        let lost = match self.peer {
            Peer::BpftraceCount | Peer::BpftracePrint => bpftrace_lost(&lines),
            Peer::CReader | Peer::CReaderRealtime | Peer::Detector | Peer::DetectorBatched => {
                let summary = if self.peer.is_detector() {
                    "detector stopped"
                } else {
                    "exit-reader stopped"
                };
                lines
                    .iter()
                    .filter(|l| l.contains(summary))
                    .find_map(|l| lost_field(l))
                    .with_context(|| {
                        format!(
                            "{} ({status}) left no summary with lost=: {}",
                            self.peer.name(),
                            lines.join("\n").trim()
                        )
                    })?
            }
        };
        Ok(Outcome {
            latencies_ns: self.take_latencies(),
            lost,
            counted: bpftrace_count(&lines),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn the_batched_detector_is_named_by_its_window() {
        let window = format!("{} µs", super::super::peers::BATCH_WINDOW_US);
        assert!(
            Peer::DetectorBatched.name().ends_with(&window),
            "{} does not say {window}",
            Peer::DetectorBatched.name()
        );
    }

    #[test]
    fn a_reader_that_cannot_run_says_why() {
        let tools = Tools {
            daemon: PathBuf::from("/nonexistent/detector"),
            // A reader that exits at once, before it is ready.
            c_reader: Ok((PathBuf::from("/bin/false"), PathBuf::from("object"))),
            bpftrace: Err("the package is missing".to_owned()),
        };
        assert_eq!(
            tools.unavailable(Peer::BpftracePrint).as_deref(),
            Some("the package is missing")
        );
        assert_eq!(tools.unavailable(Peer::CReader), None);
        let err = Reader::start(&tools, Peer::CReader)
            .err()
            .map(|e| format!("{e:#}"));
        assert_eq!(
            err.as_deref(),
            Some("C libbpf reader did not become ready (exit status: 1); it said: \"\"")
        );
        assert!(Reader::start(&tools, Peer::Detector).is_err());
    }

    #[test]
    fn parses_what_readers_print() {
        assert_eq!(
            latency_us(r#"{"pid":7,"latency_us":123,"unit":"a"}"#),
            Some(123)
        );
        assert_eq!(latency_us(r#"{"pid":7}"#), None);
        assert_eq!(latency_ns(Peer::CReader, "4567"), Some(4567));
        assert_eq!(latency_ns(Peer::BpftraceCount, "@failing: 3"), None);
        assert_eq!(
            bpftrace_lost(&["Lost 12 events".to_owned(), "Lost 3 events".to_owned()]),
            15
        );
        assert_eq!(
            bpftrace_count(&[
                "Attaching 2 probes...".to_owned(),
                "@failing: 40001".to_owned()
            ]),
            Some(40001)
        );
        assert_eq!(
            lost_field("exit-reader stopped seen=10 lost=2"),
            Some(2),
            "the C reader's summary"
        );
    }
}
