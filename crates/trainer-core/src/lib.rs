//! LoRA training engine on candle: model loading, a differentiable Llama-family decoder, PEFT adapters and an
//! exact, resumable training step.
//!
//! # The pieces
//!
//! - [`Model::load`] reads a `.gguf` file (dequantized to f32, llama.cpp's q/k row permutation undone, tokenizer
//!   built from the GGUF metadata) or a Hugging Face directory (`config.json`, `model.safetensors` or a sharded
//!   index, `tokenizer.json`). Architectures: `llama`, `mistral`, `qwen2` (q/k/v bias). [`Model::logits`] gives
//!   `[T, vocab]` logits for every position, [`Model::perplexity`] the sliding-window perplexity,
//!   [`Model::merge`] folds an adapter into the weights and [`Model::save_hf_dir`] writes a HF directory.
//! - [`Adapter`] is a LoRA adapter in PEFT's on-disk format (`adapter_config.json` + `adapter_model.safetensors`,
//!   keys `base_model.model.<module>.lora_A.weight`). Loading is strict: a wrong prefix, a `.default.` key, a
//!   missing factor or a wrong shape is an error, never a silent no-op.
//! - [`Trainer`] trains an adapter: [`Trainer::step`] takes the micro-batches of one optimizer step (gradient
//!   accumulation), right-pads each to its longest sample, masks labels of `-100`, clips the global gradient norm
//!   and applies the chosen [`Optimizer`] (AdamW, SGD, Adagrad or Adafactor, with torch / transformers semantics)
//!   with the learning rate the caller supplies (e.g. from `schedulers`).
//!   LoRA dropout and NEFTune noise come from a seeded RNG, so a run is reproducible bit for bit, and
//!   [`Trainer::save_state`] / [`Trainer::load_state`] resume exactly. Nothing here prints; [`Trainer::run`]
//!   reports each step to a callback and stops on a cancel flag.
//! - [`job`] runs a whole Training PRO job on top of these: raw text sliced by `prts-chunker` and/or a
//!   [`dataset`], the step plan and schedule of `schedulers`, eval cadence, the checkpoint decisions of
//!   `checkpoint-policy` carried out by a checkpoint store, live control, the training log of `plot-report`
//!   and exact resume; it reports to an observer and stops on an interrupter.
//!
//! On the CPU, training, evaluation, logits and perplexity run on the CPU engine (a hand-written forward and
//! backward pass on plain buffers, reading the frozen weights in the form they are stored in); the `cuda` feature
//! enables candle's CUDA backend, where training goes through candle's autograd ([`Backend`]).
//!
//! # Example
//!
//! ```
//! use std::sync::atomic::AtomicBool;
//! use candle_core::Device;
//! use lora_targets::LoraSettings;
//! use trainer_core::{Model, ModelConfig, Sample, TrainConfig, Trainer};
//!
//! // A tiny random model stands in for `Model::load(Path::new("model.gguf"), &Device::Cpu)?`.
//! let config = ModelConfig {
//!     model_type: "llama".into(), vocab_size: 256, hidden_size: 32, intermediate_size: 64,
//!     num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, head_dim: 8,
//!     rms_norm_eps: 1e-5, rope_theta: 10_000.0, rope_scaling: None, max_position_embeddings: 128,
//!     tie_word_embeddings: true, attention_bias: false,
//! };
//! let model = Model::random(config, 0, &Device::Cpu)?;
//! let ids = model.tokenizer().encode("hello world", false).map_err(|e| trainer_core::Error::Tokenizer(e.to_string()))?;
//! let ids = ids.get_ids().to_vec();
//!
//! let settings = LoraSettings { r: 4, alpha: 8.0, dropout: 0.0, ..LoraSettings::default() };
//! let mut trainer = Trainer::new(&model, settings, TrainConfig { seed: 1, ..TrainConfig::default() })?;
//! let cancel = AtomicBool::new(false);
//! let first = trainer.step(&[vec![Sample::causal(ids.clone())]], 1e-2, &cancel)?;
//! for _ in 0..5 {
//!     trainer.step(&[vec![Sample::causal(ids.clone())]], 1e-2, &cancel)?;
//! }
//! let last = trainer.step(&[vec![Sample::causal(ids.clone())]], 1e-2, &cancel)?;
//! assert!(last.loss < first.loss);
//!
//! let adapter = trainer.adapter()?;
//! let logits = model.logits(Some(&adapter), &ids)?;
//! assert_eq!(logits.dims(), &[ids.len(), 256]);
//! # Ok::<(), trainer_core::Error>(())
//! ```

mod adapter;
mod autograd;
mod config;
pub mod dataset;
mod decoder;
mod dropout;
mod engine;
mod error;
mod evaluate;
mod generation;
mod ggml_type;
mod gguf;
mod gguf_file;
mod gguf_limits;
mod gguf_lora;
mod gguf_write;
mod hf;
mod hf_write;
mod io;
pub mod job;
mod load;
mod lora;
mod loss;
mod matrix;
pub mod memory;
mod model;
mod ops;
mod optim;
mod quant;
mod rng;
mod safetensors_file;
mod split_patterns;
pub mod synthetic;
#[cfg(test)]
mod test_models;
mod tokenizer;
mod train;
mod train_state;

pub use adapter::{Adapter, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
pub use config::{ModelConfig, RopeScaling};
pub use error::{Error, Result};
pub use evaluate::{evaluate, EvalStats};
pub use generation::Generation;
pub use gguf_lora::{GgufBase, ADAPTER_GGUF_FILE};
pub use hf_write::SaveDType;
pub use load::{BaseWeights, LoadOptions};
pub use model::Model;
pub use optim::{
    AdafactorParams, AdagradParams, AdamWParams, Optimizer, SgdParams, ADAMW_ALIASES,
    OPTIMIZER_NAMES,
};
pub use tokenizer::SpecialTokens;
pub use train::{Backend, Control, Sample, StepStats, TrainConfig, Trainer, IGNORE_INDEX};

/// Not part of the API: hooks for the crate's benchmark examples.
#[doc(hidden)]
pub use quant::bench as __quant_bench;

/// Not part of the API: timing hooks of the engine's products for the crate's benchmark examples.
#[doc(hidden)]
pub use engine::bench as __engine_bench;
