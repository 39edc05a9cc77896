//! The peers detector is measured against in every bench run: bpftrace (Debian's package) and a
//! plain C libbpf ring-buffer reader (`xtask/peers/`), built here with Debian's clang and
//! libbpf-dev. What is missing is installed; what still cannot run is named, not fatal.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::reader::Tools;

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
