//! A whole Training PRO job, run by the library: data order, one optimizer step at a time on the
//! [`Trainer`], the learning-rate schedule, eval cadence, divergence checks, the checkpoint policy's
//! decisions carried out by a [`CheckpointStore`], live control, the training log, and exact resume.
//!
//! The caller builds the pieces and hands them to [`Job::builder`]; [`Job::run`] reports to an [`Observer`]
//! (it never prints), stops when an [`Interrupter`] is raised, and returns a [`Report`] of how it ended.
//!
//! ```no_run
//! use std::path::Path;
//! use trainer_core::job::{DataFiles, DataOptions, DataSources, DirStore, Job, PlanSettings, TrainingData, TrainingPlan};
//! use trainer_core::Model;
//!
//! let model = Model::load(Path::new("model.gguf"), &candle_core::Device::Cpu)?;
//! let sources = DataSources { text: Some("story.txt".into()), ..DataSources::default() };
//! let data = TrainingData::build(DataFiles::read(sources, DataOptions::default())?, &model)?;
//! let plan = TrainingPlan::new(PlanSettings::default(), data.samples.len())?;
//! let store = DirStore::new("runs/story");
//! store.prepare_new(false)?;
//! let report = Job::builder(&model, data, store).plan(plan).build()?.run()?;
//! println!("{:?} after {} steps", report.end, report.step);
//! # Ok::<(), trainer_core::Error>(())
//! ```
//!
//! Where later work plugs in: a web UI runs [`Job::run`] on a server thread with its own observer, a channel
//! as the [`ControlSource`] and an [`Interrupter`]; TensorBoard or GGUF export at checkpoints are observers
//! ([`Observer::on_step`], [`Observer::on_checkpoint`] gives the folder). Data-parallel training runs the same
//! loop on several processes joined by a [`Collective`] ([`JobBuilder::collective`]): micro-batch `k` of a step
//! runs on rank `k mod N`, every rank adds the gathered gradients in order of `k` (so the adapter is
//! byte-identical to one process's), and rank 0 alone writes files, reads control and decides when to stop.

mod agree;
mod collective;
mod control;
mod data;
mod formats;
mod init;
mod log;
mod observer;
mod order;
mod parallel;
mod plan;
mod report;
mod run;
mod state;
mod store;
mod summary;
mod text;

use std::path::PathBuf;
use std::time::Duration;

use checkpoint_policy::{Action, LossSave, Policy, StopReason};
use lora_targets::LoraSettings;

pub use collective::{Collective, ThreadGroup};
pub use control::{Change, ControlCommand, ControlFile, ControlSource, CHANGEABLE};
pub use data::{
    encode_blocks, DataFiles, DataNote, DataOptions, DataSources, Hybrid, Origin, TrainingData,
};
pub use formats::{AdapterFormats, FormatChoice};
pub use observer::{
    ControlOutcome, End, Flow, Interrupter, Observer, Report, Saved, Silent, Start,
};
pub use order::{data_fingerprint, epoch_order, step_batches};
pub use plan::{EvalEvery, PlanSettings, TrainingPlan};
pub use report::{ReportTo, RUNS_DIR, TENSORBOARD_TAGS};
pub use state::{ResumeSettings, ResumeSettingsRecord, RunState, RUN_STATE_FORMAT};
pub use store::{
    Checkpoint, CheckpointStore, DirStore, Recovered, CONTROL_FILE, GRAPH_FILE, LOG_FILE,
    PARAMETERS_FILE, PREVIEW_FILE, RUN_STATE_FILE,
};
pub use summary::{report_text, slicing_summary};

use crate::dataset::LABEL_MASK_RULE;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::train::{TrainConfig, Trainer};

/// Collects a job's pieces; [`JobBuilder::build`] checks them (and a resume) and gives the [`Job`].
pub struct JobBuilder<'m> {
    model: &'m Model,
    data: TrainingData,
    store: Box<dyn CheckpointStore + 'm>,
    lora: LoraSettings,
    train: TrainConfig,
    plan: Option<TrainingPlan>,
    policy: checkpoint_policy::Settings,
    loss_rule: Option<LossSave>,
    eval_every: EvalEvery,
    group_by_length: bool,
    base_model: String,
    resume: Option<PathBuf>,
    init: Option<crate::adapter::Adapter>,
    observer: Box<dyn Observer + 'm>,
    control: Option<Box<dyn ControlSource + 'm>>,
    interrupter: Interrupter,
    report_to: ReportTo,
    collective: Option<Box<dyn Collective + 'm>>,
    collective_timeout: Duration,
}

/// How long a process waits for the others in one collective by default: longer than rank 0's evaluation and
/// checkpoint save take.
pub const DEFAULT_COLLECTIVE_TIMEOUT: Duration = Duration::from_secs(1800);

impl<'m> JobBuilder<'m> {
    /// Runs the job as one rank of a data-parallel group (default: alone). Every rank builds the same job
    /// (settings, data, model, resume checkpoint); [`JobBuilder::build`] checks that they agree, and that
    /// `grad_accum` is a multiple of the number of processes. Rank 0 owns the store, the log, the observer,
    /// control input and the decision to stop; the other ranks write nothing and call no observer.
    #[must_use]
    pub fn collective(mut self, collective: impl Collective + 'm) -> Self {
        self.collective = Some(Box::new(collective));
        self
    }

    /// How long a rank waits for the others in one collective before the job stops with
    /// [`Error::Distributed`] (default [`DEFAULT_COLLECTIVE_TIMEOUT`]).
    #[must_use]
    pub fn collective_timeout(mut self, timeout: Duration) -> Self {
        self.collective_timeout = timeout;
        self
    }

    /// Where the run reports besides its training log (default: nowhere). TensorBoard files go to the
    /// store's [`CheckpointStore::runs_dir`] (a [`DirStore`]'s `runs/`), a new events file per run (a
    /// resumed run adds one); each logged step and eval is written and synced as it happens.
    #[must_use]
    pub fn report_to(mut self, report_to: ReportTo) -> Self {
        self.report_to = report_to;
        self
    }

    /// The LoRA settings (default: [`LoraSettings::default`]). Target modules must be resolved against the
    /// model ([`lora_targets::Targets::resolve`]).
    #[must_use]
    pub fn lora(mut self, lora: LoraSettings) -> Self {
        self.lora = lora;
        self
    }

    /// The trainer configuration (seed, optimizer, clipping, NEFTune, gradient checkpointing). Its `pad_id` is
    /// replaced by the model's (pad, else EOS, else 0).
    #[must_use]
    pub fn train_config(mut self, config: TrainConfig) -> Self {
        self.train = config;
        self
    }

    /// The step plan and schedule (default: [`PlanSettings::default`] over the data).
    #[must_use]
    pub fn plan(mut self, plan: TrainingPlan) -> Self {
        self.plan = Some(plan);
        self
    }

    /// The checkpoint and stopping rules (default: the policy's defaults, no final save: the final adapter
    /// goes to [`CheckpointStore::save_adapter`]).
    #[must_use]
    pub fn checkpoints(mut self, policy: checkpoint_policy::Settings) -> Self {
        self.policy = policy;
        self
    }

    /// The loss-save rule that a live `set save_under_loss=X` turns on when the run has none (default:
    /// the policy's default rule, after the original's first tenth of an epoch).
    #[must_use]
    pub fn loss_save_rule(mut self, rule: LossSave) -> Self {
        self.loss_rule = Some(rule);
        self
    }

    /// When the eval set is scored (default: at every epoch end; always after the last step).
    #[must_use]
    pub fn eval_every(mut self, every: EvalEvery) -> Self {
        self.eval_every = every;
        self
    }

    /// Micro-batches of samples of similar length (less padding); the order stays seeded.
    #[must_use]
    pub fn group_by_length(mut self, on: bool) -> Self {
        self.group_by_length = on;
        self
    }

    /// The base-model name written into every `adapter_config.json` (default: the model's source path).
    #[must_use]
    pub fn base_model_name(mut self, name: impl Into<String>) -> Self {
        self.base_model = name.into();
        self
    }

    /// Continue the run saved in checkpoint folder `dir` exactly (adapter, optimizer, RNG, step, data order,
    /// schedule position, policy memory).
    #[must_use]
    pub fn resume_from(mut self, dir: impl Into<PathBuf>) -> Self {
        self.resume = Some(dir.into());
        self
    }

    /// Start from `adapter`'s weights (a PEFT or GGUF adapter loaded for this model) instead of a fresh
    /// adapter, with fresh optimizer state at step 0. The LoRA settings ([`JobBuilder::lora`]) must have its
    /// rank, scale, targets and fully trained modules (an [`Error::Setting`] `init_adapter` otherwise); their
    /// dropout is used. Ignored when resuming: the checkpoint holds the run's adapter.
    #[must_use]
    pub fn init_adapter(mut self, adapter: crate::adapter::Adapter) -> Self {
        self.init = Some(adapter);
        self
    }

    /// Who hears about the run (default: nobody).
    #[must_use]
    pub fn observer(mut self, observer: impl Observer + 'm) -> Self {
        self.observer = Box::new(observer);
        self
    }

    /// Where live-control commands come from (default: none).
    #[must_use]
    pub fn control(mut self, source: impl ControlSource + 'm) -> Self {
        self.control = Some(Box::new(source));
        self
    }

    /// The flag that interrupts the run (default: one nobody raises).
    #[must_use]
    pub fn interrupter(mut self, interrupter: Interrupter) -> Self {
        self.interrupter = interrupter;
        self
    }

    /// Checks the pieces and, when resuming, the checkpoint against them: a checkpoint trained on other data,
    /// with other settings or already at the last step is refused ([`Error::Resume`], naming each setting
    /// that differs), and nothing is written.
    pub fn build(self) -> Result<Job<'m>> {
        let model = self.model;
        let plan = match self.plan {
            Some(p) => p,
            None => TrainingPlan::new(PlanSettings::default(), self.data.samples.len())?,
        };
        if let Some(c) = &self.collective {
            parallel::check_grad_accum(plan.settings.grad_accum as u64, c.size())?;
            parallel::check_grad_accum(plan.steps.grad_accum, c.size())?;
        }
        let special = model.special_tokens();
        let train = TrainConfig {
            pad_id: special.pad.or(special.eos).unwrap_or(0),
            ..self.train
        };
        self.lora.validate()?;
        let resume_settings = ResumeSettings {
            model: self.base_model.clone(),
            rank: self.lora.r,
            alpha: self.lora.alpha,
            rslora: self.lora.use_rslora,
            dropout: self.lora.dropout,
            targets: self.lora.target_modules.clone(),
            train_head: !self.lora.modules_to_save.is_empty(),
            weight_decay: train.adamw.weight_decay,
            max_grad_norm: train.max_grad_norm,
            neftune_alpha: train.neftune_alpha,
            gradient_checkpointing: train.gradient_checkpointing,
            batch_size: plan.settings.batch_size,
            grad_accum: plan.settings.grad_accum,
            group_by_length: self.group_by_length,
            data: self.data.options.clone(),
        };
        let fingerprint = self.data.fingerprint();
        let (trainer, policy, loss) = match &self.resume {
            None => (
                match &self.init {
                    Some(adapter) => init::trainer_from(model, &self.lora, adapter, train)?,
                    None => Trainer::new(model, self.lora.clone(), train)?,
                },
                Policy::new(self.policy.clone())?,
                f64::NAN,
            ),
            Some(dir) => {
                let state = RunState::load(dir)?;
                if state.data_fingerprint != fingerprint && state.label_mask_rule < LABEL_MASK_RULE
                {
                    return Err(Error::resume(
                        dir,
                        format!(
                            "it was saved under an older label-mask rule (rule {}: a token was learned only when its \
                             first character lay in the learned text, which masked the first word of answers after a \
                             marker ending in a space; now, rule {LABEL_MASK_RULE}, a token is learned when any of its \
                             characters does), and this data's labels differ from those it was trained on, so the run \
                             cannot continue exactly: start a new run on this data (another output folder, or \
                             overwrite this one)",
                            state.label_mask_rule
                        ),
                    ));
                }
                if state.data_fingerprint != fingerprint {
                    return Err(Error::resume(
                        dir,
                        "it was trained on other data (or other slicing settings): resume with the same text, \
                         dataset and settings",
                    ));
                }
                let conflicts = state.conflicts(&resume_settings).ok_or_else(|| {
                    Error::resume(
                        dir,
                        format!("its {RUN_STATE_FILE} is damaged (a setting has the wrong type)"),
                    )
                })?;
                if !conflicts.is_empty() {
                    return Err(Error::resume(
                        dir,
                        format!(
                            "it was trained with other settings: {}. Resume with the run's own settings (only the \
                             run length, learning rate, schedule, evaluation, checkpoint and stopping settings \
                             may change), or start a new run",
                            conflicts.join(", ")
                        ),
                    ));
                }
                let trainer = Trainer::load_state(dir, model).map_err(|e| {
                    Error::resume(dir, format!("its trainer state does not load: {e}"))
                })?;
                same_lora(dir, trainer.settings(), &self.lora)?;
                same_optimizer(dir, &trainer.config().optimizer, &train.optimizer)?;
                let mut policy = state.policy;
                policy.update(self.policy.clone())?;
                (trainer, policy, state.loss.unwrap_or(f64::NAN))
            }
        };
        let total = plan.steps.total_steps;
        if trainer.steps_done() >= total {
            return Err(Error::resume(
                self.resume.clone().unwrap_or_default(),
                format!(
                    "it is already at step {} of {total}: nothing left to train (its folder holds the adapter of \
                     that step); train for more epochs or steps",
                    trainer.steps_done()
                ),
            ));
        }
        let tensorboard = match self.report_to.tensorboard {
            false => None,
            true => Some(self.store.runs_dir().ok_or_else(|| {
                Error::setting(
                    "report_to",
                    "this checkpoint store has no folder for TensorBoard files (a DirStore has one)",
                )
            })?),
        };
        if let Some(c) = &self.collective {
            let settings = format!("{resume_settings:?} {:?} {:?}", trainer.config(), plan);
            let mut d = agree::Digest::default();
            d.bytes(settings.as_bytes());
            let mut data = agree::Digest::default();
            data.word(fingerprint);
            data.word(u64::from(LABEL_MASK_RULE));
            let digests = [
                d.value(),
                data.value(),
                agree::model_digest(model)?,
                agree::start_digest(&trainer),
            ];
            parallel::agree(c.as_ref(), digests, self.collective_timeout)?;
        }
        let loss_rule = self.loss_rule.unwrap_or(LossSave {
            min_step: LossSave::original_min_step(plan.steps.steps_per_epoch),
            ..LossSave::default()
        });
        Ok(Job {
            model,
            data: self.data,
            store: self.store,
            plan,
            eval_every: self.eval_every,
            group_by_length: self.group_by_length,
            base_model: self.base_model,
            resumed_from: self.resume,
            observer: self.observer,
            control: self.control,
            interrupter: self.interrupter,
            trainer,
            policy,
            loss,
            loss_rule,
            resume_settings,
            fingerprint,
            last_saved: None,
            tensorboard,
            collective: self.collective,
            collective_timeout: self.collective_timeout,
        })
    }
}

/// The LoRA settings of a resumed trainer must be those asked for.
fn same_lora(dir: &std::path::Path, saved: &LoraSettings, now: &LoraSettings) -> Result<()> {
    let sorted = |s: &LoraSettings| {
        let mut v = s.target_modules.clone();
        v.sort();
        v
    };
    let (a, b) = (sorted(saved), sorted(now));
    if saved.r != now.r || a != b || saved.modules_to_save != now.modules_to_save {
        return Err(Error::resume(
            dir,
            format!(
                "it was trained with rank {} on {} but this run asks for rank {} on {}: resume with the same rank \
                 and targets, or start a new run",
                saved.r,
                a.join(","),
                now.r,
                b.join(",")
            ),
        ));
    }
    Ok(())
}

/// The optimizer of a resumed trainer (with its settings) must be the one asked for: its state means
/// nothing to another.
fn same_optimizer(
    dir: &std::path::Path,
    saved: &crate::optim::Optimizer,
    now: &crate::optim::Optimizer,
) -> Result<()> {
    if saved == now {
        return Ok(());
    }
    let show = |o: &crate::optim::Optimizer| serde_json::to_string(o).unwrap_or_default();
    let message = if saved.name() == now.name() {
        format!(
            "it was trained with {} settings {} but this run asks for {}: resume with the same optimizer \
             settings, or start a new run",
            saved.name(),
            show(saved),
            show(now)
        )
    } else {
        format!(
            "it was trained with optimizer `{}` but this run asks for `{}` (the checkpoint's optimizer state \
             belongs to {}): resume with `optimizer = \"{}\"`, or start a new run",
            saved.name(),
            now.name(),
            saved.name(),
            saved.name()
        )
    };
    Err(Error::resume(dir, message))
}

/// A job ready to run ([`Job::builder`]).
pub struct Job<'m> {
    model: &'m Model,
    data: TrainingData,
    store: Box<dyn CheckpointStore + 'm>,
    plan: TrainingPlan,
    eval_every: EvalEvery,
    group_by_length: bool,
    base_model: String,
    resumed_from: Option<PathBuf>,
    observer: Box<dyn Observer + 'm>,
    control: Option<Box<dyn ControlSource + 'm>>,
    interrupter: Interrupter,
    trainer: Trainer<'m>,
    policy: Policy,
    loss: f64,
    loss_rule: LossSave,
    resume_settings: ResumeSettings,
    fingerprint: u64,
    last_saved: Option<PathBuf>,
    /// The folder of TensorBoard event files, when reporting to TensorBoard.
    tensorboard: Option<PathBuf>,
    collective: Option<Box<dyn Collective + 'm>>,
    collective_timeout: Duration,
}

impl<'m> Job<'m> {
    /// Starts a job on `model` and `data`, writing into `store`; the other pieces have defaults.
    pub fn builder(
        model: &'m Model,
        data: TrainingData,
        store: impl CheckpointStore + 'm,
    ) -> JobBuilder<'m> {
        JobBuilder {
            model,
            data,
            store: Box::new(store),
            lora: LoraSettings::default(),
            train: TrainConfig::default(),
            plan: None,
            policy: checkpoint_policy::Settings {
                save_final: false,
                ..checkpoint_policy::Settings::default()
            },
            loss_rule: None,
            eval_every: EvalEvery::default(),
            group_by_length: false,
            base_model: model.source().display().to_string(),
            resume: None,
            init: None,
            observer: Box::new(Silent),
            control: None,
            interrupter: Interrupter::new(),
            report_to: ReportTo::default(),
            collective: None,
            collective_timeout: DEFAULT_COLLECTIVE_TIMEOUT,
        }
    }

    /// The optimizer steps already done (the checkpoint's step when resuming, else 0).
    pub fn step(&self) -> u64 {
        self.trainer.steps_done()
    }

    /// The plan.
    pub fn plan(&self) -> &TrainingPlan {
        &self.plan
    }

    /// The settings recorded in every checkpoint, that a resume must keep.
    pub fn resume_settings(&self) -> &ResumeSettings {
        &self.resume_settings
    }

    /// The checkpoint this job resumes from.
    pub fn resumed_from(&self) -> Option<&std::path::Path> {
        self.resumed_from.as_deref()
    }

    fn checkpoint_state(&self) -> RunState {
        RunState {
            format: RUN_STATE_FORMAT,
            step: self.trainer.steps_done(),
            loss: self.loss.is_finite().then_some(self.loss),
            data_fingerprint: self.fingerprint,
            label_mask_rule: LABEL_MASK_RULE,
            policy: self.policy.clone(),
            settings: ResumeSettingsRecord::Complete(Box::new(self.resume_settings.clone())),
        }
    }

    fn save(&mut self, name: &str) -> Result<PathBuf> {
        let state = self.checkpoint_state();
        let checkpoint = Checkpoint {
            trainer: &self.trainer,
            state: &state,
            base_model: &self.base_model,
        };
        self.store.save_checkpoint(name, &checkpoint)
    }

    /// Carries out the policy's actions; returns the stop reason among them and the checkpoint saved.
    fn carry_out(
        &mut self,
        actions: Vec<Action>,
        step: u64,
    ) -> Result<(Option<StopReason>, Option<String>)> {
        let (mut stop, mut saved) = (None, None);
        for action in actions {
            match action {
                Action::Save { name, reason } => {
                    let path = self.save(&name)?;
                    self.observer.on_checkpoint(&Saved {
                        name: &name,
                        path: &path,
                        step,
                        reason,
                    });
                    saved = Some(name);
                    self.last_saved = Some(path);
                }
                Action::Delete { name } => {
                    self.store.delete_checkpoint(&name)?;
                    self.observer.on_checkpoint_deleted(&name);
                }
                Action::Stop { reason } => stop = Some(reason),
            }
        }
        Ok((stop, saved))
    }
}
