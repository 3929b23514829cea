//! Writing an adapter as a llama.cpp LoRA adapter GGUF.

use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::{DType, Tensor};

use super::{base_tensor_name, permute_rows, GgufBase};
use crate::adapter::Adapter;
use crate::error::{Error, Result};
use crate::gguf_write::{self, TensorInfo};
use crate::model::Model;
use crate::quant::QuantType;

fn f32_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let v = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

impl Adapter {
    /// Writes the adapter as a llama.cpp LoRA adapter GGUF for `model`, its base (see [`GgufBase::of`] and
    /// [`Adapter::save_gguf_for`]).
    pub fn save_gguf(&self, model: &Model, path: &Path) -> Result<()> {
        self.check_fits(model)?;
        self.save_gguf_for(&GgufBase::of(model)?, path)
    }

    /// Writes the adapter as a llama.cpp LoRA adapter GGUF at `path` (atomically): tensors named after the
    /// base's (`blk.N.attn_q.weight.lora_a`, ...), F32, q/k factors in llama.cpp's row order, the LoRA scale as
    /// `adapter.lora.alpha` (`scaling · r`). An adapter that trains `lm_head` or `embed_tokens` in full
    /// (`modules_to_save`, the command line's `train_head`) cannot be expressed as a llama.cpp LoRA and is
    /// refused, as is one whose factors do not fit `base`.
    pub fn save_gguf_for(&self, base: &GgufBase, path: &Path) -> Result<()> {
        if !self.settings().modules_to_save.is_empty() {
            return Err(Error::input(
                "adapter",
                format!(
                    "the adapter trains {:?} in full (modules_to_save / train_head); a llama.cpp LoRA adapter \
                     GGUF holds only low-rank factors, so it cannot be written: merge the adapter instead",
                    self.settings().modules_to_save
                ),
            ));
        }
        let weights = self.weights();
        if weights.layers.len() != base.layers {
            return Err(Error::input(
                "adapter",
                format!(
                    "the adapter has {} layers, the base {}",
                    weights.layers.len(),
                    base.layers
                ),
            ));
        }
        let r = self.settings().r;
        let alpha = (weights.scale * r as f64) as f32;
        let metadata = [
            ("general.architecture", Value::String(base.arch.clone())),
            ("general.type", Value::String("adapter".into())),
            ("adapter.type", Value::String("lora".into())),
            ("adapter.lora.alpha", Value::F32(alpha)),
        ];
        let mut infos = Vec::new();
        let mut tensors = Vec::new();
        for (l, mods) in weights.layers.iter().enumerate() {
            for (m, pair) in mods.iter().enumerate() {
                let Some(p) = pair else { continue };
                let name = base_tensor_name(l, m);
                let [out, inp] = base.shapes[m];
                if p.a.dims() != [r, inp] || p.b.dims() != [out, r] {
                    return Err(Error::tensor(
                        &name,
                        format!(
                            "the adapter's factors {:?} and {:?} do not fit the base's [{out}, {inp}]",
                            p.a.dims(),
                            p.b.dims()
                        ),
                    ));
                }
                let b = match base.permute_heads(m) {
                    Some(heads) => permute_rows(&p.b, heads)?,
                    None => p.b.clone(),
                };
                for (suffix, t) in [("lora_a", &p.a), ("lora_b", &b)] {
                    infos.push(TensorInfo::new(
                        format!("{name}.{suffix}"),
                        QuantType::F32,
                        t.dims(),
                    ));
                    tensors.push(t.clone());
                }
            }
        }
        if infos.is_empty() {
            return Err(Error::input(
                "adapter",
                "the adapter has no LoRA factors to write",
            ));
        }
        gguf_write::write(path, &metadata, &infos, |i, sink| {
            sink.write(&f32_bytes(&tensors[i])?)
        })?;
        Ok(())
    }
}
