//! [`Model`]: a loaded Llama-family model (weights, config, tokenizer) and its inference entry points.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use tokenizers::Tokenizer;

use crate::adapter::Adapter;
use crate::config::ModelConfig;
use crate::decoder::{ids_tensor, nll_rows, Decoder, Weights};
use crate::engine::{self, AdapterPins, Extras, Net, Pins, Workspace};
use crate::error::{Error, Result};
use crate::hf_write::SaveDType;
use crate::load::LoadOptions;
use crate::lora::MODULES;
use crate::matrix::Matrix;
use crate::tokenizer::SpecialTokens;
use crate::{gguf, hf};

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
    /// Loads a model from a `.gguf` file (or the first part of a split one, `NAME-00001-of-0000N.gguf`) or a
    /// Hugging Face model directory (`config.json`, `model.safetensors` or a sharded index, `tokenizer.json`), with
    /// the default [`LoadOptions`]: the frozen weights kept as stored. Local files only.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Self::load_with(path, device, &LoadOptions::default())
    }

    /// [`Model::load`] with options: keep the frozen weights as stored (the default; the CPU engine multiplies
    /// from them) or expand them to f32, and the memory limit to check the weights against before reading them.
    /// Weights kept as stored need the CPU: on another device only `base_weights = f32` loads.
    pub fn load_with(path: &Path, device: &Device, options: &LoadOptions) -> Result<Self> {
        if options.keep() && !device.is_cpu() {
            return Err(Error::model(
                path,
                "base_weights = keep needs the CPU (the engine that multiplies from stored weights is CPU-only); \
                 load on the CPU, or use base_weights = f32 on this device",
            ));
        }
        let parts = if path.is_dir() {
            hf::load(path, device, options)?
        } else if path.is_file() {
            gguf::load(path, device, options)?
        } else {
            return Err(Error::model(
                path,
                "no such file or directory (expected a .gguf file or a HF model directory)",
            ));
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

    /// A model with random weights (seeded) and a byte-level tokenizer (ids 0..256 are the bytes): for tests,
    /// examples and benchmarks. `config.vocab_size` must be at least 256.
    pub fn random(config: ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        let parts = random_parts(config, seed, device)?;
        Ok(Self {
            config: parts.config,
            weights: parts.weights,
            tokenizer: parts.tokenizer,
            special: parts.special,
            chat_template: None,
            source: PathBuf::from("<random>"),
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

    /// Bytes the loaded weights occupy in memory (frozen matrices as stored, norms and biases as f32).
    pub fn resident_bytes(&self) -> u64 {
        let w = &self.weights;
        let t = |t: &Tensor| (t.elem_count() * 4) as u64;
        let m = |m: &Matrix| m.resident_bytes() as u64;
        let mut sum = m(&w.embed) + t(&w.norm) + w.lm_head.as_ref().map_or(0, m);
        for l in &w.layers {
            sum += t(&l.input_norm) + t(&l.post_norm) + l.linears.iter().map(m).sum::<u64>();
            sum += l.qkv_bias.iter().flatten().map(t).sum::<u64>();
        }
        sum
    }

    /// How many frozen matrices are stored in each type (`Q4_1`, `F32`, ...), sorted by type name.
    pub fn weight_types(&self) -> Vec<(String, usize)> {
        let w = &self.weights;
        let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
        let all = std::iter::once(&w.embed)
            .chain(w.lm_head.as_ref())
            .chain(w.layers.iter().flat_map(|l| l.linears.iter()));
        for m in all {
            *counts.entry(m.type_name()).or_default() += 1;
        }
        counts
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Short names of the linear modules LoRA can target (`q_proj` ... `down_proj`).
    pub fn linear_modules(&self) -> Vec<String> {
        MODULES.iter().map(|m| m.to_string()).collect()
    }

    /// The candle decoder over the weights (the autograd path; inference on devices other than the CPU).
    pub(crate) fn decoder(&self) -> Decoder<'_> {
        Decoder {
            cfg: &self.config,
            w: &self.weights,
        }
    }

    /// Runs `f` on the engine's view of the weights with `adapter` applied.
    pub(crate) fn with_net<R>(
        &self,
        adapter: Option<&Adapter>,
        f: impl FnOnce(&Net) -> Result<R>,
    ) -> Result<R> {
        let pins = Pins::new(&self.weights)?;
        let adapter_pins = adapter.map(|a| AdapterPins::new(a.weights())).transpose()?;
        let extras = match &adapter_pins {
            Some(p) => p.extras(),
            None => Extras::none(),
        };
        let net = Net::new(&self.config, &pins, extras)?;
        f(&net)
    }

    pub(crate) fn check_ids(&self, ids: &[u32], field: &str) -> Result<()> {
        if ids.is_empty() {
            return Err(Error::input(field, "no token ids given"));
        }
        if let Some((i, id)) = ids
            .iter()
            .enumerate()
            .find(|(_, id)| **id as usize >= self.config.vocab_size)
        {
            return Err(Error::input(
                field,
                format!(
                    "token id {id} at position {i} is outside the vocabulary (size {})",
                    self.config.vocab_size
                ),
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
        if self.device.is_cpu() {
            let v = self.with_net(adapter, |net| {
                Ok(engine::logits(net, ids, &mut Workspace::default())?)
            })?;
            return Ok(Tensor::from_vec(
                v,
                (ids.len(), self.config.vocab_size),
                &self.device,
            )?);
        }
        let lora = adapter.map(Adapter::weights);
        let d = self.decoder();
        let h = d
            .hidden(&ids_tensor(ids, &self.device)?, lora, None)?
            .squeeze(0)?;
        Ok(h.matmul(&d.head(lora, &self.device)?.t()?)?)
    }

    /// Mean next-token negative log-likelihood of `targets[i]` given `ids[..=i]`, for the positions where `mask` is
    /// true. `ids`, `targets` and `mask` have the same length.
    fn masked_nll(
        &self,
        adapter: Option<&Adapter>,
        ids: &[u32],
        targets: &[u32],
        mask: &[bool],
    ) -> Result<f64> {
        if self.device.is_cpu() {
            let (rows, tg): (Vec<u32>, Vec<u32>) = (0..ids.len())
                .filter(|&i| mask[i])
                .map(|i| (i as u32, targets[i]))
                .unzip();
            let sum = self.with_net(adapter, |net| {
                let mut ws = Workspace::default();
                Ok(engine::nll_sum(
                    net,
                    (ids, 1, ids.len()),
                    &rows,
                    &tg,
                    &mut ws,
                )?)
            })?;
            return Ok(sum / rows.len().max(1) as f64);
        }
        let lora = adapter.map(Adapter::weights);
        let d = self.decoder();
        let h = d
            .hidden(&ids_tensor(ids, &self.device)?, lora, None)?
            .squeeze(0)?;
        let logits = h.matmul(&d.head(lora, &self.device)?.t()?)?;
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
    pub fn perplexity(
        &self,
        adapter: Option<&Adapter>,
        ids: &[u32],
        stride: usize,
        max_length: usize,
    ) -> Result<f64> {
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
        let max_len = if max_length == 0 {
            self.config.max_position_embeddings
        } else {
            max_length
        };
        if max_len < 2 {
            return Err(Error::input("max_length", "must be at least 2"));
        }
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
                    nlls.push(self.masked_nll(adapter, &window[..len - 1], &window[1..], &mask)?);
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
                    let w = out.weights.layers[l].linears[m].to_tensor(&self.device)?;
                    let merged = (w + (p.b.matmul(&p.a)? * lw.scale)?)?;
                    out.weights.layers[l].linears[m] = Matrix::dense(merged)?;
                }
            }
        }
        if let Some(h) = &lw.lm_head {
            out.weights.lm_head = Some(Matrix::dense(h.clone())?);
            out.config.tie_word_embeddings = false;
        }
        if let Some(e) = &lw.embed_tokens {
            if out.config.tie_word_embeddings {
                // Keep the head on the original embeddings (PEFT semantics), so untie.
                out.weights.lm_head = Some(self.weights.embed.clone());
                out.config.tie_word_embeddings = false;
            }
            out.weights.embed = Matrix::dense(e.clone())?;
        }
        Ok(out)
    }

    /// Writes a Hugging Face model directory with the weights in f32 (exactly the values the engine computes
    /// with): [`Model::save_hf_dir_as`] without an adapter, in [`SaveDType::F32`].
    pub fn save_hf_dir(&self, dir: &Path) -> Result<()> {
        self.save_hf_dir_as(dir, None, SaveDType::F32)
    }
}

/// GPT-2's byte -> printable character map.
fn byte_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (u32::from(b'!')..=u32::from(b'~'))
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut out = vec![' '; 256];
    for (b, c) in bs.iter().zip(&cs) {
        out[*b as usize] = char::from_u32(*c).unwrap_or(' ');
    }
    out
}

fn random_parts(config: ModelConfig, seed: u64, device: &Device) -> Result<Parts> {
    use crate::rng::Rng;
    config.validate(Path::new("<random>"))?;
    if config.vocab_size < 256 {
        return Err(Error::input(
            "vocab_size",
            "a random model needs at least 256 tokens (one per byte)",
        ));
    }
    let mut rng = Rng::new(seed);
    let mut mat = |rows: usize, cols: usize, bound: f32| -> Result<Tensor> {
        Ok(Tensor::from_vec(
            rng.uniform(rows * cols, -bound, bound),
            (rows, cols),
            device,
        )?)
    };
    let c = &config;
    let (h, q, kv, i) = (
        c.hidden_size,
        c.num_attention_heads * c.head_dim,
        c.num_key_value_heads * c.head_dim,
        c.intermediate_size,
    );
    let lin = |out: usize, inp: usize, mat: &mut dyn FnMut(usize, usize, f32) -> Result<Tensor>| {
        mat(out, inp, 1.0 / (inp as f32).sqrt())
    };
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    for _ in 0..c.num_hidden_layers {
        let linears = [
            Matrix::dense(lin(q, h, &mut mat)?)?,
            Matrix::dense(lin(kv, h, &mut mat)?)?,
            Matrix::dense(lin(kv, h, &mut mat)?)?,
            Matrix::dense(lin(h, q, &mut mat)?)?,
            Matrix::dense(lin(i, h, &mut mat)?)?,
            Matrix::dense(lin(i, h, &mut mat)?)?,
            Matrix::dense(lin(h, i, &mut mat)?)?,
        ];
        let qkv_bias = if c.attention_bias {
            Some([
                mat(1, q, 0.1)?.squeeze(0)?,
                mat(1, kv, 0.1)?.squeeze(0)?,
                mat(1, kv, 0.1)?.squeeze(0)?,
            ])
        } else {
            None
        };
        layers.push(crate::decoder::Layer {
            input_norm: (mat(1, h, 0.1)?.squeeze(0)? + 1.0)?,
            linears,
            qkv_bias,
            post_norm: (mat(1, h, 0.1)?.squeeze(0)? + 1.0)?,
        });
    }
    let embed = Matrix::dense(mat(c.vocab_size, h, 1.0)?)?;
    let lm_head = if c.tie_word_embeddings {
        None
    } else {
        Some(Matrix::dense(mat(
            c.vocab_size,
            h,
            1.0 / (h as f32).sqrt(),
        )?)?)
    };
    let weights = Weights {
        embed,
        layers,
        norm: (mat(1, h, 0.1)?.squeeze(0)? + 1.0)?,
        lm_head,
        rope_freq_factors: None,
    };
    let chars = byte_chars();
    let vocab: serde_json::Map<String, serde_json::Value> = chars
        .iter()
        .enumerate()
        .map(|(id, ch)| (ch.to_string(), serde_json::json!(id)))
        .collect();
    let doc = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []},
    });
    let tokenizer = <Tokenizer as std::str::FromStr>::from_str(&doc.to_string())
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    Ok(Parts {
        config,
        weights,
        tokenizer,
        special: SpecialTokens::default(),
        chat_template: None,
    })
}
