//! The decoder's hyper-parameters, read from HF `config.json` or GGUF metadata, and written back as `config.json`.

use std::path::Path;

use serde_json::{json, Value};

use crate::error::{Error, Result};

/// Llama-3 style RoPE frequency scaling (`rope_type: "llama3"`).
#[derive(Debug, Clone, PartialEq)]
pub struct RopeScaling {
    /// `factor`.
    pub factor: f64,
    /// `low_freq_factor`.
    pub low_freq_factor: f64,
    /// `high_freq_factor`.
    pub high_freq_factor: f64,
    /// `original_max_position_embeddings`.
    pub original_max_position_embeddings: usize,
}

/// Hyper-parameters of a Llama-family decoder (llama, mistral, qwen2), in Hugging Face terms.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// HF `model_type`: `"llama"`, `"mistral"` or `"qwen2"`.
    pub model_type: String,
    /// Vocabulary size (rows of the embedding matrix).
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// MLP inner size.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (GQA).
    pub num_key_value_heads: usize,
    /// Per-head size.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// Llama-3 RoPE scaling, if any.
    pub rope_scaling: Option<RopeScaling>,
    /// Context length the model was trained for.
    pub max_position_embeddings: usize,
    /// Whether the output projection is the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Whether q/k/v projections carry a bias (qwen2).
    pub attention_bias: bool,
}

pub(crate) const SUPPORTED_TYPES: [&str; 3] = ["llama", "mistral", "qwen2"];

/// The largest value each size may have: several times the largest real model's (Llama-3.1-405B has 126
/// layers, 128 heads, hidden 16384, MLP 53248; Gemma's vocabulary is 262k tokens; Llama-4-Scout's context is
/// 10M), so only a damaged or hostile file reaches them, before anything is sized from it.
pub(crate) const LIMITS: [(&str, usize); 8] = [
    ("vocab_size", 1 << 22),
    ("hidden_size", 1 << 17),
    ("intermediate_size", 1 << 20),
    ("num_hidden_layers", 1024),
    ("num_attention_heads", 1024),
    ("num_key_value_heads", 1024),
    ("head_dim", 4096),
    ("max_position_embeddings", 1 << 30),
];

fn get_usize(v: &Value, key: &str, path: &Path) -> Result<usize> {
    v.get(key)
        .and_then(Value::as_u64)
        .map(|x| x as usize)
        .ok_or_else(|| {
            Error::model(
                path,
                format!("field `{key}` is missing or not a non-negative integer"),
            )
        })
}

fn get_f64(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

impl ModelConfig {
    /// A small Llama configuration for tests, fuzzing and examples with [`Model::random`](crate::Model::random):
    /// `hidden_size / heads` per head, an MLP twice as wide as the hidden size, RMSNorm eps 1e-5, RoPE theta 1e4,
    /// 64 positions, tied embeddings, no attention bias. Override fields with struct update syntax.
    pub fn tiny_llama(
        vocab_size: usize,
        hidden_size: usize,
        num_hidden_layers: usize,
        heads: usize,
        kv_heads: usize,
    ) -> Self {
        Self {
            model_type: "llama".into(),
            vocab_size,
            hidden_size,
            intermediate_size: 2 * hidden_size,
            num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim: hidden_size / heads.max(1),
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            max_position_embeddings: 64,
            tie_word_embeddings: true,
            attention_bias: false,
        }
    }

    /// Parses a Hugging Face `config.json` (both the `rope_theta`/`rope_scaling` form and the transformers-v5
    /// `rope_parameters` form). `path` is only used in error messages.
    pub fn from_hf_json(text: &str, path: &Path) -> Result<Self> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Error::model(path, format!("not valid JSON: {e}")))?;
        let model_type = v
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::model(path, "field `model_type` is missing"))?
            .to_string();
        if !SUPPORTED_TYPES.contains(&model_type.as_str()) {
            return Err(Error::model(
                path,
                format!(
                    "model_type `{model_type}` is not supported; supported: {}",
                    SUPPORTED_TYPES.join(", ")
                ),
            ));
        }
        let hidden_size = get_usize(&v, "hidden_size", path)?;
        let num_attention_heads = get_usize(&v, "num_attention_heads", path)?;
        let num_key_value_heads = match v.get("num_key_value_heads") {
            Some(Value::Null) | None => num_attention_heads,
            Some(_) => get_usize(&v, "num_key_value_heads", path)?,
        };
        let head_dim = match v.get("head_dim") {
            Some(Value::Null) | None => hidden_size / num_attention_heads.max(1),
            Some(_) => get_usize(&v, "head_dim", path)?,
        };
        // transformers v5 folds rope_theta and rope_scaling into `rope_parameters`.
        let rope_params = v.get("rope_parameters").filter(|p| p.is_object());
        let rope_theta = get_f64(&v, "rope_theta")
            .or_else(|| rope_params.and_then(|p| get_f64(p, "rope_theta")))
            .unwrap_or(10_000.0);
        let scaling_obj = v
            .get("rope_scaling")
            .filter(|p| p.is_object())
            .or(rope_params);
        let rope_scaling = match scaling_obj {
            Some(s) => {
                let kind = s
                    .get("rope_type")
                    .or_else(|| s.get("type"))
                    .and_then(Value::as_str);
                match kind {
                    None | Some("default") => None,
                    Some("llama3") => Some(RopeScaling {
                        factor: get_f64(s, "factor").unwrap_or(8.0),
                        low_freq_factor: get_f64(s, "low_freq_factor").unwrap_or(1.0),
                        high_freq_factor: get_f64(s, "high_freq_factor").unwrap_or(4.0),
                        original_max_position_embeddings: s
                            .get("original_max_position_embeddings")
                            .and_then(Value::as_u64)
                            .unwrap_or(8192) as usize,
                    }),
                    Some(other) => {
                        return Err(Error::model(
                            path,
                            format!("rope scaling type `{other}` is not supported (only `default` and `llama3`)"),
                        ))
                    }
                }
            }
            None => None,
        };
        let cfg = Self {
            vocab_size: get_usize(&v, "vocab_size", path)?,
            hidden_size,
            intermediate_size: get_usize(&v, "intermediate_size", path)?,
            num_hidden_layers: get_usize(&v, "num_hidden_layers", path)?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: get_f64(&v, "rms_norm_eps").unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: v
                .get("max_position_embeddings")
                .and_then(Value::as_u64)
                .unwrap_or(4096) as usize,
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            attention_bias: v
                .get("attention_bias")
                .and_then(Value::as_bool)
                .unwrap_or(model_type == "qwen2"),
            model_type,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Checks that the sizes are consistent (heads divide evenly, nothing is zero) and within [`LIMITS`].
    pub(crate) fn validate(&self, path: &Path) -> Result<()> {
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, value) in sizes {
            if value == 0 && name != "max_position_embeddings" {
                return Err(Error::model(path, format!("`{name}` is 0")));
            }
            let max = LIMITS
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(usize::MAX, |l| l.1);
            if value > max {
                return Err(Error::model(
                    path,
                    format!(
                        "`{name}` is {value}, over the limit of {max} (no real model comes near it): the file \
                         is damaged or not a model"
                    ),
                ));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(Error::model(
                path,
                format!(
                    "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                    self.num_attention_heads, self.num_key_value_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(Error::model(
                path,
                format!("head_dim {} is odd; RoPE needs an even size", self.head_dim),
            ));
        }
        Ok(())
    }

    /// The Hugging Face `config.json` for this configuration (transformers-v4 style keys, read by v4 and v5).
    pub fn to_hf_json(&self, bos: Option<u32>, eos: Option<u32>) -> String {
        let arch = match self.model_type.as_str() {
            "mistral" => "MistralForCausalLM",
            "qwen2" => "Qwen2ForCausalLM",
            _ => "LlamaForCausalLM",
        };
        let rope_scaling = self.rope_scaling.as_ref().map(|s| {
            json!({"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                   "high_freq_factor": s.high_freq_factor,
                   "original_max_position_embeddings": s.original_max_position_embeddings})
        });
        let mut v = json!({
            "architectures": [arch],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "torch_dtype": "float32",
            "bos_token_id": bos,
            "eos_token_id": eos,
        });
        if self.model_type == "llama" {
            v["attention_bias"] = json!(self.attention_bias);
            v["mlp_bias"] = json!(false);
        }
        serde_json::to_string_pretty(&v).unwrap_or_default()
    }

    /// Inverse RoPE frequencies (`head_dim / 2` values), with llama3 scaling applied.
    pub(crate) fn inv_freq(&self) -> Vec<f64> {
        let half = self.head_dim / 2;
        let base: Vec<f64> = (0..half)
            .map(|i| 1.0 / self.rope_theta.powf((2 * i) as f64 / self.head_dim as f64))
            .collect();
        let Some(s) = &self.rope_scaling else {
            return base;
        };
        let old = s.original_max_position_embeddings as f64;
        let low_wavelen = old / s.low_freq_factor;
        let high_wavelen = old / s.high_freq_factor;
        base.into_iter()
            .map(|f| {
                let wavelen = 2.0 * std::f64::consts::PI / f;
                if wavelen < high_wavelen {
                    f
                } else if wavelen > low_wavelen {
                    f / s.factor
                } else {
                    let smooth = (old / wavelen - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    (1.0 - smooth) * f / s.factor + smooth * f
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOL: &str = r#"{"model_type":"llama","vocab_size":49152,"hidden_size":576,"intermediate_size":1536,
        "num_hidden_layers":30,"num_attention_heads":9,"num_key_value_heads":3,"rms_norm_eps":1e-5,
        "rope_theta":100000.0,"max_position_embeddings":8192,"tie_word_embeddings":true}"#;

    #[test]
    fn parses_v4_and_v5_forms() {
        let p = Path::new("config.json");
        let a = ModelConfig::from_hf_json(SMOL, p).unwrap();
        assert_eq!(a.head_dim, 64);
        assert!(!a.attention_bias);
        let v5 = SMOL.replace(
            r#""rope_theta":100000.0"#,
            r#""rope_parameters":{"rope_theta":100000.0,"rope_type":"llama3","factor":32.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}"#,
        );
        let b = ModelConfig::from_hf_json(&v5, p).unwrap();
        assert_eq!(b.rope_theta, 1e5);
        assert_eq!(b.rope_scaling.as_ref().map(|s| s.factor), Some(32.0));
        // Round trip through our own writer.
        let c = ModelConfig::from_hf_json(&b.to_hf_json(Some(1), Some(2)), p).unwrap();
        assert_eq!(b, c);
    }

    #[test]
    fn rejects_unknown_type_and_bad_heads() {
        let p = Path::new("x/config.json");
        let e = ModelConfig::from_hf_json(&SMOL.replace("\"llama\"", "\"gpt2\""), p).unwrap_err();
        assert!(
            e.to_string().contains("gpt2") && e.to_string().contains("qwen2"),
            "{e}"
        );
        let e = ModelConfig::from_hf_json(
            &SMOL.replace("\"num_key_value_heads\":3", "\"num_key_value_heads\":4"),
            p,
        )
        .unwrap_err();
        assert!(e.to_string().contains("num_key_value_heads"), "{e}");
    }

    #[test]
    fn llama3_scaling_keeps_high_freqs_and_divides_low_ones() {
        let mut c = ModelConfig::from_hf_json(SMOL, Path::new("c")).unwrap();
        c.rope_theta = 500_000.0;
        c.head_dim = 128;
        let plain = c.inv_freq();
        c.rope_scaling = Some(RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        });
        let scaled = c.inv_freq();
        assert_eq!(plain[0], scaled[0]);
        assert!((plain[63] / 8.0 - scaled[63]).abs() < 1e-15);
    }
}
