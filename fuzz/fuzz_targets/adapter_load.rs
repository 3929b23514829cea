//! Loading a PEFT adapter folder (`adapter_config.json` + `adapter_model.safetensors`) for a tiny
//! random model: raw bytes for either file, or an adapter built from fuzzer-chosen rank, targets,
//! dtype and shapes, then damaged (keys dropped or added, a shape off by one, bytes truncated or
//! flipped). `Adapter::load` never panics; an adapter it accepts runs a forward pass and survives
//! save -> load -> save byte for byte.
#![no_main]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use candle_core::Device;
use libfuzzer_sys::fuzz_target;
use lora_targets::{
    lora_tensor_key, saved_module_key, AdapterConfig, Arch, LoraPart, LoraSettings,
};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use trainer_core::{Adapter, Model, ModelConfig};

const LAYERS: usize = 2;
const HIDDEN: usize = 16;
const VOCAB: usize = 256;
/// `[out, in]` of each module of the tiny model.
const SHAPES: [[usize; 2]; 7] = [
    [16, 16],
    [8, 16],
    [8, 16],
    [16, 16],
    [32, 16],
    [32, 16],
    [16, 32],
];

fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let config = ModelConfig::tiny_llama(VOCAB, HIDDEN, LAYERS, 4, 2);
        Model::random(config, 0, &Device::Cpu).expect("tiny model")
    })
}

fn scratch(tag: &str) -> PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let d = base.join(format!("fuzz-adapter-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[derive(Debug, Arbitrary)]
enum Config<'a> {
    Raw(&'a str),
    Built {
        r: u8,
        alpha: f32,
        rslora: bool,
        targets: u8,
        heads: u8,
        dropout: f32,
    },
}

#[derive(Debug, Arbitrary)]
enum Weights<'a> {
    Raw(&'a [u8]),
    Built {
        r: u8,
        targets: u8,
        heads: u8,
        dtype: u8,
        /// Indices of tensors to leave out.
        drop: Vec<u8>,
        /// Extra tensors: a key and a shape.
        extra: Vec<(&'a str, Vec<u8>)>,
        /// A tensor whose first dimension is off by one.
        off_by_one: Option<u8>,
        /// Metadata instead of `{"format": "pt"}`.
        metadata: Option<Vec<(&'a str, &'a str)>>,
        truncate: Option<u16>,
        flip: Option<(u16, u8)>,
    },
}

fn modules(mask: u8) -> Vec<String> {
    (0..7)
        .filter(|i| mask & (1 << i) != 0)
        .map(|i| Arch::Llama.linear_modules()[i].to_string())
        .collect()
}

fn heads(mask: u8) -> Vec<String> {
    let mut v = Vec::new();
    if mask & 1 != 0 {
        v.push("lm_head".to_string());
    }
    if mask & 2 != 0 {
        v.push("embed_tokens".to_string());
    }
    v
}

fn config_text(c: &Config) -> String {
    match c {
        Config::Raw(s) => (*s).to_string(),
        Config::Built {
            r,
            alpha,
            rslora,
            targets,
            heads: h,
            dropout,
        } => AdapterConfig::from_settings(
            &LoraSettings {
                r: usize::from(*r),
                alpha: f64::from(*alpha),
                use_rslora: *rslora,
                dropout: f64::from(*dropout),
                target_modules: modules(*targets),
                modules_to_save: heads(*h),
            },
            "tiny",
        )
        .to_json(),
    }
}

fn weights_bytes(w: &Weights) -> Vec<u8> {
    let Weights::Built {
        r,
        targets,
        heads: h,
        dtype,
        drop,
        extra,
        off_by_one,
        metadata,
        truncate,
        flip,
    } = w
    else {
        let Weights::Raw(b) = w else { unreachable!() };
        return b.to_vec();
    };
    let r = usize::from(*r % 9);
    let mut named: Vec<(String, Vec<usize>)> = Vec::new();
    for l in 0..LAYERS {
        for (m, [out, inp]) in SHAPES.iter().enumerate() {
            if targets & (1 << m) == 0 {
                continue;
            }
            let group = if m < 4 { "self_attn" } else { "mlp" };
            let path = format!(
                "model.layers.{l}.{group}.{}",
                Arch::Llama.linear_modules()[m]
            );
            named.push((lora_tensor_key(&path, LoraPart::A), vec![r, *inp]));
            named.push((lora_tensor_key(&path, LoraPart::B), vec![*out, r]));
        }
    }
    for (i, name) in ["lm_head", "model.embed_tokens"].iter().enumerate() {
        if h & (1 << i) != 0 {
            named.push((saved_module_key(name), vec![VOCAB, HIDDEN]));
        }
    }
    for &i in drop {
        if !named.is_empty() {
            named.remove(usize::from(i) % named.len());
        }
    }
    if let Some(i) = off_by_one {
        if !named.is_empty() {
            let n = named.len();
            named[usize::from(*i) % n].1[0] += 1;
        }
    }
    for (key, dims) in extra.iter().take(4) {
        // A safetensors file cannot hold a name twice (and `serialize` panics on it; our writer
        // takes names from a map).
        if named.iter().any(|(k, _)| k == key) {
            continue;
        }
        named.push((
            (*key).to_string(),
            dims.iter().take(4).map(|&d| usize::from(d % 40)).collect(),
        ));
    }
    let (dt, size) = match dtype % 4 {
        0 => (Dtype::F32, 4),
        1 => (Dtype::F16, 2),
        2 => (Dtype::BF16, 2),
        _ => (Dtype::F64, 8),
    };
    let buffers: Vec<(String, Vec<usize>, Vec<u8>)> = named
        .into_iter()
        .map(|(k, dims)| {
            let n: usize = dims.iter().product();
            // Small values of the dtype: 0x3c00 is 1.0 in f16, the rest are small or zero.
            let bytes = (0..n * size).map(|i| (i % 7) as u8).collect();
            (k, dims, bytes)
        })
        .collect();
    let mut views = Vec::new();
    for (k, dims, bytes) in &buffers {
        if let Ok(v) = TensorView::new(dt, dims.clone(), bytes) {
            views.push((k.clone(), v));
        }
    }
    let meta: Option<HashMap<String, String>> = match metadata {
        None => Some(HashMap::from([("format".into(), "pt".into())])),
        Some(kv) => Some(
            kv.iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
        ),
    };
    let Ok(mut bytes) = safetensors::serialize(views, meta) else {
        return Vec::new();
    };
    if let Some(n) = truncate {
        bytes.truncate(usize::from(*n));
    }
    if let Some((at, x)) = flip {
        if !bytes.is_empty() {
            let n = bytes.len();
            bytes[usize::from(*at) % n] ^= x;
        }
    }
    bytes
}

fuzz_target!(|input: (Config, Weights)| {
    let (config, weights) = input;
    let dir = scratch("in");
    std::fs::write(dir.join("adapter_config.json"), config_text(&config)).unwrap();
    std::fs::write(
        dir.join("adapter_model.safetensors"),
        weights_bytes(&weights),
    )
    .unwrap();
    let model = model();
    let Ok(adapter) = Adapter::load(&dir, model) else {
        return;
    };
    adapter.is_finite().expect("finite check");
    let logits = model
        .logits(Some(&adapter), &[1, 2, 3])
        .expect("an accepted adapter runs");
    assert_eq!(logits.dims(), &[3, VOCAB]);
    // save -> load -> save is stable.
    let a = scratch("a");
    let b = scratch("b");
    adapter.save(&a, "tiny").expect("save");
    let again = Adapter::load(&a, model).expect("a saved adapter loads");
    assert_eq!(again.settings(), adapter.settings());
    again.save(&b, "tiny").expect("save again");
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        let x = std::fs::read(a.join(f)).unwrap();
        let y = std::fs::read(b.join(f)).unwrap();
        assert!(x == y, "{f} changed on save -> load -> save");
    }
});
