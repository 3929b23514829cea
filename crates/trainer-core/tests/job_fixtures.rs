//! The tiny job the job and data-parallel tests share: a random 2-layer Llama, byte-level samples, a LoRA on
//! q,v with dropout, and the step plan over 10 samples.

use candle_core::Device;
use lora_targets::LoraSettings;
use schedulers::Warmup;
use trainer_core::job::{PlanSettings, TrainingPlan};
use trainer_core::{Model, ModelConfig, Sample};

/// A random Llama: vocab 256, hidden 32, 2 layers, 4 heads (2 KV heads), 128 positions.
pub fn tiny_model() -> Model {
    let mut c = ModelConfig::tiny_llama(256, 32, 2, 4, 2);
    c.max_position_embeddings = 128;
    Model::random(c, 3, &Device::Cpu).unwrap()
}

/// Byte-level sample `i`: 20 + 2i tokens.
pub fn sample(i: u32) -> Sample {
    Sample::causal((0..20 + 2 * i).map(|t| (t * 7 + i * 13) % 256).collect())
}

/// r 4, alpha 8, dropout 0.1 on q_proj and v_proj.
pub fn lora() -> LoraSettings {
    LoraSettings {
        r: 4,
        alpha: 8.0,
        dropout: 0.1,
        target_modules: vec!["q_proj".into(), "v_proj".into()],
        ..LoraSettings::default()
    }
}

/// 10 samples, 2 per micro-batch, `grad_accum` micro-batches per step, `epochs`, warmup 1 step, lr 1e-2.
pub fn plan(epochs: f64, grad_accum: usize) -> TrainingPlan {
    let settings = PlanSettings {
        batch_size: 2,
        grad_accum,
        epochs,
        warmup: Warmup::Steps(1),
        learning_rate: 1e-2,
        ..PlanSettings::default()
    };
    TrainingPlan::new(settings, 10).unwrap()
}
