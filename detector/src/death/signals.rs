//! Signal names, by the asm-generic numbering that x86-64 and arm64 use
//! (include/uapi/asm-generic/signal.h).

const NAMES: [&str; 32] = [
    "",
    "SIGHUP",
    "SIGINT",
    "SIGQUIT",
    "SIGILL",
    "SIGTRAP",
    "SIGABRT",
    "SIGBUS",
    "SIGFPE",
    "SIGKILL",
    "SIGUSR1",
    "SIGSEGV",
    "SIGUSR2",
    "SIGPIPE",
    "SIGALRM",
    "SIGTERM",
    "SIGSTKFLT",
    "SIGCHLD",
    "SIGCONT",
    "SIGSTOP",
    "SIGTSTP",
    "SIGTTIN",
    "SIGTTOU",
    "SIGURG",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGVTALRM",
    "SIGPROF",
    "SIGWINCH",
    "SIGIO",
    "SIGPWR",
    "SIGSYS",
];

/// `SIGSEGV` for 11; real-time signals as `SIGRT<n>` with the kernel's number (glibc's SIGRTMIN
/// is 34 because it keeps 32 and 33 for itself).
#[must_use]
pub(crate) fn name(signo: u8) -> String {
    match NAMES.get(usize::from(signo)) {
        Some(name) if !name.is_empty() => (*name).to_owned(),
        _ => format!("SIGRT{signo}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names() {
        for (n, want) in [
            (6, "SIGABRT"),
            (9, "SIGKILL"),
            (11, "SIGSEGV"),
            (15, "SIGTERM"),
            (31, "SIGSYS"),
            (40, "SIGRT40"),
            (0, "SIGRT0"),
        ] {
            assert_eq!(super::name(n), want);
        }
    }
}
