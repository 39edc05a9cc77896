//! Ring-buffer bytes → typed kernel records. Checks every length; never panics on what it reads.

use detector_common::{CGROUP_PATH_LEN, CgroupEvent, DeathEvent, EventHeader, event_kind};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("record of {len} bytes is shorter than the {need} its header promises or needs")]
    Short { len: usize, need: usize },
    #[error("record kind {0} is unknown to this daemon (kernel object newer than the daemon?)")]
    UnknownKind(u32),
    #[error("record kind {kind} says it is {size} bytes; this daemon expects {expected}")]
    BadSize {
        kind: u32,
        size: u32,
        expected: usize,
    },
}

/// A record from the kernel programs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "each event is decoded and consumed at once; boxing would allocate per death"
)]
pub(crate) enum Event {
    Death(DeathEvent),
    /// A cgroup2 directory was created; `path` is None when the kernel had to cut it.
    CgroupMkdir {
        id: u64,
        path: Option<String>,
    },
    CgroupRmdir {
        id: u64,
    },
}

fn checked_size(kind: u32, size: u32, expected: usize) -> Result<(), DecodeError> {
    if size as usize == expected {
        Ok(())
    } else {
        Err(DecodeError::BadSize {
            kind,
            size,
            expected,
        })
    }
}

/// Copies a `T` out of the front of `bytes`.
///
/// `aya::Pod`: only types for which every bit pattern is a valid value (the plain-integer
/// `repr(C)` records of `detector_common`, which say so with an `unsafe impl`).
fn read<T: aya::Pod>(bytes: &[u8]) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            len: bytes.len(),
            need,
        });
    }
    // SAFETY: `bytes` holds at least `size_of::<T>()` bytes (checked above), `read_unaligned`
    // needs no alignment, and `T: Pod` means any bits are a valid `T`.
    Ok(unsafe { bytes.as_ptr().cast::<T>().read_unaligned() })
}

/// Decodes one ring-buffer record.
pub(crate) fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let EventHeader { kind, size } = read::<EventHeader>(bytes)?;
    match kind {
        event_kind::DEATH => {
            checked_size(kind, size, size_of::<DeathEvent>())?;
            read::<DeathEvent>(bytes).map(Event::Death)
        }
        event_kind::CGROUP_MKDIR | event_kind::CGROUP_RMDIR => {
            checked_size(kind, size, size_of::<CgroupEvent>())?;
            let CgroupEvent {
                header: _,
                id,
                level: _,
                path_len,
                path,
            } = read::<CgroupEvent>(bytes)?;
            if kind == event_kind::CGROUP_RMDIR {
                return Ok(Event::CgroupRmdir { id });
            }
            let len = path_len as usize;
            let path = (len < CGROUP_PATH_LEN)
                .then(|| std::str::from_utf8(&path[..len]).ok().map(str::to_owned))
                .flatten();
            Ok(Event::CgroupMkdir { id, path })
        }
        other => Err(DecodeError::UnknownKind(other)),
    }
}

#[cfg(test)]
mod tests {
    use detector_common::{OomInfo, SignalSender};

    use super::*;

    pub(crate) fn death() -> DeathEvent {
        DeathEvent {
            header: EventHeader {
                kind: event_kind::DEATH,
                size: size_of::<DeathEvent>() as u32,
            },
            flags: 0,
            wait_status: 3 << 8,
            ktime_ns: 42,
            cgroup_id: 1,
            pid: 100,
            tid: 101,
            ppid: 1,
            ns_pid: 0,
            comm: *b"sh\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
            // SAFETY: integer-only types; all zeroes is a valid value.
            sender: unsafe { std::mem::zeroed::<SignalSender>() },
            // SAFETY: as above.
            oom: unsafe { std::mem::zeroed::<OomInfo>() },
        }
    }

    fn bytes_of(event: &DeathEvent) -> Vec<u8> {
        // SAFETY: a `repr(C)` value with explicit padding fields, viewed as its bytes.
        unsafe {
            std::slice::from_raw_parts(
                std::ptr::from_ref(event).cast::<u8>(),
                size_of::<DeathEvent>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn round_trips_a_death() {
        let event = death();
        assert_eq!(decode(&bytes_of(&event)), Ok(Event::Death(event)));
    }

    #[test]
    fn every_short_prefix_is_an_error() {
        let bytes = bytes_of(&death());
        for len in 0..bytes.len() {
            let err = decode(&bytes[..len]).expect_err("short record decoded");
            assert!(
                matches!(err, DecodeError::Short { len: l, .. } if l == len),
                "{len}: {err:?}"
            );
        }
    }

    fn cgroup_bytes(kind: u32, path: &str, path_len: u32) -> Vec<u8> {
        let mut event = CgroupEvent {
            header: EventHeader {
                kind,
                size: size_of::<CgroupEvent>() as u32,
            },
            id: 77,
            level: 1,
            path_len,
            path: [0; CGROUP_PATH_LEN],
        };
        event.path[..path.len()].copy_from_slice(path.as_bytes());
        // SAFETY: a `repr(C)` value without implicit padding, viewed as its bytes.
        unsafe {
            std::slice::from_raw_parts(
                std::ptr::from_ref(&event).cast::<u8>(),
                size_of::<CgroupEvent>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn cgroup_events() {
        let cases = [
            (
                event_kind::CGROUP_MKDIR,
                "/a.slice/b.service",
                18,
                Event::CgroupMkdir {
                    id: 77,
                    path: Some("/a.slice/b.service".into()),
                },
            ),
            (
                event_kind::CGROUP_MKDIR,
                "/cut",
                CGROUP_PATH_LEN as u32,
                Event::CgroupMkdir { id: 77, path: None },
            ),
            (
                event_kind::CGROUP_MKDIR,
                "/x",
                9999,
                Event::CgroupMkdir { id: 77, path: None },
            ),
            (
                event_kind::CGROUP_RMDIR,
                "",
                0,
                Event::CgroupRmdir { id: 77 },
            ),
        ];
        for (kind, path, len, want) in cases {
            assert_eq!(
                decode(&cgroup_bytes(kind, path, len)),
                Ok(want),
                "{path} {len}"
            );
        }
        let bytes = cgroup_bytes(event_kind::CGROUP_MKDIR, "/a", 2);
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "{len}");
        }
    }

    #[test]
    fn garbage_headers_are_errors() {
        let mut event = death();
        event.header.kind = 77;
        assert_eq!(decode(&bytes_of(&event)), Err(DecodeError::UnknownKind(77)));
        event.header.kind = event_kind::DEATH;
        event.header.size = 12;
        assert!(matches!(
            decode(&bytes_of(&event)),
            Err(DecodeError::BadSize { size: 12, .. })
        ));
        // Random bytes: any outcome but a panic.
        let mut x = 0x9e37_79b9_u32;
        for len in [1usize, 8, 9, 64, 300] {
            let noise: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = decode(&noise);
        }
    }
}
