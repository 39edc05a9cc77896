//! `cargo xtask fuzz [--seconds N]`: runs every cargo-fuzz target in `fuzz/` for a bounded time,
//! with nightly (cargo-fuzz installed on first use).
//!
//! Each run reads the seed corpus kept in the repository (`fuzz/corpus/TARGET`, small: seeds and
//! the inputs of findings once fixed) and grows its own corpus under `target/fuzz/corpus`, so the
//! repository does not fill with generated inputs. A crash stops the run and leaves its input in
//! `fuzz/artifacts/TARGET`.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{cargo, root, run};

/// The cargo-fuzz release `cargo install` fetches when it is missing.
const CARGO_FUZZ_VERSION: &str = "0.13.2";
pub(crate) const TARGETS: [&str; 3] = ["record", "config", "journal_rules"];

fn cargo_fuzz_installed() -> bool {
    cargo()
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs each target for `seconds`; fails on the first that finds a crash.
pub(crate) fn all(seconds: u32) -> Result<()> {
    crate::setup::bpf_toolchain()?;
    if !cargo_fuzz_installed() {
        eprintln!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
        run(cargo().args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            CARGO_FUZZ_VERSION,
        ]))?;
    }
    let mut failed = Vec::new();
    for target in TARGETS {
        let scratch = root().join("target/fuzz/corpus").join(target);
        std::fs::create_dir_all(&scratch)?;
        let seeds = root().join("fuzz/corpus").join(target);
        let result = run(Command::new("rustup")
            .args([
                "run",
                "nightly",
                "cargo",
                "fuzz",
                "run",
                "--fuzz-dir",
                "fuzz",
                target,
            ])
            .arg(&scratch)
            .arg(&seeds)
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-rss_limit_mb=2048",
                "-print_final_stats=1",
            ]));
        if let Err(e) = result {
            eprintln!("xtask: fuzz target {target} failed: {e:#}");
            failed.push(target);
        }
    }
    if !failed.is_empty() {
        bail!("fuzz targets found crashes: {failed:?} (inputs in fuzz/artifacts)");
    }
    Ok(())
}
