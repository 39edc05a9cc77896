//! cgroup2 directories as they are created and removed, so the daemon can name a dead process's
//! cgroup even when the cgroup is gone by the time the record is read (systemd removes a unit's
//! cgroup as soon as it is empty).
//!
//! Hook: the classic tracepoints `cgroup:cgroup_mkdir` and `cgroup:cgroup_rmdir`
//! (include/trace/events/cgroup.h); their record carries the path the kernel built, which a raw
//! tracepoint would have us assemble from kernfs nodes. Creating cgroups is rare, so the cost of
//! the formatted record does not matter. Only the default (cgroup2) hierarchy is kept: its
//! hierarchy id is always 0 (`cgrp_dfl_root`), and deaths carry cgroup2 ids.

use aya_ebpf::{
    EbpfContext as _, helpers::bpf_probe_read_kernel_str_bytes, macros::tracepoint,
    programs::TracePointContext,
};
use detector_common::{CGROUP_PATH_LEN, CgroupEvent, EventHeader, counter, event_kind};

use crate::{
    kernel::{Error, offset},
    maps::{EVENTS, fail},
};

#[tracepoint]
pub(crate) fn cgroup_mkdir(ctx: TracePointContext) -> u32 {
    let _ = try_cgroup(&ctx, event_kind::CGROUP_MKDIR);
    0
}

#[tracepoint]
pub(crate) fn cgroup_rmdir(ctx: TracePointContext) -> u32 {
    let _ = try_cgroup(&ctx, event_kind::CGROUP_RMDIR);
    0
}

#[inline(always)]
fn field<T>(ctx: &TracePointContext, at: u64) -> Result<T, Error> {
    // SAFETY: `at` is an offset inside this event's record, from its `format` file.
    unsafe { ctx.read_at::<T>(at as usize) }.map_err(|_| {
        fail(counter::READ_CGROUP);
        Error::Counted
    })
}

#[inline(always)]
fn try_cgroup(ctx: &TracePointContext, kind: u32) -> Result<(), Error> {
    let root: i32 = field(ctx, offset!(cg_root)?)?;
    if root != 0 {
        return Ok(());
    }
    let id: u64 = field(ctx, offset!(cg_id)?)?;
    let level: i32 = field(ctx, offset!(cg_level)?)?;
    let loc: u32 = field(ctx, offset!(cg_path)?)?;
    let Some(mut entry) = EVENTS.reserve::<CgroupEvent>(0) else {
        fail(counter::RINGBUF_FULL_CGROUP);
        return Err(Error::Counted);
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` is a reserved, writable slot of `size_of::<CgroupEvent>()` bytes; every
    // field is written before it is submitted.
    unsafe {
        (*event).header = EventHeader {
            kind,
            size: size_of::<CgroupEvent>() as u32,
        };
        (*event).id = id;
        (*event).level = level as u32;
        (*event).path = [0; CGROUP_PATH_LEN];
        // `__data_loc`: the string sits at this offset inside the record.
        let src = (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize);
        (*event).path_len = match bpf_probe_read_kernel_str_bytes(src, &mut (*event).path) {
            Ok(bytes) if bytes.len() + 1 < CGROUP_PATH_LEN => bytes.len() as u32,
            Ok(_) => CGROUP_PATH_LEN as u32,
            Err(_) => {
                fail(counter::READ_CGROUP_PATH);
                0
            }
        };
    }
    entry.submit(0);
    Ok(())
}
