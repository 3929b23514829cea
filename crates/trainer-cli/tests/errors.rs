//! Every error path a user can hit exits 2 with one clear line, no panic.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::{assert_clean_error, cli, model, sample_text, tempdir};

/// `train` on `model` and `text` into `out`, plus `extra`.
fn train_on(model: &Path, text: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut c: Command = cli();
    c.arg("train")
        .arg("--model")
        .arg(model)
        .arg("--text")
        .arg(text);
    c.arg("--output").arg(out).args(extra);
    c.output().unwrap()
}

/// `train` on the real model and the sample text into `out`, plus `extra`.
fn train(out: &Path, extra: &[&str]) -> Output {
    train_on(&model(), &sample_text(), out, extra)
}

#[test]
fn missing_model() {
    let d = tempdir("missing-model");
    let out = train_on(
        Path::new("no/such/model.gguf"),
        &sample_text(),
        &d.join("out"),
        &[],
    );
    assert_clean_error(&out, "no/such/model.gguf");
}

#[test]
fn unreadable_text() {
    let d = tempdir("unreadable");
    let out = train_on(&model(), Path::new("no/such/text.txt"), &d.join("out"), &[]);
    assert_clean_error(&out, "no/such/text.txt");
}

#[test]
fn bad_config_key() {
    let d = tempdir("badkey");
    let cfg = d.join("run.toml");
    std::fs::write(&cfg, "rank = 8\nlerning_rate = 1e-4\n").unwrap();
    let out = train(&d.join("out"), &["--config", cfg.to_str().unwrap()]);
    assert_clean_error(&out, "lerning_rate");
}

#[test]
fn rank_zero_and_nan_numbers() {
    let d = tempdir("rank0");
    for (flag, key) in [
        ("--rank=0", "rank"),
        ("--learning-rate=NaN", "learning_rate"),
        ("--epochs=-1", "epochs"),
        ("--alpha=0", "alpha"),
    ] {
        assert_clean_error(&train(&d.join("out"), &[flag]), key);
    }
}

#[test]
fn cutoff_smaller_than_bos_eos() {
    let d = tempdir("cutoff");
    assert_clean_error(&train(&d.join("out"), &["--cutoff", "2"]), "cutoff");
}

#[test]
fn no_blocks_after_chunking() {
    let d = tempdir("noblocks");
    let out = train(&d.join("out"), &["--min-chars", "1000000"]);
    assert_clean_error(&out, "no training blocks");
}

#[test]
fn output_that_is_a_file() {
    let d = tempdir("outfile");
    let f = d.join("out");
    std::fs::write(&f, "precious").unwrap();
    assert_clean_error(&train(&f, &[]), "is a file");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "precious");
}

#[test]
fn a_bad_setting_never_costs_the_earlier_run() {
    let d = tempdir("keep");
    let out = d.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("training_log.jsonl"),
        "{\"step\":1,\"epoch\":0.1}\n",
    )
    .unwrap();
    let res = train(&out, &["--overwrite", "--scheduler", "cosine_annealing"]);
    assert_clean_error(&res, "scheduler");
    assert!(
        out.join("training_log.jsonl").exists(),
        "--overwrite deleted the run before validating"
    );
}

#[test]
fn unknown_schedule_lists_the_valid_names() {
    let out = cli()
        .args(["schedule", "--name", "cosine_annealing", "--total", "10"])
        .output()
        .unwrap();
    assert_clean_error(&out, "FP_low_epoch_annealing");
}

#[test]
fn bad_tokenizer_file() {
    let d = tempdir("badtok");
    let tok = d.join("tokenizer.json");
    std::fs::write(&tok, "{ not json").unwrap();
    let out = cli()
        .args(["chunk", "--text"])
        .arg(sample_text())
        .arg("--tokenizer")
        .arg(&tok)
        .output()
        .unwrap();
    assert_clean_error(&out, "tokenizer.json");
}

/// A build without the `distributed` feature started by mpirun (seen from the launcher's variables) refuses
/// to train instead of training alone into the same folder as its siblings.
#[cfg(not(feature = "distributed"))]
#[test]
fn one_of_several_processes_without_the_distributed_feature() {
    let d = tempdir("no-mpi");
    let mut c = cli();
    c.arg("train")
        .arg("--model")
        .arg(model())
        .arg("--text")
        .arg(sample_text())
        .arg("--output")
        .arg(d.join("run"))
        .env("OMPI_COMM_WORLD_SIZE", "2");
    let out = c.output().unwrap();
    assert_clean_error(&out, "built without the `distributed` feature");
    assert!(!d.join("run").exists(), "nothing written");
}
