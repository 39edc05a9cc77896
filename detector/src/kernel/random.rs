//! Random bytes from the kernel (`getrandom(2)`): incident ids, and the jitter of the alert
//! sinks' retries. No crate: one syscall does it, and the daemon already talks to the kernel.

/// `N` random bytes from the kernel's pool. `getrandom` only blocks before the pool is first
/// seeded at boot; long before a daemon starts. Should it ever fail (a seccomp filter), the
/// bytes come from the clocks instead: an id must still be made, and these are not secrets.
#[must_use]
pub(crate) fn bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0_u8; N];
    let mut filled = 0;
    while filled < N {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes for the whole call;
        // the kernel writes at most that many.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        match usize::try_from(n) {
            Ok(n) if n > 0 => filled += n,
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => {
                let seed = super::clock::monotonic_ns()
                    ^ u64::from(std::process::id()).rotate_left(32)
                    ^ std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as u64);
                // splitmix64: spreads the seed over every byte.
                let mut state = seed;
                for byte in &mut buf[filled..] {
                    state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    let mut z = state;
                    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                    *byte = (z ^ (z >> 31)) as u8;
                }
                break;
            }
        }
    }
    buf
}

/// A random id: 32 lowercase hex digits (128 bits), as systemd writes its own ids.
#[must_use]
pub(crate) fn id128() -> String {
    use std::fmt::Write as _;
    bytes::<16>()
        .iter()
        .fold(String::with_capacity(32), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A number in `[0, 1)`, for jitter.
#[must_use]
pub(crate) fn unit_f64() -> f64 {
    // 53 bits: every value exactly representable.
    (u64::from_le_bytes(bytes::<8>()) >> 11) as f64 / (1_u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_32_lowercase_hex_and_differ() {
        let (a, b) = (id128(), id128());
        assert_eq!(a.len(), 32);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
            "{a}"
        );
        assert_ne!(a, b);
    }

    #[test]
    fn unit_f64_stays_in_range() {
        for _ in 0..1000 {
            let x = unit_f64();
            assert!((0.0..1.0).contains(&x), "{x}");
        }
    }
}
