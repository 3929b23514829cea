//! A job on N ranks that are threads of this process ([`ThreadGroup`]): the adapter is byte-identical to the
//! single-process job's (dropout and NEFTune on, a last step whose micro-batches do not split evenly), resumes
//! cross rank counts, rank 0's control stops every rank at the same step, and disagreeing ranks are refused
//! before the first step.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use checkpoint_policy::StopReason;
use trainer_core::job::{
    ControlCommand, ControlSource, DataOptions, DirStore, End, Job, Report, ThreadGroup,
    TrainingData,
};
use trainer_core::{Error, Sample, TrainConfig};

use crate::job_fixtures::{lora, plan, sample, tiny_model};

/// 10 byte-level samples of 20-38 tokens; `shift` changes one token of one of them.
fn data(shift: u32) -> TrainingData {
    let mut samples: Vec<Sample> = (0..10).map(sample).collect();
    samples[3].input_ids[5] = (samples[3].input_ids[5] + shift) % 256;
    samples[3].labels[5] = i64::from(samples[3].input_ids[5]);
    TrainingData::from_samples(samples, Vec::new(), DataOptions::default())
}

/// How one test run is set up.
#[derive(Clone, Default)]
struct Setup {
    resume: Option<PathBuf>,
    /// Rank 0's control source says `stop` at this poll (1-based).
    stop_at_poll: Option<u32>,
    /// The data change of rank 1.
    shift_rank_1: u32,
    grad_accum: Option<usize>,
}

/// Says `stop` at one poll.
struct StopAt(u32, u32);

impl ControlSource for StopAt {
    fn poll(&mut self) -> Vec<Result<ControlCommand, String>> {
        self.0 += 1;
        if self.0 == self.1 {
            vec![Ok(ControlCommand::Stop)]
        } else {
            Vec::new()
        }
    }
}

/// The job of rank `rank` (or a single process without a collective when `group` is `None`), saving a
/// checkpoint every 2 steps into `out` (rank 0) or nowhere (the others write nothing).
fn run(out: &Path, group: Option<ThreadGroup>, setup: &Setup) -> trainer_core::Result<Report> {
    let rank = group
        .as_ref()
        .map_or(0, trainer_core::job::Collective::rank);
    let model = tiny_model();
    let store = DirStore::new(out);
    if rank == 0 {
        store.prepare_new(true)?;
    }
    let shift = if rank == 1 { setup.shift_rank_1 } else { 0 };
    let mut b = Job::builder(&model, data(shift), store)
        .lora(lora())
        .train_config(TrainConfig {
            seed: 5,
            neftune_alpha: Some(5.0),
            ..TrainConfig::default()
        })
        // 2 steps per epoch, the second of 3 micro-batches (with 2 ranks: 2 on rank 0, 1 on rank 1).
        .plan(plan(2.0, setup.grad_accum.unwrap_or(2)))
        .checkpoints(checkpoint_policy::Settings {
            save_every: Some(2),
            save_final: false,
            ..checkpoint_policy::Settings::default()
        });
    if let Some(g) = group {
        b = b.collective(g).collective_timeout(Duration::from_secs(60));
    }
    if let (Some(at), 0) = (setup.stop_at_poll, rank) {
        b = b.control(StopAt(0, at));
    }
    if let Some(dir) = &setup.resume {
        b = b.resume_from(dir);
    }
    let report = b.build()?.run();
    report
}

/// Runs `n` ranks as threads; rank 0 writes into `out`, rank r > 0 is given `out-rank-r` (which must stay
/// absent). Returns each rank's result, in rank order.
fn ranks(n: usize, out: &Path, setup: &Setup) -> Vec<trainer_core::Result<Report>> {
    let dirs: Vec<PathBuf> = (0..n)
        .map(|r| match r {
            0 => out.to_path_buf(),
            _ => PathBuf::from(format!("{}-rank-{r}", out.display())),
        })
        .collect();
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = ThreadGroup::new(n)
            .into_iter()
            .zip(&dirs)
            .map(|(g, dir)| s.spawn(move || run(dir, Some(g), setup)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    for dir in &dirs[1..] {
        assert!(!dir.exists(), "rank > 0 wrote {}", dir.display());
    }
    results
}

fn adapter(dir: &Path) -> Vec<u8> {
    fs::read(dir.join("adapter_model.safetensors")).unwrap()
}

fn losses(dir: &Path) -> Vec<String> {
    fs::read_to_string(dir.join("training_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!("{} {} {}", v["step"], v["loss"], v["grad_norm"])
        })
        .collect()
}

#[test]
fn two_ranks_train_the_single_process_adapter_byte_for_byte() {
    let d = tempfile::tempdir().unwrap();
    let setup = Setup::default();
    let plain = d.path().join("plain");
    let report = run(&plain, None, &setup).unwrap();
    assert_eq!((report.end, report.step), (End::Finished, 4));
    for n in [1, 2] {
        let out = d.path().join(format!("n{n}"));
        for (rank, r) in ranks(n, &out, &setup).into_iter().enumerate() {
            let r = r.unwrap();
            assert_eq!((r.end, r.step), (End::Finished, 4), "rank {rank} of {n}");
            assert_eq!(
                r.loss.to_bits(),
                report.loss.to_bits(),
                "rank {rank} of {n}"
            );
            assert_eq!(r.adapter, out, "rank {rank} of {n}");
        }
        assert!(
            adapter(&out) == adapter(&plain),
            "{n} ranks: another adapter"
        );
        assert_eq!(losses(&out), losses(&plain), "{n} ranks");
        assert!(
            adapter(&out.join("checkpoint-2")) == adapter(&plain.join("checkpoint-2")),
            "{n} ranks: another checkpoint"
        );
    }
}

#[test]
fn a_run_resumes_across_rank_counts() {
    let d = tempfile::tempdir().unwrap();
    let plain = d.path().join("plain");
    run(&plain, None, &Setup::default()).unwrap();
    let two = d.path().join("two");
    ranks(2, &two, &Setup::default())
        .into_iter()
        .for_each(|r| assert_eq!(r.unwrap().step, 4));
    // 2 -> 1: the checkpoint written by 2 ranks, resumed by one process.
    let one_from_two = d.path().join("one-from-two");
    let resume = Setup {
        resume: Some(two.join("checkpoint-2")),
        ..Setup::default()
    };
    assert_eq!(run(&one_from_two, None, &resume).unwrap().step, 4);
    assert!(adapter(&one_from_two) == adapter(&plain), "2 -> 1");
    // 1 -> 2: the single process's checkpoint, resumed by 2 ranks.
    let two_from_one = d.path().join("two-from-one");
    let resume = Setup {
        resume: Some(plain.join("checkpoint-2")),
        ..Setup::default()
    };
    for r in ranks(2, &two_from_one, &resume) {
        assert_eq!(r.unwrap().step, 4);
    }
    assert!(adapter(&two_from_one) == adapter(&plain), "1 -> 2");
}

#[test]
fn a_stop_read_by_rank_0_stops_every_rank_at_the_same_step() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let setup = Setup {
        stop_at_poll: Some(3),
        ..Setup::default()
    };
    let reports: Vec<Report> = ranks(2, &out, &setup)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for r in &reports {
        assert_eq!((r.end, r.step), (End::Stopped(StopReason::User), 3));
    }
    assert_eq!(reports[0], reports[1]);
    assert_eq!(losses(&out).len(), 3);
}

#[test]
fn ranks_that_disagree_or_cannot_share_the_steps_are_refused_before_training() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let setup = Setup {
        shift_rank_1: 1,
        ..Setup::default()
    };
    for (rank, r) in ranks(2, &out, &setup).into_iter().enumerate() {
        match r {
            Err(Error::Distributed { message, .. }) => {
                assert!(
                    message.contains("process 1 (data fingerprint)"),
                    "rank {rank}: {message}"
                );
            }
            other => panic!("rank {rank}: {other:?}"),
        }
    }
    assert!(!out.join("training_log.jsonl").exists());
    let setup = Setup {
        grad_accum: Some(3),
        ..Setup::default()
    };
    for r in ranks(2, &out, &setup) {
        match r {
            Err(Error::Setting { field, message }) => {
                assert_eq!(field, "grad_accum");
                assert!(message.contains("multiple of 2 (e.g. 4)"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
