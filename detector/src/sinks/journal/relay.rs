//! Entries for a journald in another pid namespace (a machine watched from its host) go through
//! a relay process in that namespace.
//!
//! journald takes `_PID`, `_UID`, `_COMM` from the sender's credentials, and keeps them only when
//! the sender's pid means something in its own pid namespace. A machine's journald cannot see a
//! process of its host: our entries would arrive without `_UID=0`, and `journalctl -u UNIT`
//! matches `OBJECT_SYSTEMD_UNIT=UNIT` only on entries from uid 0. So when the watched manager's
//! pid namespace is not ours, the journal writer thread moves its children's pid namespace into
//! the machine's (`setns(CLONE_NEWPID)`: that thread only, for the processes it creates) and
//! starts `detector journal-relay SOCKET` there. The relay reads length-prefixed entries on its
//! stdin, sends each as it is, and answers each with a status (0, or the errno) on its stdout.
//! It ends when its stdin closes: when the daemon stops, or dies.

use std::{
    io::{Read as _, Write as _},
    os::unix::fs::MetadataExt as _,
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use super::native::Socket;

/// A relay process and its pipes.
pub(crate) struct Relay {
    child: Child,
    input: ChildStdin,
    output: ChildStdout,
}

/// Whether the process `pid` is in another pid namespace than ours.
fn other_pid_namespace(pid: i32) -> std::io::Result<bool> {
    let theirs = std::fs::metadata(format!("/proc/{pid}/ns/pid"))?;
    let ours = std::fs::metadata("/proc/self/ns/pid")?;
    Ok((theirs.dev(), theirs.ino()) != (ours.dev(), ours.ino()))
}

impl Relay {
    /// A relay in `manager_pid`'s pid namespace sending to `socket`; None when that namespace
    /// is ours (entries go straight to the socket). Call it from the thread that will use it:
    /// it changes that thread's pid namespace for children.
    pub(crate) fn start(manager_pid: i32, socket: &Path) -> std::io::Result<Option<Self>> {
        if !other_pid_namespace(manager_pid)? {
            return Ok(None);
        }
        let namespace = std::fs::File::open(format!("/proc/{manager_pid}/ns/pid"))?;
        nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWPID)?;
        // Our own binary, whatever its path: it may have been replaced on disk since.
        let mut child = Command::new("/proc/self/exe")
            .arg("journal-relay")
            .arg(socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let (Some(input), Some(output)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return Err(std::io::Error::other("the relay has no pipes"));
        };
        Ok(Some(Self {
            child,
            input,
            output,
        }))
    }

    /// Sends one entry through the relay; the error is the relay's (the journal's) or the
    /// pipe's.
    pub(crate) fn send(&mut self, entry: &[u8]) -> std::io::Result<()> {
        let len = u32::try_from(entry.len())
            .map_err(|_| std::io::Error::other("an entry of 4 GiB or more"))?;
        self.input.write_all(&len.to_le_bytes())?;
        self.input.write_all(entry)?;
        self.input.flush()?;
        let mut status = [0_u8; 4];
        self.output.read_exact(&mut status)?;
        match i32::from_le_bytes(status) {
            0 => Ok(()),
            errno if errno > 0 => Err(std::io::Error::from_raw_os_error(errno)),
            _ => Err(std::io::Error::other("the relay could not send the entry")),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Its stdin closes with us: it ends on its own; reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `detector journal-relay SOCKET`: entries from stdin to the journal at SOCKET, a status for
/// each on stdout, until stdin closes.
pub(crate) fn serve(socket: &Path) -> std::io::Result<()> {
    // Started as /proc/self/exe, it would be `exe` in the journal's _COMM: say who it is.
    let _ = nix::sys::prctl::set_name(c"detector");
    let journal = Socket::new(socket)?;
    let mut input = std::io::stdin().lock();
    let mut output = std::io::stdout().lock();
    let mut entry = Vec::new();
    loop {
        let mut len = [0_u8; 4];
        match input.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        entry.resize(u32::from_le_bytes(len) as usize, 0);
        input.read_exact(&mut entry)?;
        let status = match journal.send(&entry) {
            Ok(()) => 0,
            Err(e) => e.raw_os_error().unwrap_or(-1),
        };
        output.write_all(&status.to_le_bytes())?;
        output.flush()?;
    }
}
