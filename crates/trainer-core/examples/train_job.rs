//! A whole Training PRO job from Rust: raw text through the PRTS chunker, a LoRA on q/v, 4 steps, a checkpoint
//! every 2, live control, TensorBoard files. `cargo run --release -p trainer-core --example train_job [OPTIMIZER]
//! [OUTPUT]` (model: as the tests find it; optimizer: adamw; output: a temporary folder).
#![allow(clippy::field_reassign_with_default)] // settings read best as "the defaults, but this"

use std::path::PathBuf;

use lora_targets::{LoraSettings, Targets};
use trainer_core::job::{ControlFile, DataFiles, DataSources, DirStore, Flow, Job, Observer};
use trainer_core::job::{PlanSettings, ReportTo, Saved, TrainingData, TrainingPlan};
use trainer_core::{Model, Optimizer, TrainConfig};

/// Prints each step and checkpoint (a library never prints: its caller does).
struct Print;

impl Observer for Print {
    fn on_step(&mut self, r: &plot_report::LogRecord) -> Flow {
        println!("step {} loss {:.4}", r.step, r.loss.unwrap_or(f64::NAN));
        Flow::Continue
    }
    fn on_checkpoint(&mut self, saved: &Saved<'_>) {
        println!("saved {}", saved.path.display());
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let default_model = root.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let model_path = std::env::var_os("TRAINER_TEST_MODEL").map_or(default_model, PathBuf::from);
    let model = Model::load(&model_path, &candle_core::Device::Cpu)?;

    let mut sources = DataSources::default();
    sources.text = Some(root.join("crates/trainer-cli/data/joseph.txt"));
    let files = DataFiles::read(sources, Default::default())?;
    let data = TrainingData::build(files, &model)?;
    let mut settings = PlanSettings::default();
    settings.max_steps = Some(4);
    let plan = TrainingPlan::new(settings, data.samples.len())?;
    println!("{}\n{}", data.summary_text(Default::default()), plan.text());

    let mut lora = LoraSettings::default();
    lora.target_modules = "q-v"
        .parse::<Targets>()?
        .resolve(model.config().model_type.parse()?, &model.linear_modules())?;
    let mut policy = checkpoint_policy::Settings::default();
    policy.save_every = Some(2);
    let mut args = std::env::args().skip(1);
    let (optimizer, note) = Optimizer::from_name(&args.next().unwrap_or_else(|| "adamw".into()))?;
    if let Some(note) = note {
        println!("note: {note}");
    }
    let tmp = tempfile::tempdir()?;
    let out = args
        .next()
        .map_or_else(|| tmp.path().to_path_buf(), PathBuf::from);
    let store = DirStore::new(&out);
    store.prepare_new(true)?;
    let report = Job::builder(&model, data, store)
        .lora(lora)
        .train_config(TrainConfig {
            optimizer,
            ..TrainConfig::default()
        })
        .report_to(ReportTo::parse(&["tensorboard"])?)
        .plan(plan)
        .checkpoints(policy)
        .control(ControlFile::new(&out))
        .observer(Print)
        .build()?
        .run()?;
    println!(
        "{:?} at step {} of {}",
        report.end, report.step, report.total_steps
    );
    Ok(())
}
