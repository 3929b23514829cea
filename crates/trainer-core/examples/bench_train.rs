//! Training-speed benchmark (not a test): tokens/s, seconds per optimizer step and peak RSS for one LoRA target
//! set, batch 4 x 256 tokens of KJV text, f32.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run --release -p trainer-core --example bench_train -- [qv|all] [steps] [autograd] [ckpt] [dropout=P] [base=f32|keep] [batch=B] [seq=T] [optimizer=NAME]
//! ```
//! LoRA dropout is 0 unless `dropout=P` is given (the comparison with PyTorch uses 0). `base=` chooses how the
//! frozen weights are held (default `f32`, the form PyTorch trains in; `keep`: as stored in the file). `batch=`
//! and `seq=` set the micro-batch (default 4 × 256); `optimizer=` names the optimizer (default adamw).
//! Backend: the CPU engine by default; `autograd` = candle's autograd over the composed decoder ops (the GPU path
//! and the engine's test oracle; needs about 10 GB at this batch size).
//! The model path comes from `TRAINER_TEST_MODEL` (default `models/SmolLM2-135M-Instruct.Q4_1.gguf`). Run one
//! target set per process so the peak RSS belongs to it.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use candle_core::Device;
use lora_targets::LoraSettings;
use trainer_core::{
    Backend, BaseWeights, LoadOptions, Model, Optimizer, Sample, TrainConfig, Trainer,
};

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// CPU seconds (user + system) used by this process so far (clock ticks of 1/100 s).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses: utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (field(11) + field(12)) / 100.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let targets = args.first().map_or("qv", String::as_str);
    let steps: usize = args.get(1).map_or(Ok(3), |s| s.parse())?;
    let autograd = args.iter().any(|s| s == "autograd");
    let dropout: f64 = args
        .iter()
        .find_map(|s| s.strip_prefix("dropout="))
        .map_or(Ok(0.0), str::parse)?;
    let checkpointing = args.iter().any(|s| s == "ckpt");
    let opt = |key: &str| args.iter().find_map(|s| s.strip_prefix(key));
    let base_weights = match opt("base=") {
        Some("keep") => BaseWeights::Keep,
        None | Some("f32") => BaseWeights::F32,
        Some(other) => return Err(format!("base={other}: give f32 or keep").into()),
    };
    let batch: usize = opt("batch=").map_or(Ok(4), str::parse)?;
    let seq: usize = opt("seq=").map_or(Ok(256), str::parse)?;
    let (optimizer, _) = Optimizer::from_name(opt("optimizer=").unwrap_or("adamw"))?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let path = std::env::var_os("TRAINER_TEST_MODEL").map_or_else(
        || root.join("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        PathBuf::from,
    );
    let t0 = Instant::now();
    let options = LoadOptions {
        base_weights,
        ..LoadOptions::default()
    };
    let model = Model::load_with(&path, &Device::Cpu, &options)?;
    let load_s = t0.elapsed().as_secs_f64();
    let rss_after_load = peak_rss_mb();

    let text = std::fs::read_to_string(root.join("testdata/kjv-books-1mb.txt"))?;
    let enc = model
        .tokenizer()
        .encode(&text[..200_000], false)
        .map_err(|e| e.to_string())?;
    let ids = enc.get_ids();
    let modules: Vec<String> = match targets {
        "all" => model.linear_modules(),
        _ => vec!["q_proj".into(), "v_proj".into()],
    };
    let settings = LoraSettings {
        r: 8,
        alpha: 16.0,
        dropout,
        target_modules: modules,
        ..LoraSettings::default()
    };
    let config = TrainConfig {
        optimizer,
        gradient_checkpointing: checkpointing,
        backend: if autograd {
            Backend::Autograd
        } else {
            Backend::Engine
        },
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(&model, settings, config)?;
    let cancel = AtomicBool::new(false);
    let mut times = Vec::new();
    let mut cpu = Vec::new();
    for s in 0..=steps {
        let mb: Vec<Sample> = (0..batch)
            .map(|b| {
                let start = ((s * batch + b) * seq) % (ids.len() - seq);
                Sample::causal(ids[start..start + seq].to_vec())
            })
            .collect();
        let (t, c) = (Instant::now(), cpu_seconds());
        let stats = trainer.step(&[mb], 1e-4, &cancel)?;
        let (dt, dc) = (t.elapsed().as_secs_f64(), cpu_seconds() - c);
        println!(
            "step {s}{}: loss {:.4} {dt:.2} s wall, {dc:.2} s cpu",
            if s == 0 { " (warm-up)" } else { "" },
            stats.loss
        );
        if s > 0 {
            times.push(dt);
            cpu.push(dc);
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into());
    println!(
        "optimizer={} targets={targets} kernels={} checkpointing={checkpointing} dropout={dropout} threads={threads} batch={batch}x{seq} r=8 \
         trainable={} load={load_s:.2}s rss_after_load={rss_after_load:.0}MB base={} weights={:?} \
         resident_weights_mb={:.0} workspace_mb={:.0}",
        optimizer.name(),
        if autograd {
            "autograd"
        } else {
            "engine"
        },
        trainer.trainable_parameters(),
        base_weights.name(),
        model.weight_types(),
        model.resident_bytes() as f64 / 1048576.0,
        trainer.workspace_bytes() as f64 / 1048576.0,
    );
    // On a shared machine the fastest step is the best estimate of the uncontended speed; the median is given too.
    let best = times[0];
    cpu.sort_by(f64::total_cmp);
    println!("cpu_s_per_step_median={:.2}", cpu[cpu.len() / 2]);
    println!(
        "RESULT s_per_step_median={median:.3} tokens_per_s_median={:.1} s_per_step_best={best:.3} \
         tokens_per_s_best={:.1} peak_rss_mb={:.0} resident_weights_mb={:.0}",
        (batch * seq) as f64 / median,
        (batch * seq) as f64 / best,
        peak_rss_mb(),
        model.resident_bytes() as f64 / 1048576.0
    );
    Ok(())
}
