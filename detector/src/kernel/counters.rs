//! The kernel programs' per-CPU failure counters (`COUNTERS`): records lost to a full ring
//! buffer, failed kernel reads, failed map updates. Reported within a second of changing, and in
//! the summary at shutdown: a loss is never silent.
//!
//! What was reported is written back into the `REPORTED` map. With pinned maps the counters
//! outlive the daemon, so the next daemon starts from what the last one reported: a loss while no
//! daemon ran is reported once, by the next one, and nothing is reported twice.

use aya::maps::{Array, MapData, PerCpuArray};
use detector_common::counter;
use serde::Serialize;

const NAMES: [(u32, &str); 4] = [
    (counter::EMITTED, "emitted"),
    (counter::RINGBUF_FULL, "lost_ringbuf_full"),
    (counter::KERNEL_READ, "kernel_read_failures"),
    (counter::MAP_UPDATE, "map_update_failures"),
];

/// Sums of the per-CPU counters, with the per-CPU split of the ones that matter.
type Snapshot = [(u64, Vec<u64>); 4];

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
    pub lost: u64,
    pub read_failures: u64,
    pub map_failures: u64,
}

impl Counters {
    pub(crate) fn new(map: PerCpuArray<MapData, u64>, reported: Array<MapData, u64>) -> Self {
        let previous = NAMES.map(|(index, _)| (reported.get(&index, 0).unwrap_or(0), Vec::new()));
        Self {
            map,
            reported,
            previous,
        }
    }

    /// Logs the failure counters that grew since the last report, and returns the deaths lost
    /// since then, if any.
    pub(crate) fn report(&mut self) -> Option<Lost> {
        let now = read(&self.map);
        let mut lost = None;
        for ((index, name), ((total, per_cpu), (was, _))) in
            NAMES.iter().zip(now.iter().zip(self.previous.iter()))
        {
            if total == was {
                continue;
            }
            if *index != counter::EMITTED && total > was {
                tracing::warn!(
                    counter = name,
                    new = total - was,
                    total,
                    per_cpu = ?per_cpu,
                    "kernel programs report failures"
                );
            }
            if *index == counter::RINGBUF_FULL && total > was {
                lost = Some(Lost::new(total - was, "ring_buffer_full"));
            }
            if let Err(e) = self.reported.set(*index, total, 0) {
                tracing::warn!(counter = name, error = %e, "cannot record what was reported");
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
        let [
            (emitted, _),
            (lost_total, _),
            (read_failures, _),
            (map_failures, _),
        ] = &self.previous;
        Totals {
            emitted: *emitted,
            lost: *lost_total,
            read_failures: *read_failures,
            map_failures: *map_failures,
        }
    }
}

fn read(map: &PerCpuArray<MapData, u64>) -> Snapshot {
    NAMES.map(|(index, name)| match map.get(&index, 0) {
        Ok(values) => (values.iter().sum(), values.to_vec()),
        Err(e) => {
            tracing::warn!(counter = name, error = %e, "cannot read kernel counter");
            (0, Vec::new())
        }
    })
}
