//! A trainer's state on disk: the adapter (PEFT files), the optimizer's state and the step, RNG and config
//! (with the optimizer's name and settings), so a run resumes exactly.
//!
//! `optimizer.safetensors` holds tensor `NAME.KEY` for buffer `NAME` of the trainable tensor of PEFT key `KEY`:
//! AdamW `m`, `v`; SGD with momentum `momentum_buffer` (plain SGD has no state: the file holds no tensor);
//! Adagrad `sum`; Adafactor `exp_avg_sq_row`, `exp_avg_sq_col` (matrices) or `exp_avg_sq` (vectors), and
//! `exp_avg` with `beta1`. This version writes format 3 of `trainer_state.json`: dropout and NEFTune noise are drawn
//! per step and micro-batch from the seed in the config, so no RNG state is stored. Formats 1 (AdamW only) and 2
//! (with the optimizer) drew the noise from one stream running through the run (stored as `rng`); they are still
//! read when their run had no noise (no dropout, no NEFTune), and refused otherwise, since that run cannot be
//! continued exactly.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::adapter::Adapter;
use crate::error::{Error, Result};
use crate::io;
use crate::model::Model;
use crate::train::{TrainConfig, Trainer};

const STATE_FILE: &str = "trainer_state.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The `trainer_state.json` format this version writes (2: the config names the optimizer; 3: the noise is keyed
/// by step and micro-batch, no `rng`).
const FORMAT: u32 = 3;

#[derive(Serialize, Deserialize)]
struct SavedState {
    format: u32,
    step: u64,
    /// Formats 1 and 2: the state of the one noise stream of the run (read, never used).
    #[serde(default, skip_serializing)]
    #[allow(dead_code)]
    rng: Option<[u64; 4]>,
    config: TrainConfig,
}

impl<'m> Trainer<'m> {
    /// Saves the full training state into `dir`: the adapter (PEFT files), the optimizer's state
    /// (`optimizer.safetensors`), the step and config with the optimizer (`trainer_state.json`).
    /// Atomic per file.
    pub fn save_state(&self, dir: &Path, base_model_name_or_path: &str) -> Result<()> {
        self.adapter()?.save(dir, base_model_name_or_path)?;
        let mut tensors = BTreeMap::new();
        let cpu = candle_core::Device::Cpu;
        for p in &self.params {
            let mut state = p.state.clone();
            for (name, shape, values) in state.buffers(&p.shape) {
                tensors.insert(
                    format!("{name}.{}", p.key),
                    Tensor::from_slice(values, shape.as_slice(), &cpu)?,
                );
            }
        }
        io::save_safetensors(&dir.join(OPTIMIZER_FILE), &tensors)?;
        let state = SavedState {
            format: FORMAT,
            step: self.step,
            rng: None,
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
        if !(1..=FORMAT).contains(&state.format) {
            return Err(Error::model(
                &state_path,
                format!(
                    "trainer state format {} is unknown to this version (it reads 1 to {FORMAT}): resume it with \
                     the version that wrote it",
                    state.format
                ),
            ));
        }
        let adapter = Adapter::load(dir, model)?;
        let dropout = adapter.settings().dropout;
        let noise: Vec<String> = [
            (dropout > 0.0).then(|| format!("LoRA dropout {dropout}")),
            state
                .config
                .neftune_alpha
                .map(|a| format!("NEFTune alpha {a}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        if state.format < 3 && !noise.is_empty() {
            let noise = noise.join(" and ");
            return Err(Error::model(
                &state_path,
                format!(
                    "this checkpoint (trainer state format {}) was written by an earlier version whose {noise} \
                     noise came from one random stream running through the run; this version draws the noise \
                     per step and micro-batch (so a run is exact on any number of processes), so this run \
                     cannot continue exactly: start a new run, or finish this one with the version that wrote it",
                    state.format
                ),
            ));
        }
        let mut trainer = Self::from_adapter(model, &adapter, state.config)?;
        let opt_path = dir.join(OPTIMIZER_FILE);
        let mut tensors = io::load_safetensors(&opt_path, &candle_core::Device::Cpu)?;
        let optimizer = trainer.config.optimizer.name();
        for p in &mut trainer.params {
            for (name, shape, dst) in p.state.buffers(&p.shape) {
                let key = format!("{name}.{}", p.key);
                let t = tensors.remove(&key).ok_or_else(|| {
                    Error::model(
                        &opt_path,
                        format!("tensor `{key}` of the {optimizer} state is missing"),
                    )
                })?;
                if t.dims() != shape.as_slice() {
                    return Err(Error::model(
                        &opt_path,
                        format!(
                            "tensor `{key}` has shape {:?}, the {optimizer} state needs {shape:?}",
                            t.dims()
                        ),
                    ));
                }
                *dst = t.flatten_all()?.to_vec1::<f32>()?;
            }
        }
        if let Some(extra) = tensors.keys().next() {
            return Err(Error::model(
                &opt_path,
                format!(
                    "tensor `{extra}` is no part of the {optimizer} state of this adapter's tensors \
                     ({STATE_FILE} names the optimizer)"
                ),
            ));
        }
        trainer.step = state.step;
        Ok(trainer)
    }
}
