//! Every error path a user can hit exits 2 with one clear line, no panic.

use crate::common::{assert_clean_error, cli, model, sample_text, tempdir};

#[test]
fn missing_model() {
    let d = tempdir("missing-model");
    let out = cli()
        .args(["train", "--model", "no/such/model.gguf", "--text"])
        .arg(sample_text())
        .arg("--output")
        .arg(d.join("out"))
        .output()
        .unwrap();
    assert_clean_error(&out, "no/such/model.gguf");
}

#[test]
fn unreadable_text() {
    let d = tempdir("unreadable");
    let out = cli()
        .arg("train")
        .arg("--model")
        .arg(model())
        .args(["--text", "no/such/text.txt", "--output"])
        .arg(d.join("out"))
        .output()
        .unwrap();
    assert_clean_error(&out, "no/such/text.txt");
}

#[test]
fn bad_config_key() {
    let d = tempdir("badkey");
    let cfg = d.join("run.toml");
    std::fs::write(&cfg, "rank = 8\nlerning_rate = 1e-4\n").unwrap();
    let out = cli()
        .arg("train")
        .arg("--config")
        .arg(&cfg)
        .arg("--model")
        .arg(model())
        .arg("--text")
        .arg(sample_text())
        .arg("--output")
        .arg(d.join("out"))
        .output()
        .unwrap();
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
        let out = cli()
            .arg("train")
            .arg("--model")
            .arg(model())
            .arg("--text")
            .arg(sample_text())
            .arg("--output")
            .arg(d.join("out"))
            .arg(flag)
            .output()
            .unwrap();
        assert_clean_error(&out, key);
    }
}

#[test]
fn cutoff_smaller_than_bos_eos() {
    let d = tempdir("cutoff");
    let out = cli()
        .arg("train")
        .arg("--model")
        .arg(model())
        .arg("--text")
        .arg(sample_text())
        .arg("--output")
        .arg(d.join("out"))
        .args(["--cutoff", "2"])
        .output()
        .unwrap();
    assert_clean_error(&out, "cutoff");
}

#[test]
fn no_blocks_after_chunking() {
    let d = tempdir("noblocks");
    let out = cli()
        .arg("train")
        .arg("--model")
        .arg(model())
        .arg("--text")
        .arg(sample_text())
        .arg("--output")
        .arg(d.join("out"))
        .args(["--min-chars", "1000000"])
        .output()
        .unwrap();
    assert_clean_error(&out, "no training blocks");
}

#[test]
fn output_that_is_a_file() {
    let d = tempdir("outfile");
    let f = d.join("out");
    std::fs::write(&f, "precious").unwrap();
    let out = cli()
        .arg("train")
        .arg("--model")
        .arg(model())
        .arg("--text")
        .arg(sample_text())
        .arg("--output")
        .arg(&f)
        .output()
        .unwrap();
    assert_clean_error(&out, "is a file");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "precious");
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
