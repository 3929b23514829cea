//! `--config training_parameters.json`: Training PRO's saved settings read as a config file. The dry run lists
//! every key with what it became; flags win over the file; a file key that disagrees with an
//! `--init-adapter` adapter is refused naming the key and the file; bad files and values are one clear error.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{
    assert_clean_error, cli, model, repo, run_ok, small_text, tempdir, tiny_train,
};

/// The fixture: a training_parameters.json as the original writes it, at its defaults.
fn fixture() -> PathBuf {
    repo().join("testdata/training_parameters.json")
}

/// `train --dry-run` on the real model and a small text, with these configs and flags.
fn dry(text: &Path, configs: &[&Path], extra: &[&str]) -> Command {
    let mut c = cli();
    c.arg("train")
        .arg("--model")
        .arg(model())
        .arg("--text")
        .arg(text)
        .args(["--cutoff", "64", "--dry-run", "--show-blocks", "0"]);
    for config in configs {
        c.arg("--config").arg(config);
    }
    c.args(extra);
    c
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The fixture with `(key, raw JSON value)` changes, written into `dir`.
fn variant(dir: &Path, changes: &[(&str, &str)]) -> PathBuf {
    let mut text = std::fs::read_to_string(fixture()).unwrap();
    for (key, value) in changes {
        let start = text.find(&format!("\"{key}\": ")).unwrap() + key.len() + 4;
        let end = start + text[start..].find([',', '\n']).unwrap();
        text.replace_range(start..end, value);
    }
    let path = dir.join("training_parameters.json");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_dry_run_lists_every_key_of_the_originals_file_and_flags_win() {
    let d = tempdir("origcfg");
    let text = small_text(&d);
    let out = run_ok(&mut dry(
        &text,
        &[&fixture()],
        &["--rank", "8", "--grad-accum", "4"],
    ));
    let shown = stdout(&out);
    let section = shown
        .split("(Training PRO's settings), key by key\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no listing in\n{shown}"));
    // Every key of the file, in its order, with what it became.
    let file = std::fs::read_to_string(fixture()).unwrap();
    let keys: Vec<&str> = file
        .lines()
        .filter_map(|l| l.trim().strip_prefix('"')?.split_once('"').map(|(k, _)| k))
        .collect();
    let listed: Vec<&str> = section
        .lines()
        .take_while(|l| !l.is_empty())
        .map(|l| l.split(" = ").next().unwrap())
        .collect();
    assert_eq!(listed, keys);
    for expected in [
        "-> rank = 32, overridden by the command line: rank = 8",
        "-> warmup_steps = 25 (100 micro-steps: ceil(100 / grad_accum 4)",
        "-> eval_steps = 25 (100 micro-steps",
        "-> batch_size = 4",
        "-> eos = \"every-block\"",
        "-> targets = \"q-v\"",
        "-> learning_rate = 0.0003",
        "raw_text_file = \"joseph\"",
        "no equivalent: the original stored a name",
        "optimizer = \"adamw_torch\"                -> optimizer = \"adamw_torch\"",
        "report_to = \"None\"                       -> report_to = \"\"",
    ] {
        assert!(section.contains(expected), "`{expected}` not in\n{section}");
    }
    // The resolved settings and their sources.
    assert!(shown.contains("\nwarmup_steps = 25\n"), "{shown}");
    assert!(shown.contains("\nrank = 8\n"), "{shown}");
    assert!(
        shown.contains("key `lora_rank`") || shown.contains("key `micro_batch_size`"),
        "{shown}"
    );
    let sources = shown
        .split("# where the settings came from")
        .nth(1)
        .unwrap();
    assert!(
        sources
            .lines()
            .any(|l| l.starts_with("rank = 8") && l.ends_with("the command line")),
        "{sources}"
    );
    assert!(
        sources.lines().any(|l| l.starts_with("warmup_steps = 25")
            && l.contains("key `warmup_steps` of")
            && l.contains("training_parameters.json")),
        "{sources}"
    );
}

#[test]
fn rslora_without_alpha_scales_by_the_originals_16() {
    let d = tempdir("rsalpha");
    let text = small_text(&d);
    let scale = |extra: &[&str]| {
        let shown = stdout(&run_ok(&mut dry(&text, &[], extra)));
        shown
            .lines()
            .find(|l| l.starts_with("lora:"))
            .unwrap()
            .to_string()
    };
    // 16 / sqrt(16) = 4, not 64 / sqrt(16) = 16.
    let line = scale(&["--rank", "16", "--rslora", "true"]);
    assert!(line.contains("alpha=16 scale=4.0000"), "{line}");
    let line = scale(&["--rank", "16", "--rslora", "true", "--alpha", "32"]);
    assert!(line.contains("alpha=32 scale=8.0000"), "{line}");
    // From the original's file: lora_RS with lora_RS_alpha 8; lora_alpha 64 is unused.
    let file = variant(
        &d,
        &[
            ("lora_RS", "true"),
            ("lora_RS_alpha", "8.0"),
            ("lora_rank", "16"),
        ],
    );
    let shown = stdout(&run_ok(&mut dry(&text, &[&file], &[])));
    assert!(shown.contains("alpha=8 scale=2.0000"), "{shown}");
}

#[test]
fn a_file_key_that_disagrees_with_the_init_adapter_is_refused_naming_it() {
    let d = tempdir("origcfg-init");
    let text = small_text(&d);
    // The adapter: rank 4, alpha 8, q-v.
    let first = d.join("first");
    let mut c = tiny_train(&first, "64");
    c.arg("--text").arg(&text).args(["--max-steps", "1"]);
    run_ok(&mut c);

    let out = dry(&text, &[&fixture()], &["--init-adapter"])
        .arg(&first)
        .output()
        .unwrap();
    assert_clean_error(&out, "init_adapter");
    let err = String::from_utf8_lossy(&out.stderr);
    let file = fixture().display().to_string();
    assert!(
        err.contains(&format!(
            "rank = 32 (from key `lora_rank` of {file}; the adapter has 4)"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("alpha = 64 (from key `lora_alpha` of {file})")),
        "{err}"
    );
    // The command line wins over the file: the adapter's own values are accepted.
    let out = dry(
        &text,
        &[&fixture()],
        &["--rank", "4", "--alpha", "8", "--init-adapter"],
    )
    .arg(&first)
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A file that agrees is accepted too, and a flag that disagrees is named as the command line.
    let agreeing = variant(&d, &[("lora_rank", "4"), ("lora_alpha", "8")]);
    run_ok(dry(&text, &[&agreeing], &["--init-adapter"]).arg(&first));
    let out = dry(&text, &[&agreeing], &["--rank", "8", "--init-adapter"])
        .arg(&first)
        .output()
        .unwrap();
    assert_clean_error(&out, "rank = 8 (from the command line; the adapter has 4)");
}

#[test]
fn bad_original_files_are_one_error_naming_the_file_and_the_key() {
    let d = tempdir("origcfg-bad");
    let text = small_text(&d);
    let path = d.join("training_parameters.json");
    for (content, needle) in [
        ("lora_rank = 8\n", "not JSON"),
        ("{\"lora_rank\": \"eight\"}", "key `lora_rank` = \"eight\""),
        ("{\"lora_dropout\": 1.5}", "key `lora_dropout` of"),
        ("{\"cutoff_len\": -64}", "key `cutoff_len` = -64"),
    ] {
        std::fs::write(&path, content).unwrap();
        let out = dry(&text, &[&path], &[]).output().unwrap();
        assert_clean_error(&out, needle);
        assert_clean_error(&out, &path.display().to_string());
    }
    // Keys of other Training PRO versions are listed, not refused.
    std::fs::write(&path, "{\"lora_rank\": 8, \"future_knob\": true}").unwrap();
    let shown = stdout(&run_ok(&mut dry(&text, &[&path], &[])));
    assert!(shown.contains("future_knob = true"), "{shown}");
    assert!(shown.contains("unknown key"), "{shown}");
}
