//! `report_to = ["tensorboard"]`: a job's event files hold the training log's figures, step for step, and a
//! resumed run adds its own file.

use std::path::Path;

use candle_core::Device;
use lora_targets::LoraSettings;
use plot_report::{read_event_dir, read_log, TbEvent};
use schedulers::Warmup;
use trainer_core::job::{
    DataOptions, DirStore, EvalEvery, Job, PlanSettings, ReportTo, TrainingData, TrainingPlan,
    LOG_FILE, RUNS_DIR,
};
use trainer_core::{Model, ModelConfig, Sample};

fn tiny_model() -> Model {
    let mut c = ModelConfig::tiny_llama(256, 32, 2, 4, 2);
    c.max_position_embeddings = 128;
    Model::random(c, 3, &Device::Cpu).unwrap()
}

fn job<'m>(model: &'m Model, out: &Path, resume: Option<&Path>) -> Job<'m> {
    let sample = |i: u32| Sample::causal((0..20 + 2 * i).map(|t| (t * 7 + i * 13) % 256).collect());
    let data = TrainingData::from_samples(
        (0..10).map(sample).collect(),
        vec![sample(11), sample(12)],
        DataOptions::default(),
    );
    let plan = TrainingPlan::new(
        PlanSettings {
            batch_size: 2,
            epochs: 1.0,
            warmup: Warmup::Steps(1),
            learning_rate: 1e-2,
            ..PlanSettings::default()
        },
        10,
    )
    .unwrap();
    let store = DirStore::new(out);
    if resume.is_none() {
        store.prepare_new(true).unwrap();
    }
    let mut b = Job::builder(model, data, store)
        .lora(LoraSettings {
            r: 4,
            alpha: 8.0,
            target_modules: vec!["q_proj".into(), "v_proj".into()],
            ..LoraSettings::default()
        })
        .plan(plan)
        .eval_every(EvalEvery::Steps(2))
        .checkpoints(checkpoint_policy::Settings {
            save_every: Some(2),
            save_each_epoch: false,
            save_final: false,
            ..checkpoint_policy::Settings::default()
        })
        .report_to(ReportTo::parse(&["tensorboard"]).unwrap());
    if let Some(r) = resume {
        b = b.resume_from(r);
    }
    b.build().unwrap()
}

/// The scalar of `tag` in `e`.
fn scalar(e: &TbEvent, tag: &str) -> Option<f32> {
    e.scalars.iter().find(|(t, _)| t == tag).map(|(_, v)| *v)
}

#[test]
fn tensorboard_files_hold_the_training_log_and_a_resume_adds_a_file() {
    let model = tiny_model();
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    job(&model, &out, None).run().unwrap();
    let log = read_log(out.join(LOG_FILE)).unwrap().records;
    assert_eq!(log.len(), 5);
    let files = read_event_dir(&out.join(RUNS_DIR)).unwrap();
    assert_eq!(files.len(), 1);
    let events = &files[0].1;
    assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
    assert_eq!(events.len(), 1 + log.len());
    for (e, r) in events[1..].iter().zip(&log) {
        assert_eq!(e.step, r.step as i64);
        let f = |v: Option<f64>| v.map(|v| v as f32);
        assert_eq!(scalar(e, "train/loss"), f(r.loss));
        assert_eq!(scalar(e, "train/learning_rate"), f(r.lr));
        assert_eq!(scalar(e, "train/grad_norm"), f(r.grad_norm));
        assert_eq!(scalar(e, "train/epoch"), Some(r.epoch as f32));
        assert_eq!(scalar(e, "train/tokens_per_second"), f(r.tokens_per_s));
        assert_eq!(scalar(e, "eval/loss"), f(r.eval_loss));
    }
    // Eval every 2 steps and at the end.
    let evals: Vec<i64> = events
        .iter()
        .filter(|e| scalar(e, "eval/loss").is_some())
        .map(|e| e.step)
        .collect();
    assert_eq!(evals, [2, 4, 5]);

    // Resumed from step 2: a second file, starting a session at step 3, then steps 3 to 5.
    job(&model, &out, Some(&out.join("checkpoint-2")))
        .run()
        .unwrap();
    let files = read_event_dir(&out.join(RUNS_DIR)).unwrap();
    assert_eq!(files.len(), 2);
    let again = files
        .iter()
        .find(|(p, _)| *p != files[0].0 || files[0].1.len() != events.len())
        .map(|(_, e)| e)
        .unwrap();
    assert!(again[1].session_start && again[1].step == 3, "{again:?}");
    let steps: Vec<i64> = again[2..].iter().map(|e| e.step).collect();
    assert_eq!(steps, [3, 4, 5]);
    let log = read_log(out.join(LOG_FILE)).unwrap().records;
    assert_eq!(
        scalar(&again[4], "train/loss"),
        log[7].loss.map(|v| v as f32)
    );
}
