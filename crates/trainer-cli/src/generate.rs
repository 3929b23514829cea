//! `trainer-cli generate`: sample text to try an adapter, on the base weights as stored with the adapter applied
//! unmerged and a key/value cache (`trainer_core::Generation`); candle-transformers' sampler picks the tokens.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::Tensor;
use candle_transformers::generation::{LogitsProcessor, Sampling};
use clap::Args;
use trainer_core::Adapter;

use crate::model_files::{device, load_model};

/// Arguments of `trainer-cli generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The base model (a Hugging Face folder or a .gguf file).
    #[arg(long)]
    pub model: PathBuf,
    /// An adapter (a PEFT folder or a llama.cpp LoRA adapter .gguf file), applied while generating.
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
    let special = base.special_tokens();
    let tokenizer = base.tokenizer();
    let adapter = match &args.adapter {
        Some(dir) => Some(
            Adapter::open(dir, &base)
                .with_context(|| format!("cannot load adapter {}", dir.display()))?,
        ),
        None => None,
    };
    let mut generation = base.generation(adapter.as_ref())?;
    let context = base.config().max_position_embeddings;

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
    if ids.len() > context {
        bail!(
            "the prompt is {} tokens, longer than the model's context of {context}",
            ids.len()
        );
    }
    let mut logits = generation.feed(&ids)?;
    for _ in 0..args.max_tokens {
        let next = sampler.sample(&Tensor::from_vec(
            logits,
            base.config().vocab_size,
            &device,
        )?)?;
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
        if ids.len() >= context {
            break;
        }
        logits = generation.feed(&[next])?;
    }
    writeln!(out)?;
    Ok(ExitCode::SUCCESS)
}
