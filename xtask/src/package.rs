//! `cargo xtask package`: the Debian package, built with cargo-deb (installed on first use).
//!
//! What goes in is declared in `detector/Cargo.toml` (`[package.metadata.deb]`): the binary, the
//! unit (`detector/packaging/detector.service`), the commented default configuration, and the
//! maintainer scripts (state directory; `detector unpin` on removal).

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{cargo, root, run};

/// The cargo-deb release `cargo install` fetches when it is missing.
const CARGO_DEB_VERSION: &str = "3.8.0";

fn cargo_deb_installed() -> bool {
    cargo()
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Builds the daemon and its `.deb`; returns the package's path.
pub(crate) fn deb() -> Result<PathBuf> {
    let daemon = crate::build_daemon()?;
    if !cargo_deb_installed() {
        eprintln!("xtask: installing cargo-deb {CARGO_DEB_VERSION} (builds the Debian package)");
        run(cargo().args([
            "install",
            "cargo-deb",
            "--locked",
            "--version",
            CARGO_DEB_VERSION,
        ]))?;
    }
    let out_dir = root().join("target/debian");
    // Only this build's package in the directory, so that the path below is the one just made.
    let _ = std::fs::remove_dir_all(&out_dir);
    run(cargo()
        .args([
            "deb",
            "--package",
            "detector",
            "--no-build",
            // The daemon `build_daemon` made: cargo-deb reads `target/release/` in the assets
            // as this profile's directory.
            "--profile",
            "dist",
            "--strip",
            "--output",
        ])
        .arg(&out_dir))?;
    let deb = std::fs::read_dir(&out_dir)
        .with_context(|| format!("reading {}", out_dir.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("cargo deb left no .deb in {}", out_dir.display()))?;
    check(&deb)?;
    eprintln!(
        "xtask: built {} (daemon {})",
        deb.display(),
        daemon.display()
    );
    Ok(deb)
}

/// The package holds what it must; `dpkg-deb` reads it back.
fn check(deb: &std::path::Path) -> Result<()> {
    let out = Command::new("dpkg-deb")
        .arg("--contents")
        .arg(deb)
        .output()
        .context("running dpkg-deb")?;
    let listing = String::from_utf8_lossy(&out.stdout);
    for wanted in [
        "./usr/bin/detector",
        "/detector.service",
        "./etc/detector/config.toml",
    ] {
        if !listing.lines().any(|l| l.contains(wanted)) {
            bail!("{} lacks {wanted}:\n{listing}", deb.display());
        }
    }
    Ok(())
}
