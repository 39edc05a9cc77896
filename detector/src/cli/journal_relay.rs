//! `detector journal-relay SOCKET` (hidden): what `run` starts in a watched machine's pid
//! namespace so that the machine's journald sees who sends our entries (see
//! `sinks::journal`'s relay). Entries on stdin, a status for each on stdout.

use std::path::PathBuf;

use crate::sinks::journal;

#[derive(clap::Args)]
pub(super) struct Args {
    socket: PathBuf,
}

pub(super) fn run(Args { socket }: &Args) -> anyhow::Result<()> {
    // Started by a thread that still had every capability: keep only what the daemon keeps.
    crate::kernel::privileges::drop_all_but_kept()?;
    journal::relay(socket)
        .map_err(|e| anyhow::anyhow!("journal relay to {}: {e}", socket.display()))
}
