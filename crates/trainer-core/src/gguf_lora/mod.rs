//! llama.cpp's LoRA adapter GGUF: writing an [`Adapter`](crate::Adapter) as one
//! ([`Adapter::save_gguf`](crate::Adapter::save_gguf)) and reading one back
//! ([`Adapter::load_gguf`](crate::Adapter::load_gguf), [`Adapter::open`](crate::Adapter::open)).
//!
//! The format (as llama.cpp's `llama-adapter.cpp` loads it with `--lora`): metadata `general.architecture` (the
//! base's architecture), `general.type = "adapter"`, `adapter.type = "lora"`, `adapter.lora.alpha` (f32); for each
//! adapted base tensor `blk.{i}.{attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down}.weight` two F32
//! tensors `<name>.lora_a` (`[r, in]`, PEFT's `lora_A` unchanged) and `<name>.lora_b` (`[out, r]`). llama.cpp
//! scales `B·A` by `alpha / r`, so the alpha written is `scaling · r` (rsLoRA's `alpha / √r` becomes
//! `alpha · √r`). Bases of the `llama` and `mistral` architectures store q/k rows in llama.cpp's rotary order, so
//! `lora_b` of `attn_q` / `attn_k` gets the same row permutation as the base weight (heads resp. kv heads);
//! `qwen2` bases are not permuted.

mod read;
mod write;

use std::path::PathBuf;

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::model::Model;

/// The file name of the GGUF copy of an adapter in an output or checkpoint folder.
pub const ADAPTER_GGUF_FILE: &str = "adapter_model.gguf";

/// llama.cpp's tensor name stem of each module of [`crate::lora::MODULES`], in the same order.
pub(crate) const GGUF_MODULES: [&str; 7] = [
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];

/// The name of module `m` of layer `layer` in a GGUF base, e.g. `blk.3.attn_q.weight`.
pub(crate) fn base_tensor_name(layer: usize, m: usize) -> String {
    format!("blk.{layer}.{}.weight", GGUF_MODULES[m])
}

/// Parses `blk.{i}.{stem}.weight.lora_{a|b}` into (layer, module, is_b).
fn parse_factor_name(name: &str) -> Option<(usize, usize, bool)> {
    let (base, part) = name.rsplit_once('.')?;
    let is_b = match part {
        "lora_a" => false,
        "lora_b" => true,
        _ => return None,
    };
    let rest = base.strip_prefix("blk.")?.strip_suffix(".weight")?;
    let (layer, stem) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let m = GGUF_MODULES.iter().position(|s| *s == stem)?;
    (base_tensor_name(layer, m) == base).then_some((layer, m, is_b))
}

/// What writing or reading a llama.cpp LoRA adapter needs to know about its base model: llama.cpp's name of the
/// architecture, whether and with how many heads q/k rows are permuted, and the `[out, in]` shape of each of the
/// seven linear modules. Built once per base ([`GgufBase::of`]); owned, so a checkpoint store can keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufBase {
    arch: String,
    /// Heads of q and of k when llama.cpp permutes their rows (llama, mistral).
    qk_heads: Option<[usize; 2]>,
    layers: usize,
    shapes: [[usize; 2]; 7],
    source: PathBuf,
}

impl GgufBase {
    /// The base `model`: for a GGUF file its own `general.architecture`, and every linear tensor of the file is
    /// checked to be there with the shape the model has (the adapter's tensors are named after them); for a
    /// Hugging Face folder what llama.cpp's converter writes (`model_type` `llama` and `mistral` become
    /// `llama`, `qwen2` stays `qwen2`; `q_proj` -> `attn_q`, ..., `down_proj` -> `ffn_down`, as docs/gguf-adapters.md lists).
    pub fn of(model: &Model) -> Result<Self> {
        let c = model.config();
        let ty = c.model_type.as_str();
        let from_file = model.source().is_file();
        let arch = if !from_file && ty == "mistral" {
            "llama"
        } else {
            ty
        };
        let (h, q, kv, i) = (
            c.hidden_size,
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads * c.head_dim,
            c.intermediate_size,
        );
        let base = Self {
            arch: arch.to_string(),
            qk_heads: matches!(arch, "llama" | "mistral")
                .then_some([c.num_attention_heads, c.num_key_value_heads]),
            layers: c.num_hidden_layers,
            shapes: [[q, h], [kv, h], [kv, h], [h, q], [i, h], [i, h], [h, i]],
            source: model.source().to_path_buf(),
        };
        if from_file {
            base.check_file()?;
        }
        Ok(base)
    }

    /// llama.cpp's name of the base's architecture (`general.architecture` of the adapter).
    pub fn architecture(&self) -> &str {
        &self.arch
    }

    /// Every linear tensor of the base GGUF is there with its shape.
    fn check_file(&self) -> Result<()> {
        let path = &self.source;
        let g = crate::gguf_file::GgufModel::open(path)?;
        for l in 0..self.layers {
            for (m, want) in self.shapes.iter().enumerate() {
                let name = base_tensor_name(l, m);
                match g.tensors.get(&name) {
                    Some(info) if info.dims == want => {}
                    Some(info) => {
                        return Err(Error::model(
                            path,
                            format!(
                                "base tensor `{name}` has shape {:?}, the model has {want:?}",
                                info.dims
                            ),
                        ))
                    }
                    None => {
                        return Err(Error::model(
                            path,
                            format!("base tensor `{name}` is missing, so adapters cannot name it"),
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    /// The heads a module's rows are permuted with (q: heads, k: kv heads), when llama.cpp permutes them.
    fn permute_heads(&self, m: usize) -> Option<usize> {
        match (self.qk_heads, m) {
            (Some([q, _]), 0) => Some(q),
            (Some([_, k]), 1) => Some(k),
            _ => None,
        }
    }
}

/// llama.cpp's q/k row order from the Hugging Face one: rows viewed as `[heads, 2, head_dim/2]`, axes 1 and 2
/// swapped (`convert_hf_to_gguf.py`'s `permute`).
fn permute_rows(t: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, cols) = t.dims2()?;
    Ok(t.reshape((heads, 2, out / heads / 2, cols))?
        .transpose(1, 2)?
        .reshape((out, cols))?
        .contiguous()?)
}

/// The inverse of [`permute_rows`].
fn unpermute_rows(t: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, cols) = t.dims2()?;
    Ok(t.reshape((heads, out / heads / 2, 2, cols))?
        .transpose(1, 2)?
        .reshape((out, cols))?
        .contiguous()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use proptest::prelude::*;

    #[test]
    fn factor_names_round_trip() {
        for l in [0, 7, 123] {
            for m in 0..7 {
                let base = base_tensor_name(l, m);
                assert_eq!(
                    parse_factor_name(&format!("{base}.lora_a")),
                    Some((l, m, false))
                );
                assert_eq!(
                    parse_factor_name(&format!("{base}.lora_b")),
                    Some((l, m, true))
                );
            }
        }
        for bad in [
            "blk.1.attn_q.weight",
            "blk.01.attn_q.weight.lora_a",
            "blk.1.attn_qkv.weight.lora_a",
            "token_embd.weight.lora_a",
            "blk.1.attn_q.bias.lora_b",
        ] {
            assert_eq!(parse_factor_name(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn permutation_is_undone(heads in 1usize..5, half in 1usize..5, cols in 1usize..4) {
            let out = heads * half * 2;
            let v: Vec<f32> = (0..out * cols).map(|i| i as f32).collect();
            let t = Tensor::from_vec(v.clone(), (out, cols), &Device::Cpu).unwrap();
            let p = permute_rows(&t, heads).unwrap();
            let back = unpermute_rows(&p, heads).unwrap();
            prop_assert_eq!(back.flatten_all().unwrap().to_vec1::<f32>().unwrap(), v);
        }
    }

    #[test]
    fn permutation_matches_llama_cpp_row_order() {
        // One head of dim 4: HF rows [r0, r1, r2, r3] (first half, second half) become llama.cpp's interleaved
        // [r0, r2, r1, r3].
        let t = Tensor::from_vec(vec![0f32, 1., 2., 3.], (4, 1), &Device::Cpu).unwrap();
        let p = permute_rows(&t, 1).unwrap();
        assert_eq!(
            p.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![0., 2., 1., 3.]
        );
    }
}
