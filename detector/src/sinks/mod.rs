//! Stage 7, sinks: where finished records and incidents go: JSON lines on [`stdout`], the
//! Prometheus [`metrics`], and the incident [`history`] (SQLite, on a thread of its own).
//!
//! - In: anything `Serialize` that is done: [`crate::death::record::ExitRecord`]s and
//!   [`crate::incident::Incident`]s; the kernel's counters, for the metrics.
//! - Out: bytes to the outside world: stdout, `/metrics`, the history database.
//! - Must not know: how a record was made or how a recovery runs; a sink never changes what it
//!   is given and never blocks the stages before it for long.

pub(crate) mod history;
pub(crate) mod metrics;
pub(crate) mod stdout;
