//! Stage 3, enrichment with systemd's view: cgroup ids → cgroup paths → the unit (and user unit)
//! that owns them, the run (invocation id), the watched manager's own cgroup and pid, and who
//! holds a TCP port.
//!
//! - In: [`crate::death::record::ExitRecord`]s and the kernel's cgroup mkdir/rmdir events; the
//!   watched systemd's files under `--root`.
//! - Out: the same records with `cgroup`, `unit`, `user_unit`, `invocation_id` and the OOM memcg
//!   path filled in; [`ports::Holder`]s on request.
//! - Must not know: the journal, policies, D-Bus, incidents, sinks.

pub(crate) mod cgroups;
pub(crate) mod manager;
pub(crate) mod names;
pub(crate) mod ports;
pub(crate) mod roles;
pub(crate) mod root;
