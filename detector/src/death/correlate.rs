//! One record per death: the wait status, who sent the fatal signal, the OOM killer's details.
//!
//! The kernel programs already joined the three (in `SENDERS` and `OOM_VICTIMS`, keyed by thread
//! group) so a death is one ring-buffer record; here it becomes an [`ExitRecord`] with its parts
//! named. Cgroup paths are added by `enrich`, the time and latency by the sink.

use detector_common::{
    DeathEvent, OomInfo, SignalSender, death_flags, oom_constraint, oom_fields, wait::WaitStatus,
};

use crate::death::{
    record::{ExitRecord, KilledBy, OomRecord, c_str},
    signals,
};

fn killed_by(sender: &SignalSender) -> KilledBy {
    let SignalSender {
        ktime_ns: _,
        pid,
        tid: _,
        signo: _,
        code,
        kernel,
        pad0: _,
        comm,
    } = sender;
    KilledBy {
        pid: *pid,
        comm: c_str(comm),
        kernel: *kernel != 0,
        si_code: *code,
    }
}

fn oom(info: &OomInfo) -> OomRecord {
    let OomInfo {
        ktime_ns: _,
        total_vm_kb,
        anon_rss_kb,
        file_rss_kb,
        shmem_rss_kb,
        memcg_id,
        fields,
        constraint,
        oom_score_adj,
        victim_tid: _,
        trigger_pid,
        trigger_tid: _,
        trigger_comm,
        memcg_name,
    } = info;
    let has = |bit: u32| fields & bit != 0;
    let figure = |bit: u32, value: u64| has(bit).then_some(value);
    let memcg = has(oom_fields::MEMCG);
    let constraint = match *constraint {
        oom_constraint::MEMCG => Some("memcg"),
        oom_constraint::GLOBAL => Some("global"),
        _ => None,
    };
    OomRecord {
        total_vm_kb: figure(oom_fields::TOTAL_VM, *total_vm_kb),
        anon_rss_kb: figure(oom_fields::ANON_RSS, *anon_rss_kb),
        file_rss_kb: figure(oom_fields::FILE_RSS, *file_rss_kb),
        shmem_rss_kb: figure(oom_fields::SHMEM_RSS, *shmem_rss_kb),
        oom_score_adj: has(oom_fields::OOM_SCORE_ADJ).then_some(*oom_score_adj),
        constraint: constraint.map(str::to_owned),
        // `enrich` replaces the bare name with the full path when the cgroup still exists.
        memcg: memcg.then(|| c_str(memcg_name)),
        memcg_id: memcg.then_some(*memcg_id),
        trigger_pid: *trigger_pid,
        trigger_comm: c_str(trigger_comm),
    }
}

/// The record for one death, before enrichment.
#[must_use]
pub(crate) fn correlate(event: &DeathEvent) -> ExitRecord {
    // Exhaustive on purpose: a new kernel-side field must be looked at here.
    let DeathEvent {
        header: _,
        flags,
        wait_status,
        ktime_ns,
        cgroup_id,
        pid,
        tid,
        ppid,
        ns_pid,
        comm,
        sender,
        oom: oom_info,
    } = event;
    let (exit_code, signal, core_dumped) = match WaitStatus::from_raw(*wait_status) {
        WaitStatus::Exited { code } => (Some(code), None, false),
        WaitStatus::Signaled {
            signal,
            core_dumped,
        } => (None, Some(signal), core_dumped),
    };
    // The kernel only attaches a sender recorded for this very signal; check anyway, so a stale
    // entry can never name the wrong killer.
    let killed_by = (flags & death_flags::SENDER != 0
        && signal.map(u32::from) == Some(sender.signo))
    .then(|| killed_by(sender));
    ExitRecord {
        kind: "exit",
        time: String::new(),
        pid: *pid,
        ppid: *ppid,
        tid: *tid,
        comm: c_str(comm),
        cgroup: None,
        cgroup_id: *cgroup_id,
        unit: None,
        user_unit: None,
        invocation_id: None,
        role: None,
        exit_code,
        signal: signal.map(signals::name),
        core_dumped,
        wait_status: *wait_status,
        oom: (flags & death_flags::OOM != 0).then(|| oom(oom_info)),
        killed_by,
        latency_us: 0,
        ktime_ns: *ktime_ns,
        spawned: flags & death_flags::SPAWNED != 0,
        ns_pid: *ns_pid,
    }
}

#[cfg(test)]
mod tests {
    use detector_common::{COMM_LEN, EventHeader, event_kind};

    use super::*;

    fn comm(s: &str) -> [u8; COMM_LEN] {
        let mut c = [0; COMM_LEN];
        c[..s.len()].copy_from_slice(s.as_bytes());
        c
    }

    fn event(wait_status: u32) -> DeathEvent {
        DeathEvent {
            header: EventHeader {
                kind: event_kind::DEATH,
                size: size_of::<DeathEvent>() as u32,
            },
            flags: 0,
            wait_status,
            ktime_ns: 1,
            cgroup_id: 1,
            pid: 10,
            tid: 11,
            ppid: 1,
            ns_pid: 0,
            comm: comm("app"),
            sender: SignalSender {
                ktime_ns: 0,
                pid: 0,
                tid: 0,
                signo: 0,
                code: 0,
                kernel: 0,
                pad0: 0,
                comm: [0; COMM_LEN],
            },
            oom: OomInfo {
                ktime_ns: 0,
                total_vm_kb: 0,
                anon_rss_kb: 0,
                file_rss_kb: 0,
                shmem_rss_kb: 0,
                memcg_id: 0,
                fields: 0,
                constraint: 0,
                oom_score_adj: 0,
                victim_tid: 0,
                trigger_pid: 0,
                trigger_tid: 0,
                trigger_comm: [0; COMM_LEN],
                memcg_name: [0; detector_common::CGROUP_NAME_LEN],
            },
        }
    }

    #[test]
    fn wait_status_parts() {
        let cases: [(u32, Option<u8>, Option<&str>, bool); 4] = [
            (3 << 8, Some(3), None, false),
            (11, None, Some("SIGSEGV"), false),
            (0x80 | 0xb, None, Some("SIGSEGV"), true),
            (0x80 | 6, None, Some("SIGABRT"), true),
        ];
        for (status, code, signal, core) in cases {
            let r = correlate(&event(status));
            assert_eq!(
                (r.exit_code, r.signal.as_deref(), r.core_dumped),
                (code, signal, core),
                "{status:#x}"
            );
            assert_eq!(r.wait_status, status);
        }
    }

    #[test]
    fn sender_only_for_the_fatal_signal() {
        let mut e = event(9);
        e.flags = death_flags::SENDER;
        e.sender = SignalSender {
            ktime_ns: 0,
            pid: 77,
            tid: 77,
            signo: 9,
            code: 0,
            kernel: 0,
            pad0: 0,
            comm: comm("kill"),
        };
        let r = correlate(&e);
        assert_eq!(
            r.killed_by,
            Some(KilledBy {
                pid: 77,
                comm: "kill".into(),
                kernel: false,
                si_code: 0
            })
        );
        e.sender.signo = 15;
        assert_eq!(correlate(&e).killed_by, None);
    }

    #[test]
    fn oom_fields_and_constraint() {
        let mut e = event(9);
        e.flags = death_flags::OOM;
        e.oom.fields = oom_fields::TOTAL_VM;
        e.oom.total_vm_kb = 1234;
        e.oom.constraint = oom_constraint::GLOBAL;
        e.oom.trigger_pid = 5;
        let oom = correlate(&e).oom.expect("oom");
        assert_eq!((oom.total_vm_kb, oom.anon_rss_kb), (Some(1234), None));
        assert_eq!(oom.constraint.as_deref(), Some("global"));
        assert_eq!(oom.memcg, None);
        e.oom.fields |= oom_fields::MEMCG;
        e.oom.constraint = oom_constraint::MEMCG;
        e.oom.memcg_name[..4].copy_from_slice(b"test");
        e.oom.memcg_id = 99;
        let oom = correlate(&e).oom.expect("oom");
        assert_eq!(
            (
                oom.constraint.as_deref(),
                oom.memcg.as_deref(),
                oom.memcg_id
            ),
            (Some("memcg"), Some("test"), Some(99))
        );
    }
}
