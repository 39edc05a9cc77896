//! The journal's share of death entries (`[journal]`, [`crate::config::journal::Journal`]):
//! per class, at most `death_entries` per `interval`; past it a death is counted instead, and
//! the count goes to the journal once the interval ends. Intervals start at a class's first
//! death after the last one ended, as journald's own rate limit does (journald-rate-limit.c,
//! <https://github.com/systemd/systemd/blob/v252/src/journal/journald-rate-limit.c>).
//!
//! Decided on the main loop, before an entry is built or queued: a death left out costs a
//! comparison, not a clone, a queue slot and a write through journald.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::config::journal::Journal as Config;

/// Which share a death's entry comes out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// A non-zero exit outside any service (a command that failed): what floods when a loop
    /// or a cron job goes wrong, and rarely needs anyone.
    Routine,
    /// Every other death: in a service, by a signal, an OOM kill, a core dump.
    Notable,
}

impl Class {
    pub(crate) const ALL: [Self; 2] = [Self::Routine, Self::Notable];

    /// Its name in the journal (`DETECTOR_CLASS`) and in the metrics (`class`).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Routine => "routine",
            Self::Notable => "notable",
        }
    }
}

/// The deaths a class left out of the journal over one interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeftOut {
    pub class: Class,
    pub deaths: u64,
    /// The share and its interval, as configured.
    pub share: u32,
    pub interval: Duration,
    /// When the interval started (its first death), and when the count was taken.
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
}

/// One class's share.
#[derive(Debug)]
pub(crate) struct Share {
    class: Class,
    /// Death entries per interval.
    entries: u32,
    interval: Duration,
    /// The interval under way: when it started; None until a death starts one.
    started: Option<(Instant, DateTime<Utc>)>,
    written: u32,
    left_out: u64,
}

impl Share {
    pub(crate) fn new(class: Class, config: Config) -> Self {
        let Config {
            death_entries,
            interval,
        } = config;
        Self {
            class,
            entries: death_entries,
            interval,
            started: None,
            written: 0,
            left_out: 0,
        }
    }

    /// Whether a death at `now` gets its entry; and first, the count of an interval that
    /// ended before it, if it left deaths out.
    pub(crate) fn take(&mut self, now: Instant, wall: DateTime<Utc>) -> (bool, Option<LeftOut>) {
        let ended = self.roll(now, wall);
        if self.started.is_none() {
            self.started = Some((now, wall));
        }
        if self.written < self.entries {
            self.written += 1;
            (true, ended)
        } else {
            self.left_out += 1;
            (false, ended)
        }
    }

    /// The count of the interval under way, if it has ended and left deaths out; each is
    /// given once.
    pub(crate) fn roll(&mut self, now: Instant, wall: DateTime<Utc>) -> Option<LeftOut> {
        let (start, _) = self.started?;
        if now.saturating_duration_since(start) < self.interval {
            return None;
        }
        self.close(wall)
    }

    /// At shutdown: what the interval under way left out so far.
    pub(crate) fn finish(&mut self, wall: DateTime<Utc>) -> Option<LeftOut> {
        self.close(wall)
    }

    fn close(&mut self, wall: DateTime<Utc>) -> Option<LeftOut> {
        let (_, since) = self.started.take()?;
        self.written = 0;
        let deaths = std::mem::take(&mut self.left_out);
        (deaths > 0).then_some(LeftOut {
            class: self.class,
            deaths,
            share: self.entries,
            interval: self.interval,
            since,
            until: wall,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn share(n: u32) -> (Share, Instant, DateTime<Utc>) {
        let config = Config {
            death_entries: n,
            interval: 10 * SECOND,
        };
        (
            Share::new(Class::Routine, config),
            Instant::now(),
            Utc::now(),
        )
    }

    /// `n` deaths at `at`: how many got their entry, and the counts given meanwhile.
    fn deaths(s: &mut Share, n: usize, at: Instant, wall: DateTime<Utc>) -> (usize, Vec<u64>) {
        let mut written = 0;
        let mut counts = Vec::new();
        for _ in 0..n {
            let (write, ended) = s.take(at, wall);
            written += usize::from(write);
            counts.extend(ended.map(|l| l.deaths));
        }
        (written, counts)
    }

    #[test]
    fn past_the_share_deaths_are_counted_and_the_count_given_once_the_interval_ends() {
        let (mut s, t0, w0) = share(3);
        assert_eq!(deaths(&mut s, 10, t0, w0), (3, vec![]));
        // Still within the interval: nothing to say yet.
        assert_eq!(s.roll(t0 + 9 * SECOND, w0), None);
        let ended = s.roll(t0 + 10 * SECOND, w0).expect("the interval ended");
        assert_eq!(
            (ended.class, ended.deaths, ended.share, ended.since),
            (Class::Routine, 7, 3, w0)
        );
        // Given once; the next interval starts with the next death and has its whole share.
        assert_eq!(s.roll(t0 + 11 * SECOND, w0), None);
        assert_eq!(deaths(&mut s, 4, t0 + 12 * SECOND, w0), (3, vec![]));
        assert_eq!(s.finish(w0).map(|l| l.deaths), Some(1));
        assert_eq!(s.finish(w0), None);
    }

    #[test]
    fn the_count_of_an_ended_interval_comes_with_the_next_death() {
        let (mut s, t0, w0) = share(1);
        assert_eq!(deaths(&mut s, 5, t0, w0), (1, vec![]));
        assert_eq!(deaths(&mut s, 1, t0 + 20 * SECOND, w0), (1, vec![4]));
    }

    #[test]
    fn an_interval_within_its_share_says_nothing() {
        let (mut s, t0, w0) = share(5);
        assert_eq!(deaths(&mut s, 5, t0, w0), (5, vec![]));
        assert_eq!(s.roll(t0 + 10 * SECOND, w0), None);
        assert_eq!(s.finish(w0), None);
    }

    #[test]
    fn a_share_of_zero_writes_no_death_and_counts_each() {
        let (mut s, t0, w0) = share(0);
        assert_eq!(deaths(&mut s, 3, t0, w0), (0, vec![]));
        assert_eq!(s.roll(t0 + 10 * SECOND, w0).map(|l| l.deaths), Some(3));
    }
}
