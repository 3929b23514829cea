//! Shared helpers: the real model (loaded once), the reference data and comparisons.

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use trainer_core::Model;

/// `<repo root>/testdata/<rel>`: the data the tests read (see `testdata/README.md`).
pub fn testdata(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(rel)
}

/// The reference adapter directory.
pub fn peft_ref() -> PathBuf {
    testdata("peft-reference-qv")
}

/// The real-model path; panics with instructions when it is absent.
pub fn model_path() -> PathBuf {
    let fallback = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let path = std::env::var_os("TRAINER_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or(fallback);
    assert!(
        path.is_file(),
        "test model not found at {} : set TRAINER_TEST_MODEL or run `.ci/fetch-model.sh models` from the repository root",
        path.display()
    );
    path
}

/// The real model, loaded once per test binary.
pub fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| Model::load(&model_path(), &Device::Cpu).expect("load the test model"))
}

/// Tensors of `reference.safetensors`.
pub fn reference(name: &str) -> Tensor {
    let map =
        candle_core::safetensors::load(peft_ref().join("reference.safetensors"), &Device::Cpu)
            .unwrap();
    map.get(name)
        .unwrap_or_else(|| panic!("reference tensor {name}"))
        .clone()
}

/// Token ids stored as a tensor of any integer dtype.
pub fn ids(name: &str) -> Vec<u32> {
    reference(name)
        .to_dtype(candle_core::DType::I64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|v| v as u32)
        .collect()
}

/// max |a - b|.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
