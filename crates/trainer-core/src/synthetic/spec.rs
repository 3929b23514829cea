//! What a synthetic model is: its shape (a known one or any Llama-family configuration), the storage type of
//! its GGUF weights and its seed.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use super::vocab;
use crate::config::{ModelConfig, SUPPORTED_TYPES};
use crate::error::{Error, Result};
use crate::quant::QuantType;

/// The model shapes the maker knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shape {
    /// `llama-7b`: Llama-2-7B (hidden 4096, 32 heads, 32 kv heads, head 128, ffn 11008, vocab 32000, 32 layers,
    /// untied head, RoPE theta 1e4, context 4096).
    Llama7b,
    /// `qwen2-7b`: Qwen2-7B (hidden 3584, 28 heads / 4 kv heads, head 128, ffn 18944, vocab 152064, 28 layers,
    /// q/k/v bias, RoPE theta 1e6, RMSNorm eps 1e-6, untied head, context 32768).
    Qwen2_7b,
    /// `smollm2-135m`: SmolLM2-135M (hidden 576, 9 heads / 3 kv heads, head 64, ffn 1536, vocab 49152, 30 layers,
    /// tied embeddings, RoPE theta 1e5, context 8192). Rows of 576 values do not fill 256-value blocks: K-quants
    /// fall back.
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
                max_position_embeddings: 32768,
                ..base(
                    "qwen2", 152_064, 3584, 18944, 28, 28, 4, 128, 1e6, false, true,
                )
            },
            Shape::Smollm2_135m => ModelConfig {
                max_position_embeddings: 8192,
                ..base("llama", 49152, 576, 1536, 30, 9, 3, 64, 1e5, true, false)
            },
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
    /// The GGUF storage type of the weight matrices (not used by [`write_hf_dir`](super::write_hf_dir)).
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
    pub(super) fn validate(&self, path: &Path) -> Result<()> {
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
