//! Block-decoding benchmark (not a test): GB/s of f32 output per GGML type, single-threaded, our decoders
//! against candle's `QTensor::dequantize` on the same data in the same run.
//!
//! ```text
//! cargo run --release -p trainer-core --example bench_dequant -- [--rows 4096] [--cols 4096] [--rounds 5] [--type Q4_K]
//! ```
//!
//! For each type, a `rows x cols` matrix of uniform values is quantized once, then the rounds alternate:
//! - `candle`: `QTensor::dequantize` of the whole matrix (it allocates its output each time, as a loader does);
//! - `ours`: the whole matrix into an output allocated once;
//! - `panel`: the matrix 64 rows at a time into one reused buffer, as the training engine expands panels of a frozen
//!   weight (the buffer stays in cache).
//!
//! Each figure is the best of the rounds; the ratios are against `candle` in the same run.

use std::time::Instant;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use trainer_core::__quant_bench::dequantize;

const TYPES: [(&str, GgmlDType); 13] = [
    ("F32", GgmlDType::F32),
    ("F16", GgmlDType::F16),
    ("BF16", GgmlDType::BF16),
    ("Q4_0", GgmlDType::Q4_0),
    ("Q4_1", GgmlDType::Q4_1),
    ("Q5_0", GgmlDType::Q5_0),
    ("Q5_1", GgmlDType::Q5_1),
    ("Q8_0", GgmlDType::Q8_0),
    ("Q2_K", GgmlDType::Q2K),
    ("Q3_K", GgmlDType::Q3K),
    ("Q4_K", GgmlDType::Q4K),
    ("Q5_K", GgmlDType::Q5K),
    ("Q6_K", GgmlDType::Q6K),
];

const PANEL_ROWS: usize = 64;

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rows: usize = flag(&args, "--rows").map_or(Ok(4096), |s| s.parse())?;
    let cols: usize = flag(&args, "--cols").map_or(Ok(4096), |s| s.parse())?;
    let rounds: usize = flag(&args, "--rounds").map_or(Ok(5), |s| s.parse())?;
    let only = flag(&args, "--type");
    if !cols.is_multiple_of(256) || !rows.is_multiple_of(PANEL_ROWS) {
        return Err(format!("--cols must be a multiple of 256 and --rows of {PANEL_ROWS}").into());
    }
    let n = rows * cols;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let values: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
        })
        .collect();
    let src = Tensor::from_vec(values, (rows, cols), &Device::Cpu)?;
    let gb = (n * 4) as f64 / 1e9;
    println!(
        "{rows} x {cols} values ({:.0} MB of f32 output), best of {rounds} rounds, 1 thread",
        gb * 1e3
    );
    println!(
        "{:<6} {:>10} {:>10} {:>10} {:>8} {:>8}",
        "type", "candle", "ours", "panel", "ours/c", "panel/c"
    );
    for (name, dtype) in TYPES {
        if only
            .as_deref()
            .is_some_and(|o| !o.eq_ignore_ascii_case(name))
        {
            continue;
        }
        let q = QTensor::quantize(&src, dtype)?;
        let bytes = q.data()?.into_owned();
        let row_bytes = bytes.len() / rows;
        let mut out = vec![0f32; n];
        let mut panel = vec![0f32; PANEL_ROWS * cols];
        let (mut t_candle, mut t_ours, mut t_panel) = (f64::MAX, f64::MAX, f64::MAX);
        for _ in 0..rounds {
            let t = Instant::now();
            let c = q.dequantize(&Device::Cpu)?;
            t_candle = t_candle.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            dequantize(dtype, &bytes, &mut out)?;
            t_ours = t_ours.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            for p in bytes.chunks_exact(PANEL_ROWS * row_bytes) {
                dequantize(dtype, p, &mut panel)?;
            }
            t_panel = t_panel.min(t.elapsed().as_secs_f64());
            // Same values as candle's, bit for bit (checked every round, outside the timings).
            let want = c.flatten_all()?.to_vec1::<f32>()?;
            if want
                .iter()
                .zip(&out)
                .any(|(a, b)| a.to_bits() != b.to_bits())
            {
                return Err(format!("{name}: our output differs from candle's").into());
            }
        }
        println!(
            "{name:<6} {:>7.2} GB/s {:>5.2} GB/s {:>5.2} GB/s {:>7.2}x {:>7.2}x",
            gb / t_candle,
            gb / t_ours,
            gb / t_panel,
            t_candle / t_ours,
            t_candle / t_panel
        );
    }
    Ok(())
}
