//! Replays the steps torch and transformers recorded in `testdata/optimizers/reference.json` (made by
//! `make_reference.py` beside it) and matches every parameter after every step to 1e-6.

use serde_json::Value;

use crate::optim::{AdamWParams, OptimState, Optimizer};

fn reference() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/optimizers/reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// The optimizer of a case: its setting's name, then the Trainer's kwargs as `optim_args`.
fn optimizer_of(case: &Value) -> Optimizer {
    let (base, _) = Optimizer::from_name(case["optimizer"].as_str().unwrap()).unwrap();
    let args: Vec<String> = case["kwargs"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "betas" | "eps"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    base.with_args(&args.join(",")).unwrap()
}

/// Runs every case; returns the largest difference from torch of each.
fn replay(break_it: impl Fn(&mut Vec<f32>, &str)) -> Vec<(String, f64)> {
    let r = reference();
    let init = &r["init"];
    let mut out = Vec::new();
    for case in r["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap().to_string();
        let opt = optimizer_of(case);
        let adamw = AdamWParams {
            weight_decay: case["weight_decay"].as_f64().unwrap(),
            ..AdamWParams::default()
        };
        let mut tensors: Vec<(&str, Vec<usize>, Vec<f32>, OptimState)> = ["w", "b"]
            .iter()
            .map(|&k| {
                let shape: Vec<usize> = init[k]["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect();
                let state = OptimState::new(&opt, &shape).unwrap();
                (k, shape, floats(&init[k]["values"]), state)
            })
            .collect();
        let mut worst = 0f64;
        for (i, step) in case["steps"].as_array().unwrap().iter().enumerate() {
            let lr = step["lr"].as_f64().unwrap();
            for (k, _, value, state) in &mut tensors {
                let grad = floats(&step["grads"][*k]);
                state.update(&opt, &adamw, value, &grad, lr, i as u64 + 1);
                break_it(value, &name);
                for (a, b) in value.iter().zip(floats(&step["params"][*k])) {
                    worst = worst.max(f64::from((a - b).abs()));
                }
            }
        }
        out.push((name, worst));
    }
    out
}

#[test]
fn every_optimizer_matches_torch_and_transformers_to_1e_6() {
    let got = replay(|_, _| {});
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "adamw",
            "sgd",
            "sgd_momentum",
            "sgd_momentum_dampening",
            "sgd_nesterov",
            "adagrad",
            "adafactor",
            "adafactor_beta1_scaled"
        ]
    );
    for (name, worst) in got {
        assert!(
            worst < 1e-6,
            "{name}: differs from the reference by {worst:e}"
        );
    }
}

#[test]
fn the_replay_sees_a_change_of_one_ulp_scale() {
    // A perturbation far below any real mistake (1e-5 of one entry) is caught: the check is not vacuous.
    let got = replay(|v, name| {
        if name == "adafactor" {
            v[0] += 1e-5;
        }
    });
    assert!(got.iter().any(|(n, w)| n == "adafactor" && *w > 1e-6));
}
