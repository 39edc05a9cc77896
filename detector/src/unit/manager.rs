//! The watched systemd manager: its PID 1 in our pid namespace, and the cgroup it manages.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::unit::names;

/// The PID, in our pid namespace, of the systemd instance whose files are at `root`: 1 for `/`,
/// N for `/proc/N/root`; None otherwise (a container with the host's / at /host).
#[must_use]
pub(crate) fn pid(root: &Path) -> Option<i32> {
    if root == Path::new("/") {
        return Some(1);
    }
    root.strip_prefix("/proc")
        .ok()?
        .to_str()?
        .strip_suffix("/root")?
        .parse()
        .ok()
}

/// The cgroup managed by the systemd instance whose files are at `root`, from the cgroup of its
/// PID 1 (`/proc/PID/cgroup`, or `ROOT/proc/1/cgroup` when we do not know its pid).
pub(crate) fn cgroup(root: &Path) -> anyhow::Result<String> {
    // With the pid known, our own procfs; otherwise the root's, resolved inside it.
    let (pid1, text) = match pid(root) {
        Some(pid) => {
            let path = PathBuf::from(format!("/proc/{pid}/cgroup"));
            (path.clone(), std::fs::read_to_string(&path))
        }
        None => (
            root.join("proc/1/cgroup"),
            super::root::read_to_string(root, "/proc/1/cgroup"),
        ),
    };
    let text = text.with_context(|| {
        format!(
            "--root {}: cannot read {} to find the systemd manager's cgroup",
            root.display(),
            pid1.display()
        )
    })?;
    names::manager_root(&text).with_context(|| {
        format!(
            "--root {}: {} does not show a systemd manager (no cgroup2 `init.scope`)",
            root.display(),
            pid1.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn manager_pids_from_roots() {
        for (root, want) in [
            ("/", Some(1)),
            ("/proc/42/root", Some(42)),
            ("/proc/42/root/", Some(42)),
            ("/host", None),
            ("/proc/self/root", None),
        ] {
            assert_eq!(super::pid(Path::new(root)), want, "{root}");
        }
    }
}
