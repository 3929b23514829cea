use schedulers::{Horizon, Schedule, Scheduler};
use serde_json::Value;

fn reference() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/hf-schedulers.json"
    );
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {path}: {e} (the repository's testdata/ folder)"));
    serde_json::from_str(&text).expect("hf-schedulers.json is valid JSON")
}

#[test]
fn hf_set_matches_transformers_to_1e9() {
    let data = reference();
    let base_lr = data["base_lr"].as_f64().expect("base_lr");
    let cases = data["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 4);
    let mut checked = 0;
    for case in cases {
        let w = case["num_warmup_steps"].as_u64().expect("warmup");
        let t = case["num_training_steps"].as_u64().expect("total");
        let schedules = case["schedules"].as_object().expect("schedules");
        assert_eq!(schedules.len(), 7);
        for (name, values) in schedules {
            let schedule: Schedule = name.parse().expect("HF name parses");
            // Epoch length is irrelevant to the HF kinds.
            let sched = Scheduler::new(schedule, Horizon::new(t, w, 1).unwrap(), base_lr).unwrap();
            let expected: Vec<f64> = values
                .as_array()
                .expect("values")
                .iter()
                .map(|v| v.as_f64().expect("number"))
                .collect();
            assert_eq!(expected.len() as u64, t + 1, "{name} ({w}, {t})");
            let got = sched.multipliers();
            for (k, (g, e)) in got.iter().zip(&expected).enumerate() {
                assert!(
                    (g - e).abs() <= 1e-9,
                    "{name} warmup={w} total={t} step {k}: got {g}, transformers {e}"
                );
                assert!((sched.lr(k as u64) - base_lr * e).abs() <= 1e-9 * base_lr);
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 7 * (11 + 11 + 101 + 1001));
}
