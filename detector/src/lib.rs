//! detector: sees every process death and OOM kill through eBPF and writes one record per death.
//!
//! Modules follow the data: [`probes`] (kernel programs) → ring buffer → [`decode`] →
//! [`correlate`] → [`enrich`] (cgroup paths, [`units`]) → [`sinks`], driven by [`daemon`]; deaths
//! that fail a unit become [`incident`]s once the [`journal`] has their last lines.

pub mod actions;
pub mod btf;
pub mod causes;
pub mod clock;
pub mod config;
pub mod correlate;
pub mod daemon;
pub mod decode;
pub mod enrich;
pub mod incident;
pub mod journal;
pub mod ports;
pub mod probes;
pub mod record;
pub mod signals;
pub mod sinks;
pub mod tracefs;
pub mod units;
