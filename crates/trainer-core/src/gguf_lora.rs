//! llama.cpp's LoRA adapter GGUF: writing an [`Adapter`] as one ([`Adapter::save_gguf`]) and reading one back
//! ([`Adapter::load_gguf`], [`Adapter::open`]).
//!
//! The format (as llama.cpp's `llama-adapter.cpp` loads it with `--lora`): metadata `general.architecture` (the
//! base's architecture), `general.type = "adapter"`, `adapter.type = "lora"`, `adapter.lora.alpha` (f32); for each
//! adapted base tensor `blk.{i}.{attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down}.weight` two F32
//! tensors `<name>.lora_a` (`[r, in]`, PEFT's `lora_A` unchanged) and `<name>.lora_b` (`[out, r]`). llama.cpp
//! scales `B·A` by `alpha / r`, so the alpha written is `scaling · r` (rsLoRA's `alpha / √r` becomes
//! `alpha · √r`). Bases of the `llama` and `mistral` architectures store q/k rows in llama.cpp's rotary order, so
//! `lora_b` of `attn_q` / `attn_k` gets the same row permutation as the base weight (heads resp. kv heads);
//! `qwen2` bases are not permuted.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::{DType, Tensor};
use lora_targets::LoraSettings;

use crate::adapter::Adapter;
use crate::error::{Error, Result};
use crate::gguf_write::{self, TensorInfo};
use crate::lora::{LoraPair, LoraWeights, MODULES};
use crate::model::Model;
use crate::quant::QuantType;

/// llama.cpp's tensor name stem of each module of [`MODULES`], in the same order.
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

/// The architecture name llama.cpp gives `model`: a GGUF base's own `general.architecture`; for a Hugging Face
/// folder what llama.cpp's converter writes for its `model_type` (`llama` and `mistral` become `llama`, `qwen2`
/// stays `qwen2`).
pub(crate) fn gguf_architecture(model: &Model) -> String {
    let ty = model.config().model_type.as_str();
    if model.source().is_file() {
        ty.to_string()
    } else if ty == "mistral" {
        "llama".to_string()
    } else {
        ty.to_string()
    }
}

/// Whether llama.cpp stores q/k rows of this architecture in its rotary order.
fn permutes_qk(arch: &str) -> bool {
    matches!(arch, "llama" | "mistral")
}

/// The number of heads whose rows a module's permutation works on (q: heads, k: kv heads), when it has one.
fn permute_heads(model: &Model, arch: &str, m: usize) -> Option<usize> {
    if !permutes_qk(arch) {
        return None;
    }
    match m {
        0 => Some(model.config().num_attention_heads),
        1 => Some(model.config().num_key_value_heads),
        _ => None,
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

/// `[out, in]` of module `m` of `model`.
fn module_shape(model: &Model, m: usize) -> [usize; 2] {
    let c = model.config();
    let (h, q, kv, i) = (
        c.hidden_size,
        c.num_attention_heads * c.head_dim,
        c.num_key_value_heads * c.head_dim,
        c.intermediate_size,
    );
    [[q, h], [kv, h], [kv, h], [h, q], [i, h], [i, h], [h, i]][m]
}

/// For a GGUF base: every base tensor the adapter adapts must be in the file with the shape the factors fit.
fn check_base_tensors(model: &Model, weights: &LoraWeights) -> Result<()> {
    let path = model.source();
    if !path.is_file() {
        return Ok(());
    }
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let ct = crate::gguf_limits::read_content(&mut BufReader::new(file), path)?;
    for (l, mods) in weights.layers.iter().enumerate() {
        for (m, pair) in mods.iter().enumerate() {
            if pair.is_none() {
                continue;
            }
            let name = base_tensor_name(l, m);
            let want = module_shape(model, m);
            match ct.tensor_infos.get(&name) {
                Some(info) if info.shape.dims() == want => {}
                Some(info) => return Err(Error::model(
                    path,
                    format!(
                        "base tensor `{name}` has shape {:?}, the adapter's factors need {want:?}",
                        info.shape.dims()
                    ),
                )),
                None => {
                    return Err(Error::model(
                        path,
                        format!("base tensor `{name}` is missing, so the adapter cannot name it"),
                    ))
                }
            }
        }
    }
    Ok(())
}

fn f32_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let v = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

impl Adapter {
    /// Writes the adapter as a llama.cpp LoRA adapter GGUF (see the module docs) for `model`, its base: tensor
    /// names of the base GGUF (checked against the base file when `model` was loaded from one; for a Hugging
    /// Face folder the names llama.cpp's converter gives its modules), q/k factors in llama.cpp's row order, the
    /// LoRA scale as `adapter.lora.alpha`. Written atomically. An adapter that trains `lm_head` or
    /// `embed_tokens` in full (`modules_to_save`) cannot be expressed as a llama.cpp LoRA and is refused.
    pub fn save_gguf(&self, model: &Model, path: &Path) -> Result<()> {
        self.check_fits(model)?;
        let weights = self.weights();
        if !self.settings().modules_to_save.is_empty() {
            return Err(Error::input(
                "adapter",
                format!(
                    "the adapter trains {:?} in full (modules_to_save / train_head); a llama.cpp LoRA adapter \
                     holds only low-rank factors, so it cannot be written as GGUF: merge it instead",
                    self.settings().modules_to_save
                ),
            ));
        }
        check_base_tensors(model, weights)?;
        let arch = gguf_architecture(model);
        let r = self.settings().r;
        let alpha = (weights.scale * r as f64) as f32;
        let metadata = [
            ("general.architecture", Value::String(arch.clone())),
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
                let b = match permute_heads(model, &arch, m) {
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

    /// Reads a llama.cpp LoRA adapter GGUF for `model`. Strict: the file must say `general.type = adapter`,
    /// `adapter.type = lora` and the model's architecture; every tensor must be a `lora_a`/`lora_b` factor of
    /// one of the seven linear modules with the shape the model's tensor needs (one rank for all), and every
    /// module present in one layer must be present with both factors in every layer. Errors name the tensor.
    /// A missing or zero `adapter.lora.alpha` means a scale of 1, as in llama.cpp.
    pub fn load_gguf(path: &Path, model: &Model) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let mut reader = BufReader::new(file);
        let ct = crate::gguf_limits::read_content(&mut reader, path)
            .map_err(|e| Error::adapter(path, e.to_string()))?;
        let md = &ct.metadata;
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
        let arch = gguf_architecture(model);
        let file_arch = text("general.architecture");
        if file_arch.as_deref() != Some(arch.as_str()) {
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
        let mut names: Vec<&String> = ct.tensor_infos.keys().collect();
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
            let q = ct
                .tensor(&mut reader, name, dev)
                .map_err(|e| bad(format!("cannot read: {e}")))?;
            let t = q
                .dequantize(dev)
                .map_err(|e| bad(format!("cannot dequantize: {e}")))?;
            let dims = t.dims().to_vec();
            if dims.len() != 2 {
                return Err(bad(format!("shape {dims:?} is not a matrix")));
            }
            let r = if is_b { dims[1] } else { dims[0] };
            let [out, inp] = module_shape(model, m);
            match &rank {
                None => rank = Some((r, name.clone())),
                Some((r0, first)) if *r0 != r => {
                    return Err(bad(format!(
                        "rank {r}, but `{first}` has rank {r0}; adapters with one rank per module are not supported"
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
                let b = match permute_heads(model, &arch, m) {
                    Some(heads) => unpermute_rows(&b, heads)?,
                    None => b,
                };
                mods[m] = Some(LoraPair { a, b });
            }
            layers.push(mods);
        }
        let alpha = match md.get("adapter.lora.alpha") {
            None => 0.0,
            Some(Value::F32(v)) => f64::from(*v),
            Some(Value::F64(v)) => *v,
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
