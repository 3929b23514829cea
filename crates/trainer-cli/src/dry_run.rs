//! What `train --dry-run` prints and the setup page's Preview shows: one text built by one function, the
//! settings and their sources, the data summary, LoRA, the step plan with its warnings, the memory estimate and
//! the first blocks as trained; and the learning-rate curve (a PNG for the dry run, data for the page).

use anyhow::{Context, Result};
use trainer_core::job::PREVIEW_FILE;

use crate::init_adapter;
use crate::model_files::mib;
use crate::prepare::{prepare, resolve_settings, Prepared, Say};
use crate::settings::Settings;
use crate::sources::Resolved;
use crate::train::TrainArgs;

/// Prints what `--dry-run` shows and writes the LR preview.
pub fn dry_run(r: &Resolved, p: &Prepared, show: usize) -> Result<()> {
    print!("{}", dry_run_text(r, p, show)?);
    let out = &r.settings.output;
    if !out.as_os_str().is_empty() {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        let png = out.join(PREVIEW_FILE);
        let title = format!("{} LR preview", p.plan.scheduler.schedule());
        plot_report::render_schedule(&p.plan.lr_curve(), &title, &png)?;
        println!("\nwrote {}", png.display());
    }
    Ok(())
}

/// What `--dry-run` prints (the setup page's Preview shows the same): resolved settings and their sources,
/// data summary, LoRA, step plan with its warnings, the memory estimate, the first `show` blocks as trained.
fn dry_run_text(r: &Resolved, p: &Prepared, show: usize) -> Result<String> {
    let s = &r.settings;
    let mut out = format!("# resolved settings\n{}\n", s.to_toml()?);
    out.push_str(&format!("{}\n", r.text()));
    out.push_str(&format!(
        "# data\n{}\n",
        p.data.summary_text(s.eval_every())
    ));
    out.push_str(&format!(
        "lora:           r={} alpha={} scale={:.4} targets={}\n",
        p.lora.r,
        p.lora.alpha,
        p.lora.scaling(),
        p.lora.target_modules.join(",")
    ));
    out.push_str(&format!("\n# plan\n{}\n", p.plan.text()));
    out.push_str(&memory_text(s, p)?);
    for i in 0..show.min(p.data.samples.len()) {
        out.push_str(&format!(
            "\n{}\n",
            p.data.sample_text(i, p.model.tokenizer())?
        ));
    }
    Ok(out)
}

/// What the setup page's Preview shows: the dry run's text and the learning-rate curve (epoch, lr).
pub struct Preview {
    /// The text `--dry-run` prints.
    pub text: String,
    /// The learning rate at every optimizer step, against the epoch.
    pub lr_curve: Vec<(f64, f64)>,
}

/// The dry run of `args` as text and data, without printing or writing anything (the setup page's Preview).
pub fn preview(args: &TrainArgs) -> Result<Preview> {
    let mut r = resolve_settings(args)?;
    let mut p = prepare(&r.settings, Say::Notes)?;
    init_adapter::apply(&mut r.settings, &mut p.lora, &p.model, &mut r.sources)?;
    let mut text = String::new();
    if let Some(warning) = r
        .settings
        .adapter_formats
        .0
        .resolve(&p.model, &p.lora)?
        .warning
    {
        text.push_str(&format!("warning: {warning}\n"));
    }
    for note in &p.data.notes {
        text.push_str(&format!("note: {note}\n"));
    }
    text.push_str(&dry_run_text(&r, &p, args.show_blocks)?);
    Ok(Preview {
        text,
        lr_curve: p.plan.lr_curve(),
    })
}

/// Prints the estimated peak memory of the run (see [`memory_text`]).
pub fn print_memory_estimate(s: &Settings, p: &Prepared) -> Result<()> {
    print!("{}", memory_text(s, p)?);
    Ok(())
}

/// The estimated peak memory of the run, with and without gradient checkpointing, and a warning when it is
/// more than this process can have.
fn memory_text(s: &Settings, p: &Prepared) -> Result<String> {
    let (optimizer, _) = s.optimizer()?;
    let est = |ckpt| {
        p.model
            .estimate_training(&p.lora, &optimizer, (s.batch_size, s.cutoff), ckpt)
    };
    let (with, without) = (est(true)?, est(false)?);
    let chosen = if s.gradient_checkpointing {
        with
    } else {
        without
    };
    let mut out = format!(
        "memory:         about {} at peak: weights {} + trainable and optimizer {} + activations {} (batch {} x cutoff {}) + runtime {}\n                gradient_checkpointing = true: about {}; = false: about {}\n",
        mib(chosen.total()),
        mib(chosen.weights),
        mib(chosen.trainable),
        mib(chosen.activations),
        s.batch_size,
        s.cutoff,
        mib(chosen.runtime),
        mib(with.total()),
        mib(without.total())
    );
    if let Some(limit) = trainer_core::memory::process_limit() {
        if chosen.total() > limit.bytes {
            out.push_str(&format!(
                "warning:        that is more than the {} this process can have ({}): set gradient_checkpointing = true, or lower batch_size or cutoff\n",
                mib(limit.bytes),
                limit.source
            ));
        }
    }
    Ok(out)
}
