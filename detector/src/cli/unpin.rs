//! `detector unpin [--pin-dir DIR]`: detaches the pinned kernel programs and removes their pins
//! (what `detector run --pin-dir` left so that its programs outlive it). The package runs it when
//! it is removed, not when it is upgraded.

use std::path::PathBuf;

use crate::kernel::pins;

#[derive(clap::Args)]
pub(super) struct Args {
    /// The pin directory `detector run --pin-dir` used.
    #[arg(long, default_value = pins::DEFAULT_DIR)]
    pin_dir: PathBuf,
}

pub(super) fn run(Args { pin_dir }: &Args) -> anyhow::Result<()> {
    let generations = pins::unpin(pin_dir)?;
    println!(
        "{}: removed {generations} generation(s) of pinned programs",
        pin_dir.display()
    );
    Ok(())
}
