//! Compiles the kernel programs (`detector-ebpf`) for the BPF target with the nightly toolchain
//! and bpf-linker, and leaves the object in `OUT_DIR` for `include_bytes_aligned!`.
//! `cargo xtask build` installs both first; a plain `cargo build` without them fails here.

use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;
// Not called: depending on it makes cargo rebuild the daemon when the kernel programs change.
use detector_ebpf as _;

fn main() -> anyhow::Result<()> {
    // cargo-fuzz builds with `--cfg fuzzing` (and sanitizer flags that would reach the BPF
    // build): the fuzz targets never load programs, so an empty object stands in for them.
    if std::env::var_os("CARGO_CFG_FUZZING").is_some() {
        let out = std::env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR is not set"))?;
        std::fs::write(std::path::Path::new(&out).join("detector"), [])
            .context("writing the empty kernel object for fuzzing")?;
        return Ok(());
    }
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("reading the workspace metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|cargo_metadata::Package { name, .. }| name.as_str() == "detector-ebpf")
        .ok_or_else(|| anyhow!("detector-ebpf is not in the workspace"))?;
    let cargo_metadata::Package {
        name,
        manifest_path,
        ..
    } = ebpf;
    let root_dir = manifest_path
        .parent()
        .ok_or_else(|| anyhow!("{manifest_path} has no parent directory"))?;
    let package = aya_build::Package {
        name: name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::default()).context(
        "building the kernel programs (run `cargo xtask build` to install the BPF toolchain)",
    )
}
