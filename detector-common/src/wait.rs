//! The wait status as the kernel keeps it in `signal->group_exit_code` / `task->exit_code`.
//!
//! Layout (include/uapi/linux/wait.h and the `W*` macros in glibc's bits/waitstatus.h):
//! - bits 0..=6: the terminating signal, 0 when the process exited;
//! - bit 7 (`0x80`): a core dump was written (set in `coredump_finish`, fs/coredump.c);
//! - bits 8..=15: the exit code passed to `exit()`/`exit_group()`.
//!
//! Decoding keeps all three parts: earlier tools dropped the signal, lost the core bit, or took a
//! signal death for an exit.

/// `0x80` in a wait status: the kernel wrote a core dump.
pub const CORE_DUMPED: u32 = 0x80;
const SIGNAL_MASK: u32 = 0x7f;

/// How a thread group ended, from its wait status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitStatus {
    /// `exit(code)`.
    Exited { code: u8 },
    /// Killed by `signal`; `core_dumped` when the kernel wrote a core.
    Signaled { signal: u8, core_dumped: bool },
}

impl WaitStatus {
    /// Decodes a raw status. Bits above 15 are not part of a death status; they are ignored, as
    /// `WEXITSTATUS` does.
    #[must_use]
    pub const fn from_raw(raw: u32) -> Self {
        let signal = raw & SIGNAL_MASK;
        if signal == 0 {
            Self::Exited {
                code: ((raw >> 8) & 0xff) as u8,
            }
        } else {
            Self::Signaled {
                signal: signal as u8,
                core_dumped: raw & CORE_DUMPED != 0,
            }
        }
    }

    /// The raw status `wait4()` would return.
    #[must_use]
    pub const fn to_raw(self) -> u32 {
        match self {
            Self::Exited { code } => (code as u32) << 8,
            Self::Signaled {
                signal,
                core_dumped,
            } => (signal as u32 & SIGNAL_MASK) | if core_dumped { CORE_DUMPED } else { 0 },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::WaitStatus::{self, Exited, Signaled};

    #[test]
    fn decodes_like_the_kernel_encodes() {
        let cases: [(u32, WaitStatus); 7] = [
            (0x0000, Exited { code: 0 }),
            (0x0300, Exited { code: 3 }),
            (0xff00, Exited { code: 255 }),
            (
                0x000b,
                Signaled {
                    signal: 11,
                    core_dumped: false,
                },
            ),
            (
                0x008b,
                Signaled {
                    signal: 11,
                    core_dumped: true,
                },
            ),
            (
                0x0086,
                Signaled {
                    signal: 6,
                    core_dumped: true,
                },
            ),
            (
                0x0009,
                Signaled {
                    signal: 9,
                    core_dumped: false,
                },
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(WaitStatus::from_raw(raw), want, "raw {raw:#06x}");
            assert_eq!(want.to_raw(), raw, "{want:?}");
        }
    }
}
