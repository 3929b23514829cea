//! `trainer-cli export-gguf`: write a PEFT adapter as a llama.cpp LoRA adapter GGUF for its base model.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use trainer_core::{Adapter, GgufBase};

use crate::model_files::load_model;

/// Arguments of `trainer-cli export-gguf`.
#[derive(Debug, Args)]
pub struct ExportGgufArgs {
    /// The base model the adapter was trained on (a .gguf file, or a Hugging Face folder).
    #[arg(long)]
    pub model: PathBuf,
    /// The adapter to export: a PEFT folder (or a .gguf adapter, rewritten).
    #[arg(long)]
    pub adapter: PathBuf,
    /// The .gguf file to write (llama.cpp: --lora FILE).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace --out if it already exists.
    #[arg(long)]
    pub overwrite: bool,
}

fn same_file(a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

/// Runs `trainer-cli export-gguf`.
pub fn run(args: &ExportGgufArgs) -> Result<ExitCode> {
    if args.out.is_dir() {
        bail!("--out {} is a folder: give a file name", args.out.display());
    }
    if same_file(&args.out, &args.model) || same_file(&args.out, &args.adapter) {
        bail!(
            "--out {} is the model or the adapter itself: choose another file",
            args.out.display()
        );
    }
    if args.out.exists() && !args.overwrite {
        bail!(
            "{} already exists: pass --overwrite to replace it",
            args.out.display()
        );
    }
    let model = load_model(&args.model)?;
    let adapter = Adapter::open(&args.adapter, &model)
        .with_context(|| format!("cannot load adapter {}", args.adapter.display()))?;
    let base = GgufBase::of(&model)?;
    adapter
        .save_gguf_for(&base, &args.out)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!(
        "wrote {} (architecture {}, r={}, alpha={} for llama.cpp's alpha/r = {})",
        args.out.display(),
        base.architecture(),
        adapter.settings().r,
        adapter.scaling() * adapter.settings().r as f64,
        adapter.scaling()
    );
    Ok(ExitCode::SUCCESS)
}
