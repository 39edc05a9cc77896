//! Enrichment: kernel cgroup ids → cgroup paths.
//!
//! A cgroup id is its kernfs node id, which is also the inode number of its directory. cgroup2
//! paths are learned before they are needed: by a scan of the tree at start-up and from the kernel
//! programs' `cgroup_mkdir` records, which reach the ring buffer before any death inside the new
//! cgroup can. So a unit's cgroup that systemd removes right after its last process died is still
//! named. Removed cgroups are forgotten after [`REMOVED_GRACE`].
//!
//! For anything not learned that way (the v1 memory hierarchy of an OOM, a cut path), we ask the
//! kernel for the directory by id with `open_by_handle_at(2)` (kernfs exports `FILEID_KERNFS`
//! handles, see fs/kernfs/mount.c) and read its path back from /proc/self/fd. Ids are never
//! reused, so those answers are cached, including "gone".
//!
//! Over 400 lines with its tests (the last 80): the resolver's id → path cache, the paths
//! learned ahead of need and the invocation ids read through them are one piece of state.

use std::{
    collections::HashMap,
    fs::File,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::death::record::ExitRecord;

/// `FILEID_KERNFS` in include/linux/exportfs.h.
const FILEID_KERNFS: i32 = 0xfe;
/// Bound on the cache; past it the cache starts over (ids are cheap to resolve again).
const CACHE_MAX: usize = 16 * 1024;
/// How long a removed cgroup's path is kept: records are read within milliseconds of a death,
/// so this only has to outlast a backlog.
pub(crate) const REMOVED_GRACE: Duration = Duration::from_mins(1);
/// Bound on the cgroups known ahead of need (those alive, and those removed within
/// [`REMOVED_GRACE`]); past it the removed ones are forgotten at once.
const KNOWN_MAX: usize = 16 * 1024;
/// How often the cgroups believed alive are checked against the kernel.
const RECHECK: Duration = Duration::from_mins(1);

/// A mounted cgroup hierarchy we can resolve ids in.
struct Hierarchy {
    mount_point: PathBuf,
    dir: File,
    cache: HashMap<u64, Option<String>>,
}

impl Hierarchy {
    fn open(mount_point: PathBuf) -> std::io::Result<Self> {
        let dir = File::open(&mount_point)?;
        Ok(Self {
            mount_point,
            dir,
            cache: HashMap::new(),
        })
    }

    fn path(&mut self, id: u64) -> Option<String> {
        if let Some(hit) = self.cache.get(&id) {
            return hit.clone();
        }
        let found = self.lookup(id);
        if self.cache.len() >= CACHE_MAX {
            self.cache.clear();
        }
        self.cache.insert(id, found.clone());
        found
    }

    fn lookup(&self, id: u64) -> Option<String> {
        #[repr(C)]
        struct KernfsHandle {
            handle_bytes: u32,
            handle_type: i32,
            id: u64,
        }
        let mut handle = KernfsHandle {
            handle_bytes: 8,
            handle_type: FILEID_KERNFS,
            id,
        };
        // SAFETY: `handle` is a valid `struct file_handle` with 8 bytes of `f_handle`, alive for
        // the call; the mount fd is open. The kernel writes nothing back for open_by_handle_at.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                self.dir.as_raw_fd(),
                &raw mut handle,
                libc::O_RDONLY | libc::O_CLOEXEC | libc::O_DIRECTORY,
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: the syscall succeeded, so `fd` is a new descriptor that we alone own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
        relative(&self.mount_point, &target)
    }
}

/// `/sys/fs/cgroup/unified/a/b` under mount `/sys/fs/cgroup/unified` → `/a/b`.
fn relative(mount_point: &Path, target: &Path) -> Option<String> {
    let rest = target.strip_prefix(mount_point).ok()?;
    Some(format!("/{}", rest.display()))
}

/// A cgroup2 path learned ahead of need.
struct Known {
    path: String,
    removed: Option<Instant>,
    /// For a unit's own cgroup (`*.service`, `*.scope`): its directory, opened when learned. The
    /// unit's invocation id is read through it at a death, even when systemd has removed the
    /// cgroup by then: kernfs still serves the xattrs of a removed directory to an open fd.
    dir: Option<File>,
}

/// Resolves the cgroup ids in records: the task's cgroup2 id, and the memory cgroup of an OOM.
pub(crate) struct CgroupResolver {
    unified: Option<Hierarchy>,
    /// The hierarchy the memory controller is on: v1 `memory`, or the unified one.
    memory_v1: Option<Hierarchy>,
    /// cgroup2 paths by id, from the start-up scan and `cgroup_mkdir` records.
    known: HashMap<u64, Known>,
    /// The cgroup the watched systemd manages (`/`, or `/payload` for an nspawn machine).
    manager_root: String,
    /// When the known cgroups were last checked against the kernel.
    checked: Instant,
}

impl CgroupResolver {
    /// Finds the cgroup2 mount and, on hybrid hosts, the v1 memory controller's. Units are named
    /// for the systemd manager that manages `manager_root`.
    pub(crate) fn discover(manager_root: String) -> Self {
        let mounts = match procfs::process::Process::myself().and_then(|me| me.mountinfo()) {
            Ok(mounts) => mounts.0,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read /proc/self/mountinfo; cgroup paths will be null");
                Vec::new()
            }
        };
        let open = |what: &str, mount_point: &Path| match Hierarchy::open(mount_point.to_owned()) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(path = %mount_point.display(), error = %e, "cannot open {what} hierarchy");
                None
            }
        };
        let unified = mounts
            .iter()
            .find(|m| m.fs_type == "cgroup2")
            .and_then(|m| open("cgroup2", &m.mount_point));
        let memory_v1 = mounts
            .iter()
            .find(|m| m.fs_type == "cgroup" && m.super_options.contains_key("memory"))
            .and_then(|m| open("cgroup v1 memory", &m.mount_point));
        if unified.is_none() {
            tracing::warn!("no cgroup2 hierarchy is mounted; cgroup paths will be null");
        }
        Self {
            unified,
            memory_v1,
            known: HashMap::new(),
            manager_root,
            checked: Instant::now(),
        }
    }

    /// How many entries its caches hold: paths resolved by id (at most [`CACHE_MAX`] per
    /// hierarchy), and cgroups known ahead of need (those alive, and those removed less than
    /// [`REMOVED_GRACE`] ago).
    #[must_use]
    pub(crate) fn cache_sizes(&self) -> [(&'static str, usize); 2] {
        let resolved = [&self.unified, &self.memory_v1]
            .into_iter()
            .flatten()
            .map(|h| h.cache.len())
            .sum();
        [
            ("cgroup_paths", resolved),
            ("cgroups_known", self.known.len()),
        ]
    }

    /// Learns every cgroup2 directory that exists now; returns how many.
    pub(crate) fn scan(&mut self) -> usize {
        let Some(root) = self.unified.as_ref().map(|h| h.mount_point.clone()) else {
            return 0;
        };
        let mut pending = vec![root.clone()];
        let mut learned = 0;
        while let Some(dir) = pending.pop() {
            // Directories vanish while we walk; what is gone needs no path.
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue;
            };
            if let Some(path) = relative(&root, &dir) {
                self.learn(meta.ino(), path);
                learned += 1;
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            pending.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        learned
    }

    /// A cgroup2 directory was created (`path` None: the kernel had to cut it; look it up now,
    /// while it exists).
    pub(crate) fn created(&mut self, id: u64, path: Option<String>) {
        let path = path.or_else(|| self.unified.as_mut()?.path(id));
        if let Some(path) = path {
            self.learn(id, path);
        }
    }

    fn learn(&mut self, id: u64, path: String) {
        let is_unit = [".service", ".scope"].iter().any(|s| path.ends_with(s));
        let dir = self
            .unified
            .as_ref()
            .filter(|_| is_unit)
            .and_then(|h| File::open(h.mount_point.join(path.trim_start_matches('/'))).ok());
        self.known.insert(
            id,
            Known {
                path,
                removed: None,
                dir,
            },
        );
    }

    /// A cgroup2 directory was removed: keep its path for [`REMOVED_GRACE`], but close its
    /// directory now. Every death in it was read before this record: its last process's exit
    /// reserved its record in the ring buffer before the cgroup could be emptied and removed, and
    /// the ring hands records out in the order they were reserved. Keeping the fd for the grace
    /// too cost one open fd per unit run in the last minute: thousands on a host that starts
    /// transient units by the hundred a second.
    pub(crate) fn removed(&mut self, id: u64) {
        if let Some(known) = self.known.get_mut(&id) {
            known.removed = Some(Instant::now());
            known.dir = None;
        }
        if self.known.len() > KNOWN_MAX {
            // Past the bound, the removed ones go before their grace is over.
            self.known.retain(|_, k| k.removed.is_none());
        }
    }

    /// Forgets cgroups removed longer than [`REMOVED_GRACE`] before `now`.
    pub(crate) fn sweep(&mut self, now: Instant) {
        self.known.retain(|_, k| {
            k.removed
                .is_none_or(|at| now.duration_since(at) < REMOVED_GRACE)
        });
        // A lost rmdir record (a full ring buffer) would keep a removed cgroup, and the
        // directory fd of a unit's, forever: check the live ones against the kernel now and then.
        if now.duration_since(self.checked) >= RECHECK {
            self.checked = now;
            if let Some(mount) = self.unified.as_ref().map(|h| h.mount_point.clone()) {
                for known in self.known.values_mut().filter(|k| k.removed.is_none()) {
                    if !mount.join(known.path.trim_start_matches('/')).exists() {
                        known.removed = Some(now);
                    }
                }
            }
        }
    }

    /// Path of a cgroup2 id.
    pub(crate) fn cgroup_path(&mut self, id: u64) -> Option<String> {
        if let Some(known) = self.known.get(&id) {
            return Some(known.path.clone());
        }
        self.unified.as_mut()?.path(id)
    }

    /// The invocation id systemd keeps on a unit's cgroup (`trusted.invocation_id`, set before
    /// the unit's first process runs; `user.invocation_id` from user managers without the
    /// privilege). Read through the directory opened when the cgroup was learned, so a cgroup
    /// systemd removed right after the death still answers; by path for one we did not see.
    ///
    /// `process_cgroup` is the id of the dying process's own cgroup: nearly always the unit's,
    /// which then costs one lookup; only a process in a sub-cgroup of its unit needs the scan.
    fn invocation_id(&self, cgroup: &str, process_cgroup: u64) -> Option<String> {
        let known = match self.known.get(&process_cgroup) {
            Some(k) if k.path == cgroup => Some(k),
            _ => self.known.values().find(|k| k.path == cgroup),
        };
        let opened = known.and_then(|k| k.dir.as_ref());
        let path = if opened.is_some() {
            None
        } else {
            let dir = self
                .unified
                .as_ref()?
                .mount_point
                .join(cgroup.trim_start_matches('/'));
            Some(std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?)
        };
        ["trusted.invocation_id", "user.invocation_id"]
            .into_iter()
            .find_map(|name| {
                let name = std::ffi::CString::new(name).ok()?;
                let mut buf = [0u8; 64];
                let n = match (opened, &path) {
                    // SAFETY: an open fd, a NUL-terminated name, and a buffer writable for its full
                    // length; fgetxattr writes at most that many bytes and returns how many.
                    (Some(dir), _) => unsafe {
                        libc::fgetxattr(
                            dir.as_raw_fd(),
                            name.as_ptr(),
                            buf.as_mut_ptr().cast(),
                            buf.len(),
                        )
                    },
                    // SAFETY: as above, with a NUL-terminated path instead of an fd.
                    (None, Some(path)) => unsafe {
                        libc::getxattr(
                            path.as_ptr(),
                            name.as_ptr(),
                            buf.as_mut_ptr().cast(),
                            buf.len(),
                        )
                    },
                    (None, None) => return None,
                };
                let id = std::str::from_utf8(buf.get(..usize::try_from(n).ok()?)?).ok()?;
                (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
            })
    }

    /// Fills the record's cgroup path, its systemd units and its OOM memory cgroup path.
    pub(crate) fn enrich(&mut self, record: &mut ExitRecord) {
        record.cgroup = self.cgroup_path(record.cgroup_id);
        if let Some(units) = record
            .cgroup
            .as_deref()
            .and_then(|p| crate::unit::names::units(&self.manager_root, p))
        {
            record.invocation_id = record
                .cgroup
                .as_deref()
                .and_then(|c| self.invocation_id(&unit_cgroup(c, &units), record.cgroup_id));
            record.unit = Some(units.unit);
            record.user_unit = units.user_unit;
        }
        if let Some(oom) = &mut record.oom
            && let Some(id) = oom.memcg_id
        {
            let hierarchy = self.memory_v1.as_mut().or(self.unified.as_mut());
            if let Some(path) = hierarchy.and_then(|h| h.path(id)) {
                oom.memcg = Some(path);
            }
        }
    }
}

/// The cgroup of the innermost unit in `cgroup` (a process may sit in a sub-cgroup a service
/// delegated, and the invocation id is kept on the unit's own cgroup).
fn unit_cgroup(cgroup: &str, units: &crate::unit::names::Units) -> String {
    let unit = units.user_unit.as_deref().unwrap_or(&units.unit);
    match cgroup.find(&format!("/{unit}")) {
        Some(at) => cgroup[..at + 1 + unit.len()].to_owned(),
        None => cgroup.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resolver with no hierarchy to ask: only what the kernel's records tell it.
    fn resolver() -> CgroupResolver {
        CgroupResolver {
            unified: None,
            memory_v1: None,
            known: HashMap::new(),
            manager_root: "/".into(),
            checked: Instant::now(),
        }
    }

    #[test]
    fn removed_cgroups_are_named_for_a_grace_period() {
        let mut r = resolver();
        r.created(7, Some("/system.slice/app.service".into()));
        r.created(8, None);
        assert_eq!(
            r.cgroup_path(7).as_deref(),
            Some("/system.slice/app.service")
        );
        assert_eq!(
            r.cgroup_path(8),
            None,
            "a cut path with no hierarchy to ask stays unknown"
        );
        r.removed(7);
        let now = Instant::now();
        r.sweep(now);
        assert_eq!(
            r.cgroup_path(7).as_deref(),
            Some("/system.slice/app.service"),
            "within the grace period"
        );
        r.sweep(now + REMOVED_GRACE + Duration::from_secs(1));
        assert_eq!(r.cgroup_path(7), None, "forgotten after it");
    }

    #[test]
    fn known_cgroups_have_a_bound_however_fast_units_come_and_go() {
        let mut r = resolver();
        r.created(1, Some("/system.slice/alive.service".into()));
        for id in 2..(2 * KNOWN_MAX as u64) {
            r.created(id, Some(format!("/system.slice/soak@{id}.service")));
            r.removed(id);
            assert!(r.known.len() <= KNOWN_MAX + 1, "{}", r.known.len());
        }
        assert_eq!(
            r.cgroup_path(1).as_deref(),
            Some("/system.slice/alive.service"),
            "a live cgroup is never forgotten"
        );
    }

    #[test]
    fn unit_cgroups() {
        let units = |unit: &str, user: Option<&str>| crate::unit::names::Units {
            unit: unit.into(),
            user_unit: user.map(Into::into),
        };
        let cases = [
            (
                "/system.slice/app.service",
                units("app.service", None),
                "/system.slice/app.service",
            ),
            (
                "/system.slice/app.service/worker",
                units("app.service", None),
                "/system.slice/app.service",
            ),
            (
                "/user.slice/user-1.slice/user@1.service/app.slice/x.service/y",
                units("user@1.service", Some("x.service")),
                "/user.slice/user-1.slice/user@1.service/app.slice/x.service",
            ),
        ];
        for (cgroup, units, want) in cases {
            assert_eq!(unit_cgroup(cgroup, &units), want, "{cgroup}");
        }
    }

    #[test]
    fn relative_paths() {
        let m = Path::new("/sys/fs/cgroup/unified");
        assert_eq!(
            relative(m, Path::new("/sys/fs/cgroup/unified")).as_deref(),
            Some("/")
        );
        assert_eq!(
            relative(m, Path::new("/sys/fs/cgroup/unified/a/b.service")).as_deref(),
            Some("/a/b.service")
        );
        assert_eq!(relative(m, Path::new("/elsewhere")), None);
    }
}
