//! `trainer-cli check`: the data and the step plan of a training run, without training.

use std::process::ExitCode;

use anyhow::{bail, Result};

use crate::dry_run::print_memory_estimate;
use crate::init_adapter;
use crate::prepare::{dump_if_asked, prepare, resolve_settings, Say};
use crate::train::TrainArgs;

/// Runs `trainer-cli check`: the original's "Verify dataset", with exact numbers and suggestions, without
/// training or writing anything.
pub fn run(args: &TrainArgs) -> Result<ExitCode> {
    if args.ui.ui.is_some() {
        bail!("--ui serves a training run's page; `check` starts no run: use it with `train`");
    }
    let mut r = resolve_settings(args)?;
    let mut p = prepare(&r.settings, Say::Notes)?;
    init_adapter::apply(&mut r.settings, &mut p.lora, &p.model, &mut r.sources)?;
    let s = r.settings;
    if let Some(warning) = s.adapter_formats.0.resolve(&p.model, &p.lora)?.warning {
        eprintln!("warning: {warning}");
    }
    dump_if_asked(&p, args.dump_dataset.as_deref())?;
    println!("{}", p.data.summary_text(s.eval_every()));
    println!("{}", p.plan.text());
    println!("{}", p.data.padding_text(s.batch_size));
    print_memory_estimate(&s, &p)?;
    let total = p.plan.steps.total_steps;
    let warmup = (total.div_ceil(10))
        .min(p.plan.steps.steps_per_epoch)
        .max(1);
    println!("suggested:      warmup_steps = {warmup} (10% of the run, at most one epoch)");
    println!(
        "suggested:      save_every = {} .. {} (5 to 10 checkpoints over the run)",
        total.div_ceil(10).max(1),
        total.div_ceil(5).max(1)
    );
    let split = p
        .data
        .chunks
        .as_ref()
        .map_or(0, |(c, _)| c.summary.pieces_split);
    if split > 0 {
        println!(
            "note:           {split} sentences are longer than the cutoff and were split at word boundaries; \
             a larger --cutoff keeps them whole"
        );
    }
    let longest = p
        .data
        .samples
        .iter()
        .map(|s| s.input_ids.len())
        .max()
        .unwrap_or(0);
    if longest * 2 < s.cutoff {
        println!(
            "note:           the longest sample has {longest} tokens; a --cutoff of {} would do",
            longest.div_ceil(32) * 32
        );
    }
    Ok(ExitCode::SUCCESS)
}
