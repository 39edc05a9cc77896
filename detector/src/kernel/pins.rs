//! Pins in bpffs, so that the kernel programs outlive the daemon (`detector run --pin-dir DIR`).
//!
//! The programs' links and maps are pinned in one directory per *generation*: one build of the
//! kernel object with one ring-buffer size on this kernel, named
//! `gen-<record ABI>-<build stamp>`. While no daemon runs, the pinned links keep the programs
//! attached and the pinned ring buffer keeps what they write; the next daemon of the same build
//! reattaches to them and first reads that backlog. A daemon of another build (an upgrade, another
//! `--ringbuf-bytes`) attaches its own generation first, then detaches the old one and drains its
//! ring: decoded when the record ABI in its name is ours, counted as lost otherwise.
//!
//! A generation directory holds the maps under their own names, the links as `link_<program>`,
//! and a `ready` directory made last: a generation without it was cut short and is removed.
//! The root directory is `flock`ed for the daemon's life, so two daemons never share pins.

use std::{
    fs::{self, File},
    io,
    path::{Path, PathBuf},
};

use detector_common::{LAYOUTS, Offsets, RECORD_VERSION};
use nix::fcntl::{Flock, FlockArg};

/// Where the packaged daemon pins (`/sys/fs/bpf` is where systemd mounts bpffs).
pub(crate) const DEFAULT_DIR: &str = "/sys/fs/bpf/detector";
/// The bpffs mount detector makes itself when the host has none.
const BPFFS: &str = "/sys/fs/bpf";
const READY: &str = "ready";
const LINK_PREFIX: &str = "link_";
const GENERATION_PREFIX: &str = "gen-";

#[derive(Debug, thiserror::Error)]
pub(crate) enum PinError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{} is not on a BPF filesystem (bpffs); detector mounts one only at {BPFFS}",
        .0.display()
    )]
    NotBpffs(PathBuf),
    #[error("mounting bpffs at {BPFFS}: {0}")]
    Mount(nix::Error),
    #[error("another detector holds the pins in {} (its lock on the directory is taken)", .0.display())]
    Locked(PathBuf),
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> PinError + '_ {
    move |source| PinError::Io {
        path: path.to_owned(),
        source,
    }
}

/// FNV-1a, 64 bits: stable across Rust releases (unlike `DefaultHasher`), which a name on disk
/// must be.
fn fnv1a(state: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(state, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// What a generation is: whose records it writes and which programs run in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// The layouts of the ring-buffer records (who may decode them).
    pub record_abi: u32,
    /// The kernel object, the ring's size and this kernel's offsets (who may reattach).
    pub build: u64,
}

impl Stamp {
    #[must_use]
    pub(crate) fn new(object: &[u8], ringbuf_bytes: u32, offsets: &Offsets) -> Self {
        let mut build = fnv1a(FNV_OFFSET, object);
        build = fnv1a(build, &ringbuf_bytes.to_le_bytes());
        build = fnv1a(build, format!("{offsets:?}").as_bytes());
        Self {
            record_abi: record_abi(),
            build,
        }
    }

    fn dir_name(self) -> String {
        format!(
            "{GENERATION_PREFIX}{:08x}-{:016x}",
            self.record_abi, self.build
        )
    }
}

/// This daemon's record ABI: the shared layouts and their version.
#[must_use]
pub(crate) fn record_abi() -> u32 {
    let mut h = fnv1a(FNV_OFFSET, &RECORD_VERSION.to_le_bytes());
    for word in LAYOUTS {
        h = fnv1a(h, &word.to_le_bytes());
    }
    (h ^ (h >> 32)) as u32
}

/// The record ABI in a generation's name, if it is one.
fn abi_of(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(GENERATION_PREFIX)?;
    let (abi, _) = rest.split_once('-')?;
    u32::from_str_radix(abi, 16).ok()
}

/// Mounts bpffs at /sys/fs/bpf when `dir` is meant to be there and nothing is mounted yet.
fn ensure_bpffs(dir: &Path) -> Result<(), PinError> {
    let mut existing = dir;
    while !existing.exists() {
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    let on_bpffs = |p: &Path| {
        nix::sys::statfs::statfs(p)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
    };
    if on_bpffs(existing) {
        return Ok(());
    }
    if !dir.starts_with(BPFFS) || !Path::new(BPFFS).is_dir() || on_bpffs(Path::new(BPFFS)) {
        return Err(PinError::NotBpffs(dir.to_owned()));
    }
    tracing::info!("mounting bpffs at {BPFFS} (the host had none)");
    nix::mount::mount(
        Some("bpf"),
        BPFFS,
        Some("bpf"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some("mode=0700"),
    )
    .map_err(PinError::Mount)
}

/// The pin directory, locked as long as this value lives.
pub(crate) struct PinDir {
    root: PathBuf,
    _lock: Flock<File>,
}

impl PinDir {
    /// Mounts bpffs if needed, creates the directory and takes its lock.
    pub(crate) fn open(root: &Path) -> Result<Self, PinError> {
        ensure_bpffs(root)?;
        fs::create_dir_all(root).map_err(io_error(root))?;
        let dir = File::open(root).map_err(io_error(root))?;
        let lock = Flock::lock(dir, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            if e == nix::errno::Errno::EWOULDBLOCK {
                PinError::Locked(root.to_owned())
            } else {
                PinError::Io {
                    path: root.to_owned(),
                    source: e.into(),
                }
            }
        })?;
        Ok(Self {
            root: root.to_owned(),
            _lock: lock,
        })
    }

    /// This stamp's generation directory, and whether a complete one is pinned there. A
    /// generation cut short (no `ready`) is removed and made again.
    pub(crate) fn generation(&self, stamp: Stamp) -> Result<(PathBuf, bool), PinError> {
        let dir = self.root.join(stamp.dir_name());
        if dir.join(READY).is_dir() {
            return Ok((dir, true));
        }
        if dir.exists() {
            tracing::warn!(dir = %dir.display(), "removing pins a daemon left unfinished");
            remove_generation(&dir)?;
        }
        fs::create_dir(&dir).map_err(io_error(&dir))?;
        Ok((dir, false))
    }

    /// Every generation but `current`: other builds, other ring sizes.
    pub(crate) fn others(&self, current: &Path) -> Result<Vec<Old>, PinError> {
        let ours = record_abi();
        let mut old = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(io_error(&self.root))? {
            let path = entry.map_err(io_error(&self.root))?.path();
            if path == current {
                continue;
            }
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            old.push(Old {
                decodable: abi_of(name) == Some(ours),
                ready: path.join(READY).is_dir(),
                dir: path,
            });
        }
        Ok(old)
    }
}

/// A generation of another build found in the pin directory.
#[derive(Debug)]
pub(crate) struct Old {
    pub dir: PathBuf,
    /// Its records have our layouts.
    pub decodable: bool,
    /// It was complete: its maps are all there.
    pub ready: bool,
}

/// Marks a generation complete: everything is pinned.
pub(crate) fn mark_ready(dir: &Path) -> Result<(), PinError> {
    let ready = dir.join(READY);
    fs::create_dir(&ready).map_err(io_error(&ready))
}

/// The path of `program`'s pinned link in a generation.
#[must_use]
pub(crate) fn link_path(dir: &Path, program: &str) -> PathBuf {
    dir.join(format!("{LINK_PREFIX}{program}"))
}

/// The programs whose links are pinned in a generation.
#[must_use]
pub(crate) fn linked_programs(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(LINK_PREFIX))
                .map(str::to_owned)
        })
        .collect()
}

/// Unpins a generation's links: its programs detach (unless a running daemon still holds them).
pub(crate) fn unlink(dir: &Path) -> Result<usize, PinError> {
    let mut removed = 0;
    for program in linked_programs(dir) {
        let path = link_path(dir, &program);
        fs::remove_file(&path).map_err(io_error(&path))?;
        removed += 1;
    }
    Ok(removed)
}

/// Removes a generation: links first (the programs stop writing), then its maps.
pub(crate) fn remove_generation(dir: &Path) -> Result<(), PinError> {
    unlink(dir)?;
    fs::remove_dir_all(dir).map_err(io_error(dir))
}

/// `detector unpin`: detaches and removes every generation, then the directory. Returns how many
/// generations there were.
pub(crate) fn unpin(root: &Path) -> Result<usize, PinError> {
    if !root.exists() {
        return Ok(0);
    }
    let pins = PinDir::open(root)?;
    let generations = pins.others(Path::new(""))?;
    for generation in &generations {
        remove_generation(&generation.dir)?;
    }
    drop(pins);
    fs::remove_dir(root).map_err(io_error(root))?;
    Ok(generations.len())
}

#[cfg(test)]
mod tests {
    use detector_common::Offsets;

    use super::{Stamp, abi_of, record_abi};

    #[test]
    fn stamps_tell_builds_and_ring_sizes_apart() {
        let a = Stamp::new(b"object", 1 << 21, &Offsets::ABSENT);
        assert_eq!(a, Stamp::new(b"object", 1 << 21, &Offsets::ABSENT));
        assert_ne!(
            a.build,
            Stamp::new(b"object2", 1 << 21, &Offsets::ABSENT).build
        );
        assert_ne!(
            a.build,
            Stamp::new(b"object", 1 << 22, &Offsets::ABSENT).build
        );
        let mut offsets = Offsets::ABSENT;
        offsets.task_pid = 8;
        assert_ne!(a.build, Stamp::new(b"object", 1 << 21, &offsets).build);
        assert_eq!(a.record_abi, record_abi());
    }

    #[test]
    fn generation_names_carry_the_record_abi() {
        let stamp = Stamp::new(b"object", 4096, &Offsets::ABSENT);
        let name = stamp.dir_name();
        assert_eq!(abi_of(&name), Some(record_abi()), "{name}");
        assert_eq!(abi_of("gen-zz-1"), None);
        assert_eq!(abi_of("other"), None);
    }

    #[test]
    fn fnv_is_the_published_function() {
        // Test vectors of FNV-1a 64 (draft-eastlake-fnv): "" and "a".
        assert_eq!(super::fnv1a(super::FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::fnv1a(super::FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
