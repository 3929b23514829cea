//! `--optimizer`, `--optim-args` and `--report-to` from the command line: the run trains with the optimizer it
//! names and records it, a resume that names another optimizer is refused, TensorBoard files hold the training
//! log's values, and bad names are one clear error naming the setting.

use std::path::Path;

use plot_report::read_event_dir;

use crate::common::{assert_clean_error, cli, model, run_ok, small_text, tempdir, tiny_train};

/// The losses of `training_log.jsonl` by step.
fn logged_losses(out: &Path) -> Vec<(i64, f64)> {
    std::fs::read_to_string(out.join("training_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_i64().unwrap(), v["loss"].as_f64().unwrap())
        })
        .collect()
}

#[test]
fn sgd_with_momentum_and_tensorboard_from_the_command_line() {
    let d = tempdir("optim-cli");
    let text = small_text(&d);
    let out = d.join("run");
    let mut c = tiny_train(&out, "64");
    c.arg("--text").arg(&text).args([
        "--max-steps",
        "2",
        "--save-every",
        "1",
        "--optimizer",
        "sgd",
        "--optim-args",
        "momentum=0.9",
        "--report-to",
        "tensorboard",
    ]);
    run_ok(&mut c);

    let saved = std::fs::read_to_string(out.join("training_parameters.toml")).unwrap();
    assert!(saved.contains("optimizer = \"sgd\""), "{saved}");
    assert!(saved.contains("optim_args = \"momentum=0.9\""), "{saved}");
    assert!(saved.contains("report_to = \"tensorboard\""), "{saved}");
    let state = std::fs::read_to_string(out.join("checkpoint-1/trainer_state.json")).unwrap();
    assert!(
        state.contains("\"sgd\"") && state.contains("0.9"),
        "{state}"
    );

    // The TensorBoard file holds the log's losses at the log's steps.
    let files = read_event_dir(&out.join("runs")).unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    let tb: Vec<(i64, f32)> = files[0]
        .1
        .iter()
        .flat_map(|e| {
            e.scalars
                .iter()
                .filter(|(tag, _)| tag == "train/loss")
                .map(move |(_, v)| (e.step, *v))
        })
        .collect();
    let log = logged_losses(&out);
    assert_eq!(log.len(), 2);
    assert_eq!(tb.len(), log.len(), "{tb:?}");
    for ((s1, v1), (s2, v2)) in tb.iter().zip(&log) {
        assert_eq!(s1, s2);
        assert_eq!(*v1, *v2 as f32);
    }

    // Resuming the checkpoint with another optimizer is refused; the run's files stay as they were.
    let before = std::fs::read_to_string(out.join("training_parameters.toml")).unwrap();
    let mut c = cli();
    c.arg("train").arg("--output").arg(&out).args([
        "--resume",
        "checkpoint-1",
        "--optimizer",
        "adagrad",
        "--max-steps",
        "3",
        "--progress",
        "none",
    ]);
    let refused = c.output().unwrap();
    assert_clean_error(&refused, "optimizer");
    assert_eq!(
        std::fs::read_to_string(out.join("training_parameters.toml")).unwrap(),
        before
    );
}

#[test]
fn bad_optimizer_and_report_names_are_one_error_naming_the_setting() {
    let d = tempdir("optim-bad");
    let text = small_text(&d);
    for (flags, needle) in [
        (["--optimizer", "adamw_8bit"], "setting `optimizer`"),
        (["--optimizer", "lion"], "setting `optimizer`"),
        (["--optim-args", "momentum=0.9"], "setting `optim_args`"),
        (["--report-to", "wandb"], "setting `report_to`"),
    ] {
        let mut c = cli();
        c.arg("train")
            .arg("--model")
            .arg(model())
            .arg("--text")
            .arg(&text)
            .arg("--output")
            .arg(d.join("never"))
            .args(flags);
        let out = c.output().unwrap();
        assert_clean_error(&out, needle);
        assert!(!d.join("never").exists(), "{flags:?} created the output");
    }
}
