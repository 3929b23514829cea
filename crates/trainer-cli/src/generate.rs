//! `trainer-cli generate`: sample text to try an adapter. The adapter is
//! merged into the base weights and the result runs through
//! candle-transformers' own Llama, an inference path independent of the
//! training decoder.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::llama::{Cache, Llama, LlamaConfig};
use clap::Args;
use trainer_core::Adapter;

use crate::model_files::{device, load_model};

/// Arguments of `trainer-cli generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The base model (a Hugging Face folder or a .gguf file).
    #[arg(long)]
    pub model: PathBuf,
    /// A PEFT adapter folder, merged into the weights before generating.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// The prompt text (continued as raw text).
    #[arg(long)]
    pub prompt: String,
    /// New tokens to generate at most.
    #[arg(long, default_value_t = 100)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 means greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens with this much probability (with --temperature > 0).
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Start the prompt with the model's BOS token (true/false).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub bos: bool,
    /// The old spelling of `--bos false`.
    #[arg(long, hide = true)]
    pub no_bos: bool,
}

/// Runs `trainer-cli generate`.
pub fn run(args: &GenerateArgs) -> Result<ExitCode> {
    if !(args.temperature.is_finite() && args.temperature >= 0.0) {
        bail!("--temperature must be a finite number >= 0");
    }
    if let Some(p) = args.top_p {
        if !(p > 0.0 && p <= 1.0) {
            bail!("--top-p must be in (0, 1]");
        }
    }
    let device = device();
    let base = load_model(&args.model)?;
    let model_type = base.config().model_type.clone();
    if !matches!(model_type.as_str(), "llama" | "mistral") {
        bail!("generate supports llama and mistral models; this one is {model_type}");
    }
    let special = base.special_tokens();
    let tokenizer = base.tokenizer().clone();
    let merged = match &args.adapter {
        Some(dir) => {
            let adapter = Adapter::load(dir, &base)
                .with_context(|| format!("cannot load adapter {}", dir.display()))?;
            base.merge(&adapter)?
        }
        None => base,
    };

    // Hand the merged weights to candle-transformers through a standard HF folder.
    let tmp = std::env::temp_dir().join(format!("trainer-cli-generate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    if let Err(e) = merged.save_hf_dir(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e).context("cannot hand the merged model to the inference path");
    }
    drop(merged);
    let loaded = (|| -> Result<(LlamaConfig, std::collections::HashMap<String, Tensor>)> {
        let cfg: LlamaConfig =
            serde_json::from_str(&std::fs::read_to_string(tmp.join("config.json"))?)?;
        let tensors = candle_core::safetensors::load(tmp.join("model.safetensors"), &device)?;
        Ok((cfg, tensors))
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    let (cfg, tensors) = loaded.context("cannot hand the merged model to the inference path")?;
    let cfg = cfg.into_config(false);
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
    let llama = Llama::load(vb, &cfg)?;
    let mut cache = Cache::new(true, DType::F32, &cfg, &device)?;

    let mut ids: Vec<u32> = Vec::new();
    if args.bos && !args.no_bos {
        if let Some(b) = special.bos {
            ids.push(b);
        }
    }
    let enc = tokenizer
        .encode(args.prompt.as_str(), false)
        .map_err(|e| anyhow!("cannot tokenize the prompt: {e}"))?;
    ids.extend_from_slice(enc.get_ids());
    let prompt_len = ids.len();
    let sampling = if args.temperature == 0.0 {
        Sampling::ArgMax
    } else {
        match args.top_p {
            Some(p) => Sampling::TopP {
                p,
                temperature: args.temperature,
            },
            None => Sampling::All {
                temperature: args.temperature,
            },
        }
    };
    let mut sampler = LogitsProcessor::from_sampling(args.seed, sampling);
    let mut out = std::io::stdout().lock();
    write!(out, "{}", args.prompt)?;
    let mut printed = String::new();
    let mut pos = 0;
    for _ in 0..args.max_tokens {
        let input = Tensor::new(&ids[pos..], &device)?.unsqueeze(0)?;
        let logits = llama.forward(&input, pos, &mut cache)?.squeeze(0)?;
        pos = ids.len();
        let next = sampler.sample(&logits)?;
        if Some(next) == special.eos {
            break;
        }
        ids.push(next);
        let text = tokenizer
            .decode(&ids[prompt_len..], true)
            .map_err(|e| anyhow!("cannot decode: {e}"))?;
        if let Some(new) = text.strip_prefix(printed.as_str()) {
            write!(out, "{new}")?;
            out.flush()?;
        }
        printed = text;
    }
    writeln!(out)?;
    Ok(ExitCode::SUCCESS)
}
