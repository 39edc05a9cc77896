//! JSON lines on stdout: one object per record or incident.

use std::io::Write as _;

use bytes::{BufMut as _, BytesMut};
use serde::Serialize;

/// Buffers JSON lines for one batch and writes them to stdout in one go.
#[derive(Default)]
pub(crate) struct Stdout {
    buf: BytesMut,
}

impl Stdout {
    /// Appends one record as a line.
    pub(crate) fn push(&mut self, record: &impl Serialize) {
        let mut writer = (&mut self.buf).writer();
        match serde_json::to_writer(&mut writer, record) {
            Ok(()) => self.buf.put_u8(b'\n'),
            // Our records are plain data; this would be a bug, and must not take the daemon down.
            Err(e) => tracing::error!(error = %e, "could not serialise a record"),
        }
    }

    /// Writes what was pushed. A closed stdout is reported, and the daemon carries on.
    pub(crate) fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let mut out = std::io::stdout().lock();
        if let Err(e) = out.write_all(&self.buf).and_then(|()| out.flush()) {
            tracing::error!(error = %e, "writing records to stdout failed");
        }
        self.buf.clear();
    }
}
