//! Synthetic models: every weight type at the tiny shapes loads with `Model::load` and gives finite, varied
//! logits; quantized files stay within their type's error of the F32 file of the same seed; GGUF and Hugging
//! Face outputs of one seed are the same model; llama.cpp's per-tensor fallbacks.

use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use trainer_core::synthetic::{write_gguf, write_hf_dir, Shape, Spec, WeightType};
use trainer_core::{Model, ModelConfig};

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let p =
            std::env::temp_dir().join(format!("trainer-core-synth-{tag}-{}", std::process::id()));
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

fn logits(model: &Model) -> Vec<Vec<f32>> {
    let ids = model
        .tokenizer()
        .encode(TEXT, false)
        .unwrap()
        .get_ids()
        .to_vec();
    model.logits(None, &ids).unwrap().to_vec2::<f32>().unwrap()
}

/// Finite, spread out (not saturated, not constant) and different at every position.
fn assert_lively(l: &[Vec<f32>], what: &str) {
    for (p, row) in l.iter().enumerate() {
        assert!(row.iter().all(|v| v.is_finite()), "{what}: position {p}");
        let mean = row.iter().sum::<f32>() / row.len() as f32;
        let sd =
            (row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / row.len() as f32).sqrt();
        assert!(
            (0.3..30.0).contains(&sd),
            "{what}: position {p}: logits' spread {sd}"
        );
    }
    for w in l.windows(2) {
        let d = w[0]
            .iter()
            .zip(&w[1])
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(d > 1e-2, "{what}: two positions give the same logits");
    }
}

/// The configuration as a GGUF file holds it (f32 floats).
fn as_f32(c: &ModelConfig) -> ModelConfig {
    ModelConfig {
        rms_norm_eps: f64::from(c.rms_norm_eps as f32),
        rope_theta: f64::from(c.rope_theta as f32),
        ..c.clone()
    }
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

fn gguf(dir: &Path, shape: Shape, t: WeightType, seed: u64) -> PathBuf {
    let path = dir.join(format!("{}-{}.gguf", shape.name(), t.name()));
    let w = write_gguf(&path, &Spec::new(shape, t).with_seed(seed)).unwrap();
    assert!(w.fallbacks.is_empty(), "{:?}", w.fallbacks);
    assert_eq!(w.bytes, std::fs::metadata(&path).unwrap().len());
    path
}

/// Every tensor of a GGUF file, dequantized by candle, by name, with its storage type.
fn tensors(path: &Path) -> Vec<(String, GgmlDType, Vec<f32>)> {
    let mut f = File::open(path).unwrap();
    let ct = Content::read(&mut f).unwrap();
    let mut names: Vec<&String> = ct.tensor_infos.keys().collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let q = ct.tensor(&mut f, n, &Device::Cpu).unwrap();
            let v = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            (n.clone(), q.dtype(), v)
        })
        .collect()
}

/// Bits per value of the quantized types (the floats: the relative rounding of one value).
fn bits(t: WeightType) -> i32 {
    match t {
        WeightType::Q2_K => 2,
        WeightType::Q3_K => 3,
        WeightType::Q4_0 | WeightType::Q4_1 | WeightType::Q4_K => 4,
        WeightType::Q5_0 | WeightType::Q5_1 | WeightType::Q5_K => 5,
        WeightType::Q6_K => 6,
        WeightType::Q8_0 => 8,
        WeightType::BF16 => 8,
        WeightType::F16 => 11,
        WeightType::F32 => 24,
    }
}

#[test]
fn every_type_at_the_tiny_shapes_loads_with_finite_varied_logits_within_its_error() {
    let dir = Scratch::new("types");
    for shape in [Shape::TinyLlama, Shape::TinyQwen2] {
        let f32_path = gguf(&dir.0, shape, WeightType::F32, 5);
        let reference = tensors(&f32_path);
        let f32_logits = logits(&Model::load(&f32_path, &Device::Cpu).unwrap());
        for t in WeightType::ALL {
            let path = gguf(&dir.0, shape, t, 5);
            let what = format!("{shape} {t}");
            let model = Model::load(&path, &Device::Cpu).unwrap();
            assert_eq!(model.config(), &as_f32(&shape.config()), "{what}");
            let l = logits(&model);
            assert_lively(&l, &what);
            // The quantization error reaches the logits, boundedly: 2-bit weights move them most.
            let d = max_abs_diff(&l, &f32_logits);
            let bound = 40.0 * 2f32.powi(-bits(t));
            assert!(
                d <= bound,
                "{what}: logits {d} from the F32 model's (bound {bound})"
            );
            // Each tensor is within its type's error of the F32 file's: norms and biases are F32, matrices
            // within 1.25 grid steps of each 256 values (quant's own bound), floats within half an ulp.
            for ((name, dtype, v), (rname, _, r)) in tensors(&path).iter().zip(&reference) {
                assert_eq!(name, rname);
                let is_vector = name.contains("norm") || name.ends_with(".bias");
                if is_vector || t == WeightType::F32 {
                    assert_eq!(*dtype, GgmlDType::F32, "{what} {name}");
                    assert_eq!(v, r, "{what} {name}");
                    continue;
                }
                assert_ne!(*dtype, GgmlDType::F32, "{what} {name}");
                for (x, y) in r.chunks(256).zip(v.chunks(256)) {
                    let amax = x.iter().fold(0f32, |m, a| m.max(a.abs()));
                    let worst = x.iter().zip(y).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                    let bound = match t {
                        WeightType::F16 | WeightType::BF16 => amax * 2f32.powi(-bits(t)),
                        _ => 1.25 * 2.0 * amax / ((1 << bits(t)) - 1) as f32,
                    };
                    assert!(worst <= bound, "{what} {name}: error {worst} > {bound}");
                }
            }
        }
    }
}

#[test]
fn gguf_and_hf_folder_of_one_seed_are_the_same_model() {
    let dir = Scratch::new("hf");
    for shape in [Shape::TinyLlama, Shape::TinyQwen2] {
        let g = Model::load(&gguf(&dir.0, shape, WeightType::F32, 11), &Device::Cpu).unwrap();
        let gl = logits(&g);
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let hf = dir.0.join(format!("{shape}-{dtype:?}"));
            let w = write_hf_dir(
                &hf,
                &Spec::new(shape, WeightType::Q4_K).with_seed(11),
                dtype,
            )
            .unwrap();
            let st = std::fs::metadata(hf.join("model.safetensors"))
                .unwrap()
                .len();
            assert_eq!(w.bytes, st);
            let m = Model::load(&hf, &Device::Cpu).unwrap();
            assert_eq!(&as_f32(m.config()), g.config());
            assert_eq!(m.special_tokens(), g.special_tokens());
            assert_eq!(m.chat_template(), g.chat_template());
            assert_eq!(
                m.tokenizer().encode(TEXT, false).unwrap().get_ids(),
                g.tokenizer().encode(TEXT, false).unwrap().get_ids()
            );
            let d = max_abs_diff(&logits(&m), &gl);
            // F32: the same weights (the loader undoes the GGUF's q/k permutation), so the same logits.
            let bound = match dtype {
                DType::F32 => 0.0,
                DType::F16 => 0.02,
                _ => 0.15,
            };
            assert!(d <= bound, "{shape} {dtype:?}: logits differ by {d}");
            let raw =
                candle_core::safetensors::load(hf.join("model.safetensors"), &Device::Cpu).unwrap();
            assert!(raw.values().all(|t| t.dtype() == dtype));
        }
    }
    let e = write_hf_dir(
        &dir.0.join("x"),
        &Spec::new(Shape::TinyLlama, WeightType::F32),
        DType::U8,
    )
    .unwrap_err();
    assert!(e.to_string().contains("F32, F16 or BF16"), "{e}");
}

#[test]
fn llama_q_k_rows_are_permuted_as_llama_cpp_does_and_qwen2_rows_are_not() {
    let dir = Scratch::new("perm");
    for (shape, permuted) in [(Shape::TinyLlama, true), (Shape::TinyQwen2, false)] {
        let path = gguf(&dir.0, shape, WeightType::F32, 2);
        let hf = dir.0.join(format!("{shape}-hf"));
        write_hf_dir(
            &hf,
            &Spec::new(shape, WeightType::F32).with_seed(2),
            DType::F32,
        )
        .unwrap();
        let st =
            candle_core::safetensors::load(hf.join("model.safetensors"), &Device::Cpu).unwrap();
        let mut f = File::open(&path).unwrap();
        let ct = Content::read(&mut f).unwrap();
        let mut raw = |name: &str| -> Tensor {
            ct.tensor(&mut f, name, &Device::Cpu)
                .unwrap()
                .dequantize(&Device::Cpu)
                .unwrap()
        };
        let heads = [("q", 4usize), ("k", 2)];
        for (m, n_heads) in heads {
            let g = raw(&format!("blk.0.attn_{m}.weight"));
            let h = &st[&format!("model.layers.0.self_attn.{m}_proj.weight")];
            let (out, inp) = h.dims2().unwrap();
            // llama.cpp's `permute`: (heads, 2, hd/2, in) -> swap the middle axes.
            let p = h
                .reshape((n_heads, 2, out / n_heads / 2, inp))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .reshape((out, inp))
                .unwrap();
            let want = if permuted { &p } else { h };
            let same = |a: &Tensor, b: &Tensor| {
                a.eq(b)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .min(0)
                    .unwrap()
                    .to_scalar::<u8>()
                    .unwrap()
                    == 1
            };
            assert!(same(&g, want), "{shape} {m}");
            assert!(!same(&g, if permuted { h } else { &p }), "{shape} {m}");
        }
        assert_eq!(ct.tensor_infos.contains_key("blk.0.attn_q.bias"), !permuted);
        assert_eq!(
            ct.tensor_infos.contains_key("output.weight"),
            shape == Shape::TinyLlama
        );
        assert_eq!(
            ct.metadata["general.architecture"].to_string().unwrap(),
            if permuted { "llama" } else { "qwen2" }
        );
    }
}

#[test]
fn smollm2_rows_of_576_fall_back_per_tensor_and_load() {
    let dir = Scratch::new("smol");
    let path = dir.0.join("smol.gguf");
    let w = write_gguf(
        &path,
        &Spec::new(Shape::Smollm2_135m, WeightType::Q4_K).with_layers(1),
    )
    .unwrap();
    // Every matrix whose rows are the hidden size (576) falls back to Q5_0; ffn_down's rows (1536) stay Q4_K.
    let mut names: Vec<&str> = w.fallbacks.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "blk.0.attn_k.weight",
            "blk.0.attn_output.weight",
            "blk.0.attn_q.weight",
            "blk.0.attn_v.weight",
            "blk.0.ffn_gate.weight",
            "blk.0.ffn_up.weight",
            "token_embd.weight"
        ]
    );
    assert!(w.fallbacks.iter().all(|(_, t)| *t == WeightType::Q5_0));
    let ct = Content::read(&mut File::open(&path).unwrap()).unwrap();
    assert_eq!(
        ct.tensor_infos["blk.0.ffn_down.weight"].ggml_dtype,
        GgmlDType::Q4K
    );
    let m = Model::load(&path, &Device::Cpu).unwrap();
    assert_eq!(m.config().vocab_size, 49152);
    assert!(m.config().tie_word_embeddings);
    assert_lively(&logits(&m), "smollm2-135m");
}

#[test]
fn a_seed_fixes_the_file_and_another_seed_changes_it() {
    let dir = Scratch::new("seed");
    let spec = Spec::new(Shape::TinyQwen2, WeightType::Q6_K).with_layers(1);
    let a = dir.0.join("a.gguf");
    let b = dir.0.join("b.gguf");
    write_gguf(&a, &spec).unwrap();
    write_gguf(&b, &spec).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    write_gguf(&b, &spec.clone().with_seed(1)).unwrap();
    assert_ne!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    // A layer's weights do not depend on the number of layers.
    let two = dir.0.join("two.gguf");
    write_gguf(&two, &spec.clone().with_layers(2)).unwrap();
    let one = tensors(&a);
    let two = tensors(&two);
    for (name, _, v) in &one {
        let other = two.iter().find(|(n, _, _)| n == name).unwrap();
        assert_eq!(v, &other.2, "{name}");
    }
    // Bad specs are refused before anything is written.
    let mut bad = spec.clone();
    bad.config.num_attention_heads = 3;
    let e = write_gguf(&dir.0.join("bad.gguf"), &bad).unwrap_err();
    assert!(e.to_string().contains("num_key_value_heads"), "{e}");
    assert!(!dir.0.join("bad.gguf").exists());
}
