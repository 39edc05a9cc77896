//! Ring-buffer bytes → typed kernel records. Checks every length; never panics on what it reads.

use detector_common::{DeathEvent, EventHeader, event_kind};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Death(DeathEvent),
}

/// Copies a `T` out of the front of `bytes`.
///
/// Only for the plain-integer `repr(C)` types of `detector_common`, for which every bit pattern is
/// a valid value.
fn read<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            len: bytes.len(),
            need,
        });
    }
    // SAFETY: `bytes` holds at least `size_of::<T>()` bytes (checked above), `read_unaligned`
    // needs no alignment, and `T` is one of the shared integer-only types (any bits are valid).
    Ok(unsafe { bytes.as_ptr().cast::<T>().read_unaligned() })
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let EventHeader { kind, size } = read::<EventHeader>(bytes)?;
    match kind {
        event_kind::DEATH => {
            let expected = size_of::<DeathEvent>();
            if size as usize != expected {
                return Err(DecodeError::BadSize {
                    kind,
                    size,
                    expected,
                });
            }
            read::<DeathEvent>(bytes).map(Event::Death)
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
            pad0: 0,
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
