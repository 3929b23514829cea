//! `trainer-cli schedule`: print a schedule's LR multipliers as JSON and
//! optionally draw the preview PNG.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use schedulers::{Horizon, Schedule, Scheduler};

/// Arguments of `trainer-cli schedule`.
#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// Schedule name: linear, cosine, ..., FP_low_epoch_annealing, ... (case-insensitive).
    #[arg(long)]
    pub name: String,
    /// Total optimizer steps.
    #[arg(long)]
    pub total: u64,
    /// Warmup optimizer steps.
    #[arg(long, default_value_t = 0)]
    pub warmup: u64,
    /// Epochs the total covers (fractional allowed); the FP schedules use it.
    #[arg(long, default_value_t = 1.0)]
    pub epochs: f64,
    /// Also draw the LR curve (multiplier against step) into this PNG.
    #[arg(long)]
    pub png: Option<PathBuf>,
}

/// Runs `trainer-cli schedule`.
pub fn run(args: &ScheduleArgs) -> Result<ExitCode> {
    let schedule: Schedule = args.name.parse()?;
    let horizon = Horizon::from_epochs(args.total, args.warmup, args.epochs)
        .context("invalid step plan (--total/--warmup/--epochs)")?;
    let scheduler = Scheduler::new(schedule, horizon, 1.0)?;
    for w in scheduler.warnings() {
        eprintln!("warning: {w}");
    }
    let values = scheduler.multipliers();
    println!("{}", serde_json::to_string(&values)?);
    if let Some(png) = &args.png {
        let points: Vec<(f64, f64)> = values
            .iter()
            .enumerate()
            .map(|(step, m)| (step as f64, *m))
            .collect();
        let title = format!("{schedule}: {} steps, warmup {}", args.total, args.warmup);
        plot_report::render_schedule(&points, &title, png)?;
        eprintln!("wrote {}", png.display());
    }
    Ok(ExitCode::SUCCESS)
}
