//! A real systemd to test against: the debootstrap'd Debian root that `cargo xtask test` keeps
//! (`DETECTOR_MACHINE_ROOT`), booted with systemd-nspawn. `--volatile=overlay` keeps every run's
//! changes in memory, so the cached root is never altered; the test's unit files are bind-mounted
//! into /etc/systemd/system. Seen from the host, the machine's files (bus socket, journal) are
//! under /proc/LEADER/root, and its units' cgroups are in the host's cgroup2 tree.

use std::{
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

/// How long a boot may take before the test fails: a bound, not a timing (a boot takes a few
/// seconds on a quiet machine, but a minute and more was seen with builds running beside it).
const BOOT: Duration = Duration::from_mins(3);

/// A booted machine; powered off when dropped.
pub struct Machine {
    nspawn: Child,
    leader: u32,
    /// Unit files and the console log; removed with the machine.
    files: tempdir::Dir,
}

pub mod tempdir {
    use std::path::{Path, PathBuf};

    /// A directory removed on drop.
    pub struct Dir(pub PathBuf);

    impl Dir {
        /// A new, empty directory under the system's temporary directory.
        ///
        /// # Panics
        /// If it cannot be made.
        #[must_use]
        pub fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("detector-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)
                .unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
            Self(dir)
        }

        #[must_use]
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// The machine's PID 1 among `nspawn`'s descendants: the process that is PID 1 in its own pid
/// namespace (`NSpid: HOSTPID 1`). systemd-nspawn's first child is not it (it forks the machine's
/// init from there): entering that child's namespaces reaches no systemd.
fn machine_init(nspawn: u32) -> Option<u32> {
    let mut look = children(nspawn);
    for _ in 0..4 {
        let mut next = Vec::new();
        for pid in look {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let nspid: Vec<&str> = status
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .map(|l| l.split_whitespace().collect())
                .unwrap_or_default();
            if nspid.len() >= 2 && nspid.last() == Some(&"1") {
                return Some(pid);
            }
            next.extend(children(pid));
        }
        look = next;
    }
    None
}

impl Machine {
    /// Boots the machine with `units` (file name, contents) installed, and waits until systemd
    /// reports the boot finished.
    ///
    /// # Panics
    /// When the root is not prepared or the machine does not boot in time.
    #[must_use]
    pub fn boot(units: &[(&str, &str)]) -> Self {
        Self::boot_with(units, &[])
    }

    /// As [`Machine::boot`], with host files bind-mounted read-only into the machine
    /// (host path, path in the machine).
    ///
    /// # Panics
    /// As [`Machine::boot`].
    #[must_use]
    pub fn boot_with(units: &[(&str, &str)], files: &[(&str, &str)]) -> Self {
        Self::boot_with_args(units, files, &[])
    }

    /// As [`Machine::boot_with`], with more `systemd-nspawn` arguments (capabilities to keep,
    /// system calls to allow, writable binds).
    ///
    /// # Panics
    /// As [`Machine::boot`].
    #[must_use]
    pub fn boot_with_args(units: &[(&str, &str)], files: &[(&str, &str)], args: &[&str]) -> Self {
        let root = std::env::var("DETECTOR_MACHINE_ROOT").unwrap_or_else(|_| {
            panic!(
                "DETECTOR_MACHINE_ROOT is not set: run with `cargo xtask test`, which prepares it"
            )
        });
        let dir = tempdir::Dir::new("units");
        let mut cmd = Command::new("systemd-nspawn");
        cmd.args([
            "--quiet",
            "--boot",
            "--register=no",
            "--keep-unit",
            "--volatile=overlay",
            "-D",
            &root,
        ]);
        for (name, contents) in units {
            let file = dir.path().join(name);
            std::fs::write(&file, contents)
                .unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
            cmd.arg(format!(
                "--bind-ro={}:/etc/systemd/system/{name}",
                file.display()
            ));
        }
        for (host, inside) in files {
            cmd.arg(format!("--bind-ro={host}:{inside}"));
        }
        cmd.args(args);
        let log = std::fs::File::create(dir.path().join("console.log")).expect("console log");
        let nspawn = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start systemd-nspawn: {e}"));
        let started = Instant::now();
        let leader = loop {
            if let Some(pid) = machine_init(nspawn.id()) {
                break pid;
            }
            assert!(
                started.elapsed() < BOOT,
                "systemd-nspawn started no machine"
            );
            thread::sleep(Duration::from_millis(50));
        };
        let machine = Self {
            nspawn,
            leader,
            files: dir,
        };
        // `is-system-running --wait` needs the bus, which comes up during boot.
        loop {
            let out = machine.run(&["systemctl", "is-system-running", "--wait"]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if matches!(state.as_str(), "running" | "degraded") {
                break;
            }
            assert!(
                started.elapsed() < BOOT,
                "machine did not finish booting: {state:?}\n{}",
                machine.console()
            );
            thread::sleep(Duration::from_millis(200));
        }
        machine
    }

    /// As [`Machine::boot`], with the demo service (tests/demo/app.py) at /opt/demo/app.py.
    ///
    /// # Panics
    /// As [`Machine::boot`].
    #[must_use]
    pub fn boot_demo(units: &[(&str, &str)]) -> Self {
        Self::boot_demo_with_args(units, &[])
    }

    /// As [`Machine::boot_demo`], with more `systemd-nspawn` arguments (`--private-network`: a
    /// network namespace of its own, with only its loopback).
    ///
    /// # Panics
    /// As [`Machine::boot`].
    #[must_use]
    pub fn boot_demo_with_args(units: &[(&str, &str)], args: &[&str]) -> Self {
        Self::boot_with_args(
            units,
            &[(
                concat!(env!("CARGO_MANIFEST_DIR"), "/demo/app.py"),
                "/opt/demo/app.py",
            )],
            args,
        )
    }

    /// `systemctl show --value --property=PROPERTY UNIT` inside the machine.
    #[must_use]
    pub fn show(&self, unit: &str, property: &str) -> String {
        let out = self.run(&[
            "systemctl",
            "show",
            "--value",
            &format!("--property={property}"),
            unit,
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `systemctl is-active UNIT` inside the machine: `active`, `failed`, ...
    #[must_use]
    pub fn is_active(&self, unit: &str) -> String {
        let out = self.run(&["systemctl", "is-active", unit]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The machine's PID 1, in the host's pid namespace.
    #[must_use]
    pub fn leader(&self) -> u32 {
        self.leader
    }

    /// The machine's files seen from the host, for `detector run --root`.
    #[must_use]
    pub fn root(&self) -> String {
        format!("/proc/{}/root", self.leader)
    }

    /// Runs a command inside the machine (its namespaces, its root).
    ///
    /// # Panics
    /// If nsenter cannot be started.
    #[must_use]
    pub fn run(&self, argv: &[&str]) -> Output {
        Command::new("nsenter")
            .args([
                "-t",
                &self.leader.to_string(),
                "-m",
                "-u",
                "-i",
                "-n",
                "-p",
                "--",
            ])
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("nsenter {argv:?}: {e}"))
    }

    /// `systemctl ARGS` inside the machine.
    ///
    /// # Panics
    /// Unless it succeeds, with its output.
    pub fn systemctl(&self, args: &[&str]) {
        let command: Vec<&str> = std::iter::once("systemctl")
            .chain(args.iter().copied())
            .collect();
        let out = self.run(&command);
        assert!(
            out.status.success(),
            "systemctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Host pids of the processes in a unit of the machine (from its cgroup in the host's tree).
    ///
    /// # Panics
    /// If the unit's cgroup cannot be read.
    #[must_use]
    pub fn unit_pids(&self, slice_and_unit: &str) -> Vec<u32> {
        let procs = crate::cgroup2_mount()
            .join(
                self.cgroup_root()
                    .strip_prefix("/")
                    .unwrap_or(&self.cgroup_root()),
            )
            .join(slice_and_unit)
            .join("cgroup.procs");
        std::fs::read_to_string(&procs)
            .unwrap_or_else(|e| panic!("{}: {e}", procs.display()))
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect()
    }

    /// Waits until `url` inside the machine answers 200.
    ///
    /// # Panics
    /// If it does not within 30 s.
    pub fn wait_healthy(&self, url: &str) {
        let probe = format!(
            "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('{url}', timeout=1).status == 200 else 1)"
        );
        let started = Instant::now();
        while !self.run(&["python3", "-c", &probe]).status.success() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{url} never answered 200"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts `detector run` watching this machine, with `config` (TOML) written to a file that
    /// lives as long as the returned guard.
    ///
    /// # Panics
    /// If the file cannot be written or the daemon does not start.
    #[must_use]
    pub fn watch_with_config(&self, config: &str) -> (crate::Daemon, tempdir::Dir) {
        let dir = tempdir::Dir::new("config");
        let file = dir.path().join("detector.toml");
        std::fs::write(&file, config).unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
        let daemon = crate::Daemon::start_with(&[
            "--root",
            &self.root(),
            "--config",
            &file.display().to_string(),
        ]);
        (daemon, dir)
    }

    /// What the machine printed on its console so far.
    #[must_use]
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.files.path().join("console.log")).unwrap_or_default()
    }

    /// Where the machine's cgroup tree is in the host's cgroup2 tree, from its PID 1.
    ///
    /// # Panics
    /// If the machine's PID 1 has no cgroup2 entry.
    #[must_use]
    pub fn cgroup_root(&self) -> PathBuf {
        let text = std::fs::read_to_string(format!("/proc/{}/cgroup", self.leader))
            .expect("machine's PID 1 cgroup");
        let path = text
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .expect("cgroup2 entry");
        PathBuf::from(path.trim_end_matches("/init.scope"))
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        // SIGRTMIN+4 asks systemd to power off; nspawn exits when its PID 1 does.
        let poweroff = libc::SIGRTMIN() + 4;
        // SAFETY: sends a signal to a pid we started; no memory is involved.
        unsafe { libc::kill(self.leader as i32, poweroff) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if matches!(self.nspawn.try_wait(), Ok(Some(_))) {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}
