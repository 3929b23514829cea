//! The step seam: a step assembled from micro-batch gradients computed in any order and added flat, in order of
//! `k`, is the step [`Trainer::step`] takes.

use std::sync::atomic::AtomicBool;

use lora_targets::LoraSettings;

use super::*;
use crate::test_models::tiny;

fn settings() -> LoraSettings {
    LoraSettings {
        r: 4,
        alpha: 8.0,
        dropout: 0.2,
        target_modules: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
        modules_to_save: vec!["embed_tokens".into()],
        ..LoraSettings::default()
    }
}

fn steps() -> Vec<Vec<Vec<Sample>>> {
    let s = |n: u32, off: u32| Sample::causal((0..n).map(|t| (t * 11 + off) % 256).collect());
    vec![
        vec![
            vec![s(12, 1), s(7, 2)],
            vec![s(16, 3)],
            vec![s(9, 4), s(9, 5)],
        ],
        vec![vec![s(10, 6)], vec![s(14, 7), s(5, 8)], vec![s(11, 9)]],
    ]
}

#[test]
fn micro_batches_computed_in_any_order_and_added_flat_give_the_step_bytes() {
    let m = tiny();
    let cancel = AtomicBool::new(false);
    for backend in [Backend::Engine, Backend::Autograd] {
        let config = TrainConfig {
            seed: 5,
            neftune_alpha: Some(5.0),
            backend,
            ..TrainConfig::default()
        };
        let mut plain = Trainer::new(&m, settings(), config.clone()).unwrap();
        let mut seam = Trainer::new(&m, settings(), config).unwrap();
        for (i, step) in steps().iter().enumerate() {
            let want = plain.step(step, 1e-2, &cancel).unwrap();
            let total = seam.check_step(step, 1e-2).unwrap();
            // Computed last to first (as another process might), kept flat, then added in order of k.
            let mut parts = vec![(Vec::new(), 0.0, 0); step.len()];
            for k in (0..step.len()).rev() {
                let (nll, padded) = seam.micro_batch_gradient(k, &step[k], total).unwrap();
                seam.copy_micro_batch_gradient(&mut parts[k].0);
                assert_eq!(parts[k].0.len(), seam.gradient_len());
                (parts[k].1, parts[k].2) = (nll, padded);
            }
            seam.zero_step_gradient();
            let mut sum = StepSum::default();
            for (flat, nll, padded) in &parts {
                seam.add_flat_gradient(flat).unwrap();
                sum.add(*nll, *padded);
            }
            let got = seam.apply_update(sum, total, 1e-2);
            let what = format!("{backend:?}, step {i}");
            assert_eq!(want.loss.to_bits(), got.loss.to_bits(), "{what}");
            assert_eq!(want.grad_norm.to_bits(), got.grad_norm.to_bits(), "{what}");
            assert_eq!(
                (want.step, want.padded_tokens),
                (got.step, got.padded_tokens)
            );
            for (a, b) in plain.params.iter().zip(&seam.params) {
                assert!(a.value == b.value, "{what}: {} differs", a.key);
            }
        }
        assert!(seam.add_flat_gradient(&[0.0; 3]).is_err());
    }
}
