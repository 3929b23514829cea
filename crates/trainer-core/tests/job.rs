//! The job API on a tiny random model (and once on the real one): a run to the end, a stop by rule, an
//! interrupt and its resume against the run straight through, the observer's view, a kill's leftovers, and a
//! checkpoint written before the job API existed.

use std::cell::RefCell;
use std::fs;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use candle_core::Device;
use checkpoint_policy::{SaveReason, StopReason};
use lora_targets::LoraSettings;
use plot_report::{ControlResult, LogRecord};
use schedulers::Warmup;
use trainer_core::job::{
    CheckpointStore, ControlCommand, ControlOutcome, DataFiles, DataOptions, DataSources, DirStore,
    End, Flow, Interrupter, Job, JobBuilder, Observer, PlanSettings, Report, Saved, Start,
    TrainingData, TrainingPlan, LOG_FILE,
};
use trainer_core::{Error, Model, TrainConfig};

use crate::job_fixtures::{lora, plan, sample, tiny_model};

/// 10 byte-level samples of 20-40 tokens; two of them are the eval set.
fn data(eval: bool) -> TrainingData {
    let eval = if eval {
        vec![sample(11), sample(12)]
    } else {
        Vec::new()
    };
    TrainingData::from_samples((0..10).map(sample).collect(), eval, DataOptions::default())
}

/// Records every call.
#[derive(Default, Clone)]
struct Seen(Rc<RefCell<Vec<String>>>);

impl Seen {
    fn lines(&self) -> Vec<String> {
        self.0.borrow().clone()
    }
}

impl Observer for Seen {
    fn on_start(&mut self, s: &Start) {
        self.0
            .borrow_mut()
            .push(format!("start {} {}", s.step, s.total_steps));
    }
    fn on_step(&mut self, r: &LogRecord) -> Flow {
        self.0
            .borrow_mut()
            .push(format!("step {} {:?}", r.step, r.checkpoint));
        Flow::Continue
    }
    fn on_eval(&mut self, step: u64, _e: &trainer_core::EvalStats) -> Flow {
        self.0.borrow_mut().push(format!("eval {step}"));
        Flow::Continue
    }
    fn on_checkpoint(&mut self, s: &Saved<'_>) {
        self.0
            .borrow_mut()
            .push(format!("saved {} {:?}", s.name, s.reason));
    }
    fn on_control(&mut self, o: &ControlOutcome) {
        self.0.borrow_mut().push(format!("control {o:?}"));
    }
    fn on_finish(&mut self, r: &Report) {
        self.0
            .borrow_mut()
            .push(format!("finish {:?} {}", r.end, r.step));
    }
}

fn job<'m>(model: &'m Model, out: &Path, epochs: f64) -> JobBuilder<'m> {
    let store = DirStore::new(out);
    store.prepare_new(true).unwrap();
    Job::builder(model, data(true), store)
        .lora(lora())
        .train_config(TrainConfig {
            seed: 5,
            ..TrainConfig::default()
        })
        .plan(plan(epochs, 1))
}

fn adapter_bytes(dir: &Path) -> Vec<u8> {
    fs::read(dir.join("adapter_model.safetensors")).unwrap()
}

#[test]
fn a_job_runs_to_the_end_and_the_observer_sees_every_step() {
    let model = tiny_model();
    let d = tempfile::tempdir().unwrap();
    let seen = Seen::default();
    let report = job(&model, d.path(), 2.0)
        .checkpoints(checkpoint_policy::Settings {
            save_each_epoch: true,
            save_best_eval: true,
            save_final: false,
            ..checkpoint_policy::Settings::default()
        })
        .observer(seen.clone())
        .build()
        .unwrap()
        .run()
        .unwrap();
    assert_eq!(
        (report.end, report.step, report.total_steps),
        (End::Finished, 10, 10)
    );
    let lines = seen.lines();
    assert_eq!(lines[0], "start 0 10");
    let steps: Vec<&String> = lines.iter().filter(|l| l.starts_with("step ")).collect();
    assert_eq!(steps.len(), 10);
    // Epoch ends (steps 5 and 10) are evaluated and saved (best eval first, then the epoch rule).
    assert!(
        lines.contains(&"eval 5".to_string()) && lines.contains(&"eval 10".to_string()),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("saved checkpoint-5-")),
        "{lines:?}"
    );
    assert_eq!(lines.last().unwrap(), "finish Finished 10");
    let log = plot_report::read_log(d.path().join(LOG_FILE)).unwrap();
    assert_eq!(log.records.len(), 10);
    let steps: Vec<u64> = log.records.iter().map(|r| r.step).collect();
    assert_eq!(steps, (1..=10).collect::<Vec<_>>());
    assert!(log
        .records
        .iter()
        .all(|r| r.loss.is_some_and(f64::is_finite) && r.lr.is_some()));
    let evaluated: Vec<u64> = log
        .records
        .iter()
        .filter(|r| r.eval_loss.is_some())
        .map(|r| r.step)
        .collect();
    assert_eq!(evaluated, [5, 10]);
    assert!(d.path().join("adapter_config.json").is_file());
}

#[test]
fn a_rule_stops_the_job() {
    let model = tiny_model();
    let d = tempfile::tempdir().unwrap();
    let report = job(&model, d.path(), 3.0)
        .checkpoints(checkpoint_policy::Settings {
            stop_at_epoch: Some(1),
            save_final: false,
            ..checkpoint_policy::Settings::default()
        })
        .build()
        .unwrap()
        .run()
        .unwrap();
    assert_eq!(
        (report.end, report.step),
        (End::Stopped(StopReason::AtEpoch), 5)
    );
    assert!(d.path().join("adapter_model.safetensors").is_file());
}

/// Interrupts a job at step `at` through an observer that raises the interrupter.
struct InterruptAt(Interrupter, u64);

impl Observer for InterruptAt {
    fn on_eval(&mut self, _: u64, _: &trainer_core::EvalStats) -> Flow {
        Flow::Continue
    }
    fn on_step(&mut self, r: &LogRecord) -> Flow {
        if r.step + 1 == self.1 {
            self.0.stop();
        }
        Flow::Continue
    }
}

#[test]
fn interrupt_checkpoint_resume_equals_straight_through() {
    let model = tiny_model();
    let d = tempfile::tempdir().unwrap();
    let straight = d.path().join("straight");
    job(&model, &straight, 2.0).build().unwrap().run().unwrap();

    let out = d.path().join("out");
    let stop = Interrupter::new();
    let report = job(&model, &out, 2.0)
        .interrupter(stop.clone())
        .observer(InterruptAt(stop, 4))
        .build()
        .unwrap()
        .run()
        .unwrap();
    assert_eq!((report.end, report.step), (End::Interrupted, 4));
    let ckpt = report.last_checkpoint.unwrap();
    assert_eq!(ckpt, out.join("checkpoint-4-user"));

    let store = DirStore::new(&out);
    assert_eq!(store.latest_checkpoint().unwrap(), ckpt);
    let seen = Seen::default();
    let job2 = Job::builder(&model, data(true), store)
        .lora(lora())
        .train_config(TrainConfig {
            seed: 5,
            ..TrainConfig::default()
        })
        .plan(plan(2.0, 1))
        .observer(seen.clone())
        .resume_from(&ckpt)
        .build()
        .unwrap();
    assert_eq!(job2.step(), 4);
    let report = job2.run().unwrap();
    assert_eq!(report.end, End::Finished);
    assert_eq!(seen.lines()[0], "start 4 10");
    assert!(
        adapter_bytes(&straight) == adapter_bytes(&out),
        "resumed adapter differs"
    );

    // Other settings or other data are refused, naming what changed.
    let other = Job::builder(&model, data(true), DirStore::new(&out))
        .lora(LoraSettings {
            alpha: 4.0,
            ..lora()
        })
        .train_config(TrainConfig {
            seed: 5,
            ..TrainConfig::default()
        })
        .plan(plan(2.0, 1))
        .resume_from(&ckpt)
        .build();
    match other {
        Err(Error::Resume { message, .. }) => {
            assert!(message.contains("alpha (8.0 -> 4.0)"), "{message}")
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a changed alpha was accepted"),
    }
    let other = Job::builder(&model, data(false), DirStore::new(&out))
        .lora(lora())
        .plan(plan(2.0, 1))
        .resume_from(&ckpt)
        .build();
    assert!(matches!(other, Err(Error::Resume { message, .. }) if message.contains("other data")));
}

#[test]
fn control_commands_save_and_stop_and_bad_ones_are_reported() {
    let model = tiny_model();
    let d = tempfile::tempdir().unwrap();
    let (send, receive) = std::sync::mpsc::channel();
    for c in [
        ControlCommand::Set {
            assignment: "rank=2".into(),
        },
        ControlCommand::SaveNow,
        ControlCommand::Stop,
    ] {
        send.send(c).unwrap();
    }
    let seen = Seen::default();
    let report = job(&model, d.path(), 2.0)
        .control(receive)
        .observer(seen.clone())
        .build()
        .unwrap()
        .run()
        .unwrap();
    assert_eq!(
        (report.end, report.step),
        (End::Stopped(StopReason::User), 1)
    );
    let lines = seen.lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Rejected") && l.contains("rank")),
        "{lines:?}"
    );
    assert!(
        lines.contains(&format!("saved checkpoint-1-user {:?}", SaveReason::User)),
        "{lines:?}"
    );
    // The training log records each outcome at its step, in order.
    let log = plot_report::read_log(d.path().join(LOG_FILE)).unwrap();
    let control = &log.records[0].control;
    let got: Vec<(Option<&str>, Option<&str>, ControlResult)> = control
        .iter()
        .map(|c| (c.command.as_deref(), c.assignment.as_deref(), c.outcome))
        .collect();
    assert_eq!(
        got,
        [
            (Some("set"), Some("rank=2"), ControlResult::Rejected),
            (Some("save-now"), None, ControlResult::Applied),
            (Some("stop"), None, ControlResult::Applied),
        ]
    );
    assert!(control[0]
        .reason
        .as_deref()
        .unwrap()
        .contains("cannot be changed"));
}

#[test]
fn the_directory_store_recovers_after_a_kill_and_the_run_resumes() {
    let model = tiny_model();
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let report = job(&model, &out, 1.0)
        .checkpoints(checkpoint_policy::Settings {
            save_every: Some(2),
            save_each_epoch: false,
            save_best_eval: false,
            save_final: false,
            ..checkpoint_policy::Settings::default()
        })
        .build()
        .unwrap()
        .run()
        .unwrap();
    assert_eq!(report.step, 5);
    // What a kill in the middle of replacing checkpoint-4 leaves: the old folder moved aside, a half-written
    // temporary folder, a temporary adapter file, and a torn log line.
    fs::rename(out.join("checkpoint-4"), out.join(".checkpoint-4.old-77")).unwrap();
    fs::create_dir(out.join(".checkpoint-4.tmpAbCdEf")).unwrap();
    fs::write(
        out.join(".checkpoint-4.tmpAbCdEf/adapter_model.safetensors"),
        "half",
    )
    .unwrap();
    fs::write(out.join(".adapter_model.safetensors.tmpXyZ123"), "half").unwrap();
    let mut log = fs::read_to_string(out.join(LOG_FILE)).unwrap();
    log.push_str("{\"step\":6,\"ep");
    fs::write(out.join(LOG_FILE), log).unwrap();

    let mut store = DirStore::new(&out);
    let done: Vec<String> = store
        .recover()
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(done.len(), 3, "{done:?}");
    assert!(done[0].starts_with("restored"), "{done:?}");
    let hidden: Vec<PathBuf> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "{hidden:?}");
    let latest = store.latest_checkpoint().unwrap();
    assert_eq!(latest, out.join("checkpoint-4"));
    store
        .append_log(&LogRecord {
            step: 5,
            epoch: 1.0,
            ..LogRecord::default()
        })
        .unwrap();
    assert_eq!(
        plot_report::read_log(out.join(LOG_FILE))
            .unwrap()
            .records
            .len(),
        6
    );
    let report = Job::builder(&model, data(true), store)
        .lora(lora())
        .train_config(TrainConfig {
            seed: 5,
            ..TrainConfig::default()
        })
        .plan(plan(1.0, 1))
        .resume_from(&latest)
        .build()
        .unwrap()
        .run()
        .unwrap();
    assert_eq!((report.end, report.step), (End::Finished, 5));
}

#[test]
fn max_steps_runs_exactly_that_many_steps_across_epochs() {
    let model = tiny_model();
    let d = tempfile::tempdir().unwrap();
    let plan = TrainingPlan::new(
        PlanSettings {
            batch_size: 2,
            max_steps: Some(7),
            warmup: Warmup::Ratio(0.3),
            ..PlanSettings::default()
        },
        10,
    )
    .unwrap();
    assert_eq!((plan.steps.total_steps, plan.steps.warmup_steps), (7, 3));
    assert_eq!(plan.lr(7), 0.0);
    let report = job(&model, d.path(), 1.0)
        .plan(plan)
        .build()
        .unwrap()
        .run()
        .unwrap();
    assert_eq!((report.end, report.step), (End::Finished, 7));
}

/// The fixture run written by the command line before the job API: its settings are read and compared, and since it
/// trained with LoRA dropout drawn from one running stream (trainer state format 1), it is refused with a reason.
#[test]
fn a_checkpoint_written_before_the_job_api_with_dropout_is_refused() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1_run");
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("run");
    fs::create_dir(&out).unwrap();
    for f in ["training_log.jsonl", "training_parameters.toml"] {
        fs::copy(fixture.join("run").join(f), out.join(f)).unwrap();
    }
    let ckpt = out.join("checkpoint-3");
    fs::create_dir(&ckpt).unwrap();
    for e in fs::read_dir(fixture.join("run/checkpoint-3")).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), ckpt.join(e.file_name())).unwrap();
    }
    let model = Model::load(&fixture.join("tiny-model"), &Device::Cpu).unwrap();
    let sources = DataSources {
        text: Some(fixture.join("text.txt")),
        ..DataSources::default()
    };
    let options = DataOptions {
        cutoff: 64,
        eval_split: 0.2,
        ..DataOptions::default()
    };
    // A changed setting is named, with the value the checkpoint recorded.
    for (lora, want) in [
        (
            LoraSettings {
                dropout: 0.1,
                ..v1_lora()
            },
            "dropout (0.05 -> 0.1)",
        ),
        (LoraSettings { r: 8, ..v1_lora() }, "rank (4 -> 8)"),
    ] {
        match v1_job(&model, &sources, &options, lora, &out) {
            Err(Error::Resume { message, .. }) => assert!(message.contains(want), "{message}"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("{want} was accepted"),
        }
    }
    let refused = v1_job(&model, &sources, &options, v1_lora(), &out).map(|_| ());
    match refused {
        Err(Error::Resume { message, .. }) => {
            for part in [
                "LoRA dropout 0.05 noise",
                "cannot continue exactly",
                "start a new run",
            ] {
                assert!(message.contains(part), "{message}");
            }
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a format-1 checkpoint with dropout was resumed"),
    }
}

/// The LoRA settings the fixture run was trained with.
fn v1_lora() -> LoraSettings {
    LoraSettings {
        r: 4,
        alpha: 8.0,
        dropout: 0.05,
        target_modules: vec!["q_proj".into(), "v_proj".into()],
        ..LoraSettings::default()
    }
}

/// The fixture run's job, resumed from its `checkpoint-3`.
fn v1_job<'m>(
    model: &'m Model,
    sources: &DataSources,
    options: &DataOptions,
    lora: LoraSettings,
    out: &Path,
) -> trainer_core::Result<Job<'m>> {
    let data = TrainingData::build(DataFiles::read(sources.clone(), options.clone())?, model)?;
    let plan = TrainingPlan::new(
        PlanSettings {
            batch_size: 4,
            epochs: 1.0,
            warmup: Warmup::Ratio(0.0),
            learning_rate: 1e-3,
            ..PlanSettings::default()
        },
        data.samples.len(),
    )?;
    Job::builder(model, data, DirStore::new(out))
        .lora(lora)
        .train_config(TrainConfig {
            seed: 42,
            ..TrainConfig::default()
        })
        .plan(plan)
        .base_model_name("tiny-model")
        .checkpoints(checkpoint_policy::Settings {
            save_every: Some(3),
            save_final: false,
            ..checkpoint_policy::Settings::default()
        })
        .resume_from(out.join("checkpoint-3"))
        .build()
}

/// The real model, a few steps of raw text through the whole pipeline (slicing, plan, checkpoints, log).
#[test]
fn a_real_model_job_on_raw_text() {
    let model = crate::common::model();
    let d = tempfile::tempdir().unwrap();
    let text = d.path().join("text.txt");
    fs::write(&text, "And Joseph said unto his brethren, I am Joseph. Doth my father yet live? And his brethren \
        could not answer him; for they were troubled at his presence.\n\n\n".repeat(6)).unwrap();
    let sources = DataSources {
        text: Some(text),
        ..DataSources::default()
    };
    let options = DataOptions {
        cutoff: 48,
        ..DataOptions::default()
    };
    let data = TrainingData::build(DataFiles::read(sources, options).unwrap(), model).unwrap();
    assert!(data.summary_text(Default::default()).contains("blocks:"));
    let plan = TrainingPlan::new(
        PlanSettings {
            batch_size: 2,
            max_steps: Some(3),
            learning_rate: 1e-3,
            ..PlanSettings::default()
        },
        data.samples.len(),
    )
    .unwrap();
    let out = d.path().join("out");
    let store = DirStore::new(&out);
    store.prepare_new(false).unwrap();
    let seen = Seen::default();
    let report = Job::builder(model, data, store)
        .lora(lora())
        .plan(plan)
        .checkpoints(checkpoint_policy::Settings {
            save_every: Some(2),
            save_final: false,
            ..checkpoint_policy::Settings::default()
        })
        .observer(seen.clone())
        .build()
        .unwrap()
        .run()
        .unwrap();
    assert_eq!((report.end, report.step), (End::Finished, 3));
    assert!(out.join("checkpoint-2/run_state.json").is_file());
    assert_eq!(
        seen.lines()
            .iter()
            .filter(|l| l.starts_with("step "))
            .count(),
        3
    );
    trainer_core::Adapter::load(&out, model).unwrap();
}
