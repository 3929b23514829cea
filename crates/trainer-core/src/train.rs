//! [`Trainer`]: LoRA training steps (masked CE, dynamic padding, gradient accumulation, clipping, the optimizer, NEFTune,
//! LoRA dropout) with exact save/resume.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Tensor};
use lora_targets::LoraSettings;
use serde::{Deserialize, Serialize};

use crate::adapter::Adapter;
use crate::autograd::{self, Slot};
use crate::decoder::Noise;
use crate::engine::{self, Extras, Net, PairRef, Pins, Workspace};
use crate::error::{Error, Result};
use crate::lora::{LoraPair, LoraWeights};
use crate::model::Model;
use crate::optim::{AdamWParams, OptimState, Optimizer};
use crate::rng::Rng;

/// Label value that excludes a position from the loss (PyTorch's `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

/// One training sequence: token ids (BOS/EOS included as wanted) and per-position labels.
///
/// As in Hugging Face, `labels[t]` is the token expected *at* position `t`; the loss shifts internally (position
/// `t` predicts `labels[t + 1]`). A label of [`IGNORE_INDEX`] is not scored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Token ids.
    pub input_ids: Vec<u32>,
    /// Same length as `input_ids`; [`IGNORE_INDEX`] masks a position.
    pub labels: Vec<i64>,
}

impl Sample {
    /// A causal-LM sample: every token is a label.
    pub fn causal(input_ids: Vec<u32>) -> Self {
        let labels = input_ids.iter().map(|&i| i64::from(i)).collect();
        Self { input_ids, labels }
    }
}

/// Training hyper-parameters other than the LoRA settings and the learning rate (given per step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Seed for LoRA init, dropout and NEFTune noise.
    pub seed: u64,
    /// AdamW betas and eps, and the weight decay of every optimizer.
    pub adamw: AdamWParams,
    /// The optimizer (default AdamW); [`Optimizer::from_name`] reads the setting.
    #[serde(default)]
    pub optimizer: Optimizer,
    /// Clip the global gradient norm to this value (`None`: no clipping). HF default: 1.0.
    pub max_grad_norm: Option<f64>,
    /// NEFTune noise alpha (`None`: off).
    pub neftune_alpha: Option<f64>,
    /// Token id used to right-pad shorter samples in a micro-batch (never scored).
    pub pad_id: u32,
    /// Recompute each layer in backward instead of keeping its graph (gradient checkpointing): memory about one
    /// layer's graph instead of all of them, for one extra forward pass.
    #[serde(default)]
    pub gradient_checkpointing: bool,
    /// Which implementation computes the gradients.
    #[serde(default)]
    pub backend: Backend,
}

/// Which implementation computes the forward and backward passes of training.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The CPU engine for a model on the CPU, candle's autograd for a model on a GPU.
    #[default]
    Auto,
    /// The CPU engine (hand-written forward and backward on plain buffers; any stored weight type). CPU only.
    Engine,
    /// candle's autograd over the composed decoder ops: the GPU path, and the reference the engine is tested
    /// against (slow and memory-hungry on the CPU).
    Autograd,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            adamw: AdamWParams::default(),
            optimizer: Optimizer::AdamW,
            max_grad_norm: Some(1.0),
            neftune_alpha: None,
            pad_id: 0,
            gradient_checkpointing: false,
            backend: Backend::Auto,
        }
    }
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Optimizer steps done, including this one.
    pub step: u64,
    /// Mean cross-entropy over the scored tokens of all micro-batches (before the update).
    pub loss: f64,
    /// Global gradient L2 norm before clipping.
    pub grad_norm: f64,
    /// Scored (label) tokens in this step.
    pub tokens: usize,
    /// Token positions processed, padding included.
    pub padded_tokens: usize,
    /// The learning rate used.
    pub lr: f64,
}

/// What the per-step callback of [`Trainer::run`] asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Go on with the next step.
    Continue,
    /// Stop after this step (e.g. a loss threshold was reached).
    Stop,
}

/// One trainable tensor: a LoRA factor or a modules_to_save copy, with its PEFT key, values and optimizer state.
pub(crate) struct Param {
    pub(crate) key: String,
    pub(crate) shape: Vec<usize>,
    pub(crate) value: Vec<f32>,
    pub(crate) state: OptimState,
}

/// A LoRA trainer over a borrowed [`Model`].
pub struct Trainer<'m> {
    pub(crate) model: &'m Model,
    pub(crate) settings: LoraSettings,
    pub(crate) config: TrainConfig,
    pub(crate) params: Vec<Param>,
    slots: Vec<Slot>,
    pub(crate) step: u64,
    /// One gradient buffer per parameter, summed over the micro-batches of a step in order of `k`.
    grads: Vec<Vec<f32>>,
    /// One gradient buffer per parameter: the current micro-batch's gradient, computed from zero.
    mb_grads: Vec<Vec<f32>>,
    /// The engine's activation and gradient buffers, kept between steps.
    workspace: Workspace,
}

impl<'m> Trainer<'m> {
    /// A trainer with a fresh PEFT-style adapter (A uniform ±1/sqrt(in), B = 0) drawn from `config.seed`.
    pub fn new(model: &'m Model, settings: LoraSettings, config: TrainConfig) -> Result<Self> {
        let adapter = Adapter::init(model, &settings, config.seed)?;
        Self::from_adapter(model, &adapter, config)
    }

    /// A trainer that starts from an existing adapter (its settings, including dropout, are used).
    pub fn from_adapter(model: &'m Model, adapter: &Adapter, config: TrainConfig) -> Result<Self> {
        adapter.check_fits(model)?;
        backend_for(model, config.backend)?;
        config.optimizer.validate()?;
        let w = adapter.weights();
        let mut params = Vec::new();
        let mut slots = Vec::new();
        let mut push = |key: String, t: &Tensor| -> Result<usize> {
            let value = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            params.push(Param {
                state: OptimState::new(&config.optimizer, t.dims())?,
                shape: t.dims().to_vec(),
                key,
                value,
            });
            Ok(params.len() - 1)
        };
        for (l, mods) in w.layers.iter().enumerate() {
            for (m, pair) in mods.iter().enumerate() {
                if let Some(p) = pair {
                    let path = crate::lora::module_path(l, m);
                    let a = push(
                        lora_targets::lora_tensor_key(&path, lora_targets::LoraPart::A),
                        &p.a,
                    )?;
                    let b = push(
                        lora_targets::lora_tensor_key(&path, lora_targets::LoraPart::B),
                        &p.b,
                    )?;
                    slots.push(Slot::Pair {
                        layer: l,
                        module: m,
                        a,
                        b,
                    });
                }
            }
        }
        for (key, t) in &adapter.named_tensors() {
            if key.ends_with("lm_head.weight") {
                slots.push(Slot::LmHead(push(key.clone(), t)?));
            } else if key.ends_with("embed_tokens.weight") {
                slots.push(Slot::Embed(push(key.clone(), t)?));
            }
        }
        let grads: Vec<Vec<f32>> = params.iter().map(|p| vec![0f32; p.value.len()]).collect();
        Ok(Self {
            model,
            settings: adapter.settings().clone(),
            config,
            params,
            slots,
            step: 0,
            mb_grads: grads.clone(),
            grads,
            workspace: Workspace::default(),
        })
    }

    /// Optimizer steps done so far.
    pub fn steps_done(&self) -> u64 {
        self.step
    }

    /// The LoRA settings being trained.
    pub fn settings(&self) -> &LoraSettings {
        &self.settings
    }

    /// The training configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Number of trainable scalars.
    pub fn trainable_parameters(&self) -> usize {
        self.params.iter().map(|p| p.value.len()).sum()
    }

    /// Bytes held by the engine's activation and gradient buffers (they grow to the largest micro-batch seen and
    /// are then reused).
    pub fn workspace_bytes(&self) -> usize {
        self.workspace.bytes()
    }

    /// The current adapter (a copy, safe to save or evaluate while training goes on).
    pub fn adapter(&self) -> Result<Adapter> {
        let dev = self.model.device();
        let t = |i: usize| -> Result<Tensor> {
            let p = &self.params[i];
            Ok(Tensor::from_slice(&p.value, p.shape.as_slice(), dev)?)
        };
        let mut w = LoraWeights {
            scale: self.settings.scaling(),
            layers: (0..self.model.config.num_hidden_layers)
                .map(|_| Default::default())
                .collect(),
            lm_head: None,
            embed_tokens: None,
        };
        for slot in &self.slots {
            match *slot {
                Slot::Pair {
                    layer,
                    module,
                    a,
                    b,
                } => w.layers[layer][module] = Some(LoraPair { a: t(a)?, b: t(b)? }),
                Slot::LmHead(i) => w.lm_head = Some(t(i)?),
                Slot::Embed(i) => w.embed_tokens = Some(t(i)?),
            }
        }
        Ok(Adapter::from_parts(self.settings.clone(), w, self.model))
    }

    fn check_sample(&self, s: &Sample, where_: &str) -> Result<()> {
        self.model.check_ids(&s.input_ids, where_)?;
        if s.labels.len() != s.input_ids.len() {
            return Err(Error::input(
                where_,
                format!(
                    "labels has {} entries but input_ids has {}",
                    s.labels.len(),
                    s.input_ids.len()
                ),
            ));
        }
        let vocab = self.model.config.vocab_size as i64;
        if let Some(l) = s
            .labels
            .iter()
            .find(|&&l| l != IGNORE_INDEX && !(0..vocab).contains(&l))
        {
            return Err(Error::input(
                where_,
                format!("label {l} is neither -100 nor a token id below {vocab}"),
            ));
        }
        Ok(())
    }

    /// One optimizer step over `micro_batches` (gradient accumulation = their number). The loss is the mean over
    /// all scored tokens of the step (as transformers does with `num_items_in_batch`). Each micro-batch is right-padded
    /// to its own longest sample. Returns [`Error::Cancelled`] without changing any state when `cancel` is set.
    ///
    /// The step's gradient is the sum, in order of the micro-batch index `k`, of each micro-batch's gradient
    /// computed from zero (and its loss the sum of their NLLs in the same order), so a job that computes some
    /// micro-batches elsewhere and adds them in the same order gets the same bytes.
    pub fn step(
        &mut self,
        micro_batches: &[Vec<Sample>],
        lr: f64,
        cancel: &AtomicBool,
    ) -> Result<StepStats> {
        let total = self.check_step(micro_batches, lr)?;
        self.zero_step_gradient();
        let mut sum = StepSum::default();
        for (k, mb) in micro_batches.iter().enumerate() {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            let (nll, padded) = self.micro_batch_gradient(k, mb, total)?;
            self.add_micro_batch_gradient();
            sum.add(nll, padded);
        }
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        Ok(self.apply_update(sum, total, lr))
    }

    /// Checks a step's micro-batches and learning rate; returns the number of scored tokens of the step.
    pub(crate) fn check_step(&self, micro_batches: &[Vec<Sample>], lr: f64) -> Result<usize> {
        if micro_batches.is_empty() || micro_batches.iter().any(Vec::is_empty) {
            return Err(Error::input(
                "micro_batches",
                "a step needs at least one non-empty micro-batch",
            ));
        }
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(Error::input(
                "lr",
                format!("{lr} is not a finite non-negative learning rate"),
            ));
        }
        for (bi, mb) in micro_batches.iter().enumerate() {
            for (si, s) in mb.iter().enumerate() {
                self.check_sample(s, &format!("micro_batches[{bi}][{si}]"))?;
            }
        }
        let total: usize = micro_batches.iter().flatten().map(scored).sum();
        if total == 0 {
            return Err(Error::input(
                "micro_batches",
                "no position has a label to predict (all -100 or length 1)",
            ));
        }
        Ok(total)
    }

    /// Number of f32 values of one micro-batch's gradient (all trainable tensors, in parameter order).
    pub(crate) fn gradient_len(&self) -> usize {
        self.params.iter().map(|p| p.value.len()).sum()
    }

    /// Forward + backward of micro-batch `k` of the current step (checked by [`Trainer::check_step`]), from zero:
    /// afterwards the micro-batch gradient buffers hold `d(Σ nll / total)/dθ` of this micro-batch alone. Returns
    /// (Σ NLL, padded token count).
    pub(crate) fn micro_batch_gradient(
        &mut self,
        k: usize,
        mb: &[Sample],
        total: usize,
    ) -> Result<(f64, usize)> {
        self.mb_grads.iter_mut().for_each(|g| g.fill(0.0));
        self.accumulate(k, mb, total)
    }

    /// The last micro-batch gradient as one flat buffer (parameters in order), appended to `out`.
    pub(crate) fn copy_micro_batch_gradient(&self, out: &mut Vec<f32>) {
        for g in &self.mb_grads {
            out.extend_from_slice(g);
        }
    }

    /// Starts a step's gradient sum at zero.
    pub(crate) fn zero_step_gradient(&mut self) {
        self.grads.iter_mut().for_each(|g| g.fill(0.0));
    }

    /// Adds the last micro-batch gradient into the step's sum.
    pub(crate) fn add_micro_batch_gradient(&mut self) {
        for (sum, g) in self.grads.iter_mut().zip(&self.mb_grads) {
            sum.iter_mut().zip(g).for_each(|(s, v)| *s += v);
        }
    }

    /// Adds a micro-batch gradient given flat (as [`Trainer::copy_micro_batch_gradient`] writes it) into the
    /// step's sum: the same additions as [`Trainer::add_micro_batch_gradient`].
    pub(crate) fn add_flat_gradient(&mut self, flat: &[f32]) -> Result<()> {
        if flat.len() != self.gradient_len() {
            return Err(Error::input(
                "gradient",
                format!(
                    "a micro-batch gradient has {} values, this trainer's tensors have {}",
                    flat.len(),
                    self.gradient_len()
                ),
            ));
        }
        let mut rest = flat;
        for sum in &mut self.grads {
            let (g, tail) = rest.split_at(sum.len());
            sum.iter_mut().zip(g).for_each(|(s, v)| *s += v);
            rest = tail;
        }
        Ok(())
    }

    /// Clips the summed gradient, applies the optimizer and counts the step. `sum` holds the micro-batches' NLL
    /// and padded tokens, added in order of `k`; `total` is the step's scored tokens.
    pub(crate) fn apply_update(&mut self, sum: StepSum, total: usize, lr: f64) -> StepStats {
        let norm = self
            .grads
            .iter()
            .flatten()
            .map(|v| f64::from(*v) * f64::from(*v))
            .sum::<f64>()
            .sqrt();
        if let Some(max) = self.config.max_grad_norm {
            // torch.nn.utils.clip_grad_norm_: coef = max / (norm + 1e-6), applied only when < 1.
            let coef = (max / (norm + 1e-6)) as f32;
            if coef < 1.0 {
                self.grads.iter_mut().flatten().for_each(|v| *v *= coef);
            }
        }
        self.step += 1;
        // The one update path of both backends.
        let (opt, adamw) = (&self.config.optimizer, &self.config.adamw);
        for (p, g) in self.params.iter_mut().zip(&self.grads) {
            p.state.update(opt, adamw, &mut p.value, g, lr, self.step);
        }
        StepStats {
            step: self.step,
            loss: sum.nll / total as f64,
            grad_norm: norm,
            tokens: total,
            padded_tokens: sum.padded,
            lr,
        }
    }

    /// Forward + backward of micro-batch `k` of the current step; adds `d(sum_nll / total)/dθ` into the micro-batch
    /// gradient buffers. Its dropout and NEFTune noise come from [`Rng::for_micro_batch`] of (seed, step, k). Returns (sum of
    /// NLL, padded token count).
    fn accumulate(&mut self, k: usize, mb: &[Sample], total: usize) -> Result<(f64, usize)> {
        let t = mb.iter().map(|s| s.input_ids.len()).max().unwrap_or(0);
        let b = mb.len();
        let mut ids = Vec::with_capacity(b * t);
        // Rows (b * t + pos) whose next-token label is scored, and those labels.
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        for (bi, s) in mb.iter().enumerate() {
            ids.extend_from_slice(&s.input_ids);
            ids.extend(std::iter::repeat_n(
                self.config.pad_id,
                t - s.input_ids.len(),
            ));
            for pos in 0..s.input_ids.len().saturating_sub(1) {
                let label = s.labels[pos + 1];
                if label != IGNORE_INDEX {
                    rows.push((bi * t + pos) as u32);
                    targets.push(label as u32);
                }
            }
        }
        if rows.is_empty() {
            return Ok((0.0, b * t));
        }
        let mut rng = Rng::for_micro_batch(self.config.seed, self.step, k as u64);
        let mut noise = Noise {
            rng: &mut rng,
            lora_dropout: self.settings.dropout,
            neftune_alpha: self.config.neftune_alpha,
        };
        let batch = engine::Batch {
            ids: &ids,
            b,
            t,
            rows: &rows,
            targets: &targets,
            total,
        };
        let nll = match backend_for(self.model, self.config.backend)? {
            Backend::Autograd => {
                let params: Vec<(&[f32], &[usize])> = self
                    .params
                    .iter()
                    .map(|p| (p.value.as_slice(), p.shape.as_slice()))
                    .collect();
                let st = autograd::State {
                    model: self.model,
                    scale: self.settings.scaling(),
                    slots: &self.slots,
                    params: &params,
                    rng: noise.rng,
                    lora_dropout: noise.lora_dropout,
                    neftune_alpha: noise.neftune_alpha,
                };
                autograd::micro_batch(
                    st,
                    &batch,
                    self.config.gradient_checkpointing,
                    &mut self.mb_grads,
                )?
            }
            _ => {
                let pins = Pins::new(&self.model.weights)?;
                let extras = extras(&self.params, &self.slots, self.settings.scaling());
                let net = Net::new(&self.model.config, &pins, extras)?;
                engine::micro_batch(
                    &net,
                    &batch,
                    &mut noise,
                    self.config.gradient_checkpointing,
                    &mut self.mb_grads,
                    &mut self.workspace,
                )?
            }
        };
        Ok((nll, b * t))
    }

    /// Runs `steps` (each a list of micro-batches) with the learning rate `lr_at(step_index)` (0-based optimizer
    /// step), calling `on_step` after each. Stops early when `on_step` returns [`Control::Stop`] or `cancel` is set
    /// (then returns [`Error::Cancelled`]; the steps already done are kept).
    pub fn run<I, F, C>(
        &mut self,
        steps: I,
        lr_at: F,
        cancel: &AtomicBool,
        mut on_step: C,
    ) -> Result<u64>
    where
        I: IntoIterator<Item = Vec<Vec<Sample>>>,
        F: Fn(u64) -> f64,
        C: FnMut(&StepStats) -> Control,
    {
        let mut done = 0;
        for mbs in steps {
            let stats = self.step(&mbs, lr_at(self.step), cancel)?;
            done += 1;
            if on_step(&stats) == Control::Stop {
                break;
            }
        }
        Ok(done)
    }

    /// Gradients of the mean loss over `batch` for every trainable tensor, by PEFT key (no update), with the noise of
    /// micro-batch 0 of the next step. For tests and diagnostics.
    pub fn gradients(&mut self, batch: &[Sample]) -> Result<BTreeMap<String, Tensor>> {
        for (si, s) in batch.iter().enumerate() {
            self.check_sample(s, &format!("batch[{si}]"))?;
        }
        let total: usize = batch.iter().map(scored).sum();
        if total == 0 {
            return Err(Error::input("batch", "no position has a label to predict"));
        }
        self.micro_batch_gradient(0, batch, total)?;
        let dev = self.model.device();
        self.params
            .iter()
            .zip(&self.mb_grads)
            .map(|(p, g)| {
                Ok((
                    p.key.clone(),
                    Tensor::from_slice(g, p.shape.as_slice(), dev)?,
                ))
            })
            .collect()
    }
}

/// What a step's micro-batches add up to besides the gradient: Σ NLL and padded tokens, added in order of `k`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StepSum {
    pub(crate) nll: f64,
    pub(crate) padded: usize,
}

impl StepSum {
    /// Adds one micro-batch (call in order of `k`).
    pub(crate) fn add(&mut self, nll: f64, padded: usize) {
        self.nll += nll;
        self.padded += padded;
    }
}

/// The backend a model trains with under `choice`; errors name what does not fit.
fn backend_for(model: &Model, choice: Backend) -> Result<Backend> {
    let cpu = model.device().is_cpu();
    match choice {
        Backend::Auto if cpu => Ok(Backend::Engine),
        Backend::Auto => Ok(Backend::Autograd),
        Backend::Engine if !cpu => Err(Error::input(
            "backend",
            "the CPU engine trains models loaded on the CPU only; load the model on the CPU or use the autograd backend",
        )),
        b => Ok(b),
    }
}

/// The trainer's parameters as the engine's extras.
fn extras<'a>(params: &'a [Param], slots: &[Slot], scale: f64) -> Extras<'a> {
    let mut out = Extras {
        scale,
        pairs: Vec::new(),
        embed: None,
        head: None,
    };
    for slot in slots {
        match *slot {
            Slot::Pair {
                layer,
                module,
                a,
                b,
            } => out.pairs.push(PairRef {
                layer,
                module,
                a: &params[a].value,
                b: &params[b].value,
                grad_a: a,
                grad_b: b,
            }),
            Slot::LmHead(i) => out.head = Some((&params[i].value, i)),
            Slot::Embed(i) => out.embed = Some((&params[i].value, i)),
        }
    }
    out
}

/// Number of scored next-token predictions in a sample.
fn scored(s: &Sample) -> usize {
    s.labels
        .iter()
        .skip(1)
        .filter(|&&l| l != IGNORE_INDEX)
        .count()
}

#[cfg(test)]
#[path = "train_tests.rs"]
mod tests;
