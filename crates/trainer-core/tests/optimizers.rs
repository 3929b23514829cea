//! Every optimizer through the trainer and the job: a run saved and resumed mid-way equals the run straight
//! through, bit for bit (adapter and optimizer state); the optimizer is recorded in the checkpoint, and a
//! resume that asks for another one is refused.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use candle_core::Device;
use lora_targets::LoraSettings;
use schedulers::Warmup;
use trainer_core::job::{DataOptions, DirStore, Job, PlanSettings, TrainingData, TrainingPlan};
use trainer_core::{
    AdamWParams, Error, Model, ModelConfig, Optimizer, Sample, TrainConfig, Trainer,
};

fn tiny_model() -> Model {
    let mut c = ModelConfig::tiny_llama(256, 32, 2, 4, 2);
    c.max_position_embeddings = 128;
    Model::random(c, 3, &Device::Cpu).unwrap()
}

/// The optimizers as their settings name them, with settings that give each one all its state.
fn optimizers() -> Vec<(&'static str, Optimizer)> {
    let named = |name: &str, args: &str| {
        Optimizer::from_name(name)
            .unwrap()
            .0
            .with_args(args)
            .unwrap()
    };
    vec![
        ("adamw", named("adamw", "")),
        ("sgd", named("sgd", "")),
        ("sgd momentum", named("sgd", "momentum=0.9,nesterov=true")),
        ("adagrad", named("adagrad", "")),
        ("adafactor", named("adafactor", "")),
        (
            "adafactor beta1",
            named("adafactor", "beta1=0.9,scale_parameter=true"),
        ),
    ]
}

fn config(optimizer: Optimizer) -> TrainConfig {
    TrainConfig {
        seed: 3,
        optimizer,
        adamw: AdamWParams {
            weight_decay: 0.01,
            ..AdamWParams::default()
        },
        neftune_alpha: Some(5.0),
        ..TrainConfig::default()
    }
}

fn settings() -> LoraSettings {
    LoraSettings {
        r: 4,
        alpha: 8.0,
        dropout: 0.1,
        target_modules: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
        modules_to_save: vec!["embed_tokens".into()],
        ..LoraSettings::default()
    }
}

fn steps() -> Vec<Vec<Vec<Sample>>> {
    let s = |i: u32, n: u32| Sample::causal((0..n).map(|t| (t * 11 + i * 17) % 256).collect());
    (0..4)
        .map(|k| vec![vec![s(k, 12 + k), s(k + 5, 9)], vec![s(k + 9, 15)]])
        .collect()
}

const LRS: [f64; 4] = [1e-2, 2e-2, 5e-3, 1e-2];

fn saved(t: &Trainer<'_>, dir: &Path) -> (Vec<u8>, Vec<u8>) {
    t.save_state(dir, "tiny").unwrap();
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    (
        read("adapter_model.safetensors"),
        read("optimizer.safetensors"),
    )
}

#[test]
fn each_optimizer_resumes_bit_for_bit_and_they_differ() {
    let m = tiny_model();
    let d = tempfile::tempdir().unwrap();
    let cancel = AtomicBool::new(false);
    let mut finals = Vec::new();
    for (label, opt) in optimizers() {
        let dir = d.path().join(label.replace(' ', "_"));
        let mut straight = Trainer::new(&m, settings(), config(opt)).unwrap();
        for (s, lr) in steps().iter().zip(LRS) {
            straight.step(s, lr, &cancel).unwrap();
        }
        let a = saved(&straight, &dir.join("straight"));

        let mut first = Trainer::new(&m, settings(), config(opt)).unwrap();
        for (s, lr) in steps()[..2].iter().zip(LRS) {
            first.step(s, lr, &cancel).unwrap();
        }
        first.save_state(&dir.join("mid"), "tiny").unwrap();
        drop(first);
        let state = std::fs::read_to_string(dir.join("mid/trainer_state.json")).unwrap();
        assert!(
            state.contains(&format!("\"name\": \"{}\"", opt.name())),
            "{label}: {state}"
        );
        let mut resumed = Trainer::load_state(&dir.join("mid"), &m).unwrap();
        assert_eq!(resumed.config().optimizer, opt);
        for (s, lr) in steps()[2..].iter().zip(&LRS[2..]) {
            resumed.step(s, *lr, &cancel).unwrap();
        }
        let b = saved(&resumed, &dir.join("resumed"));
        assert!(a.0 == b.0, "{label}: the resumed adapter differs");
        assert!(a.1 == b.1, "{label}: the resumed optimizer state differs");
        finals.push((label, a.0));
    }
    for (i, (la, a)) in finals.iter().enumerate() {
        for (lb, b) in &finals[i + 1..] {
            assert!(a != b, "{la} and {lb} trained the same adapter");
        }
    }
}

#[test]
fn a_damaged_or_foreign_optimizer_state_is_refused() {
    let m = tiny_model();
    let d = tempfile::tempdir().unwrap();
    let (_, sgd) = optimizers()[2];
    let t = Trainer::new(&m, settings(), config(sgd)).unwrap();
    t.save_state(d.path(), "tiny").unwrap();
    // The state file says adamw, the tensors are SGD's momentum buffers.
    let path = d.path().join("trainer_state.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = text.replace("\"name\": \"sgd\"", "\"name\": \"adamw\"");
    assert_ne!(text, edited);
    std::fs::write(&path, edited).unwrap();
    let err = Trainer::load_state(d.path(), &m).err().unwrap().to_string();
    assert!(err.contains("adamw state is missing"), "{err}");
}

fn data() -> TrainingData {
    let sample = |i: u32| Sample::causal((0..20 + 2 * i).map(|t| (t * 7 + i * 13) % 256).collect());
    TrainingData::from_samples(
        (0..10).map(sample).collect(),
        Vec::new(),
        DataOptions::default(),
    )
}

fn plan() -> TrainingPlan {
    let settings = PlanSettings {
        batch_size: 2,
        epochs: 1.0,
        warmup: Warmup::Steps(1),
        learning_rate: 1e-2,
        ..PlanSettings::default()
    };
    TrainingPlan::new(settings, 10).unwrap()
}

fn job<'m>(model: &'m Model, out: &Path, opt: Optimizer, resume: Option<&Path>) -> Job<'m> {
    let store = DirStore::new(out);
    if resume.is_none() {
        store.prepare_new(true).unwrap();
    }
    let lora = LoraSettings {
        modules_to_save: Vec::new(),
        ..settings()
    };
    let mut b = Job::builder(model, data(), store)
        .lora(lora)
        .train_config(config(opt))
        .plan(plan())
        .checkpoints(checkpoint_policy::Settings {
            save_every: Some(2),
            save_each_epoch: false,
            save_final: false,
            ..checkpoint_policy::Settings::default()
        });
    if let Some(r) = resume {
        b = b.resume_from(r);
    }
    match b.build() {
        Ok(j) => j,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn a_job_resumes_each_optimizer_exactly_and_refuses_another_one() {
    let model = tiny_model();
    let d = tempfile::tempdir().unwrap();
    for (label, opt) in optimizers() {
        let out = d.path().join(label.replace(' ', "_"));
        job(&model, &out, opt, None).run().unwrap();
        let straight = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
        let ckpt = out.join("checkpoint-2");
        job(&model, &out, opt, Some(&ckpt)).run().unwrap();
        let resumed = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
        assert!(
            straight == resumed,
            "{label}: the resumed job's adapter differs"
        );
    }
    let (_, sgd) = optimizers()[1];
    let out = d.path().join("adamw");
    let err = Job::builder(&model, data(), DirStore::new(&out))
        .lora(LoraSettings {
            modules_to_save: Vec::new(),
            ..settings()
        })
        .train_config(config(sgd))
        .plan(plan())
        .resume_from(out.join("checkpoint-2"))
        .build()
        .err()
        .unwrap();
    match err {
        Error::Resume { message, .. } => assert!(
            message.contains("trained with optimizer `adamw` but this run asks for `sgd`"),
            "{message}"
        ),
        e => panic!("{e}"),
    }
    let (_, momentum) = optimizers()[2];
    let out = d.path().join("sgd");
    let err = Job::builder(&model, data(), DirStore::new(&out))
        .lora(LoraSettings {
            modules_to_save: Vec::new(),
            ..settings()
        })
        .train_config(config(momentum))
        .plan(plan())
        .resume_from(out.join("checkpoint-2"))
        .build()
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("sgd settings") && err.contains("\"momentum\":0.9"),
        "{err}"
    );
}
