//! The kernel programs' per-CPU failure counters (`COUNTERS`), one per kind
//! (`detector_common::counter`): records lost to a full ring buffer, which kernel structure could
//! not be read, which map refused an update. Reported within a second of changing (logged under
//! their kind, exported as `detector_kernel_errors_total{kind}`), and in the summary at shutdown:
//! a loss is never silent.
//!
//! What was reported is written back into the `REPORTED` map. With pinned maps the counters
//! outlive the daemon, so the next daemon starts from what the last one reported: a loss while no
//! daemon ran is reported once, by the next one, and nothing is reported twice.

use aya::maps::{Array, MapData, PerCpuArray};
use detector_common::counter;
use serde::Serialize;

/// The counters read, in order: the records written, then every failure kind.
const KINDS: usize = 1 + counter::ERRORS.len();

fn indexes() -> [u32; KINDS] {
    let mut all = [counter::EMITTED; KINDS];
    all[1..].copy_from_slice(&counter::ERRORS);
    all
}

/// Sums of the per-CPU counters, with the per-CPU split, in the order of [`indexes`].
type Snapshot = [(u64, Vec<u64>); KINDS];

/// Deaths the kernel programs could not hand over, as a record of their own on the records'
/// stream (`"kind": "lost"`), so that a consumer of the records sees the gap.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Lost {
    pub kind: &'static str,
    /// When the daemon noticed (RFC 3339, µs).
    pub time: String,
    /// How many records were lost since the last report.
    pub records: u64,
    /// `ring_buffer_full` (the kernel had no room), or `incompatible_build` (records a build
    /// with other layouts left in its pinned ring).
    pub reason: &'static str,
}

impl Lost {
    #[must_use]
    pub(crate) fn new(records: u64, reason: &'static str) -> Self {
        Self {
            kind: "lost",
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            records,
            reason,
        }
    }
}

/// The counters map, what was reported of it, and what it said last.
pub(crate) struct Counters {
    map: PerCpuArray<MapData, u64>,
    reported: Array<MapData, u64>,
    previous: Snapshot,
}

/// The totals since the programs were loaded (with pins: across daemons), for the metrics and
/// the summary at shutdown.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Totals {
    pub emitted: u64,
    /// Death records lost to a full ring buffer (also in [`Totals::errors`]).
    pub lost: u64,
    /// Every failure kind (`detector_common::counter::ERRORS`) and its total.
    pub errors: [(u32, u64); counter::ERRORS.len()],
}

impl Totals {
    /// Failed reads of kernel memory, all kinds together.
    #[must_use]
    pub(crate) fn read_failures(&self) -> u64 {
        self.sum(counter::is_read)
    }

    /// Refused map updates, all maps together.
    #[must_use]
    pub(crate) fn map_failures(&self) -> u64 {
        self.sum(counter::is_map)
    }

    fn sum(&self, which: fn(u32) -> bool) -> u64 {
        self.errors
            .iter()
            .filter(|(kind, _)| which(*kind))
            .map(|(_, n)| n)
            .sum()
    }

    /// The kinds that happened, `name=total` separated by spaces; `none` when none did.
    #[must_use]
    pub(crate) fn summary(&self) -> String {
        let parts: Vec<String> = self
            .errors
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(kind, n)| format!("{}={n}", counter::name(*kind)))
            .collect();
        if parts.is_empty() {
            "none".to_owned()
        } else {
            parts.join(" ")
        }
    }
}

impl Counters {
    pub(crate) fn new(map: PerCpuArray<MapData, u64>, reported: Array<MapData, u64>) -> Self {
        let previous = indexes().map(|index| (reported.get(&index, 0).unwrap_or(0), Vec::new()));
        Self {
            map,
            reported,
            previous,
        }
    }

    /// Logs the failure counters that grew since the last report, each under its kind, and
    /// returns the deaths lost since then, if any.
    pub(crate) fn report(&mut self) -> Option<Lost> {
        let now = read(&self.map);
        let mut lost = None;
        for (index, ((total, per_cpu), (was, _))) in indexes()
            .into_iter()
            .zip(now.iter().zip(self.previous.iter()))
        {
            if total == was {
                continue;
            }
            let name = counter::name(index);
            if index != counter::EMITTED && total > was {
                tracing::warn!(
                    kind = name,
                    new = total - was,
                    total,
                    per_cpu = ?per_cpu,
                    "kernel programs report failures"
                );
            }
            if index == counter::RINGBUF_FULL && total > was {
                lost = Some(Lost::new(total - was, "ring_buffer_full"));
            }
            if let Err(e) = self.reported.set(index, total, 0) {
                tracing::warn!(kind = name, error = %e, "cannot record what was reported");
            }
        }
        self.previous = now;
        lost
    }

    /// A last report, and the totals.
    pub(crate) fn finish(&mut self) -> (Totals, Option<Lost>) {
        let lost = self.report();
        (self.totals(), lost)
    }

    /// The totals as of the last report (for the metrics).
    #[must_use]
    pub(crate) fn totals(&self) -> Totals {
        totals(&self.previous)
    }
}

fn totals(snapshot: &Snapshot) -> Totals {
    let mut totals = Totals::default();
    for (index, (total, _)) in indexes().into_iter().zip(snapshot.iter()) {
        if index == counter::EMITTED {
            totals.emitted = *total;
        } else if let Some(slot) = counter::ERRORS.iter().position(|k| *k == index) {
            totals.errors[slot] = (index, *total);
        }
        if index == counter::RINGBUF_FULL {
            totals.lost = *total;
        }
    }
    totals
}

fn read(map: &PerCpuArray<MapData, u64>) -> Snapshot {
    indexes().map(|index| match map.get(&index, 0) {
        Ok(values) => (values.iter().sum(), values.to_vec()),
        Err(e) => {
            tracing::warn!(kind = counter::name(index), error = %e, "cannot read kernel counter");
            (0, Vec::new())
        }
    })
}

#[cfg(test)]
mod tests {
    use detector_common::counter;

    use super::{KINDS, Snapshot, indexes, totals};

    #[test]
    fn totals_name_every_kind_and_sum_reads_and_maps() {
        let mut snapshot: Snapshot = std::array::from_fn(|_| (0, Vec::new()));
        for (slot, index) in snapshot.iter_mut().zip(indexes()) {
            slot.0 = u64::from(index) * 10;
        }
        let t = totals(&snapshot);
        assert_eq!(t.emitted, 0);
        assert_eq!(t.lost, u64::from(counter::RINGBUF_FULL) * 10);
        assert_eq!(t.errors.len(), KINDS - 1);
        assert!(t.errors.iter().all(|(kind, n)| *n == u64::from(*kind) * 10));
        // read_exit_status .. read_fork: 5..=12; map_*: 13..=16.
        assert_eq!(t.read_failures(), (5..=12).sum::<u64>() * 10);
        assert_eq!(t.map_failures(), (13..=16).sum::<u64>() * 10);
        assert!(
            t.summary()
                .starts_with("ringbuf_full_death=10 ringbuf_full_cgroup=40 ")
        );
        assert_eq!(super::Totals::default().summary(), "none");
    }
}
