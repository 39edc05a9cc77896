//! Who holds a TCP port: for a `port_in_use` failure, the process and unit that were there first.
//! Read from procfs in the watched systemd's network namespace (`/proc/MANAGER/net/tcp{,6}`:
//! listening sockets), matched to processes through `/proc/*/fd` (`socket:[inode]`).

use std::collections::HashSet;

use procfs::{
    net::TcpState,
    process::{FDTarget, Process},
};
use regex::Regex;
use serde::Serialize;

/// A process listening on the port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Holder {
    pub pid: i32,
    pub comm: String,
    /// Its cgroup2 path, for naming its unit.
    #[serde(skip)]
    pub cgroup: Option<String>,
    pub unit: Option<String>,
}

/// The port a failed bind was for, from the run's journal lines (newest first): an
/// `address:port` or `('address', port)` as services print them (uvicorn does, in its error).
#[must_use]
pub(crate) fn port_in_lines(lines: &[String]) -> Option<u16> {
    // A regular expression literal known to compile; `ok()` keeps the daemon panic-free anyway.
    let re = Regex::new(
        r#"(?:(?:\d{1,3}\.){3}\d{1,3}|\[[0-9a-fA-F:]*\]|localhost)['"]?\s*[:,]\s*(\d{1,5})\b"#,
    )
    .ok()?;
    lines.iter().rev().find_map(|line| {
        re.captures_iter(line)
            .filter_map(|c| c.get(1)?.as_str().parse::<u16>().ok())
            .find(|p| *p != 0)
    })
}

/// The processes listening on TCP `port` in the network namespace of process `netns_pid`.
#[must_use]
pub(crate) fn holders(netns_pid: i32, port: u16) -> Vec<Holder> {
    let Ok(ns) = Process::new(netns_pid) else {
        return Vec::new();
    };
    let inodes: HashSet<u64> = ns
        .tcp()
        .into_iter()
        .chain(ns.tcp6())
        .flatten()
        .filter(|e| e.state == TcpState::Listen && e.local_address.port() == port)
        .map(|e| e.inode)
        .collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    // Processes come and go while we look; the ones we cannot read are skipped.
    all.flatten()
        .filter(|p| {
            p.fd().is_ok_and(|fds| {
                fds.flatten().any(
                    |fd| matches!(fd.target, FDTarget::Socket(inode) if inodes.contains(&inode)),
                )
            })
        })
        .map(|p| Holder {
            pid: p.pid,
            comm: p.stat().map(|s| s.comm).unwrap_or_default(),
            cgroup: p.cgroups().ok().and_then(|groups| {
                groups
                    .into_iter()
                    .find(|g| g.hierarchy == 0)
                    .map(|g| g.pathname)
            }),
            unit: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_as_services_print_them() {
        let lines = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let cases: [(&[&str], Option<u16>); 5] = [
            (
                &[
                    "ERROR:    [Errno 98] error while attempting to bind on address ('0.0.0.0', 8000): address already in use",
                ],
                Some(8000),
            ),
            (
                &[
                    "binding 127.0.0.1:8080",
                    "OSError: [Errno 98] Address already in use",
                ],
                Some(8080),
            ),
            (
                &["listen tcp [::]:9090: bind: address already in use"],
                Some(9090),
            ),
            (&["OSError: [Errno 98] Address already in use"], None),
            (&["version 1.2.3.4 started"], None),
        ];
        for (text, want) in cases {
            assert_eq!(port_in_lines(&lines(text)), want, "{text:?}");
        }
    }

    #[test]
    fn finds_a_listener_in_our_own_namespace() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let me = i32::try_from(std::process::id()).expect("pid");
        let found = holders(me, port);
        assert!(found.iter().any(|h| h.pid == me), "{found:?}");
        drop(listener);
        assert!(holders(me, port).is_empty());
    }
}
