//! detector: sees every process death and OOM kill through eBPF, names the systemd unit that
//! died and why, recovers it as its policy says, and writes one record per death and one
//! incident per unit failure.
//!
//! One folder per stage of the flow, in order; a stage may import an earlier one, never a later
//! one (`tests/layout.rs` checks it). ARCHITECTURE.md at the repository root draws the flow.
//!
//! [`kernel`] → [`death`] → [`unit`] → [`journal`] → [`incident`] → [`recovery`] → [`sinks`],
//! configured by [`config`], wired by [`daemon`], started from [`cli`].

pub mod cli;
mod config;
mod daemon;
mod death;
mod incident;
mod journal;
mod kernel;
mod recovery;
mod sinks;
mod unit;

/// The D-Bus client for the watched systemd, for the end-to-end tests that act on a machine's
/// units directly.
pub use recovery::systemd::{Systemd, UnitState};
