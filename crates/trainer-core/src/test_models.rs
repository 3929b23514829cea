//! Small models and adapters for the crate's unit tests.

use candle_core::{Device, Tensor};
use lora_targets::LoraSettings;

use crate::adapter::Adapter;
use crate::config::ModelConfig;
use crate::lora::LoraWeights;
use crate::matrix::{Matrix, Packed};
use crate::model::Model;
use crate::rng::Rng;

/// A random tiny llama (tied embeddings, 4 heads over 2 kv heads).
pub(crate) fn tiny() -> Model {
    let config = ModelConfig {
        max_position_embeddings: 64,
        ..ModelConfig::tiny_llama(256, 32, 2, 4, 2)
    };
    Model::random(config, 3, &Device::Cpu).unwrap()
}

/// An adapter on every module with random A and B (B is zero after `init`), optionally training `embed_tokens`.
pub(crate) fn adapter(m: &Model, save_embed: bool) -> Adapter {
    let settings = LoraSettings {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: crate::lora::MODULES.iter().map(|s| s.to_string()).collect(),
        modules_to_save: if save_embed {
            vec!["embed_tokens".into()]
        } else {
            vec![]
        },
        ..LoraSettings::default()
    };
    let init = Adapter::init(m, &settings, 9).unwrap();
    let mut rng = Rng::new(11);
    let mut w: LoraWeights = init.weights().clone();
    for mods in &mut w.layers {
        for p in mods.iter_mut().flatten() {
            let n = p.b.elem_count();
            p.b = Tensor::from_vec(rng.uniform(n, -0.1, 0.1), p.b.dims(), &Device::Cpu).unwrap();
        }
    }
    if let Some(e) = &mut w.embed_tokens {
        *e = (e.clone() * 1.5).unwrap();
    }
    Adapter::from_parts(settings, w, m)
}

/// `m` with every frozen matrix packed as f16 (as a GGUF or safetensors F16 file is kept).
pub(crate) fn packed_f16(m: &Model) -> Model {
    let pack = |x: &Matrix| {
        let (rows, cols) = x.dims();
        let v = x
            .to_tensor(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let bytes = v
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        Matrix::packed(Packed::F16, rows, cols, bytes).unwrap()
    };
    let mut out = m.clone();
    out.weights.embed = pack(&m.weights.embed);
    for layer in &mut out.weights.layers {
        for x in &mut layer.linears {
            *x = pack(x);
        }
    }
    out
}
