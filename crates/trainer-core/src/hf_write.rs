//! Writing a Hugging Face model folder tensor by tensor: [`Model::save_hf_dir_as`] expands one stored weight at a
//! time (a block of rows at a time when no adapter touches it), adds the adapter's `scale · B A` for that module,
//! converts it to the chosen float type and streams it into `model.safetensors`, so the peak memory is the loaded
//! model plus one expanded tensor, never the whole model in f32.
//!
//! A safetensors file lists every tensor's offsets in its header before the data, so the header is computed first
//! from the shapes and the output type, then the data is written in the header's order through [`AtomicFile`].

use std::path::Path;

use candle_core::{DType, Tensor};

use crate::adapter::Adapter;
use crate::error::{Error, Result};
use crate::io::{self, AtomicFile};
use crate::lora::{module_path, LoraPair};
use crate::matrix::Matrix;
use crate::model::Model;
use crate::tokenizer;

/// The float type of the weights in a written `model.safetensors`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveDType {
    /// 32-bit IEEE floats: exactly the values the engine computes with.
    F32,
    /// bfloat16 (rounded to nearest even).
    Bf16,
    /// IEEE half precision (rounded to nearest even).
    F16,
}

impl SaveDType {
    /// The spelling of settings and the command line: `f32`, `bf16`, `f16`.
    pub fn name(self) -> &'static str {
        match self {
            SaveDType::F32 => "f32",
            SaveDType::Bf16 => "bf16",
            SaveDType::F16 => "f16",
        }
    }

    /// The safetensors dtype name.
    fn safetensors_name(self) -> &'static str {
        match self {
            SaveDType::F32 => "F32",
            SaveDType::Bf16 => "BF16",
            SaveDType::F16 => "F16",
        }
    }

    /// `config.json`'s `torch_dtype`.
    fn torch_name(self) -> &'static str {
        match self {
            SaveDType::F32 => "float32",
            SaveDType::Bf16 => "bfloat16",
            SaveDType::F16 => "float16",
        }
    }

    fn size(self) -> usize {
        match self {
            SaveDType::F32 => 4,
            SaveDType::Bf16 | SaveDType::F16 => 2,
        }
    }

    /// Appends `values` in this type, little-endian, to `out`.
    fn encode(self, values: &[f32], out: &mut Vec<u8>) {
        out.reserve(values.len() * self.size());
        match self {
            SaveDType::F32 => values.iter().for_each(|v| out.extend(v.to_le_bytes())),
            SaveDType::Bf16 => values
                .iter()
                .for_each(|v| out.extend(half::bf16::from_f32(*v).to_le_bytes())),
            SaveDType::F16 => values
                .iter()
                .for_each(|v| out.extend(half::f16::from_f32(*v).to_le_bytes())),
        }
    }
}

impl std::str::FromStr for SaveDType {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(SaveDType::F32),
            "bf16" => Ok(SaveDType::Bf16),
            "f16" => Ok(SaveDType::F16),
            _ => Err(Error::input(
                "dtype",
                format!("`{s}` is not an output type; use f32, bf16 or f16"),
            )),
        }
    }
}

/// Where one output tensor's values come from.
enum Source<'a> {
    /// A frozen matrix as stored, plus `scale · B A` when an adapter trains that module.
    Matrix(&'a Matrix, Option<(&'a LoraPair, f64)>),
    /// An f32 tensor (norms, biases, a trained `lm_head`/`embed_tokens`).
    Tensor(&'a Tensor),
}

struct Entry<'a> {
    name: String,
    shape: Vec<usize>,
    source: Source<'a>,
}

/// Values expanded per write when a matrix is copied without an adapter (4 MiB of f32).
const BLOCK_VALUES: usize = 1 << 20;

impl Model {
    /// The float type a folder written from this model defaults to: the type its frozen matrices are kept in when
    /// they all share one of F32/F16/BF16, bf16 when any is quantized, f32 for a mix of float types.
    pub fn native_dtype(&self) -> SaveDType {
        let w = &self.weights;
        let names: Vec<&str> = std::iter::once(&w.embed)
            .chain(w.lm_head.iter())
            .chain(w.layers.iter().flat_map(|l| l.linears.iter()))
            .map(Matrix::type_name)
            .collect();
        if names.iter().any(|n| !matches!(*n, "F32" | "F16" | "BF16")) {
            return SaveDType::Bf16;
        }
        match names.first() {
            Some(first) if names.iter().all(|n| n == first) => match *first {
                "F16" => SaveDType::F16,
                "BF16" => SaveDType::Bf16,
                _ => SaveDType::F32,
            },
            _ => SaveDType::F32,
        }
    }

    /// Writes a Hugging Face model directory with `adapter` (if any) merged into the weights (`W + scale · B A`; a
    /// trained `lm_head`/`embed_tokens` replaces its base tensor), every tensor of `model.safetensors` in `dtype`:
    /// `config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json`, `chat_template.jinja`. The
    /// weights are written one tensor at a time (see the module documentation); every file atomically.
    pub fn save_hf_dir_as(
        &self,
        dir: &Path,
        adapter: Option<&Adapter>,
        dtype: SaveDType,
    ) -> Result<()> {
        if self.weights.rope_freq_factors.is_some() {
            return Err(Error::model(
                self.source(),
                "this GGUF carries per-frequency RoPE factors (rope_freqs.weight) that config.json cannot express \
                 without the original rope_scaling parameters; use the original Hugging Face model instead",
            ));
        }
        if let Some(a) = adapter {
            a.check_fits(self)?;
        }
        let (entries, tied) = self.entries(adapter)?;
        io::ensure_dir(dir)?;
        write_safetensors(&dir.join("model.safetensors"), &entries, dtype)?;
        let mut config = self.config.clone();
        config.tie_word_embeddings = tied;
        let special = self.special_tokens();
        let json = config.to_hf_json(special.bos, special.eos);
        let mut v: serde_json::Value = serde_json::from_str(&json)
            .map_err(|e| Error::input("config", format!("config.json: {e}")))?;
        v["torch_dtype"] = serde_json::json!(dtype.torch_name());
        let json = serde_json::to_string_pretty(&v)
            .map_err(|e| Error::input("config", format!("config.json: {e}")))?;
        io::write_atomic(&dir.join("config.json"), json.as_bytes())?;
        tokenizer::write_hf_files(dir, self.tokenizer(), &special, self.chat_template())
    }

    /// The output tensors in name order and whether the head stays tied to the embedding.
    fn entries<'a>(&'a self, adapter: Option<&'a Adapter>) -> Result<(Vec<Entry<'a>>, bool)> {
        let w = &self.weights;
        let lw = adapter.map(Adapter::weights);
        let mut tied = self.config.tie_word_embeddings;
        let mut out = Vec::new();
        let matrix = |name: String, m: &'a Matrix, pair: Option<(&'a LoraPair, f64)>| {
            let (rows, cols) = m.dims();
            Entry {
                name,
                shape: vec![rows, cols],
                source: Source::Matrix(m, pair),
            }
        };
        let tensor = |name: String, t: &'a Tensor| Entry {
            name,
            shape: t.dims().to_vec(),
            source: Source::Tensor(t),
        };
        let new_embed = lw.and_then(|l| l.embed_tokens.as_ref());
        match lw.and_then(|l| l.lm_head.as_ref()) {
            Some(h) => {
                out.push(tensor("lm_head.weight".into(), h));
                tied = false;
            }
            None => {
                if tied && new_embed.is_some() {
                    // Keep the head on the original embeddings (PEFT semantics), so untie.
                    out.push(matrix("lm_head.weight".into(), &w.embed, None));
                    tied = false;
                } else if let Some(h) = &w.lm_head {
                    out.push(matrix("lm_head.weight".into(), h, None));
                }
            }
        }
        out.push(match new_embed {
            Some(e) => tensor("model.embed_tokens.weight".into(), e),
            None => matrix("model.embed_tokens.weight".into(), &w.embed, None),
        });
        out.push(tensor("model.norm.weight".into(), &w.norm));
        for (l, layer) in w.layers.iter().enumerate() {
            for (m, mat) in layer.linears.iter().enumerate() {
                let pair = lw
                    .and_then(|lw| lw.layers.get(l).and_then(|mods| mods[m].as_ref()))
                    .map(|p| (p, lw.map_or(1.0, |lw| lw.scale)));
                out.push(matrix(format!("{}.weight", module_path(l, m)), mat, pair));
            }
            if let Some(b) = &layer.qkv_bias {
                for (m, t) in b.iter().enumerate() {
                    out.push(tensor(format!("{}.bias", module_path(l, m)), t));
                }
            }
            out.push(tensor(
                format!("model.layers.{l}.input_layernorm.weight"),
                &layer.input_norm,
            ));
            out.push(tensor(
                format!("model.layers.{l}.post_attention_layernorm.weight"),
                &layer.post_norm,
            ));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((out, tied))
    }
}

/// The safetensors header: `__metadata__` then every tensor with its offsets, in `entries`' order, padded with
/// spaces to a multiple of 8 bytes.
fn header(entries: &[Entry<'_>], dtype: SaveDType) -> Result<Vec<u8>> {
    // Written by hand to keep the key order of the safetensors crate's own writer (dtype, shape, data_offsets).
    let mut json = String::from(r#"{"__metadata__":{"format":"pt"}"#);
    let mut offset = 0usize;
    for e in entries {
        let len = e.shape.iter().product::<usize>() * dtype.size();
        let name = serde_json::to_string(&e.name)
            .map_err(|err| Error::tensor(e.name.clone(), err.to_string()))?;
        let shape: Vec<String> = e.shape.iter().map(usize::to_string).collect();
        json.push_str(&format!(
            r#",{name}:{{"dtype":"{}","shape":[{}],"data_offsets":[{offset},{}]}}"#,
            dtype.safetensors_name(),
            shape.join(","),
            offset + len
        ));
        offset += len;
    }
    json.push('}');
    let mut bytes = json.into_bytes();
    bytes.resize(bytes.len().div_ceil(8) * 8, b' ');
    Ok(bytes)
}

/// Streams `entries` into a safetensors file at `path` (atomically): the header, then each tensor's values.
fn write_safetensors(path: &Path, entries: &[Entry<'_>], dtype: SaveDType) -> Result<()> {
    let head = header(entries, dtype)?;
    let mut file = AtomicFile::create(path)?;
    file.write_all(&(head.len() as u64).to_le_bytes())?;
    file.write_all(&head)?;
    let mut buf = Vec::new();
    for e in entries {
        let tensor_err = |err: candle_core::Error| Error::tensor(e.name.clone(), err.to_string());
        match &e.source {
            Source::Tensor(t) => {
                let v = t
                    .to_dtype(DType::F32)
                    .and_then(|t| t.flatten_all())
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(tensor_err)?;
                buf.clear();
                dtype.encode(&v, &mut buf);
                file.write_all(&buf)?;
            }
            Source::Matrix(m, pair) => {
                let (rows, cols) = m.dims();
                // The adapter's product for the whole module (as `Model::merge` computes it), added row block by
                // row block to the expanded weight.
                let delta = match pair {
                    Some((p, scale)) => Some(
                        p.b.matmul(&p.a)
                            .and_then(|d| d * *scale)
                            .and_then(|d| d.flatten_all())
                            .and_then(|d| d.to_dtype(DType::F32))
                            .and_then(|d| d.to_vec1::<f32>())
                            .map_err(tensor_err)?,
                    ),
                    None => None,
                };
                let block = (BLOCK_VALUES / cols.max(1)).max(1);
                let mut values = vec![0f32; block.min(rows) * cols];
                let pin = m.pin().map_err(tensor_err)?;
                let view = pin.view();
                let mut r0 = 0;
                while r0 < rows {
                    let r1 = (r0 + block).min(rows);
                    let v = &mut values[..(r1 - r0) * cols];
                    view.expand_rows(r0, r1, v).map_err(tensor_err)?;
                    if let Some(d) = &delta {
                        for (x, y) in v.iter_mut().zip(&d[r0 * cols..r1 * cols]) {
                            *x += *y;
                        }
                    }
                    buf.clear();
                    dtype.encode(v, &mut buf);
                    file.write_all(&buf)?;
                    r0 = r1;
                }
            }
        }
    }
    file.commit()
}

#[cfg(test)]
#[path = "hf_write_tests.rs"]
mod tests;
