//! detector: sees every process death and OOM kill through eBPF and writes one record per death.
//!
//! Modules follow the data: [`probes`] (kernel programs) → ring buffer → [`decode`] →
//! [`correlate`] → [`enrich`] (cgroup paths, [`units`]) → [`sinks`], driven by [`daemon`]. Deaths
//! that fail a unit go on through [`policy`] → [`actions`] (systemd over D-Bus) and [`health`],
//! driven by [`recovery`], and become [`incident`]s with the [`journal`]'s last lines.

pub mod actions;
pub mod btf;
pub mod causes;
pub mod clock;
pub mod config;
pub mod correlate;
pub mod daemon;
pub mod decode;
pub mod enrich;
pub mod health;
pub mod incident;
pub mod journal;
pub mod policy;
pub mod ports;
pub mod probes;
pub mod record;
pub mod recovery;
pub mod signals;
pub mod sinks;
pub mod tracefs;
pub mod units;
