//! Installs what building and testing need, on a fresh machine of the project's kind.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::run;

/// The bpf-linker release we build; it must support the nightly's LLVM major version.
const BPF_LINKER_VERSION: &str = "0.13.0";

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {}", crate::display(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            crate::display(cmd),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// nightly + rust-src, and bpf-linker linked against the nightly's LLVM.
pub(crate) fn bpf_toolchain() -> Result<()> {
    let installed = output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))
        .context("the kernel programs build with the `nightly` toolchain; install it with `rustup toolchain install nightly`")?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!(
            "xtask: installing rust-src for the nightly toolchain (needed for -Z build-std=core)"
        );
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    if Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    let sysroot = PathBuf::from(
        output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim(),
    );
    let (llvm, major) = nightly_llvm(&sysroot.join("lib"))?;
    // bpf-linker keeps a RUNPATH to this prefix, so it lives outside the (disposable) target dir.
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let prefix = Path::new(&home).join(".cache/detector/llvm-prefix");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let file_name = llvm.file_name().context("LLVM library has no file name")?;
    for link in [lib.join("libLLVM.so"), lib.join(file_name)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    eprintln!(
        "xtask: installing bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {major} ({}); this takes a few minutes",
        llvm.display()
    );
    let mut cmd = crate::cargo();
    cmd.args([
        "install",
        "bpf-linker",
        "--locked",
        "--version",
        BPF_LINKER_VERSION,
        "--no-default-features",
        "--features",
    ])
    .arg(format!("llvm-{major}"))
    .env("LLVM_PREFIX", &prefix);
    run(&mut cmd)
}

/// The nightly's `libLLVM.so.<major>.<minor>-rust-<version>` and its major version.
fn nightly_llvm(lib: &Path) -> Result<(PathBuf, u32)> {
    let entries = std::fs::read_dir(lib).with_context(|| format!("reading {}", lib.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(version) = name.strip_prefix("libLLVM.so.")
            && version.contains("-rust-")
            && let Some(major) = version.split('.').next().and_then(|m| m.parse().ok())
        {
            return Ok((entry.path(), major));
        }
    }
    bail!(
        "no libLLVM.so.<version>-rust-* in {}: is the nightly toolchain complete?",
        lib.display()
    )
}

/// Debian packages the daemon builds against: libsystemd (sd-journal) and pkg-config to find it.
const BUILD_PACKAGES: [(&str, &str); 2] = [
    ("libsystemd-dev", "/usr/include/systemd/sd-journal.h"),
    ("pkg-config", "/usr/bin/pkg-config"),
];

/// Installs the Debian packages in `packages` whose file is missing.
fn apt_install(what: &str, packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(_, file)| !Path::new(file).exists())
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask: installing Debian packages {what}: {}",
        missing.join(" ")
    );
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Debian packages the daemon needs to build.
pub(crate) fn build_packages() -> Result<()> {
    apt_install("to build the daemon", &BUILD_PACKAGES)
}

/// Debian packages the root tests use: debootstrap and systemd-nspawn make and boot the machine
/// with real systemd; qemu and busybox boot the second kernel, cpio packs its initramfs; the
/// alert tests start a real Alertmanager on loopback, and prometheus scrapes the daemon in the
/// metrics test.
const TEST_PACKAGES: [(&str, &str); 7] = [
    ("debootstrap", "/usr/sbin/debootstrap"),
    ("systemd-container", "/usr/bin/systemd-nspawn"),
    ("qemu-system-x86", "/usr/bin/qemu-system-x86_64"),
    ("busybox-static", "/bin/busybox"),
    ("cpio", "/usr/bin/cpio"),
    (
        "prometheus-alertmanager",
        "/usr/bin/prometheus-alertmanager",
    ),
    ("prometheus", "/usr/bin/prometheus"),
];

/// Installs the Debian packages the tests need, if any is missing.
pub(crate) fn test_packages() -> Result<()> {
    apt_install("for the tests", &TEST_PACKAGES)
}

/// Debian packages the benchmark's peers need: bpftrace itself, and clang with libbpf-dev to
/// build the C ring-buffer reader (`xtask/peers`).
const BENCH_PACKAGES: [(&str, &str); 3] = [
    ("bpftrace", "/usr/bin/bpftrace"),
    ("clang", "/usr/bin/clang"),
    ("libbpf-dev", "/usr/include/bpf/libbpf.h"),
];

/// Installs the Debian packages the benchmark's peers need, if any is missing.
pub(crate) fn bench_packages() -> Result<()> {
    apt_install("for the benchmark's peers", &BENCH_PACKAGES)
}

/// Debian's newest 6.1 cloud kernel, downloaded and unpacked once under `target/kernels`;
/// returns the path of its `vmlinuz`.
pub(crate) fn kernel_6_1() -> Result<PathBuf> {
    let dir = crate::root().join("target/kernels");
    if let Some(found) = find_vmlinuz(&dir) {
        return Ok(found);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let search = || {
        output(Command::new("apt-cache").args([
            "search",
            "--names-only",
            "^linux-image-6\\.1\\.0-[0-9]+-cloud-amd64-unsigned$",
        ]))
    };
    let mut names = search()?;
    if names.trim().is_empty() {
        run(Command::new("apt-get").arg("update").arg("-qq"))?;
        names = search()?;
    }
    let package = names
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .max_by_key(|name| {
            name.trim_start_matches("linux-image-6.1.0-")
                .split('-')
                .next()
                .and_then(|n| n.parse::<u32>().ok())
        })
        .context("Debian offers no linux-image-6.1.0-*-cloud-amd64-unsigned package")?
        .to_owned();
    eprintln!("xtask: downloading {package} to boot the tests' second kernel");
    run(Command::new("apt-get")
        .args(["download", &package])
        .current_dir(&dir))?;
    let deb = std::fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(dir.join("x")))?;
    find_vmlinuz(&dir).context("the kernel package has no boot/vmlinuz-*")
}

fn find_vmlinuz(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir.join("x/boot"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-6.1."))
        })
}

/// A Debian bookworm root with systemd, D-Bus and python3 for the end-to-end tests, made once
/// with debootstrap (about 40 s) and kept in `~/.cache/detector`; tests boot it with
/// systemd-nspawn `--volatile=overlay`, so they never change it.
pub(crate) fn machine_root() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let root = Path::new(&home).join(".cache/detector/bookworm");
    let done = root.join(".detector-complete");
    if done.exists() {
        return Ok(root);
    }
    let partial = root.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    let _ = std::fs::remove_dir_all(&root);
    eprintln!(
        "xtask: debootstrapping a Debian bookworm machine with systemd into {} (about a minute)",
        root.display()
    );
    run(Command::new("debootstrap")
        .args([
            "--variant=minbase",
            "--include=systemd,systemd-sysv,dbus,python3",
            "bookworm",
        ])
        .arg(&partial))?;
    std::fs::rename(&partial, &root)
        .with_context(|| format!("moving {} into place", partial.display()))?;
    std::fs::write(&done, b"").with_context(|| format!("writing {}", done.display()))?;
    Ok(root)
}

/// FastAPI, uvicorn and gunicorn for the machine's services with workers, each pinned exactly
/// with every dependency (`pip install --no-deps` installs nothing unnamed), so a test sees the
/// same supervisor and the same log lines on every run. uvicorn from 0.30 has the multiprocess
/// supervisor that pings its workers and respawns dead ones; from 0.50 it also stops the parent
/// when a worker exits with its startup-failure code 3. Change a pin and the next run reinstalls.
const PYTHON_PINS: [&str; 15] = [
    "annotated-doc==0.0.7",
    "annotated-types==0.8.0",
    "anyio==4.16.0",
    "click==8.5.1",
    "fastapi==0.165.0",
    "gunicorn==27.0.1",
    "h11==0.16.0",
    "idna==3.20",
    "opentelemetry-api==1.45.2",
    "pydantic==2.14.4",
    "pydantic-core==2.50.5",
    "starlette==1.10.0",
    "typing-extensions==4.16.0",
    "typing-inspection==0.4.5",
    "uvicorn==0.54.0",
];

/// pip's flags for wheels that the machine's python3 (CPython 3.11, x86_64, glibc 2.36) runs,
/// whatever the host's Python is: binary only, so nothing is built on the host.
/// Bytecode is left to the machine's own python3 (the host's may be another version).
const MACHINE_WHEELS: [&str; 9] = [
    "--disable-pip-version-check",
    "--only-binary=:all:",
    "--implementation=cp",
    "--python-version=3.11",
    "--abi=cp311",
    "--platform=manylinux_2_17_x86_64",
    "--platform=manylinux2014_x86_64",
    "--no-compile",
    "--no-warn-script-location",
];

/// Where the packages go inside the machine root; services run with `PYTHONPATH` set to it.
const PYTHON_DIR: &str = "opt/detector-py";

/// What the marker in [`PYTHON_DIR`] says: the pins it was installed from, one a line.
fn python_marker() -> String {
    PYTHON_PINS.join("\n") + "\n"
}

/// The pinned Python web stack ([`PYTHON_PINS`]) in `machine_root`'s `/opt/detector-py`, for the
/// tests' services with workers (`python3 -m uvicorn --workers N`, `python3 -m gunicorn -w N`).
/// The machine has no pip and only PyPI is reachable, so the host's pip fetches wheels built
/// for the machine's interpreter (CPython 3.11 on x86_64 glibc 2.36: manylinux 2.17 wheels
/// run there), binary only, so nothing is compiled on the host for the wrong Python. It
/// installs into a side directory and renames it into place, so an interrupted install is
/// never taken for a complete one; a marker names the pins and a changed list reinstalls.
pub(crate) fn python_apps(machine_root: &Path) -> Result<()> {
    let dir = machine_root.join(PYTHON_DIR);
    let marker = dir.join(".detector-pins");
    let wanted = python_marker();
    if std::fs::read_to_string(&marker).is_ok_and(|have| have == wanted) {
        return Ok(());
    }
    let mut pip = host_pip()?;
    let partial = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    eprintln!(
        "xtask: installing fastapi, uvicorn and gunicorn (pinned) into {}",
        dir.display()
    );
    run(pip
        .args(["install", "--quiet", "--no-deps", "--target"])
        .arg(&partial)
        .args(MACHINE_WHEELS)
        .args(PYTHON_PINS)
        // A host's own wheel directory could hold a different build of a pinned version.
        .env_remove("PIP_FIND_LINKS"))?;
    // Compiled once here by the machine's python3: the machine boots with its changes in an
    // overlay that is thrown away, so otherwise every boot's workers would compile it all again.
    let inside = Path::new("/").join(PYTHON_DIR);
    run(Command::new("chroot")
        .arg(machine_root)
        .args(["/usr/bin/python3", "-m", "compileall"])
        .args(["-q", "-j0", "-d"])
        .arg(&inside)
        .arg(inside.with_extension("partial")))?;
    std::fs::write(partial.join(".detector-pins"), &wanted)
        .with_context(|| format!("writing the marker in {}", partial.display()))?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("removing the outdated {}", dir.display()))?;
    }
    std::fs::rename(&partial, &dir)
        .with_context(|| format!("moving {} into place", partial.display()))
}

/// Debian's pip, for a host whose python3 has none.
const PIP_PACKAGE: (&str, &str) = (
    "python3-pip",
    "/usr/lib/python3/dist-packages/pip/__init__.py",
);

/// The host's `python3 -m pip`, installing Debian's python3-pip when the host has none.
fn host_pip() -> Result<Command> {
    let pip = || {
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "pip"]);
        cmd
    };
    if pip()
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(pip());
    }
    apt_install("to fetch the machine's Python packages", &[PIP_PACKAGE])?;
    // Debian's pip belongs to Debian's python3, which may not be the first on PATH.
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(["-m", "pip"]);
    Ok(cmd)
}

/// Host state the daemon and the root tests need: tracefs mounted.
pub(crate) fn host_for_tests() -> Result<()> {
    let tracing = Path::new("/sys/kernel/tracing");
    if !tracing.join("events").is_dir() {
        eprintln!("xtask: mounting tracefs at {}", tracing.display());
        run(Command::new("mount")
            .args(["-t", "tracefs", "tracefs"])
            .arg(tracing))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_pins_are_exact_and_sorted() {
        for pin in PYTHON_PINS {
            let (name, version) = pin.split_once("==").expect("name==version");
            assert!(
                !name.is_empty() && version.split('.').all(|n| n.parse::<u32>().is_ok()),
                "{pin}"
            );
        }
        assert!(
            PYTHON_PINS.is_sorted_by_key(|pin| pin.split("==").next()),
            "keep the pins sorted by name"
        );
        assert_eq!(python_marker().lines().count(), PYTHON_PINS.len());
    }

    #[test]
    fn finds_the_nightly_llvm() {
        let dir = std::env::temp_dir().join(format!("xtask-llvm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        for name in [
            "libLLVM.so",
            "librustc_driver.so",
            "libLLVM.so.22.1-rust-1.97.0-nightly",
        ] {
            std::fs::write(dir.join(name), b"").expect("file");
        }
        let (path, major) = nightly_llvm(&dir).expect("found");
        assert_eq!(
            (path.file_name().and_then(|n| n.to_str()), major),
            (Some("libLLVM.so.22.1-rust-1.97.0-nightly"), 22)
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert!(nightly_llvm(&dir).is_err());
    }
}
