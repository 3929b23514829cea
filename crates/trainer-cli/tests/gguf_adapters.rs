//! llama.cpp LoRA adapters on the command line: a run on a GGUF base writes `adapter_model.gguf`, `eval`
//! takes it and scores as the PEFT folder does, `export-gguf` writes the same file and will not replace one
//! without `--overwrite`, and `train_head` with an explicit `gguf` format is refused before training.

use std::path::Path;
use std::process::Command;

use crate::common::{cli, model, run_ok, small_text, tempdir, tiny_train};

fn perplexity(adapter: &Path, text: &Path) -> String {
    let mut c = cli();
    c.arg("eval")
        .arg("--model")
        .arg(model())
        .arg("--adapter")
        .arg(adapter)
        .arg("--text")
        .arg(text)
        .args(["--stride", "64", "--max-length", "128"])
        .arg("--csv")
        .arg(adapter.with_extension("csv"));
    String::from_utf8_lossy(&run_ok(&mut c).stdout).into_owned()
}

fn export(adapter: &Path, out: &Path, overwrite: bool) -> Command {
    let mut c = cli();
    c.arg("export-gguf")
        .arg("--model")
        .arg(model())
        .arg("--adapter")
        .arg(adapter)
        .arg("--out")
        .arg(out);
    if overwrite {
        c.arg("--overwrite");
    }
    c
}

#[test]
fn a_run_writes_a_gguf_adapter_that_eval_and_export_agree_with() {
    let d = tempdir("gguf");
    let text = small_text(&d);
    let run = d.join("run");
    let mut c = tiny_train(&run, "64");
    c.arg("--text")
        .arg(&text)
        .args(["--max-steps", "2", "--targets", "q-k-v-o"]);
    run_ok(&mut c);
    let gguf = run.join("adapter_model.gguf");
    assert!(gguf.is_file());

    let peft = perplexity(&run, &text);
    let from_gguf = perplexity(&gguf, &text);
    assert!(peft.starts_with("perplexity "), "{peft}");
    assert_eq!(peft, from_gguf);

    let out = d.join("exported.gguf");
    run_ok(&mut export(&run, &out, false));
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&gguf).unwrap(),
        "export-gguf writes what the run wrote"
    );
    let again = export(&run, &out, false).output().unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--overwrite"));
    run_ok(&mut export(&gguf, &out, true));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&gguf).unwrap());
    let onto_model = export(&run, &model(), true).output().unwrap();
    assert_eq!(onto_model.status.code(), Some(2));
}

#[test]
fn train_head_with_an_explicit_gguf_format_is_refused_and_the_default_warns() {
    let d = tempdir("gguf-head");
    let text = small_text(&d);
    let check = |formats: Option<&str>| {
        let mut c = tiny_train(&d.join("run"), "64");
        c.arg("--text")
            .arg(&text)
            .args(["--train-head", "true", "--dry-run"]);
        if let Some(f) = formats {
            c.args(["--adapter-formats", f]);
        }
        c.output().unwrap()
    };
    let refused = check(Some("peft,gguf"));
    assert_eq!(refused.status.code(), Some(2));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("adapter_formats") && err.contains("train_head"),
        "{err}"
    );
    let warned = check(None);
    assert!(warned.status.success());
    let err = String::from_utf8_lossy(&warned.stderr);
    assert_eq!(err.matches("warning: train_head").count(), 1, "{err}");
    assert!(check(Some("peft")).status.success());
    let bad = check(Some("gguf"));
    assert_eq!(bad.status.code(), Some(2));
}
