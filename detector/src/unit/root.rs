//! Paths under `--root`, resolved so that they cannot leave it.
//!
//! `--root /proc/PID/root` is the watched machine's own filesystem, and the machine may be
//! hostile. A plain `root.join(path)` walks through the `/proc/PID/root` magic link into the
//! machine, but an absolute symlink, or enough `..`, planted there is then resolved against the
//! daemon's own root: the HOST's. `ROOT/run/dbus/system_bus_socket` could lead to the host's
//! systemd, and a RestartUnit meant for a machine's unit would go to the host.
//!
//! `openat2(2)` with `RESOLVE_IN_ROOT` resolves every component, symlinks included, as if the
//! root directory were `root` (<https://man7.org/linux/man-pages/man2/openat2.2.html>, Linux
//! 5.6+). What it returns is an fd; callers that need a path (a socket to connect to) use
//! `/proc/self/fd/N`, which names that very inode.

use std::{
    ffi::CString,
    fs::File,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

/// `struct open_how` of include/uapi/linux/openat2.h, first version (libc's is non-exhaustive).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const _: () = assert!(size_of::<OpenHow>() == 24);

/// `path` (absolute, as the machine sees it) opened under `root` with `flags` (`O_*`), never
/// leaving `root`.
pub(crate) fn open(root: &Path, path: &str, flags: libc::c_int) -> io::Result<OwnedFd> {
    let dir = File::open(root)?;
    let relative = CString::new(path.trim_start_matches('/'))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the path"))?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: `dir` is an open directory fd, `relative` a NUL-terminated string, and `how` a
    // valid `open_how` whose size is passed; the kernel reads them and writes nothing back.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            relative.as_ptr(),
            &raw const how,
            size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall succeeded, so `fd` is a new descriptor that we alone own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The contents of `path` under `root`.
pub(crate) fn read_to_string(root: &Path, path: &str) -> io::Result<String> {
    let mut file = File::from(open(root, path, libc::O_RDONLY)?);
    let mut text = String::new();
    io::Read::read_to_string(&mut file, &mut text)?;
    Ok(text)
}

/// Whether `path` exists under `root`.
pub(crate) fn exists(root: &Path, path: &str) -> bool {
    open(root, path, libc::O_PATH).is_ok()
}

/// `path` under `root` held open (`O_PATH`), and a path to it that stays inside: for a socket to
/// connect to. The path is valid while the fd is open.
pub(crate) fn pinned(root: &Path, path: &str) -> io::Result<(OwnedFd, String)> {
    let fd = open(root, path, libc::O_PATH)?;
    let name = format!("/proc/self/fd/{}", fd.as_raw_fd());
    Ok((fd, name))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_and_dot_dots_stay_inside_the_root() {
        let base = std::env::temp_dir().join(format!("detector-root-{}", std::process::id()));
        let root = base.join("machine");
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(root.join("etc")).expect("mkdir");
        std::fs::write(root.join("etc/answer"), "inside").expect("write inside");
        std::fs::write(base.join("answer"), "outside").expect("write outside");
        // An absolute symlink, and one that climbs out: both resolve inside the root.
        symlink("/etc/answer", root.join("absolute")).expect("symlink");
        symlink("../../../../../../answer", root.join("climbing")).expect("symlink");
        let read = |p: &str| super::read_to_string(&root, p).ok();
        assert_eq!(read("/etc/answer").as_deref(), Some("inside"));
        assert_eq!(read("/absolute").as_deref(), Some("inside"));
        assert_eq!(
            read("/climbing"),
            None,
            "`..` stops at the root, where there is no answer"
        );
        assert_eq!(read("/../answer"), None);
        assert!(super::exists(&root, "/etc/answer"));
        assert!(!super::exists(&root, "/etc/missing"));
        std::fs::remove_dir_all(&base).expect("cleanup");
    }
}
