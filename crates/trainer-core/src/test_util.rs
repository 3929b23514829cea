//! Helpers shared by the unit tests of the fused kernels and the loss.

use candle_core::{Device, Tensor};

use crate::rng::Rng;

/// A tensor of uniform values in [-1, 1).
pub(crate) fn rand(rng: &mut Rng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(rng.uniform(n, -1.0, 1.0), shape, &Device::Cpu).unwrap()
}

/// max |a - b| over all elements.
pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
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
