//! Gradients on a tiny random model: finite differences, and fused kernels against composed ops.

use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor, D};
use lora_targets::LoraSettings;
use trainer_core::{Adapter, Backend, Model, ModelConfig, Sample, TrainConfig, Trainer};

use crate::common::max_abs_diff;

fn tiny() -> Model {
    let cfg = ModelConfig::tiny_llama(256, 16, 2, 4, 2);
    Model::random(cfg, 11, &Device::Cpu).unwrap()
}

fn settings(m: &Model) -> LoraSettings {
    LoraSettings {
        r: 2,
        alpha: 4.0,
        use_rslora: false,
        dropout: 0.0,
        target_modules: m.linear_modules(),
        modules_to_save: vec![],
    }
}

fn sample() -> Sample {
    Sample::causal(
        b"gradient check text"
            .iter()
            .map(|&c| u32::from(c))
            .collect(),
    )
}

/// Mean next-token NLL of `ids` with `adapter`, in f64 from the logits.
fn loss(m: &Model, adapter: &Adapter, ids: &[u32]) -> f64 {
    let logits = m.logits(Some(adapter), ids).unwrap();
    let n = ids.len();
    let lsm = candle_nn::ops::log_softmax(&logits.narrow(0, 0, n - 1).unwrap(), D::Minus1).unwrap();
    let t = Tensor::new(&ids[1..], &Device::Cpu)
        .unwrap()
        .unsqueeze(1)
        .unwrap();
    let v = lsm
        .gather(&t, 1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    -v.iter().map(|x| f64::from(*x)).sum::<f64>() / (n - 1) as f64
}

/// The adapter with element `idx` of tensor `key` moved by `delta` (through a PEFT save/load round trip).
fn nudged(
    m: &Model,
    a: &Adapter,
    dir: &std::path::Path,
    key: &str,
    idx: usize,
    delta: f32,
) -> Adapter {
    a.save(dir, "tiny").unwrap();
    let file = dir.join(trainer_core::ADAPTER_WEIGHTS_FILE);
    let mut t = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let old = &t[key];
    let mut v = old.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v[idx] += delta;
    t.insert(
        key.to_string(),
        Tensor::from_vec(v, old.shape(), &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&t, &file).unwrap();
    Adapter::load(dir, m).unwrap()
}

#[test]
fn lora_gradients_match_finite_differences() {
    let m = tiny();
    let mut t = Trainer::new(
        &m,
        settings(&m),
        TrainConfig {
            seed: 3,
            ..TrainConfig::default()
        },
    )
    .unwrap();
    // Move B off zero so every factor has a gradient.
    t.step(&[vec![sample()]], 5e-2, &AtomicBool::new(false))
        .unwrap();
    let adapter = t.adapter().unwrap();
    let grads = t.gradients(&[sample()]).unwrap();
    let dir = std::env::temp_dir().join(format!("trainer-core-fd-{}", std::process::id()));
    let ids = sample().input_ids;
    let h = 1e-2f32;
    let mut checked = 0;
    for (key, g) in &grads {
        let g = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // The element with the largest gradient, so the difference quotient is well above f32 noise.
        let (idx, &want) = g
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .unwrap();
        let up = loss(&m, &nudged(&m, &adapter, &dir, key, idx, h), &ids);
        let down = loss(&m, &nudged(&m, &adapter, &dir, key, idx, -h), &ids);
        let fd = (up - down) / (2.0 * f64::from(h));
        let err = (fd - f64::from(want)).abs();
        assert!(
            err < 2e-2 * f64::from(want.abs()) + 2e-4,
            "{key}[{idx}]: backprop {want}, finite difference {fd}"
        );
        checked += 1;
    }
    assert_eq!(checked, 2 * 7 * 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `steps` on both trainers and asserts the same losses and gradient norms at each step (tolerances
/// `(loss, relative norm)`), then the same gradients on `batch` (1e-5) for every trainable tensor.
fn assert_same_training(
    a: &mut Trainer,
    b: &mut Trainer,
    steps: &[Vec<Vec<Sample>>],
    batch: &[Sample],
    (loss_tol, norm_tol): (f64, f64),
    what: &str,
) {
    let cancel = AtomicBool::new(false);
    for step in steps {
        let (sa, sb) = (
            a.step(step, 5e-2, &cancel).unwrap(),
            b.step(step, 5e-2, &cancel).unwrap(),
        );
        assert!(
            (sa.loss - sb.loss).abs() < loss_tol,
            "{what}: loss {} vs {}",
            sa.loss,
            sb.loss
        );
        assert!(
            (sa.grad_norm - sb.grad_norm).abs() < norm_tol * sa.grad_norm.max(1.0),
            "{what}: gradient norm {} vs {}",
            sa.grad_norm,
            sb.grad_norm
        );
    }
    let (ga, gb) = (a.gradients(batch).unwrap(), b.gradients(batch).unwrap());
    assert_eq!(ga.len(), gb.len());
    for (key, x) in &ga {
        let d = max_abs_diff(x, &gb[key]);
        assert!(d < 1e-5, "{what}: {key}: gradients differ by {d}");
    }
}

/// The CPU engine (hand-written forward and backward) against candle's autograd over the composed ops, on a
/// model with q/k/v biases and grouped kv heads, with LoRA dropout, NEFTune, right padding and two micro-batches:
/// same losses, gradient norms and gradients, and the same RNG draws (the third step would differ otherwise).
#[test]
fn engine_matches_candle_autograd_with_bias_dropout_neftune_and_padding() {
    let mut cfg = ModelConfig::tiny_llama(256, 24, 2, 6, 2);
    cfg.attention_bias = true;
    let model = Model::random(cfg, 12, &Device::Cpu).unwrap();
    let s = LoraSettings {
        dropout: 0.3,
        ..settings(&model)
    };
    for checkpointing in [false, true] {
        let cfg = TrainConfig {
            seed: 6,
            neftune_alpha: Some(5.0),
            gradient_checkpointing: checkpointing,
            backend: Backend::Engine,
            ..TrainConfig::default()
        };
        let oracle = TrainConfig {
            backend: Backend::Autograd,
            ..cfg.clone()
        };
        let mut a = Trainer::new(&model, s.clone(), cfg).unwrap();
        let mut b = Trainer::new(&model, s.clone(), oracle).unwrap();
        // 150 tokens: more than one causal block of the engine's attention.
        let long = Sample::causal((0..150u32).map(|i| (i * 37 + 11) % 256).collect());
        let steps = [
            vec![
                vec![sample(), Sample::causal(vec![70, 71, 72])],
                vec![long.clone(), Sample::causal(vec![90, 91, 92, 93, 94])],
            ],
            vec![vec![sample()]],
            vec![vec![Sample::causal(vec![80, 81, 82, 83, 84, 85]), sample()]],
        ];
        let batch = [sample(), long, Sample::causal(vec![65, 66, 67])];
        let what = format!("engine vs autograd, checkpointing {checkpointing}");
        assert_same_training(&mut a, &mut b, &steps, &batch, (1e-5, 1e-4), &what);
    }
}

/// A trained `lm_head` and `embed_tokens` copy (PEFT's modules_to_save, full dense gradients) through the engine
/// against candle's autograd, on a tied and an untied model, with and without gradient checkpointing.
#[test]
fn engine_trains_modules_to_save_like_candle_autograd() {
    for tied in [true, false] {
        let mut cfg = ModelConfig::tiny_llama(256, 16, 2, 4, 2);
        cfg.tie_word_embeddings = tied;
        let m = Model::random(cfg, 13, &Device::Cpu).unwrap();
        let s = LoraSettings {
            modules_to_save: vec!["lm_head".into(), "embed_tokens".into()],
            target_modules: vec!["q_proj".into(), "down_proj".into()],
            dropout: 0.1,
            ..settings(&m)
        };
        for checkpointing in [false, true] {
            let cfg = TrainConfig {
                seed: 9,
                neftune_alpha: Some(3.0),
                gradient_checkpointing: checkpointing,
                backend: Backend::Engine,
                ..TrainConfig::default()
            };
            let oracle = TrainConfig {
                backend: Backend::Autograd,
                ..cfg.clone()
            };
            let mut a = Trainer::new(&m, s.clone(), cfg).unwrap();
            let mut b = Trainer::new(&m, s.clone(), oracle).unwrap();
            assert_eq!(a.trainable_parameters(), b.trainable_parameters());
            let steps = [
                vec![
                    vec![sample(), Sample::causal(vec![70, 71, 72])],
                    vec![sample()],
                ],
                vec![vec![Sample::causal(vec![80, 81, 82, 83, 84, 85])]],
            ];
            let what = format!("modules_to_save, tied {tied}, checkpointing {checkpointing}");
            assert_same_training(&mut a, &mut b, &steps, &[sample()], (1e-5, 1e-4), &what);
        }
    }
}

#[test]
fn gradient_checkpointing_gives_the_same_steps_with_dropout_and_neftune() {
    let m = tiny();
    let s = LoraSettings {
        dropout: 0.2,
        ..settings(&m)
    };
    let plain = TrainConfig {
        seed: 5,
        neftune_alpha: Some(5.0),
        ..TrainConfig::default()
    };
    let ckpt = TrainConfig {
        gradient_checkpointing: true,
        ..plain.clone()
    };
    let mut a = Trainer::new(&m, s.clone(), plain).unwrap();
    let mut b = Trainer::new(&m, s, ckpt).unwrap();
    let steps = [
        vec![
            vec![sample(), Sample::causal(vec![70, 71, 72])],
            vec![sample()],
        ],
        vec![vec![Sample::causal(vec![80, 81, 82, 83, 84, 85])]],
        vec![vec![sample()]],
    ];
    let what = "checkpointed vs plain";
    assert_same_training(&mut a, &mut b, &steps, &[sample()], (1e-6, 1e-5), what);
}

#[test]
fn modules_to_save_train_and_round_trip_through_peft_files() {
    let m = tiny();
    let s = LoraSettings {
        modules_to_save: vec!["lm_head".into(), "embed_tokens".into()],
        target_modules: vec!["q_proj".into()],
        ..settings(&m)
    };
    let cancel = AtomicBool::new(false);
    for ckpt in [false, true] {
        let cfg = TrainConfig {
            gradient_checkpointing: ckpt,
            ..TrainConfig::default()
        };
        let mut t = Trainer::new(&m, s.clone(), cfg).unwrap();
        t.step(&[vec![sample()]], 1e-2, &cancel).unwrap();
        let grads = t.gradients(&[sample()]).unwrap();
        for key in [
            "base_model.model.lm_head.weight",
            "base_model.model.model.embed_tokens.weight",
        ] {
            let n = grads[key]
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(n > 0.0, "{key} got no gradient (checkpointing {ckpt})");
        }
        let adapter = t.adapter().unwrap();
        let dir =
            std::env::temp_dir().join(format!("trainer-core-mts-{ckpt}-{}", std::process::id()));
        adapter.save(&dir, "tiny").unwrap();
        let back = Adapter::load(&dir, &m).unwrap();
        let ids = sample().input_ids;
        let (x, y) = (
            m.logits(Some(&adapter), &ids).unwrap(),
            m.logits(Some(&back), &ids).unwrap(),
        );
        let d = max_abs_diff(&x, &y);
        assert_eq!(d, 0.0);
        let base = m.logits(None, &ids).unwrap();
        assert!(max_abs_diff(&y, &base) > 1e-4, "training changed nothing");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
