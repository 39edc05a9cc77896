//! One exact record per death, against the real kernel. Needs root; run with `cargo xtask test`.

#![expect(
    unused_crate_dependencies,
    reason = "each target of the tests package uses a part of its dependencies"
)]

use std::{
    collections::{HashMap, HashSet},
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    path::PathBuf,
    process::Command,
};

use serde_json::{Value, json};
use tests::{Daemon, assert_matches_wait, cgroup2_mount, own_memcg_v1_path, run};

/// The `victim` helper (see `src/bin/victim.rs`) with a mode.
fn victim(mode: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_victim"));
    cmd.arg(mode);
    cmd
}

/// Sets `RLIMIT_CORE` in the child, so a core is (or is not) dumped regardless of our own limit.
fn with_core_limit(cmd: &mut Command, bytes: u64) -> &mut Command {
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, bytes, bytes)
                .map_err(std::io::Error::from)
        })
    }
}

#[test]
fn exit_codes_are_reported_exactly() {
    let daemon = Daemon::start();
    for code in [1, 3, 42, 255] {
        let (pid, status) = run(Command::new("sh").args(["-c", &format!("exit {code}")]));
        let record = daemon.record_for(pid);
        assert_matches_wait(&record, pid, status);
        assert_eq!(record["exit_code"], code, "{record}");
        assert_eq!(record["wait_status"], code << 8, "{record}");
        assert_eq!(record["comm"], "sh", "{record}");
        assert_eq!(record["tid"], pid, "single-threaded: {record}");
        for null in ["signal", "oom", "killed_by"] {
            assert_eq!(record[null], Value::Null, "{null}: {record}");
        }
    }
}

#[test]
fn clean_exit_produces_nothing() {
    let daemon = Daemon::start();
    let (clean, status) = run(Command::new("sh").args(["-c", "exit 0"]));
    assert!(status.success());
    // The ring buffer is ordered: once a later death is seen, an earlier one would have been too.
    let (later, _) = run(Command::new("sh").args(["-c", "exit 9"]));
    let _ = daemon.record_for(later);
    assert_eq!(
        daemon.records_for(clean),
        Vec::<Value>::new(),
        "clean exit of {clean} was reported"
    );
}

fn core_pattern_writes_files() -> PathBuf {
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").expect("core_pattern");
    assert!(
        !pattern.starts_with('|'),
        "core_pattern pipes cores to {pattern:?}; these tests expect the kernel to write core files (RLIMIT_CORE decides)"
    );
    let dir = std::env::temp_dir().join(format!("detector-core-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("core dir");
    dir
}

#[test]
fn sigsegv_with_and_without_core() {
    let daemon = Daemon::start();
    let dir = core_pattern_writes_files();
    for (limit, core) in [(0, false), (u64::MAX, true)] {
        let (pid, status) = run(with_core_limit(victim("segv").current_dir(&dir), limit));
        let record = daemon.record_for(pid);
        assert_matches_wait(&record, pid, status);
        assert_eq!(status.signal(), Some(11), "victim must die of SIGSEGV");
        assert_eq!(
            (record["signal"].clone(), record["core_dumped"].clone()),
            (json!("SIGSEGV"), json!(core)),
            "{record}"
        );
        assert_eq!(
            record["wait_status"],
            0xb | if core { 0x80 } else { 0 },
            "{record}"
        );
        // A fault: the kernel sent it, in the context of the faulting process (SEGV_MAPERR = 1).
        assert_eq!(
            record["killed_by"],
            json!({"pid": pid, "comm": "victim", "kernel": true, "si_code": 1}),
            "{record}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigabrt_is_raised_by_the_process_itself() {
    let daemon = Daemon::start();
    let (pid, status) = run(with_core_limit(&mut victim("abort"), 0));
    let record = daemon.record_for(pid);
    assert_matches_wait(&record, pid, status);
    assert_eq!(record["signal"], "SIGABRT", "{record}");
    // abort() raises with tgkill: SI_TKILL (-6), a task's request.
    assert_eq!(
        record["killed_by"],
        json!({"pid": pid, "comm": "victim", "kernel": false, "si_code": -6}),
        "{record}"
    );
}

#[test]
fn sigkill_names_the_process_that_sent_it() {
    let daemon = Daemon::start();
    let mut target = Command::new("sleep").arg("60").spawn().expect("sleep");
    let pid = target.id();
    let (killer, kill_status) =
        run(Command::new("sh").args(["-c", "kill -KILL \"$1\"", "sh", &pid.to_string()]));
    assert!(kill_status.success());
    let status = target.wait().expect("wait");
    let record = daemon.record_for(pid);
    assert_matches_wait(&record, pid, status);
    assert_eq!(
        (record["signal"].clone(), record["comm"].clone()),
        (json!("SIGKILL"), json!("sleep")),
        "{record}"
    );
    assert_eq!(
        record["killed_by"],
        json!({"pid": killer, "comm": "sh", "kernel": false, "si_code": 0}),
        "{record}"
    );
}

#[test]
fn multithreaded_main_thread_exits_first() {
    let daemon = Daemon::start();
    // (mode, exit code the parent sees). exit_group(7) from the last thread sets the group's
    // status. So does a plain thread exit of the last thread: since 5.19 `synchronize_group_exit()`
    // (kernel/exit.c) marks the group exiting with the last thread's code, so the main thread's
    // earlier 5 is not what wait4() reports.
    for (mode, code) in [("group-exit-after-main", 7), ("thread-exits-after-main", 7)] {
        let (pid, status) = run(&mut victim(mode));
        assert_eq!(
            status.code(),
            Some(code),
            "{mode}: waitpid disagrees with the test's premise"
        );
        let record = daemon.record_for(pid);
        assert_matches_wait(&record, pid, status);
        assert_eq!(record["exit_code"], code, "{mode}: {record}");
        assert_ne!(
            record["tid"], pid,
            "{mode}: the last thread, not the leader, ends the group: {record}"
        );
        assert_eq!(
            daemon.records_for(pid).len(),
            1,
            "{mode}: one record per process"
        );
    }
}

/// A child memory cgroup (cgroup v1) of our own, removed on drop.
struct MemCgroup {
    dir: PathBuf,
    path: String,
}

impl MemCgroup {
    fn new(limit: u64) -> Self {
        let parent = own_memcg_v1_path()
            .expect("the cgroup v1 memory controller is mounted on the project's machines");
        let path = format!(
            "{}/detector-oom-{}",
            parent.trim_end_matches('/'),
            std::process::id()
        );
        let dir = PathBuf::from(format!("/sys/fs/cgroup/memory{path}"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        std::fs::write(dir.join("memory.limit_in_bytes"), limit.to_string())
            .expect("memory.limit_in_bytes");
        Self { dir, path }
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn memcg_oom_kill() {
    let daemon = Daemon::start();
    let cgroup = MemCgroup::new(64 << 20);
    let procs = cgroup.dir.join("cgroup.procs");
    let mut cmd = victim("alloc");
    // The path is made before the fork: between fork and exec the child may only make
    // async-signal-safe calls, and must not allocate (another thread of this test process may
    // have held the allocator's lock at the fork).
    let procs = std::ffi::CString::new(procs.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: the closure calls only open, write and close (async-signal-safe), allocates
    // nothing, and touches only the child; "0" moves the writing process itself.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if written == 1 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        })
    };
    let (pid, status) = run(&mut cmd);
    assert_eq!(
        status.signal(),
        Some(9),
        "the OOM killer ends the victim with SIGKILL"
    );
    let record = daemon.record_for(pid);
    assert_matches_wait(&record, pid, status);
    assert_eq!(record["signal"], "SIGKILL", "{record}");
    assert_eq!(
        record["killed_by"],
        json!({"pid": pid, "comm": "victim", "kernel": true, "si_code": 0x80}),
        "{record}"
    );
    let oom = &record["oom"];
    assert_eq!(oom["constraint"], "memcg", "{record}");
    assert_eq!(oom["memcg"], cgroup.path, "{record}");
    assert_eq!(
        (oom["trigger_pid"].clone(), oom["trigger_comm"].clone()),
        (json!(pid), json!("victim")),
        "{record}"
    );
    let anon = oom["anon_rss_kb"]
        .as_u64()
        .unwrap_or_else(|| panic!("anon_rss_kb: {record}"));
    assert!(
        (32 << 10..=64 << 10).contains(&anon),
        "anon rss near the 64 MiB limit: {record}"
    );
    assert!(
        oom["total_vm_kb"].as_u64().is_some_and(|vm| vm >= anon),
        "{record}"
    );
    assert!(
        oom["file_rss_kb"].is_u64() && oom["shmem_rss_kb"].is_u64(),
        "{record}"
    );
    assert_eq!(oom["oom_score_adj"], 0, "{record}");
}

/// 10,000 failing children as fast as one process can fork them: every one reported once, none
/// lost, with the reader woken for each death or (`--batch-window-us`) reading once a window.
fn storm_of_10000_failures_each_reported_once(args: &[&str], paced: bool) {
    const N: usize = 10_000;
    let daemon = Daemon::start_with(args);
    let out = victim("storm").arg(N.to_string()).output().expect("storm");
    assert!(
        out.status.success(),
        "storm helper failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pids: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.parse().expect("pid"))
        .collect();
    assert_eq!(pids.len(), N);
    let wanted: HashSet<u64> = pids.iter().copied().collect();
    assert_eq!(wanted.len(), N, "pids are distinct");
    let ours = |r: &Value| r["pid"].as_u64().is_some_and(|p| wanted.contains(&p));
    // The storm's last deaths come in its last window: nothing comes after them to wake a reader
    // that would wait for the next death.
    daemon.wait_for_count("every storm death", N, ours);
    // A lone death once the storm is over is read without a window's wait, and read at all.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let (lone, status) = run(Command::new("sh").args(["-c", "exit 7"]));
    assert_matches_wait(&daemon.record_for(lone), lone, status);
    // Exactly once: count after the daemon has drained everything and stopped.
    let (records, stderr) = daemon.stop();
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for record in records.iter().filter(|r| ours(r)) {
        assert_eq!(record["exit_code"], 1, "{record}");
        *seen
            .entry(record["pid"].as_u64().expect("pid"))
            .or_default() += 1;
    }
    let dupes: Vec<_> = seen.iter().filter(|&(_, &n)| n != 1).collect();
    assert!(dupes.is_empty(), "pids reported more than once: {dupes:?}");
    assert_eq!(seen.len(), N);
    let summary = stderr
        .iter()
        .find(|l| l.contains("detector stopped"))
        .expect("summary");
    assert!(
        summary.contains(" lost=0 "),
        "the kernel dropped records: {summary}"
    );
    let windows: u64 = summary
        .split_once("batch_windows=")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no batch_windows in the summary: {summary}"));
    if paced {
        // 10,000 deaths from one forking process come well under 2 ms apart on any host.
        assert!(windows > 0, "a storm read without a window: {summary}");
    } else {
        assert_eq!(windows, 0, "windows slept with none set: {summary}");
    }
}

#[test]
fn storm_of_10000_failures_each_reported_once_woken_per_death() {
    storm_of_10000_failures_each_reported_once(&[], false);
}

#[test]
fn storm_of_10000_failures_each_reported_once_in_batch_windows() {
    storm_of_10000_failures_each_reported_once(&["--batch-window-us", "2000"], true);
}

#[test]
fn refuses_to_run_without_root() {
    let mut cmd = Command::new(tests::detector_bin());
    cmd.arg("run").uid(65534).gid(65534);
    let out = cmd.output().expect("run detector as nobody");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("detector must run as root") && stderr.contains("uid 65534"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn cgroup_path_outlives_the_cgroup() {
    let daemon = Daemon::start();
    // A storm keeps the daemon busy while each cgroup's only process dies and the cgroup is
    // removed, as systemd removes a unit's cgroup: by the time the record is read the directory
    // is usually gone, and only a path learned when it was created can name it. Five rounds, so
    // that a daemon looking paths up late cannot pass by luck.
    let mut storm = victim("storm")
        .args(["40000", "1"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("storm");
    // Under way once its first death is recorded.
    let _ = daemon.record_where("the storm under way", |r| {
        r["kind"] == "exit" && r["comm"] == "victim"
    });
    let mut deaths = Vec::new();
    for round in 0..5 {
        let name = format!("detector-cg-{}-{round}", std::process::id());
        let dir = cgroup2_mount().join(&name);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let procs = dir.join("cgroup.procs");
        let (pid, status) = run(Command::new("sh")
            .args(["-c", "echo $$ > \"$1\" && exit 3", "sh"])
            .arg(&procs));
        std::fs::remove_dir(&dir).unwrap_or_else(|e| panic!("rmdir {}: {e}", dir.display()));
        assert_eq!(status.code(), Some(3));
        deaths.push((pid, name));
    }
    assert!(storm.wait().expect("storm").success());
    for (pid, name) in deaths {
        let record = daemon.record_for(pid);
        assert_eq!(record["exit_code"], 3, "{record}");
        assert_eq!(record["cgroup"], format!("/{name}"), "{record}");
    }
}

#[test]
fn unit_is_named_from_a_systemd_shaped_cgroup() {
    let daemon = Daemon::start();
    // The layout systemd gives a templated service in a slice; no systemd is involved here (the
    // end-to-end tests with real systemd come with the recovery loop).
    let slice = cgroup2_mount().join(format!("detector-test-{}.slice", std::process::id()));
    let service = slice.join("app@7.service");
    std::fs::create_dir_all(&service)
        .unwrap_or_else(|e| panic!("mkdir {}: {e}", service.display()));
    let procs = service.join("cgroup.procs");
    let (pid, status) = run(Command::new("sh")
        .args(["-c", "echo $$ > \"$1\" && exit 4", "sh"])
        .arg(&procs));
    let record = daemon.record_for(pid);
    for dir in [&service, &slice] {
        std::fs::remove_dir(dir).unwrap_or_else(|e| panic!("rmdir {}: {e}", dir.display()));
    }
    assert_eq!(status.code(), Some(4));
    assert_eq!(
        (record["unit"].clone(), record["user_unit"].clone()),
        (json!("app@7.service"), Value::Null),
        "{record}"
    );
}
