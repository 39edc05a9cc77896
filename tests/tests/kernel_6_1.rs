//! The same daemon on a second kernel: Debian's 6.1, booted under qemu (TCG) with a busybox
//! initramfs. 6.1 has no `group_dead` in `sched_process_exit` (so the fentry `taskstats_exit`
//! fallback runs), and here a cgroup2-only memory controller, so OOM paths resolve in cgroup2. `cargo xtask test` downloads the kernel and sets `DETECTOR_KERNEL_6_1`.

#![expect(
    unused_crate_dependencies,
    reason = "each target of the tests package uses a part of its dependencies"
)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::{Value, json};

/// The init script: start the daemon, make processes die in known ways, print what it wrote.
/// Each trigger prints `PID <name> <pid>` so the test can find its record.
const INIT: &str = r#"#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tracefs tracefs /sys/kernel/tracing; mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo "KERNEL $(cat /proc/sys/kernel/osrelease)"
/bin/detector run > /tmp/out 2> /tmp/err &
DAEMON=$!
i=0; while ! grep -q "detector ready" /tmp/err && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done
sh -c 'exit 3' & P=$!; wait $P; echo "PID exit3 $P"
/bin/victim segv & P=$!; wait $P; echo "PID segv $P"
/bin/victim group-exit-after-main & P=$!; wait $P; echo "PID threads $P"
sleep 60 & P=$!; kill -KILL $P; wait $P; echo "PID killed $P"
echo +memory > /sys/fs/cgroup/cgroup.subtree_control; mkdir /sys/fs/cgroup/oomtest
echo 64M > /sys/fs/cgroup/oomtest/memory.max; echo 0 > /sys/fs/cgroup/oomtest/memory.swap.max
sh -c 'echo $$ > /sys/fs/cgroup/oomtest/cgroup.procs; exec /bin/victim alloc' & P=$!; wait $P; echo "PID oom $P"
i=0; while [ "$(grep -c '"kind":"exit"' /tmp/out)" -lt 5 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
kill -TERM $DAEMON; wait $DAEMON
echo "--- stderr"; cat /tmp/err; echo "--- records"; cat /tmp/out; echo "--- end"
poweroff -f
"#;

fn copy(from: &Path, to: &Path) {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    }
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
}

/// Shared libraries a host binary needs, from `ldd`.
fn libraries(binary: &str) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(binary).output().expect("ldd");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

/// Builds the initramfs: busybox, the daemon and `victim` with their libraries, and `INIT`.
fn initramfs(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    let _ = std::fs::remove_dir_all(&root);
    for sub in ["bin", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(sub)).expect("initramfs dirs");
    }
    copy(Path::new("/bin/busybox"), &root.join("bin/busybox"));
    for applet in [
        "sh", "mount", "mkdir", "cat", "sleep", "poweroff", "grep", "kill", "echo",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("applet link");
    }
    let detector = tests::detector_bin();
    let victim = env!("CARGO_BIN_EXE_victim");
    copy(Path::new(&detector), &root.join("bin/detector"));
    copy(Path::new(victim), &root.join("bin/victim"));
    for lib in libraries(&detector).into_iter().chain(libraries(victim)) {
        copy(&lib, &root.join(lib.strip_prefix("/").expect("absolute")));
    }
    let init = root.join("init");
    std::fs::write(&init, INIT).expect("init");
    std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod init");
    let image = dir.join("initrd.gz");
    let status = Command::new("sh")
        .args([
            "-c",
            "find . | cpio -o -H newc --quiet | gzip -1 > \"$1\"",
            "sh",
        ])
        .arg(&image)
        .current_dir(&root)
        .status()
        .expect("cpio");
    assert!(status.success(), "building the initramfs failed");
    image
}

/// Boots `kernel` with the initramfs and returns what it printed on its console, then qemu's
/// exit status and stderr.
fn boot(kernel: &str) -> String {
    let dir = std::env::temp_dir().join(format!("detector-6.1-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("work dir");
    let image = initramfs(&dir);
    let out = Command::new("timeout")
        .args([
            "600",
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-m",
            "1024",
            "-smp",
            "1",
        ])
        .args(["-nographic", "-no-reboot", "-kernel", kernel, "-initrd"])
        .arg(&image)
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .stdin(Stdio::null())
        .output()
        .expect("qemu-system-x86_64");
    let _ = std::fs::remove_dir_all(&dir);
    let console = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    format!(
        "{console}\n[qemu {}] {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn records_are_right_on_debian_6_1() {
    let kernel = std::env::var("DETECTOR_KERNEL_6_1").unwrap_or_else(|_| {
        panic!(
            "DETECTOR_KERNEL_6_1 is not set: run with `cargo xtask test`, which fetches the kernel"
        )
    });
    let console = boot(&kernel);
    let context = || format!("console output:\n{console}");
    assert!(
        console.contains("KERNEL 6.1."),
        "not a 6.1 kernel\n{}",
        context()
    );
    assert!(
        console.contains("exit=\"fentry taskstats_exit\""),
        "the 6.1 fallback did not run\n{}",
        context()
    );
    assert!(
        console.contains("cgroups=\"tracepoints cgroup:cgroup_mkdir, cgroup:cgroup_rmdir\""),
        "cgroup paths are not learned ahead of need on 6.1\n{}",
        context()
    );
    let pid = |name: &str| -> u64 {
        console
            .lines()
            .find_map(|l| l.strip_prefix(&format!("PID {name} ")))
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no pid for {name}\n{}", context()))
    };
    let records: Vec<Value> = console
        .split("--- records\n")
        .nth(1)
        .and_then(|rest| rest.split("--- end").next())
        .unwrap_or_else(|| panic!("no records section\n{}", context()))
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad record {l}: {e}")))
        .collect();
    let record = |name: &str| -> Value {
        let pid = pid(name);
        let mine: Vec<&Value> = records.iter().filter(|r| r["pid"] == pid).collect();
        assert_eq!(
            mine.len(),
            1,
            "{name}: one record for pid {pid}\n{}",
            context()
        );
        mine[0].clone()
    };

    let r = record("exit3");
    assert_eq!(
        (
            r["exit_code"].clone(),
            r["wait_status"].clone(),
            r["signal"].clone()
        ),
        (json!(3), json!(768), Value::Null),
        "{r}"
    );
    let r = record("segv");
    assert_eq!(
        (r["signal"].clone(), r["core_dumped"].clone()),
        (json!("SIGSEGV"), json!(false)),
        "{r}"
    );
    assert_eq!(
        r["killed_by"],
        json!({"pid": pid("segv"), "comm": "victim", "kernel": true, "si_code": 1}),
        "{r}"
    );
    let r = record("threads");
    assert_eq!(r["exit_code"], 7, "{r}");
    assert_ne!(r["tid"], r["pid"], "{r}");
    // The init script itself (pid 1) sends the SIGKILL.
    let r = record("killed");
    assert_eq!(r["signal"], "SIGKILL", "{r}");
    assert_eq!(
        r["killed_by"],
        json!({"pid": 1, "comm": "init", "kernel": false, "si_code": 0}),
        "{r}"
    );
    let r = record("oom");
    assert_eq!(r["signal"], "SIGKILL", "{r}");
    assert_eq!(r["killed_by"]["kernel"], true, "{r}");
    let oom = &r["oom"];
    assert_eq!(
        (oom["constraint"].clone(), oom["memcg"].clone()),
        (json!("memcg"), json!("/oomtest")),
        "{r}"
    );
    // Debian's 6.1 carries the memory figures in oom:mark_victim (backported); the anonymous
    // memory is what the 64 MiB limit allowed.
    let anon = oom["anon_rss_kb"]
        .as_u64()
        .unwrap_or_else(|| panic!("anon_rss_kb: {r}"));
    assert!((32 << 10..=64 << 10).contains(&anon), "{r}");
    assert_eq!(r["cgroup"], "/oomtest", "{r}");
}
