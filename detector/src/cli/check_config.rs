//! `detector check-config FILE`: checks a configuration and names the line of any error. Alert
//! sinks' `env:` and `file:` references are read, so a missing variable or file is an error now
//! rather than at the first incident; their values are never printed.

use std::path::PathBuf;

use crate::config;

#[derive(clap::Args)]
pub(super) struct Args {
    file: PathBuf,
}

pub(super) fn run(Args { file }: &Args) -> anyhow::Result<()> {
    let config = config::load(file)?;
    let sinks: Vec<String> = config
        .alerts
        .iter()
        .map(|a| format!("{} → {}", a.name, a.shown))
        .collect();
    let sinks = if sinks.is_empty() {
        String::new()
    } else {
        format!(", {} alert sinks: {}", sinks.len(), sinks.join(", "))
    };
    println!(
        "{}: ok ({} units, {} rules{sinks})",
        file.display(),
        config.units.len(),
        config.rules.len(),
    );
    Ok(())
}
