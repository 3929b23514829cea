//! Timing hooks for the `bench_bf16` example (not part of the API): the engine's f32 GEMM and the bf16-input
//! product at a given shape.

use std::time::Instant;

use super::bf16;
use super::gemm::{matmul, Mode, Threads, View};
use crate::rng::Rng;

/// Seconds per call (best of `reps`) of the f32 product `c[m, n] = a[m, k] · w[n, k]ᵀ` as the engine's forward
/// does it (`w` read transposed in place).
pub fn f32_seconds(m: usize, n: usize, k: usize, reps: usize) -> f64 {
    let mut rng = Rng::new(1);
    let (a, w) = (rng.uniform(m * k, -1.0, 1.0), rng.uniform(n * k, -1.0, 1.0));
    let mut c = vec![0f32; m * n];
    best(reps, || {
        matmul(
            &mut c,
            0,
            n,
            (m, n, k),
            View::rows(&a, 0, k),
            View::rows(&w, 0, k).t(),
            Mode::Set,
            1.0,
            Threads::Par,
        )
        .map_err(|e| e.to_string())
    })
}

/// Seconds per call (best of `reps`) of the same product with bf16 inputs and f32 accumulation, the conversion
/// of `a` to bf16 included (activations change every call; `w` is packed once, as stored weights would be).
pub fn bf16_seconds(m: usize, n: usize, k: usize, reps: usize) -> f64 {
    let mut rng = Rng::new(1);
    let (a, w) = (rng.uniform(m * k, -1.0, 1.0), rng.uniform(n * k, -1.0, 1.0));
    let packed = bf16::PackedB::new(k, n, |r, col| w[col * k + r]);
    let mut c = vec![0f32; m * n];
    let mut a16 = Vec::new();
    best(reps, || {
        bf16::rows_to_bf16(&a, k, &mut a16);
        bf16::matmul(&mut c, &a16, m, &packed).map_err(|e| e.to_string())
    })
}

/// Largest relative difference between the f32 and the bf16 product at this shape (the rounding it costs).
pub fn bf16_relative_error(m: usize, n: usize, k: usize) -> f64 {
    let mut rng = Rng::new(2);
    let (a, w) = (rng.uniform(m * k, -1.0, 1.0), rng.uniform(n * k, -1.0, 1.0));
    let mut exact = vec![0f32; m * n];
    let ok = matmul(
        &mut exact,
        0,
        n,
        (m, n, k),
        View::rows(&a, 0, k),
        View::rows(&w, 0, k).t(),
        Mode::Set,
        1.0,
        Threads::Par,
    );
    let packed = bf16::PackedB::new(k, n, |r, col| w[col * k + r]);
    let mut a16 = Vec::new();
    bf16::rows_to_bf16(&a, k, &mut a16);
    let mut c = vec![0f32; m * n];
    if ok.is_err() || bf16::matmul(&mut c, &a16, m, &packed).is_err() {
        return f64::NAN;
    }
    let scale = exact.iter().fold(0f32, |s, v| s.max(v.abs()));
    let worst = exact
        .iter()
        .zip(&c)
        .fold(0f32, |s, (x, y)| s.max((x - y).abs()));
    f64::from(worst / scale)
}

fn best(reps: usize, mut f: impl FnMut() -> Result<(), String>) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        if f().is_err() {
            return f64::NAN;
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}
