//! Least privilege: once the programs are attached and their maps are open, the daemon drops
//! every capability it does not need for the rest of its life, from all its sets (effective,
//! permitted, inheritable, ambient, and the bounding set, so nothing can regain them). It stays
//! uid 0: systemd lets uid 0 restart units over D-Bus (dbus-daemon hands it no capabilities, so
//! sd-bus decides by uid), and the journal's files belong to root.
//!
//! Capabilities are per thread, and a thread inherits its creator's: this runs on the main
//! thread before any other thread is started, so every later thread has only what is kept.

use caps::{CapSet, Capability, CapsHashSet};

/// What the running daemon keeps, and why. Found by running the systemd suites without each:
/// without CAP_SYS_PTRACE the machine's bus socket under /proc/PID/root is "Permission denied";
/// without CAP_DAC_READ_SEARCH an OOM kill's v1 memory cgroup is not named. Not kept:
/// CAP_SYS_ADMIN (its one use, the `trusted.invocation_id` xattr, has a `user.invocation_id`
/// twin systemd sets too), CAP_KILL (hung units are killed by systemd, over D-Bus), CAP_BPF and
/// CAP_PERFMON (nothing is loaded or attached after start, see below for old kernels).
const KEPT: [(Capability, &str); 2] = [
    (
        Capability::CAP_SYS_PTRACE,
        "/proc/PID/root, /proc/PID/ns and /proc/PID/fd of processes with more capabilities or another uid: the watched machine's journal and bus socket under --root /proc/PID/root, and who holds a port",
    ),
    (
        Capability::CAP_DAC_READ_SEARCH,
        "open_by_handle_at(2): a cgroup directory opened by the id in a death record, kept open so its path outlives it",
    ),
];

/// Before 6.5 every bpf(2) call, even a lookup in a map the daemon holds open, needs CAP_BPF
/// when unprivileged BPF is disabled (the default); since "bpf: Centralize permissions checks"
/// only creating maps and loading programs do.
const CAP_BPF_FOR_MAPS_BEFORE: (u32, u32) = (6, 5);

#[derive(Debug, thiserror::Error)]
#[error("dropping capabilities: {0}")]
pub(crate) struct DropError(#[from] caps::errors::CapsError);

/// The running kernel's `(major, minor)`, from /proc/sys/kernel/osrelease.
fn kernel_version() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = release.trim().split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The capabilities the running daemon keeps, with why.
#[must_use]
pub(crate) fn kept() -> Vec<(Capability, &'static str)> {
    let mut kept = KEPT.to_vec();
    if kernel_version().is_none_or(|v| v < CAP_BPF_FOR_MAPS_BEFORE) {
        kept.push((
            Capability::CAP_BPF,
            "this kernel (before 6.5) checks it on every bpf(2) call: reading the counters",
        ));
    }
    kept
}

/// Drops every capability but [`kept`] from every set of the calling thread.
pub(crate) fn drop_all_but_kept() -> Result<CapsHashSet, DropError> {
    let keep: CapsHashSet = kept().into_iter().map(|(cap, _)| cap).collect();
    // The bounding set first: dropping from it takes CAP_SETPCAP, which goes with the rest.
    for cap in caps::read(None, CapSet::Bounding)? {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap)?;
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    let have = caps::read(None, CapSet::Permitted)?;
    let keep: CapsHashSet = keep.intersection(&have).copied().collect();
    caps::set(None, CapSet::Effective, &keep)?;
    caps::set(None, CapSet::Permitted, &keep)?;
    Ok(keep)
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_kernel_has_a_version() {
        let (major, _) = super::kernel_version().expect("osrelease");
        assert!(major >= 4, "{major}");
    }
}
