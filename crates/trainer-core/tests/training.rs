//! Training against the PEFT reference run, gradient completeness, determinism and exact resume.

use std::sync::atomic::AtomicBool;

use lora_targets::LoraSettings;
use trainer_core::{AdamWParams, Adapter, Sample, TrainConfig, Trainer};

use crate::common::{ids, max_abs_diff, model, peft_ref, reference};

fn reference_config() -> TrainConfig {
    TrainConfig {
        seed: 0,
        adamw: AdamWParams {
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.01,
        },
        max_grad_norm: None,
        neftune_alpha: None,
        pad_id: 2,
        ..TrainConfig::default()
    }
}

#[test]
fn five_steps_match_peft_losses_and_final_logits() {
    let m = model();
    let record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(peft_ref().join("train_record.json")).unwrap(),
    )
    .unwrap();
    let want: Vec<f64> = record["losses_per_step"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let init = Adapter::load(&peft_ref().join("init"), m).unwrap();
    let mut trainer = Trainer::from_adapter(m, &init, reference_config()).unwrap();
    let batch = vec![vec![Sample::causal(ids("train_input_ids"))]];
    let cancel = AtomicBool::new(false);
    let mut got = Vec::new();
    for _ in 0..want.len() {
        got.push(trainer.step(&batch, 1e-3, &cancel).unwrap().loss);
    }
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    eprintln!("losses {got:?}\nwanted {want:?}\nmax abs loss diff {worst:e}");
    assert!(worst < 1e-3, "losses differ by {worst}");
    let trained = trainer.adapter().unwrap();
    let logits = m.logits(Some(&trained), &ids("input_ids")).unwrap();
    let d = max_abs_diff(&logits, &reference("adapter_logits"));
    eprintln!("trained-adapter logits max abs diff {d:e}");
    assert!(d < 1e-3, "trained adapter logits differ by {d}");
}

fn all_seven(r: usize, dropout: f64) -> LoraSettings {
    LoraSettings {
        r,
        alpha: 2.0 * r as f64,
        use_rslora: false,
        dropout,
        target_modules: model().linear_modules(),
        modules_to_save: vec![],
    }
}

fn tensors_bytes(a: &Adapter, dir: &std::path::Path) -> Vec<u8> {
    a.save(dir, "test").unwrap();
    std::fs::read(dir.join(trainer_core::ADAPTER_WEIGHTS_FILE)).unwrap()
}

#[test]
fn every_lora_tensor_of_every_module_gets_a_nonzero_gradient() {
    let m = model();
    let mut t = Trainer::new(m, all_seven(2, 0.0), TrainConfig::default()).unwrap();
    let sample = Sample::causal(ids("input_ids"));
    // B starts at zero, so A's gradient is zero until B has moved once.
    t.step(&[vec![sample.clone()]], 1e-3, &AtomicBool::new(false))
        .unwrap();
    let grads = t.gradients(&[sample]).unwrap();
    assert_eq!(grads.len(), 30 * 7 * 2);
    for (key, g) in &grads {
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0, "{key} has a zero gradient");
    }
}

fn data() -> Vec<Vec<Vec<Sample>>> {
    let all = ids("train_input_ids");
    let s = |a: usize, b: usize| Sample::causal(all[a..b].to_vec());
    let mut masked = s(0, 30);
    masked.labels[..10]
        .iter_mut()
        .for_each(|l| *l = trainer_core::IGNORE_INDEX);
    // Three optimizer steps; the first uses two micro-batches (accumulation) with right padding.
    vec![
        vec![vec![s(0, 20), s(5, 12)], vec![masked]],
        vec![vec![s(10, 42)]],
        vec![vec![s(3, 17), s(20, 40)]],
    ]
}

fn noisy_config() -> TrainConfig {
    TrainConfig {
        seed: 7,
        neftune_alpha: Some(5.0),
        ..TrainConfig::default()
    }
}

#[test]
fn same_seed_gives_same_bytes_and_resume_equals_straight_through() {
    let m = model();
    let settings = LoraSettings {
        target_modules: vec!["q_proj".into(), "v_proj".into()],
        ..all_seven(4, 0.1)
    };
    let cancel = AtomicBool::new(false);
    let tmp = std::env::temp_dir().join(format!("trainer-core-resume-{}", std::process::id()));
    let run_all = |dir: &str| {
        let mut t = Trainer::new(m, settings.clone(), noisy_config()).unwrap();
        for step in data() {
            t.step(&step, 1e-3, &cancel).unwrap();
        }
        tensors_bytes(&t.adapter().unwrap(), &tmp.join(dir))
    };
    let a = run_all("a");
    let b = run_all("b");
    assert!(a == b, "same seed, different adapter bytes");

    let mut t = Trainer::new(m, settings.clone(), noisy_config()).unwrap();
    let steps = data();
    t.step(&steps[0], 1e-3, &cancel).unwrap();
    t.save_state(&tmp.join("state"), "test").unwrap();
    drop(t);
    let mut resumed = Trainer::load_state(&tmp.join("state"), m).unwrap();
    assert_eq!(resumed.steps_done(), 1);
    for step in &steps[1..] {
        resumed.step(step, 1e-3, &cancel).unwrap();
    }
    let c = tensors_bytes(&resumed.adapter().unwrap(), &tmp.join("c"));
    assert!(a == c, "resumed run differs from the straight-through run");

    // A different seed gives a different adapter.
    let mut other = Trainer::new(
        m,
        settings,
        TrainConfig {
            seed: 8,
            ..noisy_config()
        },
    )
    .unwrap();
    for step in &steps {
        other.step(step, 1e-3, &cancel).unwrap();
    }
    let d = tensors_bytes(&other.adapter().unwrap(), &tmp.join("d"));
    assert!(a != d, "a different seed gave the same adapter");
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn cancel_flag_stops_before_any_change() {
    let m = model();
    let mut t = Trainer::new(m, all_seven(2, 0.0), TrainConfig::default()).unwrap();
    let err = t
        .step(
            &[vec![Sample::causal(vec![1, 2, 3])]],
            1e-3,
            &AtomicBool::new(true),
        )
        .unwrap_err();
    assert!(matches!(err, trainer_core::Error::Cancelled));
    assert_eq!(t.steps_done(), 0);
}

/// Rewrites a saved `trainer_state.json` as the format-2 file an earlier version wrote (with its noise stream).
fn make_format_2(dir: &std::path::Path) {
    let path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = text.replace("\"format\": 3,", "\"format\": 2,\n  \"rng\": [1, 2, 3, 4],");
    assert_ne!(text, edited, "{text}");
    std::fs::write(&path, edited).unwrap();
}

#[test]
fn an_older_checkpoint_resumes_exactly_without_noise_and_is_refused_with_noise() {
    let m = model();
    let cancel = AtomicBool::new(false);
    let steps = data();
    let d = tempfile::tempdir().unwrap();
    let quiet = TrainConfig {
        seed: 7,
        ..TrainConfig::default()
    };
    let mut straight = Trainer::new(m, all_seven(4, 0.0), quiet.clone()).unwrap();
    for step in &steps {
        straight.step(step, 1e-3, &cancel).unwrap();
    }
    let a = tensors_bytes(&straight.adapter().unwrap(), &d.path().join("a"));
    let mut first = Trainer::new(m, all_seven(4, 0.0), quiet.clone()).unwrap();
    first.step(&steps[0], 1e-3, &cancel).unwrap();
    first.save_state(&d.path().join("old"), "test").unwrap();
    make_format_2(&d.path().join("old"));
    let mut resumed = Trainer::load_state(&d.path().join("old"), m).unwrap();
    for step in &steps[1..] {
        resumed.step(step, 1e-3, &cancel).unwrap();
    }
    let b = tensors_bytes(&resumed.adapter().unwrap(), &d.path().join("b"));
    assert!(
        a == b,
        "the older no-noise checkpoint resumed to another adapter"
    );

    for (label, dropout, config, want) in [
        ("dropout", 0.1, quiet.clone(), "LoRA dropout 0.1 noise"),
        ("NEFTune", 0.0, noisy_config(), "NEFTune alpha 5 noise"),
    ] {
        let dir = d.path().join(label);
        Trainer::new(m, all_seven(4, dropout), config)
            .unwrap()
            .save_state(&dir, "test")
            .unwrap();
        assert!(Trainer::load_state(&dir, m).is_ok(), "{label}: format 3");
        make_format_2(&dir);
        let err = Trainer::load_state(&dir, m).err().unwrap().to_string();
        for part in [
            want,
            "cannot continue exactly",
            "start a new run",
            "trainer_state.json",
        ] {
            assert!(err.contains(part), "{label}: {err}");
        }
    }
}
