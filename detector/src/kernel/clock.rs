//! Kernel timestamps (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) to wall-clock time and latency.

use chrono::{DateTime, SecondsFormat, Utc};
use nix::time::{ClockId, clock_gettime};

fn ns(clock: ClockId) -> i128 {
    // clock_gettime cannot fail for these two clocks on Linux; 0 keeps a record rather than losing it.
    clock_gettime(clock).map_or(0, |t| {
        i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec())
    })
}

/// CLOCK_MONOTONIC now, in ns: the kernel programs' clock.
#[must_use]
pub(crate) fn monotonic_ns() -> u64 {
    ns(ClockId::CLOCK_MONOTONIC) as u64
}

/// The offset between the two clocks, taken once per batch of records.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    realtime_minus_monotonic: i128,
}

impl Clock {
    #[must_use]
    pub(crate) fn now() -> Self {
        let mono = ns(ClockId::CLOCK_MONOTONIC);
        let real = ns(ClockId::CLOCK_REALTIME);
        Self {
            realtime_minus_monotonic: real - mono,
        }
    }

    /// Wall-clock µs since the epoch (as the journal stamps entries) for a kernel timestamp.
    #[must_use]
    pub(crate) fn realtime_us(self, ktime_ns: u64) -> u64 {
        u64::try_from((i128::from(ktime_ns) + self.realtime_minus_monotonic) / 1000).unwrap_or(0)
    }

    /// RFC 3339 UTC with microseconds, for a kernel timestamp.
    #[must_use]
    pub(crate) fn rfc3339(self, ktime_ns: u64) -> String {
        let wall = i128::from(ktime_ns) + self.realtime_minus_monotonic;
        let wall = i64::try_from(wall).unwrap_or(i64::MAX);
        DateTime::<Utc>::from_timestamp_nanos(wall).to_rfc3339_opts(SecondsFormat::Micros, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_microseconds() {
        let clock = Clock {
            realtime_minus_monotonic: 1_700_000_000_000_000_000,
        };
        assert_eq!(clock.rfc3339(123_456_789), "2023-11-14T22:13:20.123456Z");
    }

    #[test]
    fn now_is_close_to_the_system_clock() {
        let t = Clock::now().rfc3339(monotonic_ns());
        let parsed = DateTime::parse_from_rfc3339(&t).expect("rfc3339");
        let skew = (Utc::now() - parsed.with_timezone(&Utc))
            .num_milliseconds()
            .abs();
        assert!(skew < 1000, "{t} is {skew} ms from now");
    }
}
