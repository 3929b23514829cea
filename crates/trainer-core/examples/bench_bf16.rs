//! Products with bf16 inputs and f32 accumulation (AVX-512 BF16) against the engine's f32 GEMM, at the shapes of
//! a training step (figures, not a test), and what they would make of a step.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run --release -p trainer-core --example bench_bf16 [reps]
//! ```

use trainer_core::__engine_bench::{bf16_relative_error, bf16_seconds, f32_seconds};

fn main() {
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let peak = f32_seconds(2048, 2048, 2048, reps.min(3));
    println!(
        "f32 GEMM 2048^3: {:.1} GFLOP/s (the machine's measured f32 peak here)",
        2.0 * 2048f64.powi(3) / peak / 1e9
    );
    // (name, m, n, k, products of that shape per SmolLM2 step at 4 x 256 tokens: forward + input gradient, 30 layers)
    let smol = [
        ("q, o: 1024x576x576", 1024, 576, 576, 2 * 2 * 30),
        ("k, v: 1024x192x576", 1024, 192, 576, 2 * 2 * 30),
        ("gate, up: 1024x1536x576", 1024, 1536, 576, 2 * 2 * 30),
        ("down: 1024x576x1536", 1024, 576, 1536, 2 * 30),
        ("down backward: 1024x1536x576", 1024, 1536, 576, 30),
        ("head: 256x49152x576", 256, 49152, 576, 2 * 4),
    ];
    let (mut t32, mut t16) = (0.0, 0.0);
    println!("shape: f32 GFLOP/s, bf16 GFLOP/s, bf16/f32 speed, largest relative difference");
    for (name, m, n, k, count) in smol {
        let (a, b) = (f32_seconds(m, n, k, reps), bf16_seconds(m, n, k, reps));
        let flop = 2.0 * (m * n * k) as f64;
        println!(
            "{name}: {:.1}, {:.1}, {:.2}x, {:.1e}",
            flop / a / 1e9,
            flop / b / 1e9,
            a / b,
            bf16_relative_error(m.min(256), n.min(4096), k)
        );
        t32 += a * count as f64;
        t16 += b * count as f64;
    }
    println!(
        "SmolLM2 step (4 x 256 tokens) frozen-weight products: f32 {t32:.2} s, bf16 {t16:.2} s ({:.2}x)",
        t32 / t16
    );
    for (name, m, n, k) in [
        ("7B q/o at 256 tokens: 256x4096x4096", 256, 4096, 4096),
        ("7B gate/up: 256x11008x4096", 256, 11008, 4096),
        ("7B down: 256x4096x11008", 256, 4096, 11008),
    ] {
        let (a, b) = (f32_seconds(m, n, k, reps), bf16_seconds(m, n, k, reps));
        let flop = 2.0 * (m * n * k) as f64;
        println!(
            "{name}: {:.1}, {:.1}, {:.2}x",
            flop / a / 1e9,
            flop / b / 1e9,
            a / b
        );
    }
}
