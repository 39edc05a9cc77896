//! journald's native protocol (systemd.io/JOURNAL_NATIVE_PROTOCOL), to a socket we choose.
//!
//! Why not a crate: libsystemd 0.7.2 (`logging::journal_send`), systemd-journal-logger and
//! tracing-journald all send to the fixed `/run/systemd/journal/socket`, and so does the C
//! library's `sd_journal_sendv`; detector must write to the journal of the systemd it watches,
//! which under `--root` is `ROOT/run/systemd/journal/socket` (a machine's journal, seen from its
//! host). The protocol is small and stable:
//!
//! - one datagram per entry to the `AF_UNIX` datagram socket;
//! - each field `KEY=VALUE\n`, or, for a value holding a newline (or any byte), the binary-safe
//!   form `KEY\n`, the value's length as a little-endian u64, the value, `\n`;
//! - an entry too big for a datagram (`EMSGSIZE`, `ENOBUFS`) goes in a sealed memfd whose
//!   descriptor is the only content of an otherwise empty datagram (`SCM_RIGHTS`).
//!
//! journald takes `_PID`, `_UID`, ... from the socket's credentials: from a host watching a
//! machine, `_UID=0` (the machine shares the host's users), so `journalctl -u UNIT` in the
//! machine matches our `OBJECT_SYSTEMD_UNIT=UNIT`.

use std::{
    io::{IoSlice, Write as _},
    os::{fd::AsRawFd as _, unix::net::UnixDatagram},
    path::{Path, PathBuf},
    time::Duration,
};

use nix::{
    fcntl::{FcntlArg, SealFlag, fcntl},
    sys::{
        memfd::{MFdFlags, memfd_create},
        socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg},
    },
};

/// Appends one field to an entry being built. `key` must be a valid journal field name
/// (uppercase letters, digits, `_`, not starting with `_`): ours are constants.
pub(crate) fn field(entry: &mut Vec<u8>, key: &str, value: &str) {
    debug_assert!(
        key.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            && !key.starts_with('_'),
        "{key} is not a journal field name"
    );
    entry.extend_from_slice(key.as_bytes());
    if value.contains('\n') {
        entry.push(b'\n');
        entry.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        entry.push(b'=');
    }
    entry.extend_from_slice(value.as_bytes());
    entry.push(b'\n');
}

/// An unbound datagram socket sending to one journal.
pub(crate) struct Socket {
    socket: UnixDatagram,
    path: PathBuf,
}

/// How long one entry may wait for room in journald's receive queue before it counts as
/// failed: journald that hangs must not stop the thread for good.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

impl Socket {
    /// A socket for the journal at `path`; nothing is sent yet, so a journal that is not there
    /// shows at the first entry.
    pub(crate) fn new(path: &Path) -> std::io::Result<Self> {
        let socket = UnixDatagram::unbound()?;
        socket.set_write_timeout(Some(SEND_TIMEOUT))?;
        Ok(Self {
            socket,
            path: path.to_owned(),
        })
    }

    /// Sends one entry, in a memfd when it does not fit in a datagram.
    pub(crate) fn send(&self, entry: &[u8]) -> std::io::Result<()> {
        match self.socket.send_to(entry, &self.path) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMSGSIZE | libc::ENOBUFS)) => {
                self.send_memfd(entry)
            }
            Err(e) => Err(e),
        }
    }

    fn send_memfd(&self, entry: &[u8]) -> std::io::Result<()> {
        let fd = memfd_create(
            c"detector-journal-entry",
            MFdFlags::MFD_ALLOW_SEALING | MFdFlags::MFD_CLOEXEC,
        )?;
        let mut file = std::fs::File::from(fd);
        file.write_all(entry)?;
        // journald maps only sealed memfds: nobody can change the entry under it.
        // The four seals systemd's own sd_journal_sendv() adds; F_SEAL_FUTURE_WRITE is newer than
        // some kernels we run on.
        let seals = SealFlag::F_SEAL_SEAL
            | SealFlag::F_SEAL_SHRINK
            | SealFlag::F_SEAL_GROW
            | SealFlag::F_SEAL_WRITE;
        fcntl(&file, FcntlArg::F_ADD_SEALS(seals))?;
        let address = UnixAddr::new(&self.path)?;
        let fds = [file.as_raw_fd()];
        let empty: [IoSlice<'_>; 0] = [];
        sendmsg(
            self.socket.as_raw_fd(),
            &empty,
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            Some(&address),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_binary_safe_fields() {
        let mut entry = Vec::new();
        field(&mut entry, "MESSAGE", "one line");
        field(&mut entry, "DETECTOR_JOURNAL", "two\nlines");
        let mut want = b"MESSAGE=one line\nDETECTOR_JOURNAL\n".to_vec();
        want.extend_from_slice(&9_u64.to_le_bytes());
        want.extend_from_slice(b"two\nlines\n");
        assert_eq!(entry, want);
    }

    /// A real datagram socket standing in for journald: a small entry arrives as one datagram,
    /// a large one as a sealed memfd holding exactly the entry.
    #[test]
    fn entries_arrive_whole_small_and_large() {
        use std::{
            io::{Read as _, Seek as _},
            os::fd::FromRawFd as _,
        };

        let dir = std::env::temp_dir().join(format!("detector-native-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("socket");
        let receiver = UnixDatagram::bind(&path).expect("bind");
        let socket = Socket::new(&path).expect("socket");

        let mut small = Vec::new();
        field(&mut small, "MESSAGE", "hello");
        socket.send(&small).expect("send small");
        let mut buf = vec![0_u8; 1 << 16];
        let n = receiver.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], &small[..]);

        // Well past the default datagram size limit (the socket's send buffer, ~208 KiB).
        let mut large = Vec::new();
        field(&mut large, "MESSAGE", "big");
        field(&mut large, "DETECTOR_INCIDENT", &"x\n".repeat(400_000));
        socket.send(&large).expect("send large");
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = nix::sys::socket::recvmsg::<()>(
            receiver.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .expect("recvmsg");
        assert_eq!(msg.bytes, 0, "the datagram itself is empty");
        let fd = msg
            .cmsgs()
            .expect("cmsgs")
            .find_map(|c| match c {
                nix::sys::socket::ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
                _ => None,
            })
            .expect("a passed fd");
        // SAFETY: the kernel just installed this descriptor in our table for us; we own it.
        let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
        let seals = fcntl(&file, FcntlArg::F_GET_SEALS).expect("seals");
        assert_ne!(seals, 0, "sealed");
        // The descriptor shares our write's offset, at the end; journald maps it instead.
        file.rewind().expect("rewind");
        let mut got = Vec::new();
        file.read_to_end(&mut got).expect("read the memfd");
        assert_eq!(got, large);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
