use which::which;

/// Building this crate needs `bpf-linker`. Cargo does not track it, so rebuild when it changes
/// (`cargo xtask` installs or updates it).
fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    } else {
        println!(
            "cargo:warning=bpf-linker not found on PATH; run `cargo xtask build` to install it"
        );
    }
}
