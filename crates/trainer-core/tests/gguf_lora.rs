//! llama.cpp LoRA adapter GGUF: export -> import gives the PEFT adapter's logits (real llama model, synthetic
//! qwen2), the q/k rows of the file are in llama.cpp's order (derived from a GGUF and a Hugging Face copy of one
//! synthetic model, independently of the exporter), and adapters that do not fit are refused naming the tensor.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};
use lora_targets::LoraSettings;
use schedulers::Warmup;
use trainer_core::job::{
    AdapterFormats, DataOptions, DirStore, End, Job, PlanSettings, TrainingData, TrainingPlan,
};
use trainer_core::synthetic::{write_gguf, write_hf_dir, Shape, Spec, WeightType};
use trainer_core::{Adapter, GgufBase, Model, Sample, ADAPTER_GGUF_FILE, ADAPTER_WEIGHTS_FILE};

use crate::common;

/// A scratch directory removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "trainer-core-gguf-lora-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const TEXT: &str = "The quick brown fox jumps over the lazy dog, and then it rests.";

fn settings(r: usize, alpha: f64, rslora: bool, targets: &[&str]) -> LoraSettings {
    LoraSettings {
        r,
        alpha,
        use_rslora: rslora,
        dropout: 0.0,
        target_modules: targets.iter().map(|s| s.to_string()).collect(),
        modules_to_save: Vec::new(),
    }
}

/// A PEFT adapter folder for `model` with seeded non-zero B factors (a fresh adapter's B is 0), loaded back.
pub fn peft_adapter(model: &Model, settings: &LoraSettings, dir: &Path, seed: u64) -> Adapter {
    Adapter::init(model, settings, seed)
        .unwrap()
        .save(dir, "base")
        .unwrap();
    let path = dir.join(ADAPTER_WEIGHTS_FILE);
    let mut map = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    for (key, t) in map.iter_mut() {
        if key.contains("lora_B") {
            let v: Vec<f32> = (0..t.elem_count())
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
                })
                .collect();
            *t = Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap();
        }
    }
    candle_core::safetensors::save(&map, &path).unwrap();
    Adapter::load(dir, model).unwrap()
}

fn ids(model: &Model) -> Vec<u32> {
    model
        .tokenizer()
        .encode(TEXT, false)
        .unwrap()
        .get_ids()
        .to_vec()
}

/// Exports `peft` as GGUF, loads it back through [`Adapter::open`] and compares logits; returns the GGUF path.
fn round_trip(model: &Model, peft: &Adapter, dir: &Path, name: &str) -> PathBuf {
    let file = dir.join(format!("{name}-adapter.gguf"));
    peft.save_gguf(model, &file).unwrap();
    let back = Adapter::open(&file, model).unwrap();
    assert_eq!(back.settings().r, peft.settings().r, "{name}");
    assert!((back.scaling() - peft.scaling()).abs() < 1e-9, "{name}");
    let ids = ids(model);
    let want = model.logits(Some(peft), &ids).unwrap();
    let got = model.logits(Some(&back), &ids).unwrap();
    let base = model.logits(None, &ids).unwrap();
    assert!(
        common::max_abs_diff(&want, &base) > 1e-3,
        "{name}: the adapter must change the logits for the test to mean anything"
    );
    let d = common::max_abs_diff(&want, &got);
    assert!(d <= 1e-5, "{name}: GGUF adapter logits differ by {d}");
    file
}

/// Every tensor of a GGUF file as f32 by name, and its metadata.
fn read_gguf(path: &Path) -> (HashMap<String, Tensor>, HashMap<String, Value>) {
    let mut f = File::open(path).unwrap();
    let ct = Content::read(&mut f).unwrap();
    let mut out = HashMap::new();
    for name in ct.tensor_infos.keys() {
        let q = ct.tensor(&mut f, name, &Device::Cpu).unwrap();
        assert_eq!(q.dtype(), candle_core::quantized::GgmlDType::F32, "{name}");
        out.insert(name.clone(), q.dequantize(&Device::Cpu).unwrap());
    }
    (out, ct.metadata)
}

#[test]
fn real_llama_round_trip_all_modules_and_rslora() {
    let model = common::model();
    let dir = Scratch::new("real");
    let all = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ];
    let a = peft_adapter(
        model,
        &settings(8, 16.0, false, &all),
        &dir.0.join("all"),
        1,
    );
    let file = round_trip(model, &a, &dir.0, "all");
    let (tensors, md) = read_gguf(&file);
    assert_eq!(tensors.len(), 30 * 7 * 2);
    assert_eq!(md["general.architecture"].to_string().unwrap(), "llama");
    assert_eq!(md["general.type"].to_string().unwrap(), "adapter");
    assert_eq!(md["adapter.type"].to_string().unwrap(), "lora");
    assert_eq!(md["adapter.lora.alpha"].to_f32().unwrap(), 16.0);
    assert_eq!(tensors["blk.0.attn_q.weight.lora_a"].dims(), [8, 576]);
    assert_eq!(tensors["blk.0.attn_k.weight.lora_b"].dims(), [192, 8]);

    let rs = peft_adapter(
        model,
        &settings(16, 16.0, true, &["q_proj", "k_proj", "v_proj", "o_proj"]),
        &dir.0.join("rs"),
        2,
    );
    let file = round_trip(model, &rs, &dir.0, "rs");
    let (_, md) = read_gguf(&file);
    // llama.cpp scales by alpha / r: rsLoRA's 16 / sqrt(16) is written as alpha 16 * sqrt(16).
    assert_eq!(md["adapter.lora.alpha"].to_f32().unwrap(), 64.0);
}

/// Row `i` of `permuted` is row `map[i]` of `plain` (rows compared exactly; every row distinct).
fn row_map(permuted: &Tensor, plain: &Tensor) -> Vec<usize> {
    let (p, h) = (
        permuted.to_vec2::<f32>().unwrap(),
        plain.to_vec2::<f32>().unwrap(),
    );
    p.iter()
        .map(|row| h.iter().position(|r| r == row).expect("a row of the base"))
        .collect()
}

#[test]
fn synthetic_llama_and_qwen2_factors_follow_the_base_row_order() {
    let dir = Scratch::new("synth");
    let targets = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"];
    for (shape, permuted) in [(Shape::TinyLlama, true), (Shape::TinyQwen2, false)] {
        let spec = Spec::new(shape, WeightType::F32).with_seed(3);
        let base = dir.0.join(format!("{}.gguf", shape.name()));
        write_gguf(&base, &spec).unwrap();
        let hf = dir.0.join(format!("{}-hf", shape.name()));
        write_hf_dir(&hf, &spec, DType::F32).unwrap();
        let model = Model::load(&base, &Device::Cpu).unwrap();
        let peft = peft_adapter(
            &model,
            &settings(4, 8.0, false, &targets),
            &dir.0.join(format!("{}-peft", shape.name())),
            4,
        );
        let file = round_trip(&model, &peft, &dir.0, shape.name());
        let (lora, md) = read_gguf(&file);
        assert_eq!(
            md["general.architecture"].to_string().unwrap(),
            if permuted { "llama" } else { "qwen2" }
        );
        // The base's q/k row order, from the GGUF and the HF copy of one model (independent of the exporter).
        let (raw, _) = read_gguf(&base);
        let st =
            candle_core::safetensors::load(hf.join("model.safetensors"), &Device::Cpu).unwrap();
        let peft_st = candle_core::safetensors::load(
            dir.0
                .join(format!("{}-peft", shape.name()))
                .join(ADAPTER_WEIGHTS_FILE),
            &Device::Cpu,
        )
        .unwrap();
        for (g, h) in [
            ("attn_q", "q_proj"),
            ("attn_k", "k_proj"),
            ("attn_v", "v_proj"),
        ] {
            let map = row_map(
                &raw[&format!("blk.1.{g}.weight")],
                &st[&format!("model.layers.1.self_attn.{h}.weight")],
            );
            let identity = map.iter().enumerate().all(|(i, j)| i == *j);
            assert_eq!(identity, !permuted || g == "attn_v", "{shape} {g}");
            let b_file = lora[&format!("blk.1.{g}.weight.lora_b")]
                .to_vec2::<f32>()
                .unwrap();
            let b_peft = peft_st
                [&format!("base_model.model.model.layers.1.self_attn.{h}.lora_B.weight")]
                .to_vec2::<f32>()
                .unwrap();
            for (i, j) in map.iter().enumerate() {
                assert_eq!(b_file[i], b_peft[*j], "{shape} {g} row {i}");
            }
            let a_file = lora[&format!("blk.1.{g}.weight.lora_a")]
                .to_vec2::<f32>()
                .unwrap();
            let a_peft = peft_st
                [&format!("base_model.model.model.layers.1.self_attn.{h}.lora_A.weight")]
                .to_vec2::<f32>()
                .unwrap();
            assert_eq!(a_file, a_peft, "{shape} {g}: lora_a is never permuted");
        }
    }
}

/// Writes a GGUF adapter by hand with candle's writer.
fn write_adapter(path: &Path, arch: &str, general_type: &str, tensors: &[(&str, Tensor)]) {
    let md = [
        ("general.architecture", Value::String(arch.into())),
        ("general.type", Value::String(general_type.into())),
        ("adapter.type", Value::String("lora".into())),
        ("adapter.lora.alpha", Value::F32(8.0)),
    ];
    let md: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let qs: Vec<(&str, QTensor)> = tensors
        .iter()
        .map(|(n, t)| {
            (
                *n,
                QTensor::quantize(t, candle_core::quantized::GgmlDType::F32).unwrap(),
            )
        })
        .collect();
    let refs: Vec<(&str, &QTensor)> = qs.iter().map(|(n, q)| (*n, q)).collect();
    let mut f = File::create(path).unwrap();
    gguf_file::write(&mut f, &md, &refs).unwrap();
}

fn zeros(r: usize, c: usize) -> Tensor {
    Tensor::zeros((r, c), DType::F32, &Device::Cpu).unwrap()
}

#[test]
fn adapters_that_do_not_fit_are_refused_naming_the_tensor() {
    let dir = Scratch::new("refuse");
    let llama = dir.0.join("llama.gguf");
    write_gguf(
        &llama,
        &Spec::new(Shape::TinyLlama, WeightType::F32).with_layers(1),
    )
    .unwrap();
    let qwen = dir.0.join("qwen.gguf");
    write_gguf(
        &qwen,
        &Spec::new(Shape::TinyQwen2, WeightType::F32).with_layers(1),
    )
    .unwrap();
    let llama = Model::load(&llama, &Device::Cpu).unwrap();
    let qwen = Model::load(&qwen, &Device::Cpu).unwrap();
    let err = |path: &Path, model: &Model| Adapter::open(path, model).unwrap_err().to_string();

    // An adapter exported for the llama base is refused by the qwen2 model (same shapes, other architecture).
    let peft = peft_adapter(
        &llama,
        &settings(4, 8.0, false, &["q_proj"]),
        &dir.0.join("p"),
        5,
    );
    let file = dir.0.join("for-llama.gguf");
    peft.save_gguf(&llama, &file).unwrap();
    Adapter::open(&file, &llama).unwrap();
    let e = err(&file, &qwen);
    assert!(
        e.contains("architecture") && e.contains("llama") && e.contains("qwen2"),
        "{e}"
    );

    // hidden 256, q 256: a lora_a with 255 columns does not fit blk.0.attn_q.weight.
    let bad = dir.0.join("shape.gguf");
    write_adapter(
        &bad,
        "llama",
        "adapter",
        &[
            ("blk.0.attn_q.weight.lora_a", zeros(4, 255)),
            ("blk.0.attn_q.weight.lora_b", zeros(256, 4)),
        ],
    );
    let e = err(&bad, &llama);
    assert!(
        e.contains("blk.0.attn_q.weight.lora_a") && e.contains("[4, 255]"),
        "{e}"
    );

    // kv heads 2 x 64 = 128 rows for k; 256 does not fit.
    write_adapter(
        &bad,
        "llama",
        "adapter",
        &[
            ("blk.0.attn_k.weight.lora_a", zeros(4, 256)),
            ("blk.0.attn_k.weight.lora_b", zeros(256, 4)),
        ],
    );
    let e = err(&bad, &llama);
    assert!(e.contains("blk.0.attn_k.weight.lora_b"), "{e}");

    // Ranks that differ between factors.
    write_adapter(
        &bad,
        "llama",
        "adapter",
        &[
            ("blk.0.attn_q.weight.lora_a", zeros(4, 256)),
            ("blk.0.attn_q.weight.lora_b", zeros(256, 2)),
        ],
    );
    let e = err(&bad, &llama);
    assert!(
        e.contains("rank") && e.contains("blk.0.attn_q.weight"),
        "{e}"
    );

    // A layer the model does not have, a tensor that is no LoRA factor, a missing factor.
    for (name, t, what) in [
        ("blk.5.attn_q.weight.lora_a", zeros(4, 256), "layers"),
        (
            "blk.0.attn_q.bias.lora_a",
            zeros(4, 256),
            "not a LoRA factor",
        ),
        (
            "blk.0.attn_q.weight.lora_a",
            zeros(4, 256),
            "lora_b` is missing",
        ),
    ] {
        write_adapter(&bad, "llama", "adapter", &[(name, t)]);
        let e = err(&bad, &llama);
        assert!(e.contains(what), "{name}: {e}");
    }

    // A model file given as the adapter.
    let e = err(&dir.0.join("llama.gguf"), &llama);
    assert!(e.contains("general.type"), "{e}");
}

#[test]
fn train_head_adapters_are_not_exported() {
    let dir = Scratch::new("head");
    let base = dir.0.join("llama.gguf");
    write_gguf(
        &base,
        &Spec::new(Shape::TinyLlama, WeightType::F32).with_layers(1),
    )
    .unwrap();
    let model = Model::load(&base, &Device::Cpu).unwrap();
    let mut s = settings(4, 8.0, false, &["q_proj"]);
    s.modules_to_save = vec!["lm_head".into()];
    let a = Adapter::init(&model, &s, 1).unwrap();
    let out = dir.0.join("head.gguf");
    let e = a.save_gguf(&model, &out).unwrap_err().to_string();
    assert!(e.contains("lm_head") && e.contains("GGUF"), "{e}");
    assert!(!out.exists());
}

/// Every tensor of an adapter GGUF as (name, values), sorted, and its architecture.
fn factors(path: &Path) -> (Vec<(String, Vec<f32>)>, String) {
    let (t, md) = read_gguf(path);
    let mut v: Vec<(String, Vec<f32>)> = t
        .into_iter()
        .map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    (v, md["general.architecture"].to_string().unwrap().clone())
}

#[test]
fn a_hugging_face_base_gives_the_file_its_gguf_gives() {
    let dir = Scratch::new("hf");
    for (shape, model_type, arch) in [
        (Shape::TinyLlama, "llama", "llama"),
        (Shape::TinyLlama, "mistral", "llama"),
        (Shape::TinyQwen2, "qwen2", "qwen2"),
    ] {
        let mut spec = Spec::new(shape, WeightType::F32).with_seed(6);
        spec.config.model_type = model_type.into();
        let tag = format!("{}-{model_type}", shape.name());
        let gguf = dir.0.join(format!("{tag}.gguf"));
        write_gguf(&gguf, &spec).unwrap();
        let hf = dir.0.join(format!("{tag}-hf"));
        write_hf_dir(&hf, &spec, DType::F32).unwrap();
        let g = Model::load(&gguf, &Device::Cpu).unwrap();
        let h = Model::load(&hf, &Device::Cpu).unwrap();
        assert_eq!(GgufBase::of(&h).unwrap().architecture(), arch);
        let targets = ["q_proj", "k_proj", "o_proj", "down_proj"];
        let peft_dir = dir.0.join(format!("{tag}-peft"));
        peft_adapter(&g, &settings(4, 8.0, true, &targets), &peft_dir, 7);
        let on_hf = Adapter::load(&peft_dir, &h).unwrap();
        let on_gguf = Adapter::load(&peft_dir, &g).unwrap();
        let (a, b) = (
            dir.0.join(format!("{tag}-hf.gguf")),
            dir.0.join(format!("{tag}-g.gguf")),
        );
        on_hf.save_gguf(&h, &a).unwrap();
        on_gguf.save_gguf(&g, &b).unwrap();
        let (fa, arch_a) = factors(&a);
        let (fb, arch_b) = factors(&b);
        // A GGUF base named `mistral` keeps its own name; the HF folder maps to llama.cpp's `llama`.
        assert_eq!(arch_a, arch);
        assert_eq!(arch_b, model_type);
        assert_eq!(fa, fb, "{tag}: the same factors under the same names");
        // The HF-base export loads back on the HF model with the PEFT logits.
        let ids = ids(&h);
        let back = Adapter::open(&a, &h).unwrap();
        let d = common::max_abs_diff(
            &h.logits(Some(&on_hf), &ids).unwrap(),
            &h.logits(Some(&back), &ids).unwrap(),
        );
        assert!(d <= 1e-5, "{tag}: {d}");
    }
}

#[test]
fn adapter_formats_follow_the_base_and_train_head() {
    let dir = Scratch::new("formats");
    let spec = Spec::new(Shape::TinyLlama, WeightType::F32).with_layers(1);
    let gguf = dir.0.join("base.gguf");
    write_gguf(&gguf, &spec).unwrap();
    let hf = dir.0.join("base-hf");
    write_hf_dir(&hf, &spec, DType::F32).unwrap();
    let g = Model::load(&gguf, &Device::Cpu).unwrap();
    let h = Model::load(&hf, &Device::Cpu).unwrap();
    let plain = settings(4, 8.0, false, &["q_proj"]);
    let mut head = plain.clone();
    head.modules_to_save = vec!["lm_head".into()];
    let pick = |f: AdapterFormats, m: &Model, s: &LoraSettings| f.resolve(m, s);

    let c = pick(AdapterFormats::Auto, &g, &plain).unwrap();
    assert!(c.gguf.is_some() && c.warning.is_none());
    let c = pick(AdapterFormats::Auto, &h, &plain).unwrap();
    assert!(c.gguf.is_none() && c.warning.is_none());
    let c = pick(AdapterFormats::Auto, &g, &head).unwrap();
    assert!(c.gguf.is_none());
    assert!(c.warning.unwrap().contains("train_head"));
    let c = pick(AdapterFormats::PeftAndGguf, &h, &plain).unwrap();
    assert_eq!(c.gguf.unwrap().architecture(), "llama");
    assert!(pick(AdapterFormats::Peft, &g, &plain)
        .unwrap()
        .gguf
        .is_none());
    let e = pick(AdapterFormats::PeftAndGguf, &g, &head).unwrap_err();
    assert!(
        matches!(&e, trainer_core::Error::Setting { field, .. } if field == "adapter_formats"),
        "{e}"
    );
}

#[test]
fn a_job_writes_a_gguf_copy_into_every_checkpoint_and_the_output() {
    let dir = Scratch::new("job");
    let base = dir.0.join("base.gguf");
    write_gguf(
        &base,
        &Spec::new(Shape::TinyLlama, WeightType::F32).with_layers(1),
    )
    .unwrap();
    let model = Model::load(&base, &Device::Cpu).unwrap();
    let lora = settings(4, 8.0, false, &["q_proj", "k_proj", "v_proj"]);
    let choice = AdapterFormats::Auto.resolve(&model, &lora).unwrap();
    let out = dir.0.join("run");
    let store = DirStore::new(&out).with_gguf_copies(choice.gguf.unwrap());
    store.prepare_new(false).unwrap();
    let sample = |i: u32| Sample::causal((0..24).map(|t| (t * 11 + i * 17) % 500).collect());
    let data = TrainingData::from_samples(
        (0..6).map(sample).collect(),
        Vec::new(),
        DataOptions::default(),
    );
    let plan = TrainingPlan::new(
        PlanSettings {
            batch_size: 2,
            epochs: 2.0,
            warmup: Warmup::Steps(1),
            learning_rate: 1e-2,
            ..PlanSettings::default()
        },
        6,
    )
    .unwrap();
    let report = Job::builder(&model, data, store)
        .lora(lora)
        .plan(plan)
        .checkpoints(checkpoint_policy::Settings {
            save_each_epoch: true,
            ..checkpoint_policy::Settings::default()
        })
        .build()
        .unwrap()
        .run()
        .unwrap();
    assert_eq!(report.end, End::Finished);
    let mut folders: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("checkpoint-")
        })
        .collect();
    assert_eq!(folders.len(), 2, "{folders:?}");
    folders.push(out.clone());
    let ids: Vec<u32> = (0..16).map(|t| t * 5 % 500).collect();
    for f in &folders {
        let peft = Adapter::open(f, &model).unwrap();
        let gguf = Adapter::open(&f.join(ADAPTER_GGUF_FILE), &model).unwrap();
        let d = common::max_abs_diff(
            &model.logits(Some(&peft), &ids).unwrap(),
            &model.logits(Some(&gguf), &ids).unwrap(),
        );
        assert!(d <= 1e-5, "{}: {d}", f.display());
    }
}
