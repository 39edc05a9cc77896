//! The kernel programs' per-CPU failure counters (`COUNTERS`): records lost to a full ring
//! buffer, failed kernel reads, failed map updates. Reported within a second of changing, and in
//! the summary at shutdown: a loss is never silent.

use aya::maps::{MapData, PerCpuArray};
use detector_common::counter;

const NAMES: [(u32, &str); 4] = [
    (counter::EMITTED, "emitted"),
    (counter::RINGBUF_FULL, "lost_ringbuf_full"),
    (counter::KERNEL_READ, "kernel_read_failures"),
    (counter::MAP_UPDATE, "map_update_failures"),
];

/// Sums of the per-CPU counters, with the per-CPU split of the ones that matter.
type Snapshot = [(u64, Vec<u64>); 4];

/// The counters map and what it said last.
pub(crate) struct Counters {
    map: PerCpuArray<MapData, u64>,
    previous: Snapshot,
}

/// The totals, for the metrics and the summary at shutdown.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Totals {
    pub emitted: u64,
    pub lost: u64,
    pub read_failures: u64,
    pub map_failures: u64,
}

impl Counters {
    pub(crate) fn new(map: PerCpuArray<MapData, u64>) -> Self {
        let previous = read(&map);
        Self { map, previous }
    }

    /// Logs the failure counters that grew since the last call.
    pub(crate) fn report(&mut self) {
        let now = read(&self.map);
        for ((index, name), ((total, per_cpu), (was, _))) in
            NAMES.iter().zip(now.iter().zip(self.previous.iter()))
        {
            if *index != counter::EMITTED && total > was {
                tracing::warn!(
                    counter = name,
                    new = total - was,
                    total,
                    per_cpu = ?per_cpu,
                    "kernel programs report failures"
                );
            }
        }
        self.previous = now;
    }

    /// A last report, and the totals.
    pub(crate) fn finish(&mut self) -> Totals {
        self.report();
        self.totals()
    }

    /// The totals as of the last report (for the metrics).
    #[must_use]
    pub(crate) fn totals(&self) -> Totals {
        let [
            (emitted, _),
            (lost, _),
            (read_failures, _),
            (map_failures, _),
        ] = &self.previous;
        Totals {
            emitted: *emitted,
            lost: *lost,
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
