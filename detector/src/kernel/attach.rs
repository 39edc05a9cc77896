//! Loading each kernel program into the kernel and attaching it to its hook; with pins, each
//! link is pinned in the generation directory as `link_<program>`, so the program stays attached
//! after the daemon exits.

use std::path::Path;

use aya::{
    Ebpf,
    programs::{FEntry, ProgramError, RawTracePoint, TracePoint, links::FdLink},
};

use crate::kernel::{pins, probes::ProbeError};

fn rejected(program: &'static str, e: &ProgramError) -> ProbeError {
    let detail = match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => format!("{io_error}\nverifier log:\n{verifier_log}"),
        other => other.to_string(),
    };
    ProbeError::Rejected { program, detail }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, ProbeError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or(ProbeError::Missing { program: name })?;
    prog.try_into().map_err(|e| rejected(name, &e))
}

/// Attaches programs of one loaded object; `pins` is the generation directory when pinning.
pub(crate) struct Attacher<'a> {
    pub ebpf: &'a mut Ebpf,
    pub pins: Option<&'a Path>,
}

impl Attacher<'_> {
    /// With pins, takes the program's link from it (`link`, only called then: a link taken out
    /// of the program is no longer detached with it) and pins it.
    fn pin(
        pins: Option<&Path>,
        program: &'static str,
        link: impl FnOnce() -> Result<FdLink, String>,
    ) -> Result<(), ProbeError> {
        let Some(dir) = pins else {
            return Ok(());
        };
        let path = pins::link_path(dir, program);
        link()
            .and_then(|link| link.pin(&path).map_err(|e| e.to_string()))
            .map(drop)
            .map_err(|detail| ProbeError::Pin {
                program,
                path,
                detail,
            })
    }

    pub(crate) fn raw_tp(
        &mut self,
        name: &'static str,
        tracepoint: &str,
    ) -> Result<(), ProbeError> {
        let prog: &mut RawTracePoint = program(self.ebpf, name)?;
        prog.load().map_err(|e| rejected(name, &e))?;
        let id = prog
            .attach(tracepoint)
            .map_err(|source| ProbeError::Attach {
                program: name,
                target: format!("raw tracepoint {tracepoint}"),
                source,
            })?;
        Self::pin(self.pins, name, || {
            prog.take_link(id)
                .map(FdLink::from)
                .map_err(|e| e.to_string())
        })
    }

    pub(crate) fn fentry(
        &mut self,
        btf: &aya::Btf,
        name: &'static str,
        function: &str,
    ) -> Result<(), ProbeError> {
        let prog: &mut FEntry = program(self.ebpf, name)?;
        prog.load(function, btf).map_err(|e| rejected(name, &e))?;
        let id = prog.attach().map_err(|source| ProbeError::Attach {
            program: name,
            target: format!("fentry {function}"),
            source,
        })?;
        Self::pin(self.pins, name, || {
            prog.take_link(id)
                .map(FdLink::from)
                .map_err(|e| e.to_string())
        })
    }

    /// A classic tracepoint. Pinning its link needs a BPF perf link (kernel 5.15+); older
    /// kernels attach with an ioctl that nothing can pin.
    pub(crate) fn tracepoint(
        &mut self,
        name: &'static str,
        category: &str,
        event: &str,
    ) -> Result<(), ProbeError> {
        let prog: &mut TracePoint = program(self.ebpf, name)?;
        prog.load().map_err(|e| rejected(name, &e))?;
        let id = prog
            .attach(category, event)
            .map_err(|source| ProbeError::Attach {
                program: name,
                target: format!("tracepoint {category}:{event}"),
                source,
            })?;
        Self::pin(self.pins, name, || {
            prog.take_link(id)
                .map_err(|e| e.to_string())
                .and_then(|link| {
                    FdLink::try_from(link).map_err(|e| {
                        format!("{e} (a pinnable perf link needs kernel 5.15 or later)")
                    })
                })
        })
    }

    pub(crate) fn oom(&mut self) -> Result<(), ProbeError> {
        self.raw_tp("memcg_reclaim_begin", "mm_vmscan_memcg_reclaim_begin")?;
        self.raw_tp("direct_reclaim_begin", "mm_vmscan_direct_reclaim_begin")?;
        self.tracepoint("mark_victim", "oom", "mark_victim")
    }

    pub(crate) fn cgroup(&mut self) -> Result<(), ProbeError> {
        for name in ["cgroup_mkdir", "cgroup_rmdir"] {
            self.tracepoint(name, "cgroup", name)?;
        }
        Ok(())
    }
}
