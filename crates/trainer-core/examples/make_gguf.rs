//! Writes a synthetic model (random weights at a real model's shape) as a GGUF file, or as a Hugging Face
//! folder, for tests and benchmarks that must not download a big model.
//!
//! ```text
//! cargo run --release -p trainer-core --example make_gguf -- --shape NAME --type T --out FILE [--layers N] [--seed S]
//! cargo run --release -p trainer-core --example make_gguf -- --shape NAME --hf f32|f16|bf16 --out DIR [--layers N] [--seed S]
//! ```
//!
//! Shapes: `llama-7b`, `qwen2-7b`, `smollm2-135m`, `tiny-llama`, `tiny-qwen2`. Types: `F32 F16 BF16 Q4_0 Q4_1 Q5_0
//! Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K`. Progress goes to stderr, a summary to stdout.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::DType;
use trainer_core::synthetic::{write_gguf_observed, write_hf_dir, Shape, Spec, WeightType};

const USAGE: &str = "usage: make_gguf --shape NAME (--type T | --hf f32|f16|bf16) --out PATH [--layers N] [--seed S]";

fn main() {
    if let Err(e) = run() {
        eprintln!("make_gguf: {e}\n{USAGE}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (mut shape, mut ty, mut hf, mut out, mut layers, mut seed) =
        (None, None, None, None, None, 0u64);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--shape" => shape = Some(value()?.parse::<Shape>()?),
            "--type" => ty = Some(value()?.parse::<WeightType>()?),
            "--hf" => {
                hf = Some(match value()?.to_ascii_lowercase().as_str() {
                    "f32" => DType::F32,
                    "f16" => DType::F16,
                    "bf16" => DType::BF16,
                    other => return Err(format!("--hf {other}: use f32, f16 or bf16").into()),
                })
            }
            "--out" => out = Some(PathBuf::from(value()?)),
            "--layers" => {
                layers = Some(
                    value()?
                        .parse::<usize>()
                        .map_err(|e| format!("--layers: {e}"))?,
                )
            }
            "--seed" => seed = value()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown argument `{other}`").into()),
        }
    }
    let shape = shape.ok_or("--shape is required")?;
    let out = out.ok_or("--out is required")?;
    let mut spec = Spec::new(shape, ty.unwrap_or(WeightType::F32)).with_seed(seed);
    if let Some(n) = layers {
        spec = spec.with_layers(n);
    }
    let start = Instant::now();
    let written = match (hf, ty) {
        (Some(_), Some(_)) => {
            return Err("give either --type (GGUF) or --hf (a Hugging Face folder)".into())
        }
        (None, None) => return Err("--type or --hf is required".into()),
        (Some(dtype), None) => write_hf_dir(&out, &spec, dtype)?,
        (None, Some(_)) => write_gguf_observed(&out, &spec, |done, total, name| {
            eprint!(
                "\r{done}/{total} tensors ({:.0} s) {name:<40}",
                start.elapsed().as_secs_f64()
            );
        })?,
    };
    eprintln!();
    println!(
        "{}: {} layers of {shape}, {} tensors, {:.3} G parameters, {:.3} GB, {:.1} s",
        written.path.display(),
        spec.config.num_hidden_layers,
        written.tensors,
        written.parameters as f64 / 1e9,
        written.bytes as f64 / 1e9,
        start.elapsed().as_secs_f64()
    );
    for (name, t) in &written.fallbacks {
        println!(
            "  {name}: {t} (rows do not fill {}'s blocks)",
            spec.weight_type
        );
    }
    Ok(())
}
