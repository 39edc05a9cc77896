//! Stage 2, one record per death: a decoded death event becomes an [`record::ExitRecord`] with its
//! wait status, signal (by name), fatal-signal sender and OOM details named.
//!
//! - In: [`crate::kernel::decode::Event::Death`] (the kernel already joined sender and OOM details
//!   into it).
//! - Out: [`record::ExitRecord`], still without cgroup path, unit or time (filled by `unit` and by
//!   the daemon's drain).
//! - Must not know: cgroups and units, systemd, the journal, what happens after the record.

pub(crate) mod correlate;
pub(crate) mod record;
pub(crate) mod signals;
