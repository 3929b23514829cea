//! A run that starts from an existing adapter (`JobBuilder::init_adapter`), PEFT or GGUF: it starts at the
//! adapter's weights (a first step at learning rate 0 leaves its logits), learns from there, refuses LoRA
//! settings that differ from the adapter's, and resumes exactly.

use std::path::{Path, PathBuf};

use candle_core::Device;
use lora_targets::LoraSettings;
use schedulers::Warmup;
use trainer_core::job::{
    DataOptions, DirStore, End, Job, JobBuilder, PlanSettings, TrainingData, TrainingPlan,
};
use trainer_core::synthetic::{write_gguf, Shape, Spec, WeightType};
use trainer_core::{Adapter, Error, Model, Sample, TrainConfig};

use crate::common;
use crate::gguf_lora::{peft_adapter, Scratch};

fn lora() -> LoraSettings {
    LoraSettings {
        r: 4,
        alpha: 8.0,
        use_rslora: false,
        dropout: 0.0,
        target_modules: vec!["q_proj".into(), "k_proj".into(), "down_proj".into()],
        modules_to_save: Vec::new(),
    }
}

fn data() -> TrainingData {
    let sample = |i: u32| Sample::causal((0..24).map(|t| (t * 11 + i * 17) % 500).collect());
    TrainingData::from_samples(
        (0..8).map(sample).collect(),
        Vec::new(),
        DataOptions::default(),
    )
}

fn job<'m>(
    model: &'m Model,
    out: &Path,
    steps: u64,
    lr: f64,
    lora: LoraSettings,
) -> JobBuilder<'m> {
    let store = DirStore::new(out);
    store.prepare_new(true).unwrap();
    let plan = TrainingPlan::new(
        PlanSettings {
            batch_size: 2,
            max_steps: Some(steps),
            warmup: Warmup::Steps(1),
            learning_rate: lr,
            ..PlanSettings::default()
        },
        8,
    )
    .unwrap();
    Job::builder(model, data(), store)
        .lora(lora)
        .plan(plan)
        .train_config(TrainConfig {
            seed: 9,
            ..TrainConfig::default()
        })
        .checkpoints(checkpoint_policy::Settings {
            save_every: Some(3),
            save_each_epoch: false,
            ..checkpoint_policy::Settings::default()
        })
}

fn setup(dir: &Path) -> (Model, PathBuf, PathBuf) {
    let base = dir.join("base.gguf");
    write_gguf(
        &base,
        &Spec::new(Shape::TinyLlama, WeightType::F32).with_layers(1),
    )
    .unwrap();
    let model = Model::load(&base, &Device::Cpu).unwrap();
    let peft = dir.join("peft");
    let a = peft_adapter(&model, &lora(), &peft, 11);
    let gguf = dir.join("adapter.gguf");
    a.save_gguf(&model, &gguf).unwrap();
    (model, peft, gguf)
}

fn losses(out: &Path) -> Vec<f64> {
    plot_report::read_log(out.join(trainer_core::job::LOG_FILE))
        .unwrap()
        .records
        .iter()
        .map(|r| r.loss.unwrap())
        .collect()
}

#[test]
fn a_run_starts_at_the_adapter_and_learns_from_it() {
    let dir = Scratch::new("init");
    let (model, peft, gguf) = setup(&dir.0);
    let ids: Vec<u32> = (0..20).map(|t| t * 7 % 500).collect();
    for (tag, path) in [("peft", &peft), ("gguf", &gguf)] {
        let init = Adapter::open(path, &model).unwrap();
        let want = model.logits(Some(&init), &ids).unwrap();
        // Step 1 runs at the warmup's learning rate 0: the weights stay the adapter's.
        let out = dir.0.join(format!("{tag}-zero"));
        let r = job(&model, &out, 1, 1e-2, lora())
            .init_adapter(init.clone())
            .build()
            .unwrap()
            .run()
            .unwrap();
        assert_eq!((r.end, r.step), (End::Finished, 1));
        let after = Adapter::open(&out, &model).unwrap();
        let d = common::max_abs_diff(&want, &model.logits(Some(&after), &ids).unwrap());
        assert!(d <= 1e-5, "{tag}: {d}");
        // A fresh adapter (B = 0) gives other logits, so the check above can fail.
        let fresh = Adapter::init(&model, &lora(), 9).unwrap();
        assert!(common::max_abs_diff(&want, &model.logits(Some(&fresh), &ids).unwrap()) > 1e-3);

        let out = dir.0.join(format!("{tag}-learn"));
        job(&model, &out, 8, 1e-2, lora())
            .init_adapter(init)
            .build()
            .unwrap()
            .run()
            .unwrap();
        let l = losses(&out);
        assert!(l[l.len() - 1] < l[0], "{tag}: {l:?}");
    }
}

#[test]
fn other_lora_settings_than_the_adapters_are_refused() {
    let dir = Scratch::new("init-conflict");
    let (model, peft, _) = setup(&dir.0);
    let init = Adapter::open(&peft, &model).unwrap();
    for other in [
        LoraSettings { r: 8, ..lora() },
        LoraSettings {
            alpha: 4.0,
            ..lora()
        },
        LoraSettings {
            target_modules: vec!["q_proj".into()],
            ..lora()
        },
    ] {
        let e = job(&model, &dir.0.join("out"), 2, 1e-2, other)
            .init_adapter(init.clone())
            .build()
            .err()
            .expect("a conflicting setting was accepted");
        assert!(
            matches!(&e, Error::Setting { field, .. } if field == "init_adapter"),
            "{e}"
        );
    }
    // The run's dropout is its own.
    job(
        &model,
        &dir.0.join("out"),
        1,
        1e-2,
        LoraSettings {
            dropout: 0.2,
            ..lora()
        },
    )
    .init_adapter(init)
    .build()
    .unwrap();
}

#[test]
fn a_run_from_an_adapter_resumes_exactly() {
    let dir = Scratch::new("init-resume");
    let (model, _, gguf) = setup(&dir.0);
    let init = Adapter::open(&gguf, &model).unwrap();
    let straight = dir.0.join("straight");
    job(&model, &straight, 6, 1e-2, init.settings().clone())
        .init_adapter(init.clone())
        .build()
        .unwrap()
        .run()
        .unwrap();
    let ckpt = straight.join("checkpoint-3");
    assert!(ckpt.is_dir());
    let resumed = dir.0.join("resumed");
    std::fs::create_dir_all(&resumed).unwrap();
    let copy = resumed.join("checkpoint-3");
    std::fs::create_dir_all(&copy).unwrap();
    for f in std::fs::read_dir(&ckpt).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), copy.join(f.file_name())).unwrap();
    }
    let store = DirStore::new(&resumed);
    let plan = TrainingPlan::new(
        PlanSettings {
            batch_size: 2,
            max_steps: Some(6),
            warmup: Warmup::Steps(1),
            learning_rate: 1e-2,
            ..PlanSettings::default()
        },
        8,
    )
    .unwrap();
    let job2 = Job::builder(&model, data(), store)
        .lora(init.settings().clone())
        .plan(plan)
        .train_config(TrainConfig {
            seed: 9,
            ..TrainConfig::default()
        })
        .checkpoints(checkpoint_policy::Settings {
            save_every: Some(3),
            save_each_epoch: false,
            ..checkpoint_policy::Settings::default()
        })
        .init_adapter(init)
        .resume_from(&copy)
        .build()
        .unwrap();
    assert_eq!(job2.step(), 3);
    job2.run().unwrap();
    let bytes = |d: &Path| std::fs::read(d.join(trainer_core::ADAPTER_WEIGHTS_FILE)).unwrap();
    assert!(
        bytes(&straight) == bytes(&resumed),
        "the resumed adapter differs"
    );
}
