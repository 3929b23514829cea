//! Reading a llama.cpp LoRA adapter GGUF.

use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::Tensor;
use lora_targets::LoraSettings;

use super::{base_tensor_name, parse_factor_name, unpermute_rows, GgufBase, GGUF_MODULES};
use crate::adapter::Adapter;
use crate::error::{Error, Result};
use crate::gguf_file::GgufModel;
use crate::load::{self, Stored};
use crate::lora::{LoraPair, LoraWeights, MODULES};
use crate::model::Model;

impl Adapter {
    /// Reads a llama.cpp LoRA adapter GGUF for `model`. Strict: the file must say `general.type = adapter`,
    /// `adapter.type = lora` and the model's architecture; every tensor must be a `lora_a`/`lora_b` factor of
    /// one of the seven linear modules with the shape the model's tensor needs (one rank for all), and every
    /// module present in one layer must be present with both factors in every layer. Errors name the tensor.
    /// A missing or zero `adapter.lora.alpha` means a scale of 1, as in llama.cpp.
    pub fn load_gguf(path: &Path, model: &Model) -> Result<Self> {
        let g = GgufModel::open(path).map_err(|e| Error::adapter(path, e.to_string()))?;
        let md = &g.metadata;
        let text = |key: &str| md.get(key).and_then(|v| v.to_string().ok()).cloned();
        match text("general.type").as_deref() {
            Some("adapter") => {}
            other => {
                return Err(Error::adapter(
                    path,
                    format!(
                        "metadata `general.type` is {other:?}, not \"adapter\": this is not a LoRA adapter GGUF \
                         (give the base model with --model)"
                    ),
                ))
            }
        }
        if text("adapter.type").as_deref() != Some("lora") {
            return Err(Error::adapter(
                path,
                format!(
                    "metadata `adapter.type` is {:?}; only \"lora\" adapters are supported",
                    text("adapter.type")
                ),
            ));
        }
        let base = GgufBase::of(model)?;
        let arch = base.arch.as_str();
        let file_arch = text("general.architecture");
        if file_arch.as_deref() != Some(arch) {
            return Err(Error::adapter(
                path,
                format!(
                    "the adapter is for architecture {file_arch:?}, the model is `{arch}`: use the base it was \
                     trained for"
                ),
            ));
        }
        let n_layers = model.config().num_hidden_layers;
        let mut a_parts: Vec<[Option<Tensor>; 7]> = vec![Default::default(); n_layers];
        let mut b_parts: Vec<[Option<Tensor>; 7]> = vec![Default::default(); n_layers];
        let mut rank: Option<(usize, String)> = None;
        let dev = model.device();
        let mut names: Vec<&String> = g.tensors.keys().collect();
        names.sort();
        for name in names {
            let bad = |msg: String| Error::adapter(path, format!("tensor `{name}`: {msg}"));
            let (l, m, is_b) = parse_factor_name(name).ok_or_else(|| {
                bad("not a LoRA factor this trainer can apply (expected blk.N.{attn_q|attn_k|attn_v|\
                     attn_output|ffn_gate|ffn_up|ffn_down}.weight.lora_a or .lora_b)"
                    .into())
            })?;
            if l >= n_layers {
                return Err(bad(format!("the model has {n_layers} layers")));
            }
            let t = read_f32(&g, name, dev).map_err(|e| bad(e.to_string()))?;
            let dims = t.dims().to_vec();
            if dims.len() != 2 {
                return Err(bad(format!("shape {dims:?} is not a matrix")));
            }
            let r = if is_b { dims[1] } else { dims[0] };
            let [out, inp] = base.shapes[m];
            match &rank {
                None => rank = Some((r, name.to_string())),
                Some((r0, first)) if *r0 != r => {
                    return Err(bad(format!(
                        "rank {r}, but `{first}` has rank {r0}; adapters whose factors have different ranks are not supported"
                    )))
                }
                Some(_) => {}
            }
            let expected = if is_b { [out, r] } else { [r, inp] };
            if dims != expected {
                return Err(bad(format!(
                    "shape {dims:?} does not fit the model's `{}` ({out} x {inp}): expected {expected:?}",
                    base_tensor_name(l, m)
                )));
            }
            let slot = if is_b {
                &mut b_parts[l][m]
            } else {
                &mut a_parts[l][m]
            };
            *slot = Some(t);
        }
        let Some((r, _)) = rank else {
            return Err(Error::adapter(path, "the adapter holds no LoRA tensors"));
        };
        let present: Vec<usize> = (0..7)
            .filter(|&m| (0..n_layers).any(|l| a_parts[l][m].is_some() || b_parts[l][m].is_some()))
            .collect();
        let mut layers = Vec::with_capacity(n_layers);
        for l in 0..n_layers {
            let mut mods: [Option<LoraPair>; 7] = Default::default();
            for &m in &present {
                let (a, b) = match (a_parts[l][m].take(), b_parts[l][m].take()) {
                    (Some(a), Some(b)) => (a, b),
                    (a, _) => {
                        let missing = if a.is_none() { "lora_a" } else { "lora_b" };
                        return Err(Error::adapter(
                            path,
                            format!(
                                "tensor `{}.{missing}` is missing (the adapter adapts `{}` in other layers)",
                                base_tensor_name(l, m),
                                GGUF_MODULES[m]
                            ),
                        ));
                    }
                };
                let b = match base.permute_heads(m) {
                    Some(heads) => unpermute_rows(&b, heads)?,
                    None => b,
                };
                mods[m] = Some(LoraPair { a, b });
            }
            layers.push(mods);
        }
        let alpha = match md.get("adapter.lora.alpha").cloned() {
            None => 0.0,
            Some(Value::F32(v)) => f64::from(v),
            Some(Value::F64(v)) => v,
            Some(other) => {
                return Err(Error::adapter(
                    path,
                    format!("metadata `adapter.lora.alpha` is {other:?}, not a number"),
                ))
            }
        };
        // llama.cpp: an alpha of 0 means "no alpha", a scale of 1.
        let alpha = if alpha == 0.0 { r as f64 } else { alpha };
        let settings = LoraSettings {
            r,
            alpha,
            use_rslora: false,
            dropout: 0.0,
            target_modules: present.iter().map(|&m| MODULES[m].to_string()).collect(),
            modules_to_save: Vec::new(),
        };
        settings
            .validate()
            .map_err(|e| Error::adapter(path, format!("metadata `adapter.lora.alpha`: {e}")))?;
        let weights = LoraWeights {
            scale: settings.scaling(),
            layers,
            lm_head: None,
            embed_tokens: None,
        };
        Ok(Adapter::from_parts(settings, weights, model))
    }

    /// Loads an adapter in either format: a llama.cpp LoRA adapter GGUF when `path` is a file, a PEFT folder
    /// ([`Adapter::load`]) otherwise.
    pub fn open(path: &Path, model: &Model) -> Result<Self> {
        if path.is_file() {
            Self::load_gguf(path, model)
        } else {
            Self::load(path, model)
        }
    }
}

/// The data of tensor `name` of `g` as f32 values of its shape (F32 as written, or any type the loader reads).
fn read_f32(g: &GgufModel, name: &str, dev: &candle_core::Device) -> Result<Tensor> {
    let t = &g.tensors[name];
    let unknown = || Error::adapter(g.path_of(t), format!("type {} cannot be read", t.ty.name()));
    let stored = if t.ty.is_f32() {
        Stored::F32
    } else {
        Stored::Packed(t.ty.packed().ok_or_else(unknown)?)
    };
    let bytes = t.bytes.ok_or_else(unknown)?;
    let mut data = vec![0u8; bytes as usize];
    g.read(t, &mut data)?;
    let n = t.dims.iter().product();
    let values = load::expand(stored, &data, n)?;
    Ok(Tensor::from_vec(values, t.dims.as_slice(), dev)?)
}
