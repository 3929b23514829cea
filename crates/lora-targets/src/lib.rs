//! LoRA target-module presets, resolution against a model, LoRA settings and the
//! PEFT adapter format (`adapter_config.json` and the tensor names of
//! `adapter_model.safetensors`).
//!
//! The flow a trainer follows:
//!
//! 1. Parse the architecture ([`Arch`], from HF `model_type` / GGUF
//!    `general.architecture`) and the user's [`Preset`] (`q-v`, `q-k-v`,
//!    `q-k-v-o`, `k-v-down`, `all` — the original Training PRO's five — or
//!    `all-linear`).
//! 2. Expand the preset with [`Preset::modules`] and check the names against the
//!    model's real linear layers with [`resolve`]; a missing module is an error
//!    that lists what the model has (instead of PEFT's bare "Target modules not
//!    found").
//! 3. Put them in [`LoraSettings`], [`LoraSettings::validate`] it, and scale the
//!    LoRA product by [`LoraSettings::scaling`] (`alpha/r`, or `alpha/sqrt(r)`
//!    with rsLoRA).
//! 4. Save with [`AdapterConfig::from_settings`] + [`AdapterConfig::save`], and
//!    name the tensors with [`lora_tensor_key`] / [`saved_module_key`]; load with
//!    [`AdapterConfig::load`], [`AdapterConfig::to_settings`] and
//!    [`parse_lora_tensor_key`].
//!
//! ```
//! use lora_targets::{resolve, AdapterConfig, Arch, LoraPart, LoraSettings, Preset};
//!
//! let arch: Arch = "llama".parse()?;
//! let preset: Preset = "Q-K-V-O".parse()?;
//! // The model's linear-module short names, one per layer in practice.
//! let available: Vec<String> = arch.linear_modules().iter().map(|m| m.to_string()).collect();
//! let wanted: Vec<String> = preset.modules(arch).iter().map(|m| m.to_string()).collect();
//!
//! let settings = LoraSettings {
//!     r: 8,
//!     alpha: 16.0,
//!     target_modules: resolve(&wanted, &available)?,
//!     ..LoraSettings::default()
//! };
//! settings.validate()?;
//! assert_eq!(settings.scaling(), 2.0);
//!
//! let json = AdapterConfig::from_settings(&settings, "SmolLM2-135M-Instruct").to_json();
//! let back = AdapterConfig::from_json(&json)?.to_settings()?;
//! assert_eq!(back, settings);
//!
//! let key = lora_targets::lora_tensor_key("model.layers.0.self_attn.o_proj", LoraPart::B);
//! assert_eq!(key, "base_model.model.model.layers.0.self_attn.o_proj.lora_B.weight");
//!
//! // Errors say what to do.
//! let err = resolve(&["c_attn".to_string()], &available).unwrap_err();
//! assert!(err.to_string().contains("available linear modules: down_proj, gate_proj"));
//! # Ok::<(), lora_targets::Error>(())
//! ```

mod adapter_config;
mod error;
mod keys;
mod preset;
mod settings;
mod targets;

pub use adapter_config::{AdapterConfig, TargetModules};
pub use error::Error;
pub use keys::{lora_tensor_key, parse_lora_tensor_key, saved_module_key, LoraPart};
pub use preset::{resolve, Arch, Preset};
pub use settings::LoraSettings;
pub use targets::Targets;
