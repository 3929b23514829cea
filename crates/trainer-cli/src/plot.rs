//! `trainer-cli plot`: re-render a training graph from its JSON Lines log.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use plot_report::{read_log, render, GraphOptions};

/// Arguments of `trainer-cli plot`.
#[derive(Debug, Args)]
pub struct PlotArgs {
    /// The training log (`training_log.jsonl` of an output folder).
    pub log: PathBuf,
    /// The PNG to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Graph title (default: the log's folder name).
    #[arg(long)]
    pub title: Option<String>,
}

/// Runs `trainer-cli plot`.
pub fn run(args: &PlotArgs) -> Result<ExitCode> {
    let log = read_log(&args.log)?;
    let title = args
        .title
        .clone()
        .unwrap_or_else(|| default_title(&args.log));
    render(&log, &args.out, &GraphOptions::with_title(title))?;
    eprintln!("wrote {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}

/// "NAME LR and Loss vs Epoch", NAME being the folder that holds the log.
pub fn default_title(log: &std::path::Path) -> String {
    let name = log
        .canonicalize()
        .ok()
        .and_then(|p| {
            p.parent()
                .and_then(|d| d.file_name())
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "training".to_string());
    format!("{name} LR and Loss vs Epoch")
}
