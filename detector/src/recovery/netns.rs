//! Health checks connect from the watched systemd's network namespace, as its units see the
//! network: `127.0.0.1:8000` in a machine with its own network is the machine's loopback, not the
//! host's (where another service, or nothing, may listen on that port). Who holds a port is read
//! in that same namespace (`unit::ports`).
//!
//! A socket belongs to the network namespace of the thread that created it, for its whole life
//! (`sock_create()` passes `current->nsproxy->net_ns` to `__sock_create()`, in
//! <https://github.com/torvalds/linux/blob/v6.18/net/socket.c>). So one thread enters the
//! machine's namespace (`setns(2)` with `CLONE_NEWNET`, which takes CAP_SYS_ADMIN: it is started
//! before the daemon drops its capabilities, and drops its own once inside) and does nothing but
//! create TCP sockets there; the async side connects them and speaks HTTP over them. The runtime's
//! own threads never change namespace.
//!
//! When the manager's namespace is the daemon's (the host's systemd, or a machine sharing the
//! host's network), sockets are made as usual and no thread is started.

use std::{
    fs::File,
    io,
    net::SocketAddr,
    os::{fd::OwnedFd, unix::fs::MetadataExt as _},
    sync::mpsc::{SyncSender, TrySendError},
    time::Duration,
};

use nix::sys::socket::{AddressFamily, SockFlag, SockType};
use tokio::sync::oneshot;

use crate::kernel::privileges;

/// Sockets asked for and not yet made: each takes microseconds, so a full queue means the thread
/// is stuck or gone.
const QUEUE: usize = 64;
/// How long the daemon waits for the thread to enter the namespace at start.
const STARTED_WAIT: Duration = Duration::from_secs(2);

/// Where health checks' sockets come from.
pub(crate) struct Dialer(Inner);

enum Inner {
    /// The daemon's own network namespace is the manager's.
    Here,
    /// A thread inside the manager's namespace `pid` makes them.
    There { pid: i32, asks: SyncSender<Ask> },
    /// The manager's namespace is another, and could not be entered: every check fails with
    /// this, rather than asking the daemon's own network a question meant for the machine's.
    Unreachable(String),
}

/// One socket to make, of the family of IPv6 (`v6`) or IPv4.
struct Ask {
    v6: bool,
    answer: oneshot::Sender<io::Result<OwnedFd>>,
}

impl Dialer {
    /// Sockets made in the daemon's own network namespace.
    #[must_use]
    pub(crate) fn here() -> Self {
        Self(Inner::Here)
    }

    /// Sockets made in the network namespace of `manager_pid` (the watched systemd's PID 1 in
    /// our pid namespace); our own without it (a container watching `/host` runs with the host's
    /// network). Call it before the daemon drops its capabilities.
    #[must_use]
    pub(crate) fn start(manager_pid: Option<i32>) -> Self {
        let Some(pid) = manager_pid else {
            return Self::here();
        };
        // Our own procfs, with a pid we parsed from `--root`: nothing the machine controls is
        // resolved. `setns` checks that the fd is a network namespace (CLONE_NEWNET).
        let namespace = match File::open(format!("/proc/{pid}/ns/net")) {
            Ok(namespace) => namespace,
            Err(e) => {
                // Nothing says its namespace is another (a host whose PID 1 we may not inspect,
                // such as a sandbox's init): ours is the best guess, as it was before.
                tracing::warn!(
                    pid,
                    error = %e,
                    "cannot open the watched systemd's network namespace; health checks connect \
                     from the daemon's own"
                );
                return Self::here();
            }
        };
        match enter(pid, namespace) {
            Ok(dialer) => dialer,
            Err(e) => {
                let error = format!("could not enter the network namespace of PID {pid}: {e}");
                tracing::error!(
                    "{error}; health checks fail until detector runs with CAP_SYS_ADMIN (and \
                     setns(2) allowed) at start"
                );
                Self(Inner::Unreachable(error))
            }
        }
    }

    /// Why no check can be made at all, if so: then a failed check says nothing of the unit.
    #[must_use]
    pub(crate) fn unreachable(&self) -> Option<&str> {
        match &self.0 {
            Inner::Unreachable(error) => Some(error),
            Inner::Here | Inner::There { .. } => None,
        }
    }

    /// A TCP connection to `addr`, from the manager's network namespace.
    pub(crate) async fn connect(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
        let (pid, asks) = match &self.0 {
            Inner::Here => return tokio::net::TcpStream::connect(addr).await,
            Inner::Unreachable(error) => return Err(io::Error::other(error.clone())),
            Inner::There { pid, asks } => (*pid, asks),
        };
        let gone = || {
            io::Error::other(format!(
                "the thread in the network namespace of PID {pid} is gone"
            ))
        };
        let (answer, made) = oneshot::channel();
        let ask = Ask {
            v6: addr.is_ipv6(),
            answer,
        };
        match asks.try_send(ask) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(io::Error::other(format!(
                    "the thread in the network namespace of PID {pid} is not answering"
                )));
            }
            Err(TrySendError::Disconnected(_)) => return Err(gone()),
        }
        let fd = made.await.map_err(|_| gone())??;
        let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
        socket.connect(addr).await
    }
}

/// Whether `pid`'s network namespace, opened as `theirs`, is the daemon's own.
fn ours(theirs: &File) -> io::Result<bool> {
    let theirs = theirs.metadata()?;
    let ours = std::fs::metadata("/proc/self/ns/net")?;
    Ok((theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()))
}

/// If `pid`'s network namespace, opened as `namespace`, is not ours, starts the thread inside it.
fn enter(pid: i32, namespace: File) -> io::Result<Dialer> {
    if ours(&namespace)? {
        return Ok(Dialer::here());
    }
    let (asks, queue) = std::sync::mpsc::sync_channel::<Ask>(QUEUE);
    let (started_tx, started) = std::sync::mpsc::channel::<io::Result<()>>();
    std::thread::Builder::new()
        .name("netns".to_owned())
        .spawn(move || {
            if let Err(e) = nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET) {
                let _ = started_tx.send(Err(e.into()));
                return;
            }
            drop(namespace);
            // Inside, it only makes sockets: no capability is needed for that.
            if let Err(e) = privileges::drop_all_but_kept() {
                tracing::error!("{e}; the network namespace thread keeps its capabilities");
            }
            let _ = started_tx.send(Ok(()));
            for Ask { v6, answer } in queue {
                let family = if v6 {
                    AddressFamily::Inet6
                } else {
                    AddressFamily::Inet
                };
                let socket = nix::sys::socket::socket(
                    family,
                    SockType::Stream,
                    SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                    None,
                )
                .map_err(io::Error::from);
                // The asker may have timed out: its socket is then closed here.
                let _ = answer.send(socket);
            }
        })?;
    match started.recv_timeout(STARTED_WAIT) {
        Ok(Ok(())) => {
            tracing::info!(
                pid,
                "health checks connect from the watched systemd's network namespace"
            );
            Ok(Dialer(Inner::There { pid, asks }))
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::other("its thread did not start")),
    }
}

#[cfg(test)]
mod tests {
    use super::Dialer;

    /// Our own pid's namespace is ours: no thread, and connections are plain ones.
    #[tokio::test]
    async fn our_own_namespace_needs_no_thread() {
        let me = i32::try_from(std::process::id()).expect("pid");
        let dialer = Dialer::start(Some(me));
        assert!(matches!(dialer.0, super::Inner::Here));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        dialer.connect(addr).await.expect("connect");
    }

    /// A namespace that cannot even be opened (here: no such process) tells nothing: the
    /// daemon's own is used.
    #[test]
    fn a_namespace_that_cannot_be_opened_leaves_ours() {
        // PIDs are at most 2^22 (PID_MAX_LIMIT): this one cannot exist.
        let dialer = Dialer::start(Some(1 << 23));
        assert!(matches!(dialer.0, super::Inner::Here));
        assert_eq!(dialer.unreachable(), None);
    }
}
