//! `detector alert-test FILE`: the sample incident's two notices (opened, then resolved) to
//! every `[[alert]]` sink of FILE, one attempt each, and what each receiver answered. Fails
//! unless every receiver accepted both.

use std::path::PathBuf;

use crate::{
    config,
    incident::Phase,
    sinks::{alerts, words},
};

#[derive(clap::Args)]
pub(super) struct Args {
    file: PathBuf,
    /// The host the watched systemd runs on, as alerts name it: its `/etc/hostname`.
    #[arg(long, default_value = "/")]
    root: PathBuf,
}

pub(super) fn run(Args { file, root }: &Args) -> anyhow::Result<()> {
    let config = config::load(file)?;
    if config.alerts.is_empty() {
        anyhow::bail!("{}: no [[alert]] sinks to test", file.display());
    }
    let host = words::host(root);
    let report = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(alerts::test(&config.alerts, &host));
    let mut failed = 0;
    for (sink, answers) in report {
        println!("{sink}");
        for (phase, answer) in answers {
            let phase = match phase {
                Phase::Opened => "opened",
                Phase::Resolved => "resolved",
            };
            let verdict = if answer.delivered() {
                "accepted"
            } else {
                failed += 1;
                "NOT accepted"
            };
            println!("  {phase}: {verdict}: {answer}");
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} notices were not accepted");
    }
    Ok(())
}
