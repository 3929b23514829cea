//! Synthetic models for tests and benchmarks: real architectures and shapes with seeded random weights, written
//! as a GGUF file in any weight type this crate reads, or as a Hugging Face folder, so big-model behaviour is
//! tested without downloading a big model.
//!
//! ```no_run
//! use std::path::Path;
//! use trainer_core::synthetic::{write_gguf, Shape, Spec, WeightType};
//!
//! // All 32 layers of a Llama-2-7B-shaped model in Q4_K (about 3.9 GB).
//! let spec = Spec::new(Shape::Llama7b, WeightType::Q4_K).with_seed(1);
//! let written = write_gguf(Path::new("llama-7b-q4_k.gguf"), &spec)?;
//! assert!(written.fallbacks.is_empty());
//! # Ok::<(), trainer_core::Error>(())
//! ```
//!
//! What is written:
//! - weights: uniform in `±1/sqrt(in)` for the linear layers, `±4/sqrt(hidden)` for the embedding and an untied
//!   head (logits of a normalized state spread by about 2.3), `1 ± 0.1` for the RMSNorm weights, `±0.1` for
//!   q/k/v biases; each row from its own RNG stream, so a seed fixes the model whatever the output format;
//! - GGUF: the requested type for every matrix (as llama.cpp's `--pure`), norms and biases F32; a matrix whose rows
//!   do not fill whole blocks of that type falls back as llama.cpp's `llama_tensor_get_type` does (Q4_K -> Q5_0,
//!   Q5_K -> Q5_1, Q6_K -> Q8_0, then F16; Q2_K and Q3_K go to Q4_0 because llama.cpp's IQ4_NL cannot be read
//!   here), reported in [`Written::fallbacks`]; llama-arch q/k rows permuted as llama.cpp's converter does; the
//!   `{arch}.*` hyper-parameters; a byte-level BPE tokenizer (`tokenizer.ggml.model = "gpt2"`) with control tokens
//!   `<|endoftext|>` (pad, 0), `<|im_start|>` (BOS, 1) and `<|im_end|>` (EOS, 2), the 256 byte tokens and generated
//!   merges up to the vocabulary size, and a ChatML chat template;
//! - Hugging Face folder ([`write_hf_dir`]): `config.json`, `model.safetensors` in F32, F16 or BF16, and the same
//!   tokenizer as `tokenizer.json`, `tokenizer_config.json` and `chat_template.jinja`.
//!
//! Both are generated one tensor at a time, rows in parallel, and streamed to a temporary file renamed into place
//! when complete: memory stays at a few rows per thread whatever the model's size.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rayon::prelude::*;

use crate::config::{ModelConfig, SUPPORTED_TYPES};
use crate::error::{Error, Result};
use crate::gguf_write::{self, TensorInfo, Value};
use crate::quant::{quantize, QuantType};

mod hf_dir;
mod tensors;
#[cfg(test)]
mod tests;
mod vocab;

pub use hf_dir::write_hf_dir;

/// The model shapes the maker knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shape {
    /// `llama-7b`: Llama-2-7B (hidden 4096, 32 heads, 32 kv heads, head 128, ffn 11008, vocab 32000, 32 layers,
    /// untied head, RoPE theta 1e4).
    Llama7b,
    /// `qwen2-7b`: Qwen2-7B (hidden 3584, 28 heads / 4 kv heads, head 128, ffn 18944, vocab 152064, 28 layers,
    /// q/k/v bias, RoPE theta 1e6, untied head).
    Qwen2_7b,
    /// `smollm2-135m`: SmolLM2-135M (hidden 576, 9 heads / 3 kv heads, head 64, ffn 1536, vocab 49152, 30 layers,
    /// tied embeddings, RoPE theta 1e5). Rows of 576 values do not fill 256-value blocks: K-quants fall back.
    Smollm2_135m,
    /// `tiny-llama`: hidden 256, 4 heads / 2 kv heads (head 64), ffn 512, vocab 512, 2 layers, untied head; every
    /// row a multiple of 256, so every type applies.
    TinyLlama,
    /// `tiny-qwen2`: as `tiny-llama` with q/k/v biases, RoPE theta 1e6 and tied embeddings.
    TinyQwen2,
}

impl Shape {
    /// Every shape.
    pub const ALL: [Shape; 5] = [
        Shape::Llama7b,
        Shape::Qwen2_7b,
        Shape::Smollm2_135m,
        Shape::TinyLlama,
        Shape::TinyQwen2,
    ];

    /// The name (`llama-7b`, `qwen2-7b`, `smollm2-135m`, `tiny-llama`, `tiny-qwen2`).
    pub fn name(self) -> &'static str {
        match self {
            Shape::Llama7b => "llama-7b",
            Shape::Qwen2_7b => "qwen2-7b",
            Shape::Smollm2_135m => "smollm2-135m",
            Shape::TinyLlama => "tiny-llama",
            Shape::TinyQwen2 => "tiny-qwen2",
        }
    }

    /// The hyper-parameters.
    pub fn config(self) -> ModelConfig {
        let base = |model_type: &str,
                    vocab,
                    hidden,
                    inter,
                    layers,
                    heads,
                    kv,
                    head_dim,
                    theta,
                    tied,
                    bias| {
            ModelConfig {
                model_type: String::from(model_type),
                vocab_size: vocab,
                hidden_size: hidden,
                intermediate_size: inter,
                num_hidden_layers: layers,
                num_attention_heads: heads,
                num_key_value_heads: kv,
                head_dim,
                rms_norm_eps: 1e-5,
                rope_theta: theta,
                rope_scaling: None,
                max_position_embeddings: 4096,
                tie_word_embeddings: tied,
                attention_bias: bias,
            }
        };
        match self {
            Shape::Llama7b => base(
                "llama", 32000, 4096, 11008, 32, 32, 32, 128, 1e4, false, false,
            ),
            Shape::Qwen2_7b => ModelConfig {
                rms_norm_eps: 1e-6,
                ..base(
                    "qwen2", 152_064, 3584, 18944, 28, 28, 4, 128, 1e6, false, true,
                )
            },
            Shape::Smollm2_135m => base("llama", 49152, 576, 1536, 30, 9, 3, 64, 1e5, true, false),
            Shape::TinyLlama => base("llama", 512, 256, 512, 2, 4, 2, 64, 1e4, false, false),
            Shape::TinyQwen2 => base("qwen2", 512, 256, 512, 2, 4, 2, 64, 1e6, true, true),
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Shape {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Shape::ALL
            .into_iter()
            .find(|x| x.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<&str> = Shape::ALL.iter().map(|x| x.name()).collect();
                Error::input(
                    "shape",
                    format!("unknown shape `{s}`; known: {}", names.join(", ")),
                )
            })
    }
}

/// The storage type of the weight matrices in a synthetic GGUF file.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightType {
    /// 32-bit floats.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// 4-bit, 32-value blocks with an f16 scale.
    Q4_0,
    /// 4-bit, 32-value blocks with an f16 scale and offset.
    Q4_1,
    /// 5-bit, 32-value blocks with an f16 scale.
    Q5_0,
    /// 5-bit, 32-value blocks with an f16 scale and offset.
    Q5_1,
    /// 8-bit, 32-value blocks with an f16 scale.
    Q8_0,
    /// 2-bit K-quant (256-value super-blocks).
    Q2_K,
    /// 3-bit K-quant.
    Q3_K,
    /// 4-bit K-quant.
    Q4_K,
    /// 5-bit K-quant.
    Q5_K,
    /// 6-bit K-quant.
    Q6_K,
}

impl WeightType {
    /// Every type, floats first.
    pub const ALL: [WeightType; 13] = [
        WeightType::F32,
        WeightType::F16,
        WeightType::BF16,
        WeightType::Q4_0,
        WeightType::Q4_1,
        WeightType::Q5_0,
        WeightType::Q5_1,
        WeightType::Q8_0,
        WeightType::Q2_K,
        WeightType::Q3_K,
        WeightType::Q4_K,
        WeightType::Q5_K,
        WeightType::Q6_K,
    ];

    /// The name as llama.cpp spells it (`Q4_K`, `BF16`, ...).
    pub fn name(self) -> &'static str {
        self.quant().name()
    }

    pub(crate) fn quant(self) -> QuantType {
        QuantType::ALL[self as usize]
    }

    pub(crate) fn from_quant(q: QuantType) -> Self {
        Self::ALL[QuantType::ALL.iter().position(|t| *t == q).unwrap_or(0)]
    }
}

impl fmt::Display for WeightType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for WeightType {
    type Err = Error;

    /// The llama.cpp name, in any case, with or without the K-quants' underscore (`q4_k`, `Q4K`).
    fn from_str(s: &str) -> Result<Self> {
        let squash = |x: &str| x.to_ascii_uppercase().replace('_', "");
        WeightType::ALL
            .into_iter()
            .find(|t| squash(t.name()) == squash(s))
            .ok_or_else(|| {
                let names: Vec<&str> = WeightType::ALL.iter().map(|t| t.name()).collect();
                Error::input(
                    "type",
                    format!("unknown weight type `{s}`; known: {}", names.join(", ")),
                )
            })
    }
}

/// What to write: the hyper-parameters (any Llama-family configuration; [`Shape::config`] for the known ones), the
/// weight type of a GGUF file and the seed.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// The hyper-parameters.
    pub config: ModelConfig,
    /// The GGUF storage type of the weight matrices (not used by [`write_hf_dir`]).
    pub weight_type: WeightType,
    /// The seed of every weight.
    pub seed: u64,
}

impl Spec {
    /// `shape` in `weight_type`, seed 0.
    #[must_use]
    pub fn new(shape: Shape, weight_type: WeightType) -> Self {
        Self {
            config: shape.config(),
            weight_type,
            seed: 0,
        }
    }

    /// The same model with `layers` decoder layers (the first `layers` of the full model: a layer's weights do
    /// not depend on how many there are).
    #[must_use]
    pub fn with_layers(mut self, layers: usize) -> Self {
        self.config.num_hidden_layers = layers;
        self
    }

    /// Another seed.
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Checks the configuration (what the loaders check, plus a vocabulary that holds the tokenizer).
    fn validate(&self, path: &Path) -> Result<()> {
        let arch = self.config.model_type.as_str();
        if !SUPPORTED_TYPES.contains(&arch) {
            return Err(Error::input(
                "model_type",
                format!(
                    "`{arch}` is not supported; supported: {}",
                    SUPPORTED_TYPES.join(", ")
                ),
            ));
        }
        self.config.validate(path)?;
        if self.config.rope_scaling.is_some() {
            return Err(Error::input(
                "rope_scaling",
                "synthetic models are written without RoPE scaling (a GGUF file would need rope_freqs.weight)",
            ));
        }
        if self.config.vocab_size < vocab::SPECIALS.len() + 256 {
            return Err(Error::input(
                "vocab_size",
                format!(
                    "{} is too small: the tokenizer needs 259 tokens (3 control tokens and 256 bytes)",
                    self.config.vocab_size
                ),
            ));
        }
        Ok(())
    }
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The file (GGUF) or folder (Hugging Face).
    pub path: PathBuf,
    /// Bytes written (the GGUF file, or `model.safetensors`).
    pub bytes: u64,
    /// Number of tensors.
    pub tensors: usize,
    /// Number of weights.
    pub parameters: u64,
    /// Matrices stored in another type than requested (rows that do not fill its blocks), with the type used.
    pub fallbacks: Vec<(String, WeightType)>,
}

/// Writes a GGUF file of the model `spec` describes at `path` (atomically).
pub fn write_gguf(path: &Path, spec: &Spec) -> Result<Written> {
    write_gguf_observed(path, spec, |_, _, _| {})
}

/// [`write_gguf`], calling `on_tensor(done, total, name)` after each tensor is written.
pub fn write_gguf_observed(
    path: &Path,
    spec: &Spec,
    mut on_tensor: impl FnMut(usize, usize, &str),
) -> Result<Written> {
    spec.validate(path)?;
    let c = &spec.config;
    let list = tensors::tensors(c);
    let requested = spec.weight_type.quant();
    let types: Vec<QuantType> = list
        .iter()
        .map(|t| {
            if t.is_matrix() {
                tensors::storage_type(requested, t.cols())
            } else {
                QuantType::F32
            }
        })
        .collect();
    let infos: Vec<TensorInfo> = list
        .iter()
        .zip(&types)
        .map(|(t, ty)| TensorInfo::new(&t.gguf, *ty, &t.dims))
        .collect();
    let metadata = gguf_metadata(spec)?;
    let total = list.len();
    let layout = gguf_write::write(path, &metadata, &infos, |i, sink| {
        let t = &list[i];
        let ty = types[i];
        if t.is_matrix() {
            // Rows in parallel, a few MB at a time, in order.
            let cols = t.cols();
            let chunk_rows = ((4 << 20) / cols).max(1);
            for start in (0..t.rows()).step_by(chunk_rows) {
                let end = (start + chunk_rows).min(t.rows());
                let parts: Vec<Vec<u8>> = (start..end)
                    .into_par_iter()
                    .with_min_len(8)
                    .map_init(
                        || vec![0f32; cols],
                        |row, r| {
                            tensors::gguf_row(spec.seed, t, r, row);
                            let mut out = Vec::new();
                            quantize(ty, row, &mut out).map(|()| out)
                        },
                    )
                    .collect::<Result<_>>()?;
                for p in parts {
                    sink.write(&p)?;
                }
            }
        } else {
            let mut out = Vec::new();
            quantize(
                QuantType::F32,
                &tensors::gguf_vector(spec.seed, t),
                &mut out,
            )?;
            sink.write(&out)?;
        }
        on_tensor(i + 1, total, &t.gguf);
        Ok(())
    })?;
    Ok(Written {
        path: path.to_path_buf(),
        bytes: layout.file_bytes,
        tensors: list.len(),
        parameters: list.iter().map(|t| t.elements() as u64).sum(),
        fallbacks: list
            .iter()
            .zip(&types)
            .filter(|(t, ty)| t.is_matrix() && **ty != requested)
            .map(|(t, ty)| (t.gguf.clone(), WeightType::from_quant(*ty)))
            .collect(),
    })
}

/// llama.cpp's `general.file_type` (`enum llama_ftype`) of a file of this type (the `_S` mix for K-quants, the
/// closest to a uniform file).
fn file_type(t: QuantType) -> u32 {
    match t {
        QuantType::F32 => 0,
        QuantType::F16 => 1,
        QuantType::Q4_0 => 2,
        QuantType::Q4_1 => 3,
        QuantType::Q8_0 => 7,
        QuantType::Q5_0 => 8,
        QuantType::Q5_1 => 9,
        QuantType::Q2K => 10,
        QuantType::Q3K => 11,
        QuantType::Q4K => 14,
        QuantType::Q5K => 16,
        QuantType::Q6K => 18,
        QuantType::BF16 => 32,
    }
}

/// The header metadata: general keys, the `{arch}.*` hyper-parameters, the tokenizer.
fn gguf_metadata(spec: &Spec) -> Result<Vec<(String, Value)>> {
    let c = &spec.config;
    let arch = c.model_type.as_str();
    let u32_of = |field: &str, v: usize| {
        u32::try_from(v).map_err(|_| Error::input(field, format!("{v} does not fit GGUF's u32")))
    };
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (
            "general.name".into(),
            Value::String(format!("synthetic {arch} (seed {})", spec.seed)),
        ),
        (
            "general.file_type".into(),
            Value::U32(file_type(spec.weight_type.quant())),
        ),
        ("general.quantization_version".into(), Value::U32(2)),
    ];
    let hp = [
        ("context_length", c.max_position_embeddings),
        ("embedding_length", c.hidden_size),
        ("block_count", c.num_hidden_layers),
        ("feed_forward_length", c.intermediate_size),
        ("attention.head_count", c.num_attention_heads),
        ("attention.head_count_kv", c.num_key_value_heads),
        ("attention.key_length", c.head_dim),
        ("attention.value_length", c.head_dim),
        ("rope.dimension_count", c.head_dim),
        ("vocab_size", c.vocab_size),
    ];
    for (key, v) in hp {
        md.push((format!("{arch}.{key}"), Value::U32(u32_of(key, v)?)));
    }
    md.push((
        format!("{arch}.rope.freq_base"),
        Value::F32(c.rope_theta as f32),
    ));
    md.push((
        format!("{arch}.attention.layer_norm_rms_epsilon"),
        Value::F32(c.rms_norm_eps as f32),
    ));
    md.extend(vocab::metadata(c.vocab_size)?);
    Ok(md)
}
