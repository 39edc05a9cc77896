//! `detector check-config FILE`: checks a configuration and names the line of any error.

use std::path::PathBuf;

use crate::config;

#[derive(clap::Args)]
pub(super) struct Args {
    file: PathBuf,
}

pub(super) fn run(Args { file }: &Args) -> anyhow::Result<()> {
    let config = config::load(file)?;
    println!(
        "{}: ok ({} units, {} rules)",
        file.display(),
        config.units.len(),
        config.rules.len()
    );
    Ok(())
}
