//! Where the kernel programs' fields are in this kernel: struct offsets from BTF, tracepoint
//! record fields from their `format` files. Nothing is compiled in: the loader passes these in
//! the programs' `OFFSETS` global.

use std::collections::HashMap;

use detector_common::{ABSENT, Offsets};

use crate::kernel::{btf::Btf, probes::ProbeError, tracefs};

/// Field offsets from BTF. The ones the death record cannot do without fail start-up; the OOM
/// ones are left [`ABSENT`] with a note, and the OOM probe then reports less.
pub(crate) fn kernel_offsets(btf: &Btf, degraded: &mut Vec<String>) -> Result<Offsets, ProbeError> {
    let mut o = Offsets::ABSENT;
    let required = |s: &str, f: &str| btf.field_offset(s, f);
    o.task_pid = required("task_struct", "pid")?;
    o.task_tgid = required("task_struct", "tgid")?;
    o.task_real_parent = required("task_struct", "real_parent")?;
    o.task_group_leader = required("task_struct", "group_leader")?;
    o.task_signal = required("task_struct", "signal")?;
    o.task_exit_code = required("task_struct", "exit_code")?;
    o.task_comm = required("task_struct", "comm")?;
    o.signal_flags = required("signal_struct", "flags")?;
    o.signal_group_exit_code = required("signal_struct", "group_exit_code")?;
    o.siginfo_code = required("kernel_siginfo", "si_code")?;
    let mut optional = |slot: &mut u32, s: &str, f: &str| match btf.field_offset(s, f) {
        Ok(v) => *slot = v,
        Err(e) => degraded.push(format!("OOM memory cgroup: {e}")),
    };
    optional(&mut o.task_cgroups, "task_struct", "cgroups");
    optional(&mut o.css_set_subsys, "css_set", "subsys");
    optional(&mut o.css_cgroup, "cgroup_subsys_state", "cgroup");
    optional(&mut o.cgroup_kn, "cgroup", "kn");
    optional(&mut o.kn_id, "kernfs_node", "id");
    optional(&mut o.kn_name, "kernfs_node", "name");
    match btf
        .enum_values("cgroup_subsys_id")
        .iter()
        .find(|(name, _)| name == "memory_cgrp_id")
    {
        Some((_, id)) => o.memory_cgrp_id = u32::try_from(*id).unwrap_or(ABSENT),
        None => degraded.push(
            "OOM memory cgroup: this kernel has no memory controller (memory_cgrp_id)".to_owned(),
        ),
    }
    Ok(o)
}

/// Offsets of `oom:mark_victim` record fields; each one missing only costs its figure.
pub(crate) fn mark_victim_offsets(
    o: &mut Offsets,
    format: &HashMap<String, tracefs::Field>,
    degraded: &mut Vec<String>,
) {
    degraded.extend(tracefs::place_fields(
        "oom:mark_victim",
        format,
        &mut [
            ("pid", 4, &mut o.mv_pid),
            ("total_vm", 8, &mut o.mv_total_vm),
            ("anon_rss", 8, &mut o.mv_anon_rss),
            ("file_rss", 8, &mut o.mv_file_rss),
            ("shmem_rss", 8, &mut o.mv_shmem_rss),
            ("oom_score_adj", 2, &mut o.mv_oom_score_adj),
        ],
    ));
}

/// Offsets of the `cgroup:cgroup_mkdir` record fields (`cgroup_rmdir` is the same event class);
/// the programs need all of them.
pub(crate) fn cgroup_offsets(
    o: &mut Offsets,
    format: &HashMap<String, tracefs::Field>,
) -> Result<(), String> {
    let problems = tracefs::place_fields(
        "cgroup:cgroup_mkdir",
        format,
        &mut [
            ("root", 4, &mut o.cg_root),
            ("level", 4, &mut o.cg_level),
            ("id", 8, &mut o.cg_id),
            ("path", 4, &mut o.cg_path),
        ],
    );
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}
