//! A whole Training PRO job from Rust: raw text sliced by the PRTS chunker, a LoRA on q/v, a linear schedule,
//! checkpoints by policy, a log, live control through the output folder, and a report of how it ended.
//!
//! `cargo run --release -p trainer-core --example train_job` (the model is `TRAINER_TEST_MODEL`, else
//! `models/SmolLM2-135M-Instruct.Q4_1.gguf`; the adapter goes to a temporary folder). A few steps.

use std::path::PathBuf;

use lora_targets::{Arch, LoraSettings, Targets};
use plot_report::LogRecord;
use trainer_core::job::{
    ControlFile, DataFiles, DataOptions, DataSources, DirStore, Flow, Job, Observer,
};
use trainer_core::job::{PlanSettings, Saved, TrainingData, TrainingPlan};
use trainer_core::Model;

/// Prints each step and checkpoint (a library never prints: its caller does).
struct Print;

impl Observer for Print {
    fn on_step(&mut self, r: &LogRecord) -> Flow {
        println!(
            "step {} epoch {:.2} loss {:.4} lr {:.2e}",
            r.step,
            r.epoch,
            r.loss.unwrap_or(f64::NAN),
            r.lr.unwrap_or(0.0)
        );
        Flow::Continue
    }
    fn on_checkpoint(&mut self, saved: &Saved<'_>) {
        println!("saved {}", saved.path.display());
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let model_path = std::env::var_os("TRAINER_TEST_MODEL").map_or_else(
        || root.join("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        PathBuf::from,
    );
    let model = Model::load(&model_path, &candle_core::Device::Cpu)?;

    let sources = DataSources {
        text: Some(root.join("crates/trainer-cli/data/joseph.txt")),
        ..Default::default()
    };
    let files = DataFiles::read(
        sources,
        DataOptions {
            cutoff: 128,
            ..Default::default()
        },
    )?;
    let data = TrainingData::build(files, &model)?;
    let plan = TrainingPlan::new(
        PlanSettings {
            max_steps: Some(4),
            learning_rate: 1e-3,
            ..Default::default()
        },
        data.samples.len(),
    )?;
    println!("{}\n{}", data.summary_text(Default::default()), plan.text());

    let arch: Arch = model.config().model_type.parse()?;
    let targets = "q-v"
        .parse::<Targets>()?
        .resolve(arch, &model.linear_modules())?;
    let lora = LoraSettings {
        r: 8,
        alpha: 16.0,
        target_modules: targets,
        ..Default::default()
    };
    let out = tempfile::tempdir()?;
    let store = DirStore::new(out.path());
    let policy = checkpoint_policy::Settings {
        save_every: Some(2),
        save_final: false,
        ..Default::default()
    };
    let report = Job::builder(&model, data, store)
        .lora(lora)
        .plan(plan)
        .checkpoints(policy)
        .control(ControlFile::new(out.path()))
        .observer(Print)
        .build()?
        .run()?;
    println!(
        "{:?} after {} of {} steps, loss {:.4}; adapter in {}",
        report.end,
        report.step,
        report.total_steps,
        report.loss,
        report.adapter.display()
    );
    Ok(())
}
