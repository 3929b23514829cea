//! A trainer's state on disk: the adapter (PEFT files), the AdamW moments and the step, RNG and config, so a
//! run resumes exactly.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::adapter::Adapter;
use crate::error::{Error, Result};
use crate::io;
use crate::model::Model;
use crate::rng::Rng;
use crate::train::{TrainConfig, Trainer};

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
    /// Saves the full training state into `dir`: the adapter (PEFT files), the AdamW moments
    /// (`optimizer.safetensors`), the step, RNG state and config (`trainer_state.json`). Atomic per file.
    pub fn save_state(&self, dir: &Path, base_model_name_or_path: &str) -> Result<()> {
        self.adapter()?.save(dir, base_model_name_or_path)?;
        let mut moments = BTreeMap::new();
        let cpu = candle_core::Device::Cpu;
        for p in &self.params {
            let shape = p.shape.as_slice();
            moments.insert(
                format!("m.{}", p.key),
                Tensor::from_slice(&p.moments.m, shape, &cpu)?,
            );
            moments.insert(
                format!("v.{}", p.key),
                Tensor::from_slice(&p.moments.v, shape, &cpu)?,
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
}
