//! `trainer-cli convert` and `trainer-cli merge`: write standard Hugging
//! Face model folders from a GGUF file or from a model plus an adapter; loading a model for every
//! subcommand.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use trainer_core::{Adapter, LoadOptions, Model, SaveDType};

/// Arguments of `trainer-cli convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The model to convert (a .gguf file, or a Hugging Face folder).
    #[arg(long)]
    pub model: PathBuf,
    /// The Hugging Face folder to write (config.json, model.safetensors, tokenizer files).
    #[arg(long)]
    pub out: PathBuf,
    /// The float type of the written weights: f32, bf16 or f16 (default: the base's own float type; bf16 for a
    /// quantized base).
    #[arg(long, value_parser = ["f32", "bf16", "f16"])]
    pub dtype: Option<String>,
}

/// Arguments of `trainer-cli merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The base model (a Hugging Face folder or a .gguf file).
    #[arg(long)]
    pub model: PathBuf,
    /// The adapter to merge in: a PEFT folder or a llama.cpp LoRA adapter .gguf file.
    #[arg(long)]
    pub adapter: PathBuf,
    /// The Hugging Face folder to write.
    #[arg(long)]
    pub out: PathBuf,
    /// The float type of the written weights: f32, bf16 or f16 (default: the base's own float type; bf16 for a
    /// quantized base).
    #[arg(long, value_parser = ["f32", "bf16", "f16"])]
    pub dtype: Option<String>,
}

fn check_out(out: &std::path::Path) -> Result<()> {
    if out.exists() && (!out.is_dir() || out.read_dir()?.next().is_some()) {
        bail!(
            "{} already exists and is not empty: choose another --out",
            out.display()
        );
    }
    Ok(())
}

/// The device the command line runs on: the CPU (trainer-core's `cuda` feature is not wired into the
/// command line).
pub fn device() -> candle_core::Device {
    candle_core::Device::Cpu
}

/// Loads a model (a .gguf file or a Hugging Face folder) on [`device`] with the default load options (the
/// frozen weights kept as stored), with an error naming it.
pub fn load_model(path: &std::path::Path) -> Result<Model> {
    load_model_with(path, &LoadOptions::default())
}

/// [`load_model`] with the given load options (`base_weights`).
pub fn load_model_with(path: &std::path::Path, options: &LoadOptions) -> Result<Model> {
    Model::load_with(path, &device(), options)
        .with_context(|| format!("cannot load model {}", path.display()))
}

/// Bytes as MiB (or GiB from 10 GiB) for messages.
pub fn mib(bytes: u64) -> String {
    if bytes >= 10 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

/// The output type: `--dtype`, or the model's own float type.
fn out_dtype(model: &Model, dtype: Option<&str>) -> Result<SaveDType> {
    Ok(match dtype {
        Some(d) => d.parse()?,
        None => model.native_dtype(),
    })
}

/// Runs `trainer-cli convert`.
pub fn convert(args: &ConvertArgs) -> Result<ExitCode> {
    check_out(&args.out)?;
    let model = load_model(&args.model)?;
    let dtype = out_dtype(&model, args.dtype.as_deref())?;
    model.save_hf_dir_as(&args.out, None, dtype)?;
    eprintln!("wrote {} ({})", args.out.display(), dtype.name());
    Ok(ExitCode::SUCCESS)
}

/// Runs `trainer-cli merge`.
pub fn merge(args: &MergeArgs) -> Result<ExitCode> {
    check_out(&args.out)?;
    let model = load_model(&args.model)?;
    let adapter = Adapter::open(&args.adapter, &model)
        .with_context(|| format!("cannot load adapter {}", args.adapter.display()))?;
    let dtype = out_dtype(&model, args.dtype.as_deref())?;
    model.save_hf_dir_as(&args.out, Some(&adapter), dtype)?;
    eprintln!("wrote {} ({})", args.out.display(), dtype.name());
    Ok(ExitCode::SUCCESS)
}
