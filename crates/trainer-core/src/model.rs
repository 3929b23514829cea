//! [`Model`]: a loaded Llama-family model (weights, config, tokenizer) and its inference entry points.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use tokenizers::Tokenizer;

use crate::adapter::Adapter;
use crate::config::ModelConfig;
use crate::decoder::{ids_tensor, nll_rows, Decoder, Weights};
use crate::error::{Error, Result};
use crate::lora::MODULES;
use crate::tokenizer::SpecialTokens;
use crate::{gguf, hf, io, tokenizer};

/// What a loader produces.
pub(crate) struct Parts {
    pub config: ModelConfig,
    pub weights: Weights,
    pub tokenizer: Tokenizer,
    pub special: SpecialTokens,
    pub chat_template: Option<String>,
}

/// A loaded model: f32 weights in Hugging Face layout, its config, tokenizer, special ids and chat template.
#[derive(Debug, Clone)]
pub struct Model {
    pub(crate) config: ModelConfig,
    pub(crate) weights: Weights,
    tokenizer: Tokenizer,
    special: SpecialTokens,
    chat_template: Option<String>,
    source: PathBuf,
    device: Device,
}

impl Model {
    /// Loads a model from a `.gguf` file (dequantized to f32, q/k un-permuted) or a Hugging Face model directory
    /// (`config.json`, `model.safetensors` or a sharded index, `tokenizer.json`). Local files only.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let parts = if path.is_dir() {
            hf::load(path, device)?
        } else if path.is_file() {
            gguf::load(path, device)?
        } else {
            return Err(Error::model(path, "no such file or directory (expected a .gguf file or a HF model directory)"));
        };
        Ok(Self {
            config: parts.config,
            weights: parts.weights,
            tokenizer: parts.tokenizer,
            special: parts.special,
            chat_template: parts.chat_template,
            source: path.to_path_buf(),
            device: device.clone(),
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The tokenizer (from `tokenizer.json`, or built from the GGUF metadata).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// BOS / EOS / pad ids.
    pub fn special_tokens(&self) -> SpecialTokens {
        self.special
    }

    /// The Jinja chat template, if the model has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The path the model was loaded from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Short names of the linear modules LoRA can target (`q_proj` ... `down_proj`).
    pub fn linear_modules(&self) -> Vec<String> {
        MODULES.iter().map(|m| m.to_string()).collect()
    }

    pub(crate) fn decoder(&self) -> Decoder<'_> {
        Decoder {
            cfg: &self.config,
            w: &self.weights,
        }
    }

    pub(crate) fn check_ids(&self, ids: &[u32], field: &str) -> Result<()> {
        if ids.is_empty() {
            return Err(Error::input(field, "no token ids given"));
        }
        if let Some((i, id)) = ids.iter().enumerate().find(|(_, id)| **id as usize >= self.config.vocab_size) {
            return Err(Error::input(
                field,
                format!("token id {id} at position {i} is outside the vocabulary (size {})", self.config.vocab_size),
            ));
        }
        Ok(())
    }

    /// Logits `[T, vocab]` (f32) for every position of `ids`, with an optional adapter applied.
    pub fn logits(&self, adapter: Option<&Adapter>, ids: &[u32]) -> Result<Tensor> {
        self.check_ids(ids, "ids")?;
        if let Some(a) = adapter {
            a.check_fits(self)?;
        }
        let lora = adapter.map(Adapter::weights);
        let d = self.decoder();
        let h = d.hidden(&ids_tensor(ids, &self.device)?, lora, None)?.squeeze(0)?;
        Ok(h.matmul(&d.head(lora).t()?)?)
    }

    /// Mean next-token negative log-likelihood of `targets[i]` given `ids[..=i]`, for the positions where `mask` is
    /// true. `ids`, `targets` and `mask` have the same length.
    fn masked_nll(&self, lora: Option<&crate::lora::LoraWeights>, ids: &[u32], targets: &[u32], mask: &[bool]) -> Result<f64> {
        let d = self.decoder();
        let h = d.hidden(&ids_tensor(ids, &self.device)?, lora, None)?.squeeze(0)?;
        let logits = h.matmul(&d.head(lora).t()?)?;
        let nll = nll_rows(&logits, &Tensor::new(targets, &self.device)?)?.to_vec1::<f32>()?;
        let (sum, n) = nll
            .iter()
            .zip(mask)
            .filter(|(_, m)| **m)
            .fold((0f64, 0usize), |(s, n), (v, _)| (s + f64::from(*v), n + 1));
        Ok(sum / n.max(1) as f64)
    }

    /// Perplexity with a sliding window (text-generation-webui's `calculate_perplexity`): windows of at most
    /// `max_length` tokens start every `stride` tokens; each scores only the tokens not scored by the previous one;
    /// the result is `exp` of the unweighted mean of the window losses. `max_length == 0` means the model's context.
    pub fn perplexity(&self, adapter: Option<&Adapter>, ids: &[u32], stride: usize, max_length: usize) -> Result<f64> {
        self.check_ids(ids, "ids")?;
        if ids.len() < 2 {
            return Err(Error::input("ids", "perplexity needs at least 2 tokens"));
        }
        if stride == 0 {
            return Err(Error::input("stride", "must be at least 1"));
        }
        if let Some(a) = adapter {
            a.check_fits(self)?;
        }
        let max_len = if max_length == 0 { self.config.max_position_embeddings } else { max_length };
        if max_len < 2 {
            return Err(Error::input("max_length", "must be at least 2"));
        }
        let lora = adapter.map(Adapter::weights);
        let n = ids.len();
        let mut nlls = Vec::new();
        let mut prev_end = 0;
        let mut begin = 0;
        while begin < n {
            let end = (begin + max_len).min(n);
            let trg = end - prev_end;
            let window = &ids[begin..end];
            // Position i predicts window[i + 1]; label j is scored when j >= len - trg (and j >= 1).
            let len = window.len();
            if len >= 2 {
                let mask: Vec<bool> = (1..len).map(|j| j >= len - trg.min(len)).collect();
                if mask.iter().any(|m| *m) {
                    nlls.push(self.masked_nll(lora, &window[..len - 1], &window[1..], &mask)?);
                }
            }
            prev_end = end;
            if end == n {
                break;
            }
            begin += stride;
        }
        let mean = nlls.iter().sum::<f64>() / nlls.len().max(1) as f64;
        Ok(mean.exp())
    }

    /// A copy of this model with `adapter` merged into the base weights (`W += scale * B @ A`; modules_to_save
    /// tensors replace their base tensors).
    pub fn merge(&self, adapter: &Adapter) -> Result<Model> {
        adapter.check_fits(self)?;
        let lw = adapter.weights();
        let mut out = self.clone();
        for (l, mods) in lw.layers.iter().enumerate() {
            for (m, pair) in mods.iter().enumerate() {
                if let Some(p) = pair {
                    let w = &out.weights.layers[l].linears[m];
                    let merged = (w + (p.b.matmul(&p.a)? * lw.scale)?)?;
                    out.weights.layers[l].linears[m] = merged;
                }
            }
        }
        if let Some(h) = &lw.lm_head {
            out.weights.lm_head = Some(h.clone());
            out.config.tie_word_embeddings = false;
        }
        if let Some(e) = &lw.embed_tokens {
            if out.config.tie_word_embeddings {
                // Keep the head on the original embeddings (PEFT semantics), so untie.
                out.weights.lm_head = Some(self.weights.embed.clone());
                out.config.tie_word_embeddings = false;
            }
            out.weights.embed = e.clone();
        }
        Ok(out)
    }

    /// Writes a Hugging Face model directory: `config.json`, `model.safetensors` (f32), `tokenizer.json`,
    /// `tokenizer_config.json`, `chat_template.jinja`. Files are written atomically.
    pub fn save_hf_dir(&self, dir: &Path) -> Result<()> {
        if self.weights.rope_freq_factors.is_some() {
            return Err(Error::model(
                &self.source,
                "this GGUF carries per-frequency RoPE factors (rope_freqs.weight) that config.json cannot express \
                 without the original rope_scaling parameters; use the original Hugging Face model instead",
            ));
        }
        io::ensure_dir(dir)?;
        io::save_safetensors(&dir.join("model.safetensors"), &hf::named_weights(&self.weights))?;
        let cfg = self.config.to_hf_json(self.special.bos, self.special.eos);
        io::write_atomic(&dir.join("config.json"), cfg.as_bytes())?;
        tokenizer::write_hf_files(dir, &self.tokenizer, &self.special, self.chat_template.as_deref())
    }
}
