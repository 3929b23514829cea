//! [`Adapter`]: a LoRA adapter in PEFT format (`adapter_config.json` + `adapter_model.safetensors`).

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Tensor;
use lora_targets::{
    lora_tensor_key, parse_lora_tensor_key, saved_module_key, AdapterConfig, LoraPart, LoraSettings,
};

use crate::error::{Error, Result};
use crate::io;
use crate::lora::{module_index, module_path, parse_module_path, LoraPair, LoraWeights, MODULES};
use crate::model::Model;
use crate::rng::Rng;

/// The file names PEFT uses.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// The tensor file PEFT uses.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";

const LM_HEAD: &str = "lm_head";
const EMBED: &str = "model.embed_tokens";

/// A LoRA adapter for a [`Model`]: its settings and f32 factors on the model's device.
#[derive(Debug, Clone)]
pub struct Adapter {
    settings: LoraSettings,
    weights: LoraWeights,
    /// (vocab, hidden, layers, [out, in] per module) of the model it was built for.
    shape_sig: Vec<[usize; 2]>,
}

/// `[out, in]` of each module of `model`.
fn module_shapes(model: &Model) -> [[usize; 2]; 7] {
    let c = model.config();
    let (h, q, kv, i) = (
        c.hidden_size,
        c.num_attention_heads * c.head_dim,
        c.num_key_value_heads * c.head_dim,
        c.intermediate_size,
    );
    [[q, h], [kv, h], [kv, h], [h, q], [i, h], [i, h], [h, i]]
}

fn signature(model: &Model) -> Vec<[usize; 2]> {
    let c = model.config();
    let mut v = vec![[c.vocab_size, c.hidden_size], [c.num_hidden_layers, 0]];
    v.extend(module_shapes(model));
    v
}

/// Which of `MODULES` the settings target; errors name unknown names.
fn targeted(settings: &LoraSettings, model: &Model) -> Result<[bool; 7]> {
    let resolved = lora_targets::resolve(&settings.target_modules, &model.linear_modules())?;
    let mut on = [false; 7];
    for name in &resolved {
        if let Some(m) = module_index(name) {
            on[m] = true;
        }
    }
    Ok(on)
}

fn check_modules_to_save(settings: &LoraSettings) -> Result<()> {
    for m in &settings.modules_to_save {
        if m != LM_HEAD && m != "embed_tokens" && m != EMBED {
            return Err(Error::input(
                "modules_to_save",
                format!("`{m}` is not supported; use `lm_head` and/or `embed_tokens`"),
            ));
        }
    }
    Ok(())
}

impl Adapter {
    /// A freshly initialised adapter as PEFT does it: A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming-uniform, a = sqrt(5)),
    /// B = 0, drawn from a seeded RNG (module by module, layer order, A only); modules_to_save start as copies of the
    /// base tensors.
    pub fn init(model: &Model, settings: &LoraSettings, seed: u64) -> Result<Self> {
        settings.validate()?;
        check_modules_to_save(settings)?;
        let on = targeted(settings, model)?;
        let shapes = module_shapes(model);
        let dev = model.device();
        let mut rng = Rng::new(seed);
        let r = settings.r;
        let mut layers = Vec::with_capacity(model.config().num_hidden_layers);
        for _ in 0..model.config().num_hidden_layers {
            let mut mods: [Option<LoraPair>; 7] = Default::default();
            for m in 0..7 {
                if !on[m] {
                    continue;
                }
                let [out, inp] = shapes[m];
                let bound = 1.0 / (inp as f32).sqrt();
                let a = Tensor::from_vec(rng.uniform(r * inp, -bound, bound), (r, inp), dev)?;
                let b = Tensor::zeros((out, r), candle_core::DType::F32, dev)?;
                mods[m] = Some(LoraPair { a, b });
            }
            layers.push(mods);
        }
        let save = |name: &str| settings.modules_to_save.iter().any(|m| m == name);
        let w = &model.weights;
        let lm_head = if save(LM_HEAD) {
            Some(
                w.lm_head
                    .as_ref()
                    .unwrap_or(&w.embed)
                    .to_tensor(dev)?
                    .copy()?,
            )
        } else {
            None
        };
        let embed_tokens = if save("embed_tokens") || save(EMBED) {
            Some(w.embed.to_tensor(dev)?.copy()?)
        } else {
            None
        };
        Ok(Self {
            settings: settings.clone(),
            weights: LoraWeights {
                scale: settings.scaling(),
                layers,
                lm_head,
                embed_tokens,
            },
            shape_sig: signature(model),
        })
    }

    /// Loads a PEFT adapter directory for `model`. Strict: every tensor key must be a PEFT on-disk key of a targeted
    /// module of this model with the right shape, and every targeted module of every layer must have both A and B.
    pub fn load(dir: &Path, model: &Model) -> Result<Self> {
        let cfg_path = dir.join(ADAPTER_CONFIG_FILE);
        let settings = AdapterConfig::load(&cfg_path)?.to_settings()?;
        check_modules_to_save(&settings).map_err(|e| Error::adapter(&cfg_path, e.to_string()))?;
        let on =
            targeted(&settings, model).map_err(|e| Error::adapter(&cfg_path, e.to_string()))?;
        let st_path = dir.join(ADAPTER_WEIGHTS_FILE);
        if !st_path.is_file() {
            let bin = dir.join("adapter_model.bin");
            let hint = if bin.is_file() {
                " (only safetensors is supported; adapter_model.bin was found)"
            } else {
                ""
            };
            return Err(Error::adapter(&st_path, format!("file is missing{hint}")));
        }
        let tensors = io::load_safetensors(&st_path, model.device())?;
        let shapes = module_shapes(model);
        let n_layers = model.config().num_hidden_layers;
        let r = settings.r;
        let mut a_parts: Vec<[Option<Tensor>; 7]> = vec![Default::default(); n_layers];
        let mut b_parts: Vec<[Option<Tensor>; 7]> = vec![Default::default(); n_layers];
        let (mut lm_head, mut embed_tokens) = (None, None);
        let c = model.config();
        for (key, t) in tensors {
            let bad = |msg: String| Error::adapter(&st_path, format!("tensor `{key}`: {msg}"));
            if key == saved_module_key(LM_HEAD) || key == saved_module_key(EMBED) {
                if t.dims() != [c.vocab_size, c.hidden_size] {
                    return Err(bad(format!(
                        "shape {:?}, expected {:?}",
                        t.dims(),
                        [c.vocab_size, c.hidden_size]
                    )));
                }
                if key == saved_module_key(LM_HEAD) {
                    lm_head = Some(t);
                } else {
                    embed_tokens = Some(t);
                }
                continue;
            }
            let (path, part) = parse_lora_tensor_key(&key).map_err(|e| bad(e.to_string()))?;
            let (l, m) = parse_module_path(&path)
                .filter(|(l, _)| *l < n_layers)
                .ok_or_else(|| {
                    bad(format!(
                        "module `{path}` does not exist in this model ({n_layers} layers)"
                    ))
                })?;
            if !on[m] {
                return Err(bad(format!(
                    "module `{}` is not in target_modules {:?}",
                    MODULES[m], settings.target_modules
                )));
            }
            let [out, inp] = shapes[m];
            let expected = match part {
                LoraPart::A => [r, inp],
                LoraPart::B => [out, r],
            };
            if t.dims() != expected {
                return Err(bad(format!(
                    "shape {:?}, expected {expected:?} (r = {r})",
                    t.dims()
                )));
            }
            let slot = match part {
                LoraPart::A => &mut a_parts[l][m],
                LoraPart::B => &mut b_parts[l][m],
            };
            *slot = Some(t);
        }
        let mut layers = Vec::with_capacity(n_layers);
        for l in 0..n_layers {
            let mut mods: [Option<LoraPair>; 7] = Default::default();
            for m in 0..7 {
                if !on[m] {
                    continue;
                }
                let (a, b) = (a_parts[l][m].take(), b_parts[l][m].take());
                match (a, b) {
                    (Some(a), Some(b)) => mods[m] = Some(LoraPair { a, b }),
                    (a, _) => {
                        let part = if a.is_none() {
                            LoraPart::A
                        } else {
                            LoraPart::B
                        };
                        return Err(Error::adapter(
                            &st_path,
                            format!(
                                "tensor `{}` is missing",
                                lora_tensor_key(&module_path(l, m), part)
                            ),
                        ));
                    }
                }
            }
            layers.push(mods);
        }
        let wants = |name: &str| settings.modules_to_save.iter().any(|m| m == name);
        if wants(LM_HEAD) != lm_head.is_some()
            || (wants("embed_tokens") || wants(EMBED)) != embed_tokens.is_some()
        {
            return Err(Error::adapter(
                &st_path,
                format!(
                    "modules_to_save {:?} does not match the saved full tensors (lm_head: {}, embed_tokens: {})",
                    settings.modules_to_save,
                    lm_head.is_some(),
                    embed_tokens.is_some()
                ),
            ));
        }
        Ok(Self {
            weights: LoraWeights {
                scale: settings.scaling(),
                layers,
                lm_head,
                embed_tokens,
            },
            settings,
            shape_sig: signature(model),
        })
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` (PEFT on-disk keys, metadata
    /// `{"format": "pt"}`) into `dir`, creating it; both files are written atomically.
    pub fn save(&self, dir: &Path, base_model_name_or_path: &str) -> Result<()> {
        io::ensure_dir(dir)?;
        io::save_safetensors(&dir.join(ADAPTER_WEIGHTS_FILE), &self.named_tensors())?;
        AdapterConfig::from_settings(&self.settings, base_model_name_or_path)
            .save(&dir.join(ADAPTER_CONFIG_FILE))?;
        Ok(())
    }

    /// Every tensor under its PEFT on-disk key.
    pub(crate) fn named_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (l, mods) in self.weights.layers.iter().enumerate() {
            for (m, pair) in mods.iter().enumerate() {
                if let Some(p) = pair {
                    let path = module_path(l, m);
                    out.insert(lora_tensor_key(&path, LoraPart::A), p.a.clone());
                    out.insert(lora_tensor_key(&path, LoraPart::B), p.b.clone());
                }
            }
        }
        if let Some(h) = &self.weights.lm_head {
            out.insert(saved_module_key(LM_HEAD), h.clone());
        }
        if let Some(e) = &self.weights.embed_tokens {
            out.insert(saved_module_key(EMBED), e.clone());
        }
        out
    }

    /// Whether every weight is a finite number. An update with a learning rate near the
    /// float range can leave `inf` or NaN weights while the loss and gradient of that step were
    /// still finite; such an adapter should not be saved as a good one.
    pub fn is_finite(&self) -> Result<bool> {
        for t in self.named_tensors().values() {
            if !t
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .all(|v| v.is_finite())
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The LoRA settings (rank, alpha, rsLoRA, targets...).
    pub fn settings(&self) -> &LoraSettings {
        &self.settings
    }

    /// The factor the LoRA product is scaled by (`alpha / r`, or `alpha / sqrt(r)` with rsLoRA).
    pub fn scaling(&self) -> f64 {
        self.weights.scale
    }

    pub(crate) fn weights(&self) -> &LoraWeights {
        &self.weights
    }

    pub(crate) fn from_parts(settings: LoraSettings, weights: LoraWeights, model: &Model) -> Self {
        Self {
            settings,
            weights,
            shape_sig: signature(model),
        }
    }

    /// Errors unless the adapter was built for a model of `model`'s shape.
    pub(crate) fn check_fits(&self, model: &Model) -> Result<()> {
        if self.shape_sig != signature(model) {
            return Err(Error::input(
                "adapter",
                "the adapter was loaded for a model of a different shape; load it again with this model",
            ));
        }
        Ok(())
    }
}
