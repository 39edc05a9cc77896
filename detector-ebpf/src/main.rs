//! detector's kernel programs. One file per hook family:
//! - [`exit`]: the death of a thread group, with its wait status;
//! - [`fork`]: the processes the watched systemd manager spawns itself (units' main processes);
//! - [`signal`]: who generated each signal, kept until the death it may explain;
//! - [`oom`]: the OOM killer's victim, its memory figures and the memory cgroup that ran out;
//! - [`cgroup`]: cgroup2 directories created and removed, so paths outlive their cgroups.
//!
//! Everything the programs share lives in [`maps`]; kernel-struct access goes through [`kernel`],
//! which reads offsets the loader found in this kernel's BTF (Rust BPF has no CO-RE relocations).
#![no_std]
#![no_main]
#![expect(
    clippy::inline_always,
    reason = "BPF programs are verified as one body: helpers must be inlined into their program"
)]
#![expect(
    clippy::needless_pass_by_value,
    reason = "aya's program macros hand each entry point its context by value"
)]

// The package's empty library target (see lib.rs), which every bin target links.
use detector_ebpf as _;

mod cgroup;
mod exit;
mod fork;
mod kernel;
mod maps;
mod oom;
mod signal;

/// The BPF helpers we call (`bpf_probe_read_kernel`, ...) are GPL-only.
// SAFETY: `license` is the section the loader reads the licence string from; nothing else is
// placed there, and the unmangled name `LICENSE` clashes with no other symbol in this object.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// Sizes and alignments of the shared types as the BPF compiler laid them out; the daemon's tests
/// compare this symbol in the embedded object with its own view (`detector_common::LAYOUTS`).
// SAFETY: the unmangled name is unique in this object; the daemon's test finds it by name.
#[unsafe(no_mangle)]
#[used]
static DETECTOR_LAYOUTS: [u32; detector_common::LAYOUTS.len()] = detector_common::LAYOUTS;

/// Offsets of every field of the shared types as the BPF compiler laid them out; the daemon's
/// tests compare them with its own (`detector_common::FIELD_OFFSETS`).
// SAFETY: the unmangled name is unique in this object; the daemon's test finds it by name.
#[unsafe(no_mangle)]
#[used]
static DETECTOR_FIELD_OFFSETS: [u32; detector_common::FIELD_OFFSETS.len()] =
    detector_common::FIELD_OFFSETS;

// Hand-written rather than aya's `ebpf-panic`: that crate is the same loop, but it is not
// published on crates.io (`publish = false` in aya's workspace), and a git dependency is out of
// reach of this project's machines.
#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this; it is never called at run time.
    loop {}
}
