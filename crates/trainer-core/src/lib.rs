//! LoRA training engine on candle: model loading, decoder, PEFT adapters, training loop.

mod adapter;
mod config;
mod decoder;
mod error;
mod gguf;
mod hf;
mod io;
mod lora;
mod model;
mod ops;
mod rng;
mod tokenizer;

pub use adapter::{Adapter, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
pub use config::{ModelConfig, RopeScaling};
pub use error::{Error, Result};
pub use model::Model;
pub use tokenizer::SpecialTokens;
