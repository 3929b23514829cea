//! [`Trainer`]: LoRA training steps (masked CE, dynamic padding, gradient accumulation, clipping, AdamW, NEFTune,
//! LoRA dropout) with exact save/resume.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Tensor, Var};
use lora_targets::LoraSettings;
use serde::{Deserialize, Serialize};

use crate::adapter::Adapter;
use crate::decoder::Noise;
use crate::engine;
use crate::error::{Error, Result};
use crate::io;
use crate::lora::{LoraPair, LoraWeights};
use crate::loss;
use crate::model::Model;
use crate::optim::{AdamWParams, Moments};
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
    /// AdamW betas, eps and weight decay.
    pub adamw: AdamWParams,
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
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            adamw: AdamWParams::default(),
            max_grad_norm: Some(1.0),
            neftune_alpha: None,
            pad_id: 0,
            gradient_checkpointing: false,
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

/// One trainable tensor: a LoRA factor or a modules_to_save copy, with its PEFT key and AdamW moments.
struct Param {
    key: String,
    var: Var,
    moments: Moments,
}

/// Where each LoRA factor lives in `params`.
enum Slot {
    Pair {
        layer: usize,
        module: usize,
        a: usize,
        b: usize,
    },
    LmHead(usize),
    Embed(usize),
}

/// A LoRA trainer over a borrowed [`Model`].
pub struct Trainer<'m> {
    model: &'m Model,
    settings: LoraSettings,
    config: TrainConfig,
    params: Vec<Param>,
    slots: Vec<Slot>,
    rng: Rng,
    step: u64,
}

const STATE_FILE: &str = "trainer_state.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";

#[derive(Serialize, Deserialize)]
struct SavedState {
    format: u32,
    step: u64,
    rng: [u64; 4],
    config: TrainConfig,
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
        let w = adapter.weights();
        let mut params = Vec::new();
        let mut slots = Vec::new();
        let named = adapter.named_tensors();
        let mut push = |key: String, t: &Tensor| -> Result<usize> {
            let var = Var::from_tensor(&t.to_dtype(DType::F32)?.copy()?)?;
            params.push(Param {
                moments: Moments::zeros(t.elem_count()),
                key,
                var,
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
        for (key, t) in &named {
            if key.ends_with("lm_head.weight") {
                slots.push(Slot::LmHead(push(key.clone(), t)?));
            } else if key.ends_with("embed_tokens.weight") {
                slots.push(Slot::Embed(push(key.clone(), t)?));
            }
        }
        Ok(Self {
            model,
            settings: adapter.settings().clone(),
            rng: Rng::new(config.seed ^ 0x7261_696E_696E_6721),
            config,
            params,
            slots,
            step: 0,
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
        self.params.iter().map(|p| p.var.elem_count()).sum()
    }

    fn lora_weights(&self) -> LoraWeights {
        let layers = self.model.config.num_hidden_layers;
        let mut out = LoraWeights {
            scale: self.settings.scaling(),
            layers: (0..layers).map(|_| Default::default()).collect(),
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
                } => {
                    out.layers[layer][module] = Some(LoraPair {
                        a: self.params[a].var.as_tensor().clone(),
                        b: self.params[b].var.as_tensor().clone(),
                    });
                }
                Slot::LmHead(i) => out.lm_head = Some(self.params[i].var.as_tensor().clone()),
                Slot::Embed(i) => out.embed_tokens = Some(self.params[i].var.as_tensor().clone()),
            }
        }
        out
    }

    /// The current adapter (a detached copy, safe to save or evaluate while training goes on).
    pub fn adapter(&self) -> Result<Adapter> {
        let mut w = self.lora_weights();
        let copy = |t: &Tensor| t.detach().copy();
        for mods in &mut w.layers {
            for p in mods.iter_mut().flatten() {
                p.a = copy(&p.a)?;
                p.b = copy(&p.b)?;
            }
        }
        w.lm_head = w.lm_head.as_ref().map(copy).transpose()?;
        w.embed_tokens = w.embed_tokens.as_ref().map(copy).transpose()?;
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
    pub fn step(
        &mut self,
        micro_batches: &[Vec<Sample>],
        lr: f64,
        cancel: &AtomicBool,
    ) -> Result<StepStats> {
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
        let saved_rng = self.rng.clone();
        let mut grads: Vec<Option<Tensor>> = vec![None; self.params.len()];
        let mut loss_sum = 0f64;
        let mut padded = 0usize;
        for mb in micro_batches {
            if cancel.load(Ordering::Relaxed) {
                self.rng = saved_rng;
                return Err(Error::Cancelled);
            }
            let (l, p) = self.accumulate(mb, total, &mut grads)?;
            loss_sum += l;
            padded += p;
        }
        if cancel.load(Ordering::Relaxed) {
            self.rng = saved_rng;
            return Err(Error::Cancelled);
        }
        let mut flat: Vec<Vec<f32>> = Vec::with_capacity(grads.len());
        for (p, g) in self.params.iter().zip(grads) {
            let g = g.ok_or_else(|| {
                Error::tensor(
                    &p.key,
                    "received no gradient: the graph is cut between it and the loss (a bug)",
                )
            })?;
            flat.push(g.flatten_all()?.to_vec1::<f32>()?);
        }
        let norm = flat
            .iter()
            .flatten()
            .map(|v| f64::from(*v) * f64::from(*v))
            .sum::<f64>()
            .sqrt();
        if let Some(max) = self.config.max_grad_norm {
            // torch.nn.utils.clip_grad_norm_: coef = max / (norm + 1e-6), applied only when < 1.
            let coef = (max / (norm + 1e-6)) as f32;
            if coef < 1.0 {
                flat.iter_mut().flatten().for_each(|v| *v *= coef);
            }
        }
        self.step += 1;
        for (p, g) in self.params.iter_mut().zip(&flat) {
            let shape = p.var.shape().clone();
            let mut data = p.var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            p.moments
                .update(&mut data, g, lr, self.step, &self.config.adamw);
            p.var.set(&Tensor::from_vec(data, shape, p.var.device())?)?;
        }
        Ok(StepStats {
            step: self.step,
            loss: loss_sum / total as f64,
            grad_norm: norm,
            tokens: total,
            padded_tokens: padded,
            lr,
        })
    }

    /// Forward + backward of one micro-batch; adds `d(sum_nll / total)/dθ` into `grads`. Returns (sum of NLL,
    /// padded token count).
    fn accumulate(
        &mut self,
        mb: &[Sample],
        total: usize,
        grads: &mut [Option<Tensor>],
    ) -> Result<(f64, usize)> {
        let dev = self.model.device().clone();
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
        let lw = self.lora_weights();
        let ids = Tensor::from_vec(ids, (b, t), &dev)?;
        if self.model.engine_enabled() && engine::supports(&self.model.decoder(), &lw) {
            let nll = self.accumulate_engine(&ids, &rows, &targets, total, &lw, grads)?;
            return Ok((nll, b * t));
        }
        let rows = Tensor::new(rows.as_slice(), &dev)?;
        let targets = Tensor::new(targets.as_slice(), &dev)?;
        let nll_sum = if self.config.gradient_checkpointing {
            self.backward_checkpointed(&ids, &rows, &targets, &lw, total, grads)?
        } else {
            let mut noise = Noise {
                rng: &mut self.rng,
                lora_dropout: self.settings.dropout,
                neftune_alpha: self.config.neftune_alpha,
            };
            let d = self.model.decoder();
            let h = d.hidden(&ids, Some(&lw), Some(&mut noise))?;
            let hidden = self.model.config.hidden_size;
            let h = h.reshape((b * t, hidden))?.index_select(&rows, 0)?;
            let nll_sum = loss::nll_sum(&h, d.head(Some(&lw)), &targets, d.fused)?;
            let store = (&nll_sum / total as f64)?.backward()?;
            collect(&self.params, &store, grads)?;
            nll_sum
        };
        Ok((f64::from(nll_sum.to_scalar::<f32>()?), b * t))
    }

    /// [`Self::accumulate`] through the CPU engine (`engine.rs`).
    fn accumulate_engine(
        &mut self,
        ids: &Tensor,
        rows: &[u32],
        targets: &[u32],
        total: usize,
        lw: &LoraWeights,
        grads: &mut [Option<Tensor>],
    ) -> Result<f64> {
        let mut pairs = Vec::new();
        for slot in &self.slots {
            if let Slot::Pair {
                layer,
                module,
                a,
                b,
            } = *slot
            {
                pairs.push(engine::PairParams {
                    layer,
                    module,
                    a: self.params[a]
                        .var
                        .as_tensor()
                        .flatten_all()?
                        .to_vec1::<f32>()?,
                    b: self.params[b]
                        .var
                        .as_tensor()
                        .flatten_all()?
                        .to_vec1::<f32>()?,
                    grad_a: a,
                    grad_b: b,
                });
            }
        }
        let mut flat: Vec<Vec<f32>> = self
            .params
            .iter()
            .map(|p| vec![0f32; p.var.elem_count()])
            .collect();
        let mut noise = Noise {
            rng: &mut self.rng,
            lora_dropout: self.settings.dropout,
            neftune_alpha: self.config.neftune_alpha,
        };
        let batch = engine::Batch {
            ids,
            rows,
            targets,
            total,
        };
        let nll = engine::micro_batch(
            &self.model.decoder(),
            lw,
            &pairs,
            &batch,
            &mut noise,
            self.config.gradient_checkpointing,
            &mut flat,
        )?;
        for ((p, slot), g) in self.params.iter().zip(grads.iter_mut()).zip(flat) {
            let g = Tensor::from_vec(g, p.var.shape(), p.var.device())?;
            *slot = Some(match slot.take() {
                Some(acc) => (acc + g)?,
                None => g,
            });
        }
        Ok(nll)
    }

    /// Forward layer by layer keeping only each layer's input, then backward layer by layer, recomputing each
    /// layer's graph (gradient checkpointing). Dropout masks are reproduced by replaying the RNG state.
    fn backward_checkpointed(
        &mut self,
        ids: &Tensor,
        rows: &Tensor,
        targets: &Tensor,
        lw: &LoraWeights,
        total: usize,
        grads: &mut [Option<Tensor>],
    ) -> Result<Tensor> {
        let d = self.model.decoder();
        let (b, t) = ids.dims2()?;
        let hidden = self.model.config.hidden_size;
        let (dropout, neftune) = (self.settings.dropout, self.config.neftune_alpha);
        let tables = d.tables(t, ids.device())?;
        let x0 = d.embed(
            ids,
            Some(lw),
            Some(&mut Noise {
                rng: &mut self.rng,
                lora_dropout: dropout,
                neftune_alpha: neftune,
            }),
        )?;
        let layers = self.model.config.num_hidden_layers;
        let mut inputs = Vec::with_capacity(layers);
        let mut states = Vec::with_capacity(layers);
        let mut x = x0.detach();
        for li in 0..layers {
            inputs.push(x.clone());
            states.push(self.rng.clone());
            let mut noise = Noise {
                rng: &mut self.rng,
                lora_dropout: dropout,
                neftune_alpha: neftune,
            };
            x = d
                .layer(li, &x, &tables, Some(lw), &mut Some(&mut noise))?
                .detach();
        }
        let after = self.rng.clone();
        let top = Var::from_tensor(&x)?;
        let h = d
            .final_norm(top.as_tensor())?
            .reshape((b * t, hidden))?
            .index_select(rows, 0)?;
        let nll_sum = loss::nll_sum(&h, d.head(Some(lw)), targets, d.fused)?;
        let store = (&nll_sum / total as f64)?.backward()?;
        collect(&self.params, &store, grads)?;
        let mut g = store.get(top.as_tensor()).cloned().ok_or_else(|| {
            Error::tensor(
                "hidden states",
                "no gradient reached the last layer (a bug)",
            )
        })?;
        drop(store);
        for li in (0..layers).rev() {
            let xin = Var::from_tensor(&inputs[li])?;
            self.rng = states[li].clone();
            let mut noise = Noise {
                rng: &mut self.rng,
                lora_dropout: dropout,
                neftune_alpha: neftune,
            };
            let out = d.layer(
                li,
                xin.as_tensor(),
                &tables,
                Some(lw),
                &mut Some(&mut noise),
            )?;
            let store = (out * &g)?.sum_all()?.backward()?;
            collect(&self.params, &store, grads)?;
            g = store.get(xin.as_tensor()).cloned().ok_or_else(|| {
                Error::tensor(
                    "hidden states",
                    format!("no gradient reached layer {li} (a bug)"),
                )
            })?;
        }
        self.rng = after;
        if x0.track_op() {
            // A trained embed_tokens copy: push the input gradient into it.
            let store = (x0 * &g)?.sum_all()?.backward()?;
            collect(&self.params, &store, grads)?;
        }
        Ok(nll_sum)
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

    /// Saves the full training state into `dir`: the adapter (PEFT files), the AdamW moments
    /// (`optimizer.safetensors`), the step, RNG state and config (`trainer_state.json`). Atomic per file.
    pub fn save_state(&self, dir: &Path, base_model_name_or_path: &str) -> Result<()> {
        self.adapter()?.save(dir, base_model_name_or_path)?;
        let mut moments = BTreeMap::new();
        for p in &self.params {
            let shape = p.var.shape().clone();
            moments.insert(
                format!("m.{}", p.key),
                Tensor::from_slice(&p.moments.m, shape.clone(), &candle_core::Device::Cpu)?,
            );
            moments.insert(
                format!("v.{}", p.key),
                Tensor::from_slice(&p.moments.v, shape, &candle_core::Device::Cpu)?,
            );
        }
        io::save_safetensors(&dir.join(OPTIMIZER_FILE), &moments)?;
        let state = SavedState {
            format: 1,
            step: self.step,
            rng: self.rng.state(),
            config: self.config.clone(),
        };
        let text = serde_json::to_string_pretty(&state)
            .map_err(|e| Error::input("state", e.to_string()))?;
        io::write_atomic(&dir.join(STATE_FILE), text.as_bytes())
    }

    /// Restores a trainer saved with [`Trainer::save_state`] for `model`; training continues exactly where it stopped.
    pub fn load_state(dir: &Path, model: &'m Model) -> Result<Self> {
        let state_path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
        let state: SavedState = serde_json::from_str(&text)
            .map_err(|e| Error::model(&state_path, format!("not a trainer state file: {e}")))?;
        if state.format != 1 {
            return Err(Error::model(
                &state_path,
                format!("unknown state format {}", state.format),
            ));
        }
        let adapter = Adapter::load(dir, model)?;
        let mut trainer = Self::from_adapter(model, &adapter, state.config)?;
        let opt_path = dir.join(OPTIMIZER_FILE);
        let mut tensors = io::load_safetensors(&opt_path, &candle_core::Device::Cpu)?;
        for p in &mut trainer.params {
            for (prefix, dst) in [("m.", &mut p.moments.m), ("v.", &mut p.moments.v)] {
                let key = format!("{prefix}{}", p.key);
                let t = tensors
                    .remove(&key)
                    .ok_or_else(|| Error::model(&opt_path, format!("tensor `{key}` is missing")))?;
                if t.elem_count() != dst.len() {
                    return Err(Error::model(
                        &opt_path,
                        format!("tensor `{key}` has the wrong size"),
                    ));
                }
                *dst = t.flatten_all()?.to_vec1::<f32>()?;
            }
        }
        if let Some(extra) = tensors.keys().next() {
            return Err(Error::model(
                &opt_path,
                format!("tensor `{extra}` matches no trainable parameter"),
            ));
        }
        trainer.step = state.step;
        trainer.rng = Rng::from_state(state.rng);
        Ok(trainer)
    }

    /// Gradients of the mean loss over `batch` for every trainable tensor, by PEFT key (no update). For tests and
    /// diagnostics.
    pub fn gradients(&mut self, batch: &[Sample]) -> Result<BTreeMap<String, Tensor>> {
        for (si, s) in batch.iter().enumerate() {
            self.check_sample(s, &format!("batch[{si}]"))?;
        }
        let total: usize = batch.iter().map(scored).sum();
        if total == 0 {
            return Err(Error::input("batch", "no position has a label to predict"));
        }
        let mut grads = vec![None; self.params.len()];
        self.accumulate(batch, total, &mut grads)?;
        self.params
            .iter()
            .zip(grads)
            .map(|(p, g)| {
                g.map(|g| (p.key.clone(), g))
                    .ok_or_else(|| Error::tensor(&p.key, "received no gradient: the graph is cut"))
            })
            .collect()
    }
}

/// Adds the gradients in `store` into `grads` (one slot per parameter).
fn collect(
    params: &[Param],
    store: &candle_core::backprop::GradStore,
    grads: &mut [Option<Tensor>],
) -> Result<()> {
    for (p, slot) in params.iter().zip(grads.iter_mut()) {
        if let Some(g) = store.get(p.var.as_tensor()) {
            *slot = Some(match slot.take() {
                Some(acc) => (acc + g)?,
                None => g.clone(),
            });
        }
    }
    Ok(())
}

/// Number of scored next-token predictions in a sample.
fn scored(s: &Sample) -> usize {
    s.labels
        .iter()
        .skip(1)
        .filter(|&&l| l != IGNORE_INDEX)
        .count()
}
