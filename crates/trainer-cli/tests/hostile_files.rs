//! Hostile files: truncated model files, truncated, damaged or foreign
//! adapters, resumes with other settings, an output that is a file or a
//! read-only folder. Each run fails with exit code 2 and one `error:` line
//! naming the file or setting, never panics, and changes nothing that existed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard, OnceLock};

use crate::common::{assert_clean_error, cli, model, run_ok, sample_text, tempdir};
use crate::hostile::{dry_run, no_panic};

#[test]
fn truncated_model_files_name_the_file() {
    let d = tempdir("hostile-gguf");
    let full = fs::read(model()).unwrap();
    for (name, len) in [
        ("header.gguf", 3),
        ("meta.gguf", 4000),
        ("tensors.gguf", full.len() / 2),
    ] {
        let m = d.join(name);
        fs::write(&m, &full[..len]).unwrap();
        let res = cli()
            .arg("train")
            .arg("--model")
            .arg(&m)
            .arg("--text")
            .arg(sample_text())
            .arg("--dry-run")
            .output()
            .unwrap();
        assert_clean_error(&res, name);
    }
    let empty = d.join("empty.gguf");
    fs::write(&empty, "").unwrap();
    let res = cli()
        .args(["eval", "--ids", "1,2,3", "--model"])
        .arg(&empty)
        .output()
        .unwrap();
    assert_clean_error(&res, "empty.gguf");
}

/// A small trained run with checkpoints (1 step, saved), shared by the adapter tests.
fn trained() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        // Shared by several tests for the whole process: kept, not removed on drop.
        let d = tempdir("hostile-run").keep();
        let full = fs::read_to_string(sample_text()).unwrap();
        let text = d.join("small.txt");
        fs::write(&text, &full[..full[..1500].rfind('\n').unwrap() + 1]).unwrap();
        let out = d.join("run");
        run_ok(
            cli()
                .arg("train")
                .arg("--model")
                .arg(model())
                .arg("--text")
                .arg(&text)
                .arg("--output")
                .arg(&out)
                .args(["--cutoff", "64", "--rank", "4", "--alpha", "8"])
                .args(["--batch-size", "4", "--epochs", "0.3"])
                .args(["--save-every", "1", "--save-under-loss", "0"]),
        );
        out
    })
}

/// Taken by a test for as long as it runs `train` on the shared run: each such
/// run holds the output folder's lock, so two at once would refuse each other.
fn shared_run_turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Copies the files of folder `from` into a new folder `to`.
fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path().is_file() {
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// `train --output run --resume checkpoint`.
fn resume_from(run: &Path, checkpoint: &Path) -> Output {
    cli()
        .arg("train")
        .arg("--output")
        .arg(run)
        .arg("--resume")
        .arg(checkpoint)
        .output()
        .unwrap()
}

fn eval_with(adapter: &Path) -> Output {
    cli()
        .arg("eval")
        .arg("--model")
        .arg(model())
        .arg("--adapter")
        .arg(adapter)
        .args(["--ids", "1,504,3458,282"])
        .output()
        .unwrap()
}

#[test]
fn truncated_or_foreign_adapters_are_refused() {
    let run = trained();
    let _turn = shared_run_turn();
    let d = tempdir("hostile-adapter");
    let ckpt = fs::read_dir(run)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("checkpoint-")
        })
        .expect("the run saved a checkpoint");

    // Truncated safetensors: header, then in the middle of the data.
    let weights = fs::read(ckpt.join("adapter_model.safetensors")).unwrap();
    for (i, len) in [5, 200, weights.len() / 2].into_iter().enumerate() {
        let a = d.join(format!("cut{i}"));
        copy_dir(&ckpt, &a);
        fs::write(a.join("adapter_model.safetensors"), &weights[..len]).unwrap();
        assert_clean_error(&eval_with(&a), "adapter_model.safetensors");
        // The same checkpoint is refused on resume, naming the file.
        assert_clean_error(&resume_from(run, &a), "adapter_model.safetensors");
    }

    // Another model's adapter: same keys, shapes of a smaller model.
    let other = d.join("other-model");
    copy_dir(&ckpt, &other);
    let tensors = candle_core::safetensors::load(
        ckpt.join("adapter_model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let shrunk: std::collections::HashMap<String, candle_core::Tensor> = tensors
        .into_iter()
        .map(|(k, t)| {
            let (a, b) = t.dims2().unwrap();
            let t = if k.contains("lora_A") {
                t.narrow(1, 0, b / 2).unwrap()
            } else {
                t.narrow(0, 0, a / 2).unwrap()
            };
            (k, t.contiguous().unwrap())
        })
        .collect();
    candle_core::safetensors::save(&shrunk, other.join("adapter_model.safetensors")).unwrap();
    assert_clean_error(&eval_with(&other), "expected");
    assert_clean_error(&resume_from(run, &other), "expected");

    // An adapter_config.json that is not JSON, or targets another architecture's modules.
    let bad = d.join("bad-config");
    copy_dir(&ckpt, &bad);
    fs::write(bad.join("adapter_config.json"), "{\"r\": 4,").unwrap();
    assert_clean_error(&eval_with(&bad), "adapter_config.json");
    let cfg = fs::read_to_string(ckpt.join("adapter_config.json")).unwrap();
    let gpt2 = cfg.replace("\"q_proj\"", "\"c_attn\"");
    assert_ne!(gpt2, cfg);
    fs::write(bad.join("adapter_config.json"), gpt2).unwrap();
    assert_clean_error(&eval_with(&bad), "c_attn");
}

#[test]
fn resuming_with_other_targets_or_rank_is_refused_and_changes_nothing() {
    let run = trained();
    let _turn = shared_run_turn();
    let before: Vec<(PathBuf, Vec<u8>)> = [
        "adapter_model.safetensors",
        "training_log.jsonl",
        "training_parameters.toml",
    ]
    .iter()
    .map(|f| (run.join(f), fs::read(run.join(f)).unwrap()))
    .collect();
    for (flag, value, needle) in [
        ("--targets", "q-k-v", "targets"),
        ("--rank", "8", "rank"),
        ("--alpha", "16", "alpha"),
    ] {
        let res = cli()
            .arg("train")
            .arg("--output")
            .arg(run)
            .args(["--resume", "latest", "--epochs", "1", flag, value])
            .output()
            .unwrap();
        assert_clean_error(&res, needle);
    }
    for (path, bytes) in before {
        assert!(
            fs::read(&path).unwrap() == bytes,
            "{} changed",
            path.display()
        );
    }
}

/// Whether this process can write into a folder it made read-only (root can).
fn writes_despite_read_only(dir: &Path) -> bool {
    let probe = dir.join(".probe");
    let ok = fs::write(&probe, "x").is_ok();
    let _ = fs::remove_file(&probe);
    ok
}

#[cfg(unix)]
#[test]
fn a_read_only_output_folder_is_reported_and_kept() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempdir("hostile-readonly");
    let out = d.join("out");
    fs::create_dir_all(&out).unwrap();
    fs::write(out.join("notes.txt"), "mine").unwrap();
    fs::set_permissions(&out, fs::Permissions::from_mode(0o555)).unwrap();
    if writes_despite_read_only(&out) {
        fs::set_permissions(&out, fs::Permissions::from_mode(0o755)).unwrap();
        eprintln!(
            "skipped a_read_only_output_folder_is_reported_and_kept: this user (root?) writes \
             into read-only folders, so the case cannot happen here"
        );
        return;
    }
    let mut c: Command = cli();
    c.arg("train")
        .arg("--model")
        .arg(model())
        .arg("--text")
        .arg(sample_text())
        .arg("--output")
        .arg(&out)
        .args(["--cutoff", "64", "--epochs", "0.01"]);
    let res = c.output().unwrap();
    fs::set_permissions(&out, fs::Permissions::from_mode(0o755)).unwrap();
    assert_clean_error(&res, &out.display().to_string());
    let left: Vec<_> = fs::read_dir(&out).unwrap().collect();
    assert_eq!(left.len(), 1);
    assert_eq!(fs::read_to_string(out.join("notes.txt")).unwrap(), "mine");
}

#[test]
fn an_output_that_is_a_file_is_kept_on_resume_too() {
    let d = tempdir("hostile-outfile");
    let f = d.join("out");
    fs::write(&f, "precious").unwrap();
    let res = cli()
        .arg("train")
        .arg("--output")
        .arg(&f)
        .args(["--resume", "latest"])
        .output()
        .unwrap();
    assert_clean_error(&res, "out");
    let res = dry_run(&sample_text(), &["--output", f.to_str().unwrap()]);
    no_panic(&res);
    assert_eq!(fs::read_to_string(&f).unwrap(), "precious");
}
