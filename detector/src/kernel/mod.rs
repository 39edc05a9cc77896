//! Stage 1, the kernel side seen from userspace: load and attach the programs with this kernel's
//! offsets (read from BTF and tracefs at load time), read the ring buffer, decode its records, and
//! read the per-CPU failure counters, and (at debug) the programs' own messages.
//!
//! - In: the kernel object embedded by `build.rs`, `/sys/kernel/btf/vmlinux`, tracefs formats,
//!   ring-buffer bytes.
//! - Out: [`decode::Event`]s (a death, a cgroup created or removed), [`clock`] conversions of kernel
//!   time, counter reports, [`random`] bytes.
//! - Must not know: units, systemd, the journal, policies, sinks. Nothing here imports another
//!   stage.

mod attach;
pub(crate) mod batch;
pub(crate) mod btf;
pub(crate) mod clock;
pub(crate) mod counters;
pub(crate) mod decode;
pub(crate) mod log;
mod maps;
mod offsets;
pub(crate) mod overlap;
pub(crate) mod pins;
pub(crate) mod privileges;
pub(crate) mod probes;
pub(crate) mod random;
pub(crate) mod ring;
pub(crate) mod tracefs;
