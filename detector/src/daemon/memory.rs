//! What the daemon gives back once it runs: the memory only its start-up needed.

/// Gives back the memory start-up used and the loop does not: the allocator's free heap
/// (`malloc_trim`), and the pages of code and read-only data that start-up touched, which stay
/// mapped until the kernel needs the memory: our own (the loader, BTF, the configuration, the
/// command line) and the shared libraries' (the dynamic linker's work, libsystemd's and its
/// compression and crypto libraries' initialisation). Those pages are the files', never
/// written: dropping them from our mapping (`MADV_DONTNEED`) leaves them in the page cache, and
/// the few the loop runs come back on first use as minor faults, without I/O. A mapping with a
/// page of its own (written, as a relocated `.data.rel.ro` is) is left alone: dropping that page
/// would bring the file's unrelocated bytes back. So are shared mappings (the journal's files),
/// and whatever is not a file on disk (the ring buffer, the vDSO, a memfd).
pub(super) fn release_startup() {
    // SAFETY: malloc_trim only returns free memory to the kernel; it has no preconditions.
    unsafe { libc::malloc_trim(0) };
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    let mut current: Option<(usize, usize, bool)> = None;
    let mut released = 0usize;
    let mut release = |range: Option<(usize, usize, bool)>, anonymous: usize| {
        if let Some((start, end, ours)) = range
            && ours
            && anonymous == 0
        {
            // SAFETY: a range the kernel listed as a private, read-only mapping of a file on disk
            // with no page of its own (checked above): dropping its pages only makes the next
            // access read the file's bytes again, which are the bytes it holds.
            if unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED)
            } == 0
            {
                released += end - start;
            }
        }
    };
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            let perms = fields.next().unwrap_or_default();
            // The path is the rest of the line: it may hold spaces (" (deleted)").
            let path = fields.skip(3).collect::<Vec<_>>().join(" ");
            let ours = !perms.contains('w') && perms.ends_with('p') && on_disk(&path);
            current = Some((start, end, ours));
        } else if first == "Anonymous:" {
            let anonymous = fields.next().and_then(|n| n.parse().ok()).unwrap_or(1);
            release(current.take(), anonymous);
        }
    }
    tracing::debug!(bytes = released, "released start-up memory");
}

/// Whether a mapping's path in `/proc/self/smaps` names a file on disk, whose bytes a dropped
/// page can be read back from: not a pseudo-file (`[vdso]`, `anon_inode:bpf-map`), a memfd, a
/// device, or a file deleted since it was mapped.
fn on_disk(path: &str) -> bool {
    path.starts_with('/')
        && !path.starts_with("/memfd:")
        && !path.starts_with("/dev/")
        && !path.ends_with(" (deleted)")
}

#[cfg(test)]
mod tests {
    /// Resident kB of this process's own executable, as /proc/self/smaps counts it.
    fn exe_resident_kb() -> u64 {
        let exe = std::fs::read_link("/proc/self/exe").expect("own executable");
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let mut ours = false;
        let mut total = 0;
        for line in smaps.lines() {
            let mut fields = line.split_whitespace();
            let first = fields.next().unwrap_or_default();
            if first.contains('-') && !first.ends_with(':') {
                ours = fields
                    .nth(4)
                    .is_some_and(|p| std::path::Path::new(p) == exe);
            } else if first == "Rss:" && ours {
                total += fields
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        total
    }

    #[test]
    fn only_files_on_disk_are_released() {
        for (path, want) in [
            ("/usr/lib/x86_64-linux-gnu/libc.so.6", true),
            ("/usr/local/bin/detector", true),
            ("[vdso]", false),
            ("[vvar]", false),
            ("anon_inode:bpf-map", false),
            ("", false),
            ("/memfd:journal (deleted)", false),
            ("/dev/zero", false),
            ("/usr/local/bin/detector (deleted)", false),
        ] {
            assert_eq!(super::on_disk(path), want, "{path:?}");
        }
    }

    /// The test binary's code pages go, its relocated data stays (the process would fault on
    /// its next call through a relocated pointer otherwise), and it runs on.
    #[test]
    fn start_up_pages_are_given_back_and_the_process_runs_on() {
        let before = exe_resident_kb();
        super::release_startup();
        let after = exe_resident_kb();
        assert!(
            after < before,
            "{before} kB resident before, {after} kB after"
        );
        // Formatting goes through vtables in relocated read-only data.
        let text = format!("{:?}", vec![Some("still"), None]);
        assert_eq!(text, r#"[Some("still"), None]"#);
    }
}
