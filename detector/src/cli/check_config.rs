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
    println!(
        "{}: ok ({} units, {} rules, {} alert sinks{}{})",
        file.display(),
        config.units.len(),
        config.rules.len(),
        config.alerts.len(),
        if sinks.is_empty() { "" } else { ": " },
        sinks.join(", ")
    );
    Ok(())
}
