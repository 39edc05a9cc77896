//! The Prometheus metrics: counts kept from the records and incidents the daemon writes, the
//! kernel programs' counters and the sinks' deliveries, served as OpenMetrics text on `/metrics`
//! ([`server`]). Names follow Prometheus's conventions (`detector_` prefix, base units, `_total`
//! for counters); units are labelled `name`, as node_exporter's systemd collector does, with a
//! bounded set of values ([`names`]). The README lists every metric.
//!
//! Updating a figure is an atomic add under a short lock: the main loop never waits on a scrape
//! for longer than one such update.
//!
//! About 470 lines (its tests are in `tests.rs`): every family is declared, registered with
//! its help text and updated here, so that a metric's name, meaning and source read together.

mod names;
pub(crate) mod server;
#[cfg(test)]
pub(crate) mod tests;

use std::sync::{Arc, PoisonError};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram, info::Info},
    registry::{Registry, Unit},
};

use self::names::Names;
use super::journal::share::Class;
use crate::{
    config::Config,
    death::record::ExitRecord,
    incident::{Action, Incident, outbox::Dropped},
    kernel::counters::Totals,
    recovery::{Coalesced, HealthBoard},
};

/// Bounds of the recovery-time histograms, in seconds: a restart is requested within
/// milliseconds, a service is healthy again within tens of milliseconds to a minute.
const SECONDS_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

fn seconds_histogram() -> Histogram {
    Histogram::new(SECONDS_BUCKETS)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UnitLabels {
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeathLabels {
    name: String,
    /// `exit` (a non-zero exit code), `signal`, `oom` (killed by the OOM killer).
    how: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IncidentLabels {
    name: String,
    cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RestartLabels {
    name: String,
    /// `detector` (we restarted it) or `systemd` (its own `Restart=`; we watched).
    by: &'static str,
    /// How it ended: [`Incident::outcome`].
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CoalescedLabels {
    /// `folded` (counted in the unit's open incident) or `unopened` (in no incident).
    into: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NoticeLabels {
    /// `opened` (folded into the incident's `resolved` notice) or `resolved` (lost).
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    /// `routine` (a failing command outside any service) or `notable` (every other death).
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    sink: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    /// `detector_common::counter::name`: `ringbuf_full_death`, `read_task`, `map_senders`, ...
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    /// `cgroup_paths`, `cgroups_known`, `unit_tracks`, `unit_object_paths`, `unit_states`,
    /// `unit_failures_handled`, `metric_names`.
    cache: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// The kernel programs' counters and the daemon's own, as monotonic totals.
#[derive(Default)]
struct Kernel {
    emitted: Counter,
    lost: Counter,
    read_failures: Counter,
    map_failures: Counter,
    undecodable: Counter,
    batch_windows: Counter,
    /// Every failure kind, exported at 0 from the start.
    errors: Family<ErrorLabels, Counter>,
}

/// A sink's count of what it delivered and what it had to drop.
#[derive(Clone)]
pub(crate) struct SinkStats {
    pub delivered: Counter,
    pub dropped: Counter,
}

/// Every figure the daemon exports, and the registry that encodes them.
pub(crate) struct Metrics {
    registry: Registry,
    names: Names,
    deaths: Family<DeathLabels, Counter>,
    incidents: Family<IncidentLabels, Counter>,
    restarts: Family<RestartLabels, Counter>,
    crash_to_restart: Family<UnitLabels, Histogram, fn() -> Histogram>,
    crash_to_healthy: Family<UnitLabels, Histogram, fn() -> Histogram>,
    healthy: Family<UnitLabels, Gauge>,
    kernel: Kernel,
    coalesced: Family<CoalescedLabels, Counter>,
    notices_dropped: Family<NoticeLabels, Counter>,
    journal_left_out: Family<ClassLabels, Counter>,
    deliveries: Family<SinkLabels, Counter>,
    drops: Family<SinkLabels, Counter>,
    caches: Family<CacheLabels, Gauge>,
    board: HealthBoard,
}

impl Metrics {
    /// Registers every metric; `board` is the recovery's health verdicts.
    #[must_use]
    pub(crate) fn new(config: Arc<Config>, board: HealthBoard) -> Self {
        let mut registry = Registry::with_prefix("detector");
        registry.register(
            "build",
            "The running detector's version",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        let metrics = Self {
            names: Names::new(config),
            deaths: Family::default(),
            incidents: Family::default(),
            restarts: Family::default(),
            crash_to_restart: Family::new_with_constructor(seconds_histogram),
            crash_to_healthy: Family::new_with_constructor(seconds_histogram),
            healthy: Family::default(),
            kernel: Kernel::default(),
            coalesced: Family::default(),
            notices_dropped: Family::default(),
            journal_left_out: Family::default(),
            deliveries: Family::default(),
            drops: Family::default(),
            caches: Family::default(),
            board,
            registry,
        }
        .register();
        // Known series are exported at 0 from the start.
        metrics.pressure(Coalesced::default(), Dropped::default());
        for class in Class::ALL {
            let _ = metrics.journal_left_out.get_or_create(&ClassLabels {
                class: class.as_str(),
            });
        }
        metrics
    }

    fn register(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "deaths",
            "Processes that died with a non-zero wait status, by unit and how (exit, signal, oom)",
            self.deaths.clone(),
        );
        r.register(
            "incidents",
            "Incidents written, by unit and cause",
            self.incidents.clone(),
        );
        r.register(
            "restarts",
            "Recoveries by restart, by unit, who restarted (detector, systemd) and how it ended",
            self.restarts.clone(),
        );
        r.register_with_unit(
            "crash_to_restart",
            "From a death (kernel time) to the restart requested, or systemd's own seen",
            Unit::Seconds,
            self.crash_to_restart.clone(),
        );
        r.register_with_unit(
            "crash_to_healthy",
            "From a death (kernel time) to the unit's first passing health check",
            Unit::Seconds,
            self.crash_to_healthy.clone(),
        );
        r.register(
            "unit_healthy",
            "1 if the unit's last health check (liveness or after a restart) passed, else 0",
            self.healthy.clone(),
        );
        register_kernel(r, &self.kernel);
        r.register(
            "cache_entries",
            "Entries in each of the daemon's caches (every one has a bound; see the README)",
            self.caches.clone(),
        );
        r.register(
            "incidents_coalesced",
            "Failures that opened no incident of their own, a bound being reached: folded into \
             their unit's open incident, or unopened",
            self.coalesced.clone(),
        );
        r.register(
            "notices_dropped",
            "Incident notices that did not go out on their own, the notices' queue being full: \
             opened (folded into the resolved one), resolved (lost)",
            self.notices_dropped.clone(),
        );
        r.register(
            "journal_left_out",
            "Deaths not written to the journal, past its share per interval ([journal]), by \
             class; each interval's count is an entry of its own",
            self.journal_left_out.clone(),
        );
        r.register(
            "sink_deliveries",
            "Records or incidents a sink delivered, by sink",
            self.deliveries.clone(),
        );
        r.register(
            "sink_drops",
            "Records or incidents a sink dropped (queue full, write failed), by sink",
            self.drops.clone(),
        );
        self
    }

    /// A death record as it goes to the sinks.
    pub(crate) fn death(&self, record: &ExitRecord) {
        let how = if record.oom.is_some() {
            "oom"
        } else if record.signal.is_some() {
            "signal"
        } else {
            "exit"
        };
        let unit = record.user_unit.as_deref().or(record.unit.as_deref());
        let name = self.names.of(unit);
        self.deaths.get_or_create(&DeathLabels { name, how }).inc();
    }

    /// A death the journal left out.
    pub(crate) fn journal_left_out(&self, class: Class) {
        self.journal_left_out
            .get_or_create(&ClassLabels {
                class: class.as_str(),
            })
            .inc();
    }

    /// A finished incident as it goes to the sinks.
    pub(crate) fn incident(&self, incident: &Incident) {
        let name = self.names.of(Some(&incident.unit));
        self.incidents
            .get_or_create(&IncidentLabels {
                name: name.clone(),
                cause: incident.cause.clone(),
            })
            .inc();
        let by = match incident.action {
            Action::Restarted | Action::Failed => "detector",
            Action::Watched => "systemd",
            Action::Reported | Action::GaveUp => return,
        };
        self.restarts
            .get_or_create(&RestartLabels {
                name: name.clone(),
                by,
                result: incident.ending(),
            })
            .inc();
        let labels = UnitLabels { name };
        if let Some(ms) = incident.crash_to_restart_ms {
            self.crash_to_restart
                .get_or_create(&labels)
                .observe(ms / 1000.0);
        }
        if let Some(ms) = incident.crash_to_healthy_ms {
            self.crash_to_healthy
                .get_or_create(&labels)
                .observe(ms / 1000.0);
        }
    }

    /// The kernel programs' totals now, and the records the daemon could not decode.
    pub(crate) fn kernel(&self, totals: Totals, undecodable: u64) {
        let k = &self.kernel;
        for (counter, total) in [
            (&k.emitted, totals.emitted),
            (&k.lost, totals.lost),
            (&k.read_failures, totals.read_failures()),
            (&k.map_failures, totals.map_failures()),
            (&k.undecodable, undecodable),
        ] {
            raise_to(counter, total);
        }
        for (kind, total) in totals.errors {
            raise_to(
                &k.errors.get_or_create(&ErrorLabels {
                    kind: detector_common::counter::name(kind),
                }),
                total,
            );
        }
    }

    /// The windows the ring's reader slept in storms (`--batch-window-us`), as a total since the
    /// start.
    pub(crate) fn batch_windows(&self, total: u64) {
        raise_to(&self.kernel.batch_windows, total);
    }

    /// The daemon's cache sizes now (read each second by the main loop); `metric_names` is the
    /// metrics' own.
    pub(crate) fn caches(&self, sizes: &[(&'static str, usize)]) {
        let names = ("metric_names", self.names.len());
        for (cache, size) in sizes.iter().chain(std::iter::once(&names)) {
            self.caches
                .get_or_create(&CacheLabels { cache })
                .set(i64::try_from(*size).unwrap_or(i64::MAX));
        }
    }

    /// What the dispatcher coalesced and the notices' queue dropped, as totals since the start.
    pub(crate) fn pressure(&self, coalesced: Coalesced, dropped: Dropped) {
        for (family, label, total) in [
            (&self.coalesced, "folded", coalesced.folded),
            (&self.coalesced, "unopened", coalesced.unopened),
        ] {
            raise_to(
                &family.get_or_create(&CoalescedLabels { into: label }),
                total,
            );
        }
        for (label, total) in [("opened", dropped.opened), ("resolved", dropped.resolved)] {
            raise_to(
                &self
                    .notices_dropped
                    .get_or_create(&NoticeLabels { phase: label }),
                total,
            );
        }
    }

    /// The counters a sink reports its deliveries and drops in (exported at 0 from the start).
    #[must_use]
    pub(crate) fn sink(&self, sink: &'static str) -> SinkStats {
        let labels = SinkLabels { sink };
        SinkStats {
            delivered: self.deliveries.get_or_create_owned(&labels),
            dropped: self.drops.get_or_create_owned(&labels),
        }
    }

    /// The exposition, OpenMetrics text.
    #[must_use]
    pub(crate) fn encode(&self) -> String {
        let verdicts: Vec<(String, bool)> = self
            .board
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(unit, ok)| (unit.clone(), *ok))
            .collect();
        for (unit, ok) in verdicts {
            let name = self.names.of(Some(&unit));
            self.healthy
                .get_or_create(&UnitLabels { name })
                .set(i64::from(ok));
        }
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            // Writing to a String cannot fail; a bug in a label's encoding could.
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        text
    }
}

/// Brings a counter fed from a total kept elsewhere up to that total. Only the caller adds to
/// such a counter, so the difference is what is new.
fn raise_to(counter: &Counter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}

/// The kernel programs' counters, by what went wrong.
fn register_kernel(r: &mut Registry, k: &Kernel) {
    for (name, help, counter) in [
        (
            "events",
            "Records the kernel programs wrote to the ring buffer",
            &k.emitted,
        ),
        (
            "events_lost",
            "Records the kernel programs could not write: the ring buffer was full",
            &k.lost,
        ),
        (
            "kernel_read_failures",
            "Failed reads of kernel memory in the kernel programs",
            &k.read_failures,
        ),
        (
            "kernel_map_update_failures",
            "Failed map updates in the kernel programs",
            &k.map_failures,
        ),
        (
            "events_undecodable",
            "Ring-buffer records the daemon could not decode",
            &k.undecodable,
        ),
        (
            "ring_batch_windows",
            "Windows the reader slept between reads of the ring buffer in a storm (`--batch-window-us`)",
            &k.batch_windows,
        ),
    ] {
        r.register(name, help, counter.clone());
    }
    for kind in detector_common::counter::ERRORS {
        let _ = k.errors.get_or_create(&ErrorLabels {
            kind: detector_common::counter::name(kind),
        });
    }
    r.register(
        "kernel_errors",
        "Failures in the kernel programs, by kind (see the README's list of kinds)",
        k.errors.clone(),
    );
}
