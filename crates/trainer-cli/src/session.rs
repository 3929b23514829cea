//! The run loop of `train`: data order, one optimizer step at a time, the
//! checkpoint policy's decisions, live control, the log and the graph, and
//! Ctrl-C that saves a resumable checkpoint.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use checkpoint_policy::{Action, Event, Improvement, LossSave, Policy, StopReason};
use lora_targets::LoraSettings;
use plot_report::{read_log, render, GraphOptions, LogRecord};
use schedulers::StepPlan;
use trainer_core::{evaluate, AdamWParams, TrainConfig, Trainer};

use crate::control::{parse_change, Change, ControlCommand, ControlReader};
use crate::data::{epoch_order, samples, step_batches};
use crate::fsutil::{disk_full_hint, write_atomic};
use crate::log_writer::LogWriter;
use crate::output::{
    self, data_fingerprint, RunState, GRAPH_FILE, LOG_FILE, PARAMETERS_FILE, RUN_STATE_FILE,
};
use crate::progress::{Progress, ProgressMode};
use crate::settings::Settings;
use crate::train::{base_model_name, Prepared};

/// Set by the first Ctrl-C / SIGTERM: finish the step, save, exit 130.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static SIGNALS: AtomicUsize = AtomicUsize::new(0);
static HANDLER: OnceLock<()> = OnceLock::new();

/// Installs the Ctrl-C / SIGTERM handler once per process. A second signal
/// exits at once; every file is written atomically, so nothing is left
/// half-written.
fn install_signal_handler() -> Result<()> {
    if HANDLER.get().is_some() {
        return Ok(());
    }
    ctrlc::set_handler(|| {
        if SIGNALS.fetch_add(1, Ordering::SeqCst) == 0 {
            INTERRUPTED.store(true, Ordering::SeqCst);
            eprintln!("\ninterrupt: finishing the current step, then saving a checkpoint (press Ctrl-C again to quit at once)");
        } else {
            eprintln!("\ninterrupted again: exiting without saving");
            std::process::exit(130);
        }
    })
    .context("cannot install the Ctrl-C handler")?;
    let _ = HANDLER.set(());
    Ok(())
}

/// The checkpoint-policy settings of a run.
pub fn policy_settings(s: &Settings, plan: &StepPlan) -> checkpoint_policy::Settings {
    let pos = |v: f64| (v > 0.0).then_some(v);
    checkpoint_policy::Settings {
        save_every: (s.save_every > 0).then_some(s.save_every),
        save_every_below_loss: pos(s.save_every_below_loss),
        loss_save: pos(s.save_under_loss).map(|threshold| loss_save(s, plan, threshold)),
        save_each_epoch: s.save_each_epoch,
        save_final: false,
        stop_at_loss: pos(s.stop_at_loss),
        stop_loss_window: s.stop_loss_window.max(1),
        stop_at_epoch: (s.stop_at_epoch > 0).then_some(s.stop_at_epoch),
        keep_last: (s.keep_last > 0).then_some(s.keep_last),
        keep_best: (s.keep_best > 0).then_some(s.keep_best),
        save_best_eval: s.save_best_eval,
        ..checkpoint_policy::Settings::default()
    }
}

/// The loss-save rule of the settings at `threshold`.
fn loss_save(s: &Settings, plan: &StepPlan, threshold: f64) -> LossSave {
    LossSave {
        threshold,
        improvement: if s.absolute_improvement {
            Improvement::Absolute(0.09)
        } else {
            Improvement::Relative(s.loss_improvement)
        },
        min_step: LossSave::original_min_step(plan.steps_per_epoch),
        ..LossSave::default()
    }
}

/// The trainer configuration of a run.
pub fn train_config(s: &Settings, pad_id: u32) -> TrainConfig {
    TrainConfig {
        seed: s.seed,
        adamw: AdamWParams {
            weight_decay: s.weight_decay,
            ..AdamWParams::default()
        },
        max_grad_norm: (s.max_grad_norm > 0.0).then_some(s.max_grad_norm),
        neftune_alpha: (s.neftune_alpha > 0.0).then_some(s.neftune_alpha),
        pad_id,
        gradient_checkpointing: s.gradient_checkpointing,
        ..TrainConfig::default()
    }
}

fn same_lora(saved: &LoraSettings, now: &LoraSettings) -> Result<()> {
    let mut a = saved.target_modules.clone();
    let mut b = now.target_modules.clone();
    a.sort();
    b.sort();
    if saved.r != now.r || a != b || saved.modules_to_save != now.modules_to_save {
        bail!(
            "the checkpoint was trained with rank {} on {} but this run asks for rank {} on {}: \
             resume with the same rank and targets, or start a new run",
            saved.r,
            a.join(","),
            now.r,
            b.join(",")
        );
    }
    Ok(())
}

struct Run<'a> {
    settings: &'a Settings,
    output: &'a Path,
    base_name: String,
    fingerprint: u64,
    progress: Progress,
}

impl Run<'_> {
    fn title(&self) -> String {
        let name = self
            .output
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "training".into());
        format!("{name} LR and Loss vs Epoch")
    }

    fn render_graph(&self) {
        let log = self.output.join(LOG_FILE);
        let result = read_log(&log).map_err(anyhow::Error::from).and_then(|l| {
            Ok(render(
                &l,
                &self.output.join(GRAPH_FILE),
                &GraphOptions::with_title(self.title()),
            )?)
        });
        if let Err(e) = result {
            self.progress
                .message(&format!("warning: cannot draw the graph: {e:#}"));
        }
    }

    fn save(
        &self,
        name: &str,
        trainer: &Trainer<'_>,
        policy: &Policy,
        loss: f64,
    ) -> Result<PathBuf> {
        let state = RunState {
            format: 1,
            step: trainer.steps_done(),
            loss: loss.is_finite().then_some(loss),
            data_fingerprint: self.fingerprint,
            policy: policy.clone(),
            settings: self.settings.clone(),
        };
        output::write_checkpoint(self.output, name, |dir| {
            trainer.save_state(dir, &self.base_name)?;
            let json = serde_json::to_string_pretty(&state)?;
            std::fs::write(dir.join(RUN_STATE_FILE), json)?;
            Ok(())
        })
    }
}

/// The message of a diverged run: what went non-finite at `step`, and the last good checkpoint.
fn diverged(what: &str, step: u64, lr: f64, last_saved: Option<&Path>) -> String {
    let kept = last_saved.map_or("no checkpoint was written yet".to_string(), |d| {
        format!("the last good checkpoint is {}", d.display())
    });
    format!(
        "training diverged: {what} at step {step} (learning rate {lr:.3e}); training stopped and \
         this step was not saved; {kept}. Lower the learning rate and start again"
    )
}

fn apply_change(policy: &mut Policy, change: Change, loss_template: LossSave) -> Result<()> {
    let mut s = policy.settings().clone();
    match change {
        Change::StopAtLoss(v) => s.stop_at_loss = (v > 0.0).then_some(v),
        Change::StopAtEpoch(v) => s.stop_at_epoch = (v > 0).then_some(v),
        Change::SaveEvery(v) => s.save_every = (v > 0).then_some(v),
        Change::SaveUnderLoss(v) => {
            s.loss_save = (v > 0.0).then(|| LossSave {
                threshold: v,
                ..s.loss_save.unwrap_or(loss_template)
            });
        }
    }
    Ok(policy.update(s)?)
}

/// Trains to the end of the plan (or a stop), writing everything into `output`.
pub fn run(
    p: &Prepared,
    resume: Option<&Path>,
    mode: ProgressMode,
    output: &Path,
) -> Result<ExitCode> {
    install_signal_handler()?;
    let special = p.model.special_tokens();
    let pad_id = special.pad.or(special.eos).unwrap_or(0);
    let fp = data_fingerprint(&p.data.samples, &p.data.eval);
    let fresh_policy = || Policy::new(policy_settings(&p.settings, &p.plan));
    let (mut trainer, mut policy, mut loss) = match resume {
        Some(dir) => {
            let state = RunState::load(dir)?;
            if state.data_fingerprint != fp {
                bail!(
                    "{} was trained on other data (or other slicing settings): resume with the same text and settings",
                    dir.display()
                );
            }
            let conflicts = state.settings.resume_conflicts(&p.settings);
            if !conflicts.is_empty() {
                bail!(
                    "{} was trained with other settings: {}. Resume with the run's own settings \
                     (only checkpoint and stopping settings may change), or start a new run",
                    dir.display(),
                    conflicts.join(", ")
                );
            }
            let trainer = Trainer::load_state(dir, &p.model)
                .with_context(|| format!("cannot resume from {}", dir.display()))?;
            same_lora(trainer.settings(), &p.lora)?;
            let mut policy = state.policy;
            policy.update(policy_settings(&p.settings, &p.plan))?;
            eprintln!("resuming from {} at step {}", dir.display(), state.step);
            (trainer, policy, state.loss.unwrap_or(f64::NAN))
        }
        None => {
            let trainer =
                Trainer::new(&p.model, p.lora.clone(), train_config(&p.settings, pad_id))?;
            (trainer, fresh_policy()?, f64::NAN)
        }
    };
    let plan = &p.plan;
    let total = plan.total_steps;
    let loss_template = loss_save(&p.settings, plan, 1.0);
    let mut step = trainer.steps_done();
    if step >= total {
        bail!(
            "the checkpoint is already at step {step} of {total}: nothing left to train \
             (its folder holds the adapter of that step; give --epochs to train longer)"
        );
    }
    // Written only now: a refused resume leaves the run's parameters as they were.
    write_atomic(
        &output.join(PARAMETERS_FILE),
        p.settings.to_toml()?.as_bytes(),
    )
    .map_err(|e| disk_full_hint(e, output))?;
    let run = Run {
        settings: &p.settings,
        output,
        base_name: base_model_name(&p.settings.model),
        fingerprint: fp,
        progress: Progress::new(mode, step, total),
    };
    let mut log = LogWriter::open(output.join(LOG_FILE))?;
    let mut control = ControlReader::new(output);
    let never = AtomicBool::new(false);
    let mut order_epoch = u64::MAX;
    let mut order = Vec::new();
    let mut last_saved: Option<PathBuf> = None;
    let mut stop: Option<StopReason> = None;

    while step < total {
        let epoch_index = step / plan.steps_per_epoch;
        if epoch_index != order_epoch {
            order = epoch_order(p.data.samples.len(), p.settings.seed, epoch_index);
            if p.settings.group_by_length {
                let lengths: Vec<usize> =
                    p.data.samples.iter().map(|s| s.input_ids.len()).collect();
                order = trainer_core::dataset::select::group_by_length(
                    &order,
                    &lengths,
                    plan.input.batch_size as usize,
                );
            }
            order_epoch = epoch_index;
        }
        let batch = samples(&p.data.samples, &step_batches(plan, &order, step));
        let lr = p.scheduler.lr(step);
        let t0 = Instant::now();
        let stats = trainer
            .step(&batch, lr, &never)
            .with_context(|| format!("training step {}", step + 1))?;
        let seconds = t0.elapsed().as_secs_f64();
        step = stats.step;
        if !stats.loss.is_finite() {
            bail!(diverged(
                &format!("the loss became {}", stats.loss),
                step,
                lr,
                last_saved.as_deref()
            ));
        }
        if !stats.grad_norm.is_finite() {
            bail!(diverged(
                &format!("the gradient norm became {}", stats.grad_norm),
                step,
                lr,
                last_saved.as_deref()
            ));
        }
        loss = stats.loss;

        let mut event = Event::new(step, plan.epoch_at(step), loss);
        let epoch_end = step % plan.steps_per_epoch == 0 || step == total;
        if epoch_end {
            event = event.with_epoch_end();
        }
        let eval_now = !p.data.eval.is_empty()
            && (step == total
                || if p.settings.eval_steps > 0 {
                    step % p.settings.eval_steps == 0
                } else {
                    epoch_end
                });
        let mut eval_loss = None;
        if eval_now {
            let adapter = trainer.adapter()?;
            let e = evaluate(
                &p.model,
                Some(&adapter),
                &p.data.eval,
                plan.input.batch_size as usize,
                pad_id,
                &never,
            )
            .with_context(|| format!("evaluation at step {step}"))?;
            run.progress.message(&format!(
                "step {step}: eval loss {:.4} ({} tokens)",
                e.loss, e.tokens
            ));
            event = event.with_eval_loss(e.loss);
            eval_loss = Some(e.loss);
        }
        let (commands, errors) = control.poll();
        for e in errors {
            run.progress.message(&format!("warning: {e}"));
        }
        for c in commands {
            match c {
                ControlCommand::SaveNow => event = event.with_save_now(),
                ControlCommand::Stop => event = event.with_stop(),
                ControlCommand::Set { assignment } => {
                    match parse_change(&assignment)
                        .and_then(|ch| apply_change(&mut policy, ch, loss_template))
                    {
                        Ok(()) => run.progress.message(&format!("control: set {assignment}")),
                        Err(e) => run
                            .progress
                            .message(&format!("warning: control set {assignment}: {e:#}")),
                    }
                }
            }
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            event = event.with_save_now().with_stop();
        }

        let mut rec = LogRecord {
            step,
            epoch: plan.epoch_at(step),
            loss: Some(loss),
            lr: Some(lr),
            grad_norm: Some(stats.grad_norm),
            tokens_per_s: Some(stats.tokens as f64 / seconds.max(1e-9)),
            time_s: Some(run.progress.elapsed()),
            eval_loss,
            ..LogRecord::default()
        };
        let actions = policy.decide(&event);
        if actions.iter().any(|a| matches!(a, Action::Save { .. }))
            && !trainer.adapter()?.is_finite()?
        {
            bail!(diverged(
                "the update left inf or NaN weights",
                step,
                lr,
                last_saved.as_deref()
            ));
        }
        for action in actions {
            match action {
                Action::Save { name, .. } => {
                    let dir = run
                        .save(&name, &trainer, &policy, loss)
                        .map_err(|e| disk_full_hint(e, output))?;
                    run.progress.message(&format!("saved {}", dir.display()));
                    rec.checkpoint = Some(name);
                    last_saved = Some(dir);
                }
                Action::Delete { name } => output::delete_checkpoint(output, &name)?,
                Action::Stop { reason } => stop = Some(reason),
            }
        }
        log.append(&rec).map_err(|e| disk_full_hint(e, output))?;
        run.progress.step(&rec);
        if rec.checkpoint.is_some() {
            run.render_graph();
        }
        if stop.is_some() {
            break;
        }
    }

    let adapter = trainer.adapter()?;
    if !adapter.is_finite()? {
        bail!(diverged(
            "the update left inf or NaN weights",
            step,
            p.scheduler.lr(step.saturating_sub(1)),
            last_saved.as_deref()
        ));
    }
    for action in policy.finish(step, plan.epoch_at(step), loss) {
        match action {
            Action::Save { name, .. } => {
                run.save(&name, &trainer, &policy, loss)
                    .map_err(|e| disk_full_hint(e, output))?;
            }
            Action::Delete { name } => output::delete_checkpoint(output, &name)?,
            Action::Stop { .. } => {}
        }
    }
    adapter
        .save(output, &run.base_name)
        .with_context(|| format!("cannot save the adapter into {}", output.display()))
        .map_err(|e| disk_full_hint(e, output))?;
    run.render_graph();
    run.progress.finish();

    let why = match stop {
        None => "finished".to_string(),
        Some(StopReason::AtLoss) => format!("stopped at loss {loss:.4}"),
        Some(StopReason::AtEpoch) => "stopped at the requested epoch".to_string(),
        Some(StopReason::User) if INTERRUPTED.load(Ordering::SeqCst) => "interrupted".to_string(),
        Some(StopReason::User) => "stopped on request".to_string(),
        Some(other) => format!("stopped ({other:?})"),
    };
    eprintln!(
        "{why} after {step} of {total} steps, loss {loss:.4}. Adapter: {}\ngraph: {}",
        output.display(),
        output.join(GRAPH_FILE).display()
    );
    if INTERRUPTED.load(Ordering::SeqCst) {
        if let Some(dir) = &last_saved {
            eprintln!(
                "resume with: trainer-cli train --output {} --resume latest   (checkpoint {})",
                output.display(),
                dir.display()
            );
        }
        return Ok(ExitCode::from(130));
    }
    Ok(ExitCode::SUCCESS)
}
