//! Hostile inputs, text and settings: empty, binary, huge or odd text, bad
//! cutoffs and config values. Each run fails with exit code 2 and one
//! `error:` line naming the file or setting (or succeeds where that is
//! right), never panics, and leaves what existed before untouched. Model
//! files, adapters and output folders: `hostile_files`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{assert_clean_error, cli, model, repo, run_ok, sample_text, tempdir};

fn tokenizer() -> PathBuf {
    repo().join("testdata/smollm2-tokenizer.json")
}

/// `train --dry-run` on `text` (fails before or after loading the model).
pub fn dry_run(text: &Path, extra: &[&str]) -> Output {
    cli()
        .arg("train")
        .arg("--model")
        .arg(model())
        .arg("--text")
        .arg(text)
        .arg("--dry-run")
        .args(extra)
        .output()
        .unwrap()
}

/// The `chunk` command on `text` into `out`.
fn chunk_cmd(text: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = cli();
    c.arg("chunk")
        .arg("--text")
        .arg(text)
        .arg("--tokenizer")
        .arg(tokenizer())
        .arg("--out")
        .arg(out)
        .args(extra);
    c
}

/// `chunk` on `text` into `out`.
fn chunk(text: &Path, out: &Path, extra: &[&str]) -> Output {
    chunk_cmd(text, out, extra).output().unwrap()
}

/// The blocks `chunk` wrote.
fn blocks(out: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn no_panic(out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn empty_whitespace_and_hard_cut_only_text() {
    let d = tempdir("hostile-empty");
    for (name, content) in [
        ("empty.txt", ""),
        ("blank.txt", "  \n\t\n\r\n   \n"),
        ("cuts.txt", &"\n\n\n".repeat(40)),
    ] {
        let f = d.join(name);
        fs::write(&f, content).unwrap();
        // Training refuses it before loading the model.
        assert_clean_error(&dry_run(&f, &[]), &format!("{name} holds no text"));
        // Slicing it is not an error: no blocks, reported.
        let out = d.join(format!("{name}.jsonl"));
        let res = run_ok(&mut chunk_cmd(&f, &out, &[]));
        assert!(String::from_utf8_lossy(&res.stderr).contains("blocks:         0"));
        assert!(blocks(&out).is_empty());
    }
    // A folder of empty files.
    let dir = d.join("folder");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("a.txt"), "").unwrap();
    fs::write(dir.join("b.txt"), "\n").unwrap();
    assert_clean_error(&dry_run(&dir, &[]), "holds no text");
}

#[test]
fn binary_and_invalid_utf8_name_the_file_and_byte() {
    let d = tempdir("hostile-binary");
    let bin = d.join("data.bin");
    let mut bytes: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    bytes[0] = 0xff;
    fs::write(&bin, &bytes).unwrap();
    assert_clean_error(&dry_run(&bin, &[]), "data.bin is not valid UTF-8 at byte 0");
    let bad = d.join("latin1.txt");
    fs::write(&bad, b"Hello w\xf6rld. Fine text.\n").unwrap();
    let out = d.join("o.jsonl");
    fs::write(&out, "precious").unwrap();
    let res = chunk(&bad, &out, &[]);
    assert_clean_error(&res, "latin1.txt is not valid UTF-8 at byte 7");
    assert_eq!(fs::read_to_string(&out).unwrap(), "precious");
}

#[test]
fn a_long_line_without_punctuation_is_split_within_the_cutoff() {
    // 2 MB keep the test quick; docs/fuzzing.md records a 20 MB run.
    let d = tempdir("hostile-longline");
    let words = ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur"];
    let mut text = String::with_capacity(2_100_000);
    let mut i = 0usize;
    while text.len() < 2_000_000 {
        text.push_str(words[i % words.len()]);
        text.push(' ');
        i = i.wrapping_mul(7).wrapping_add(3);
    }
    let f = d.join("line.txt");
    fs::write(&f, text.trim_end()).unwrap();
    let out = d.join("o.jsonl");
    let res = run_ok(&mut chunk_cmd(
        &f,
        &out,
        &["--cutoff", "256", "--overlap", "false"],
    ));
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(stderr.contains("pieces split:   1"), "{stderr}");
    let b = blocks(&out);
    assert!(b.len() > 1000, "{} blocks", b.len());
    assert!(b.iter().all(|v| v["tokens"].as_u64().unwrap() <= 256));
}

#[test]
fn crlf_and_bom_and_disabled_hard_cuts() {
    let d = tempdir("hostile-crlf");
    let f = d.join("windows.txt");
    fs::write(
        &f,
        b"\xef\xbb\xbfFirst line here.\r\nSecond sentence.\r\n\r\n\r\n\r\nThird part after a cut.\r\n",
    )
    .unwrap();
    let out = d.join("o.jsonl");
    run_ok(&mut chunk_cmd(&f, &out, &[]));
    let b = blocks(&out);
    let texts: Vec<&str> = b.iter().map(|v| v["text"].as_str().unwrap()).collect();
    assert_eq!(
        texts,
        [
            "First line here.\nSecond sentence.",
            "Third part after a cut."
        ]
    );
    assert_eq!(b[0]["ends_at_hard_cut"], true);
    // An empty hard-cut string disables hard cuts: one block across the blank lines.
    let res = chunk(&f, &out, &["--hard-cut", ""]);
    no_panic(&res);
    assert!(res.status.success());
    let b = blocks(&out);
    assert_eq!(b.len(), 1);
    assert!(b[0]["text"].as_str().unwrap().contains("\n\n\n\nThird"));
}

#[test]
fn cutoffs_out_of_range_name_the_setting() {
    let d = tempdir("hostile-cutoff");
    let out = d.join("o.jsonl");
    for cutoff in ["1", "100000000000"] {
        let res = chunk(&sample_text(), &out, &["--cutoff", cutoff]);
        assert_clean_error(&res, "setting `cutoff`");
        let res = dry_run(&sample_text(), &["--cutoff", cutoff]);
        assert_clean_error(&res, "setting `cutoff`");
    }
    assert!(!out.exists());
    // Longer than the model's context (8192 tokens): refused before any training.
    assert_clean_error(
        &dry_run(&sample_text(), &["--cutoff", "9000"]),
        "context is 8192",
    );
}

#[test]
fn bad_numbers_in_the_config_file_name_the_key() {
    let d = tempdir("hostile-config");
    let cfg = d.join("run.toml");
    for (toml, key) in [
        ("rank = 0", "rank"),
        ("alpha = 0.0", "alpha"),
        ("learning_rate = -3e-4", "learning_rate"),
        ("epochs = nan", "epochs"),
        ("dropout = inf", "dropout"),
        ("warmup_ratio = -0.5", "warmup_ratio"),
        ("cutoff = -5", "cutoff"),
        ("seed = 1.5", "seed"),
        ("rank = \"eight\"", "rank"),
        ("rank = 8\nrank = 9", "rank"),
        ("[rank]", "rank"),
    ] {
        fs::write(&cfg, toml).unwrap();
        let res = dry_run(&sample_text(), &["--config", cfg.to_str().unwrap()]);
        assert_clean_error(&res, key);
    }
    // Binary junk as a config file.
    fs::write(&cfg, b"\x00\xff\xfe rank").unwrap();
    assert_clean_error(
        &dry_run(&sample_text(), &["--config", cfg.to_str().unwrap()]),
        "run.toml",
    );
    // A value a flag can give but training_parameters.toml cannot record.
    assert_clean_error(
        &dry_run(&sample_text(), &["--seed", "18446744073709551615"]),
        "seed",
    );
}
