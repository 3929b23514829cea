//! Training faults on the real model with tiny settings: a diverging run,
//! `kill -9` at varied moments (one of them inside a checkpoint write) and a
//! full disk while saving. Each leaves every checkpoint loadable and nothing
//! half-written under a final name.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    assert_clean_error, cli, model, run_ok, small_text, snapshot, tempdir, LOCK_FILE,
};

/// `train` with tiny settings, a checkpoint after every step; `changes`
/// replace settings (`("--epochs", "0.3")`) or add flags.
fn tiny(text: &Path, out: &Path, changes: &[(&str, &str)]) -> Command {
    let mut flags = vec![
        ("--cutoff", "64"),
        ("--rank", "4"),
        ("--alpha", "8"),
        ("--batch-size", "2"),
        ("--epochs", "0.6"),
        ("--learning-rate", "1e-3"),
        ("--warmup-ratio", "0"),
        ("--save-every", "1"),
        ("--save-under-loss", "0"),
        ("--progress", "jsonl"),
    ];
    for &(flag, value) in changes {
        match flags.iter_mut().find(|(f, _)| *f == flag) {
            Some(slot) => slot.1 = value,
            None => flags.push((flag, value)),
        }
    }
    let mut c = cli();
    c.arg("train")
        .arg("--model")
        .arg(model())
        .arg("--text")
        .arg(text)
        .arg("--output")
        .arg(out);
    for (flag, value) in flags {
        c.arg(format!("{flag}={value}"));
    }
    c
}

/// `train --resume latest` on `out` (settings from its training_parameters.toml).
fn resume(out: &Path) -> Command {
    let mut c = cli();
    c.arg("train")
        .arg("--output")
        .arg(out)
        .args(["--resume", "latest", "--progress", "jsonl"]);
    c
}

/// The checkpoint folders of `out`, by name.
fn checkpoints(out: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("checkpoint-")
        })
        .collect();
    v.sort();
    v
}

/// Names in `out` (one level) that start with a dot: leftovers of writes
/// (the output-folder lock file, which stays by design, is not one).
fn hidden(out: &Path) -> Vec<String> {
    fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && n != LOCK_FILE)
        .collect()
}

/// Every checkpoint folder of `out` restores a trainer (adapter, optimizer
/// moments, RNG) and has a readable run state; returns their steps.
fn assert_all_loadable(model: &trainer_core::Model, out: &Path) -> Vec<u64> {
    let mut steps = Vec::new();
    for dir in checkpoints(out) {
        let trainer = trainer_core::Trainer::load_state(&dir, model)
            .unwrap_or_else(|e| panic!("{} does not load: {e}", dir.display()));
        let state: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(dir.join("run_state.json")).unwrap())
                .unwrap_or_else(|e| panic!("{}: run_state.json: {e}", dir.display()));
        assert_eq!(state["step"].as_u64(), Some(trainer.steps_done()));
        steps.push(trainer.steps_done());
    }
    steps.sort_unstable();
    steps
}

fn load_model() -> trainer_core::Model {
    trainer_core::Model::load(&model(), &candle_core::Device::Cpu).unwrap()
}

fn all_finite(path: &Path) -> bool {
    candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .unwrap()
        .values()
        .all(|t| {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .all(|v| v.is_finite())
        })
}

#[test]
fn a_diverging_run_stops_and_keeps_the_last_good_checkpoint() {
    let d = tempdir("diverge");
    let text = small_text(&d);
    let model = load_model();
    let diverge = |lr: &str, out: &Path| {
        tiny(
            &text,
            out,
            &[("--learning-rate", lr), ("--scheduler", "constant")],
        )
        .output()
        .unwrap()
    };
    // At 1e37 the updates stay finite, but the third step's forward pass
    // overflows to inf and its loss is NaN.
    let out = d.join("nan");
    let res = diverge("1e37", &out);
    assert_clean_error(&res, "training diverged: the loss became NaN at step 3");
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(
        stderr.contains(&format!(
            "the last good checkpoint is {}",
            out.join("checkpoint-2").display()
        )),
        "{stderr}"
    );
    assert_eq!(assert_all_loadable(&model, &out), [1, 2]);
    for dir in checkpoints(&out) {
        assert!(all_finite(&dir.join("adapter_model.safetensors")));
    }
    assert!(!out.join("adapter_model.safetensors").exists());
    let log = fs::read_to_string(out.join("training_log.jsonl")).unwrap();
    assert_eq!(
        log.lines().count(),
        2,
        "the diverged step was logged: {log}"
    );
    assert!(hidden(&out).is_empty(), "{:?}", hidden(&out));

    // At 3e38 the first update itself overflows (the loss and gradient of that
    // step are finite): nothing non-finite is saved.
    let out = d.join("inf");
    let res = diverge("3e38", &out);
    assert_clean_error(
        &res,
        "training diverged: the update left inf or NaN weights at step 1",
    );
    assert!(String::from_utf8_lossy(&res.stderr).contains("no checkpoint was written yet"));
    assert!(checkpoints(&out).is_empty());
    assert!(!out.join("adapter_model.safetensors").exists());
    let _ = fs::remove_dir_all(&d);
}

/// Spawns `c` with stderr into `log`.
fn spawn(mut c: Command, log: &Path) -> Child {
    c.stdout(Stdio::null())
        .stderr(fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// Waits until `ready` holds (polling every millisecond), then kills `child`
/// with SIGKILL. Returns false when the child ended first.
fn kill_when(mut child: Child, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if ready() {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            return true;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before the kill point");
        }
        assert!(Instant::now() < deadline, "kill point never reached");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn count(log: &Path, needle: &str) -> usize {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

#[test]
fn kill_9_at_any_moment_loses_nothing_and_resume_finishes_exactly() {
    let d = tempdir("kill9");
    let text = small_text(&d);
    let straight = d.join("straight");
    run_ok(&mut tiny(
        &text,
        &straight,
        &[("--save-every", "0"), ("--save-each-epoch", "false")],
    ));

    let out = d.join("out");
    let log = d.join("stderr.txt");
    let model = load_model();
    // 1. Inside the second checkpoint write: as soon as its temporary folder appears.
    let child = spawn(tiny(&text, &out, &[]), &log);
    let killed_mid_write = kill_when(child, || {
        count(&log, "saved ") >= 1
            && fs::read_dir(&out).is_ok_and(|rd| {
                rd.filter_map(Result::ok)
                    .any(|e| e.file_name().to_string_lossy().starts_with(".checkpoint-"))
            })
    });
    assert!(killed_mid_write);
    let left = hidden(&out);
    let steps = assert_all_loadable(&model, &out);
    assert!(!steps.is_empty());

    // 2. Resumed, then killed between steps: after two more step lines.
    let child = spawn(resume(&out), &log);
    kill_when(child, || count(&log, "{\"step\":") >= 2);
    let resume_log = fs::read_to_string(&log).unwrap();
    for name in &left {
        assert!(
            resume_log.contains(&format!("removed {}", out.join(name).display())),
            "leftover {name} not cleaned: {resume_log}"
        );
    }
    let steps2 = assert_all_loadable(&model, &out);
    assert!(steps2.last() > steps.last(), "{steps:?} -> {steps2:?}");

    // 3. Resumed, then killed 5 ms after a checkpoint was reported.
    let child = spawn(resume(&out), &log);
    let mut seen = None;
    kill_when(child, || {
        if seen.is_none() && count(&log, "saved ") >= 1 {
            seen = Some(Instant::now());
        }
        seen.is_some_and(|t| t.elapsed() >= Duration::from_millis(5))
    });
    assert_all_loadable(&model, &out);

    // 4. Resumed to the end: the same adapter as the run straight through.
    let res = run_ok(&mut resume(&out));
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(stderr.contains("finished"), "{stderr}");
    assert!(hidden(&out).is_empty(), "{:?}", hidden(&out));
    assert_all_loadable(&model, &out);
    let a = fs::read(straight.join("adapter_model.safetensors")).unwrap();
    let b = fs::read(out.join("adapter_model.safetensors")).unwrap();
    assert!(
        a == b,
        "killed and resumed adapter differs from the straight run"
    );
    let _ = fs::remove_dir_all(&d);
}

/// `c` run under `ulimit -f kib` with SIGXFSZ ignored: a write past the limit
/// fails with EFBIG, as on a full disk (no privileges needed).
fn with_file_limit(c: &Command, kib: u64) -> Command {
    let mut b = Command::new("bash");
    b.arg("-c")
        .arg(format!(
            "ulimit -f {kib} && trap '' XFSZ && exec \"$0\" \"$@\""
        ))
        .arg(c.get_program())
        .args(c.get_args());
    b
}

#[test]
fn a_full_disk_while_saving_keeps_the_earlier_checkpoints_and_adapter() {
    let d = tempdir("diskfull");
    let out = d.join("out");
    run_ok(&mut tiny(
        &small_text(&d),
        &out,
        &[("--epochs", "0.3"), ("--save-every", "2")],
    ));
    let before = snapshot(&out);
    let params = PathBuf::from("training_parameters.toml");
    let log = PathBuf::from("training_log.jsonl");
    // The lock file names its latest holder.
    let lock = PathBuf::from(LOCK_FILE);
    let model = load_model();

    // A checkpoint write fails: the adapter (about 0.9 MB) fits under the
    // limit, the optimizer moments (twice that) do not.
    let mut more = resume(&out);
    more.arg("--epochs=0.6");
    let res = with_file_limit(&more, 1200).output().unwrap();
    assert_clean_error(&res, "the disk is full");
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(err.contains("cannot write checkpoint"), "{err}");
    assert!(err.contains("--resume latest"), "{err}");
    // The final adapter write fails: no checkpoint on the way, a lower limit.
    let mut no_saves = resume(&out);
    no_saves.args(["--epochs=0.6", "--save-every=0", "--save-each-epoch=false"]);
    let res = with_file_limit(&no_saves, 500).output().unwrap();
    assert_clean_error(&res, "the disk is full");
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(err.contains("adapter_model.safetensors"), "{err}");

    // Nothing was added and nothing changed, but the parameters file (the new
    // epochs), the log (whole records of the steps trained, appended) and the
    // lock file (its holder).
    let after = snapshot(&out);
    let keys = |m: &BTreeMap<PathBuf, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&before), keys(&after));
    for (path, bytes) in &before {
        if *path == log {
            assert!(after[path].starts_with(bytes), "the log was rewritten");
            plot_report::read_log(out.join(&log)).unwrap();
        } else if *path != params && *path != lock {
            assert!(after[path] == *bytes, "{} changed", path.display());
        }
    }
    assert_all_loadable(&model, &out);

    // With room again, the run continues.
    run_ok(&mut more);
    assert!(out.join("adapter_model.safetensors").is_file());
    let _ = fs::remove_dir_all(&d);
}
