//! Reads of kernel structures at offsets the loader found in this kernel's BTF.

use aya_ebpf::helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_buf};

use crate::maps::fail;

/// Why a probe gave up on (part of) a record.
pub(crate) enum Error {
    /// The loader did not provide an offset this read needs (the kernel lacks the field); the
    /// loader reported it once, at start.
    NoOffset,
    /// `bpf_probe_read_kernel` failed; not counted yet: the caller knows what it was reading
    /// (see [`counted`]).
    Read,
    /// Counted already, under its kind: a full ring buffer, a map that refused an update, a
    /// read passed through [`counted`].
    Counted,
}

/// Counts a failed read as `kind` (one of `detector_common::counter`'s `READ_*`): the kinds say
/// which structure could not be read, which a single "read failed" counter could not.
#[inline(always)]
pub(crate) fn counted<T>(result: Result<T, Error>, kind: u32) -> Result<T, Error> {
    match result {
        Err(Error::Read) => {
            fail(kind);
            Err(Error::Counted)
        }
        other => other,
    }
}

/// The offset of one field of [`detector_common::Offsets`], or [`Error::NoOffset`]. A macro, not
/// a function taking an accessor: BPF has no indirect calls, and reading one field keeps the
/// stack small.
macro_rules! offset {
    ($field:ident) => {{
        let all: *const detector_common::Offsets = (&raw const $crate::maps::OFFSETS).cast();
        // SAFETY: `Global<T>` is `repr(transparent)` over `MaybeUninit<T>` and always holds a
        // valid `Offsets`; the volatile read stops the compiler folding in the default.
        let value = unsafe { core::ptr::read_volatile(&raw const (*all).$field) };
        if value == detector_common::ABSENT {
            Err($crate::kernel::Error::NoOffset)
        } else {
            Ok(u64::from(value))
        }
    }};
}
pub(crate) use offset;

/// Reads a `T` at kernel address `base + offset`.
#[inline(always)]
pub(crate) fn read<T>(base: u64, offset: u64) -> Result<T, Error> {
    // SAFETY: bpf_probe_read_kernel copes with any address: a bad one fails, it never faults.
    unsafe { bpf_probe_read_kernel((base + offset) as *const T) }.map_err(|_| Error::Read)
}

/// Copies `dst.len()` bytes from kernel address `base + offset`.
#[inline(always)]
pub(crate) fn read_bytes(base: u64, offset: u64, dst: &mut [u8]) -> Result<(), Error> {
    // SAFETY: as in `read`.
    unsafe { bpf_probe_read_kernel_buf((base + offset) as *const u8, dst) }.map_err(|_| Error::Read)
}

/// CLOCK_MONOTONIC in ns; the daemon turns it into wall-clock time.
#[inline(always)]
pub(crate) fn now_ns() -> u64 {
    // SAFETY: the helper takes no arguments and cannot fail.
    unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() }
}

/// cgroup v2 id of `current`.
#[inline(always)]
pub(crate) fn current_cgroup_id() -> u64 {
    // SAFETY: the helper takes no arguments and cannot fail.
    unsafe { aya_ebpf::helpers::bpf_get_current_cgroup_id() }
}
