//! `--init-adapter`: a run continues an existing adapter (PEFT folder or .gguf file) with its rank, alpha,
//! targets and head; a conflicting explicit setting (a flag, or a key of the config file) is refused, the same
//! value is accepted, and pickle adapters are refused with the PEFT command that converts them.

use std::path::Path;
use std::process::Output;

use crate::common::{cli, model, run_ok, small_text, tempdir, tiny_train};

fn dry(out: &Path, text: &Path, init: &Path, extra: &[&str]) -> Output {
    let mut c = cli();
    c.arg("train")
        .arg("--model")
        .arg(model())
        .arg("--output")
        .arg(out)
        .args(["--cutoff", "64"])
        .arg("--text")
        .arg(text)
        .arg("--init-adapter")
        .arg(init)
        .arg("--dry-run")
        .args(extra);
    c.output().unwrap()
}

#[test]
fn a_run_continues_an_adapter_and_conflicts_are_refused() {
    let d = tempdir("init");
    let text = small_text(&d);
    // The adapter to continue: rank 4, alpha 8 (tiny_train), q,k,v,o.
    let first = d.join("first");
    let mut c = tiny_train(&first, "64");
    c.arg("--text")
        .arg(&text)
        .args(["--max-steps", "2", "--targets", "q-k-v-o"]);
    run_ok(&mut c);

    for init in [first.clone(), first.join("adapter_model.gguf")] {
        // Explicit flags that disagree with the adapter.
        for flags in [
            &["--rank", "8"][..],
            &["--alpha", "16"],
            &["--targets", "q-v"],
            &["--train-head", "true"],
        ] {
            let out = dry(&d.join("x"), &text, &init, flags);
            assert_eq!(out.status.code(), Some(2), "{flags:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("init_adapter") && err.contains(&flags[0][2..].replace('-', "_")),
                "{err}"
            );
        }
        // The adapter's own values given explicitly are accepted.
        let out = dry(&d.join("x"), &text, &init, &["--rank", "4", "--alpha", "8"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(
            shown.contains("targets=q_proj,k_proj,v_proj,o_proj") || shown.contains("k_proj"),
            "{shown}"
        );
    }

    // A key of the config file counts as explicit too.
    let cfg = d.join("run.toml");
    std::fs::write(&cfg, "rank = 16\n").unwrap();
    let mut c = cli();
    c.arg("train")
        .arg("--config")
        .arg(&cfg)
        .arg("--model")
        .arg(model())
        .arg("--text")
        .arg(&text)
        .arg("--init-adapter")
        .arg(&first)
        .arg("--dry-run");
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("rank = 16"));
    std::fs::write(&cfg, "rank = 4\n").unwrap();
    assert!(c.output().unwrap().status.success());

    // Training from the GGUF copy: one step, the adapter's settings recorded.
    let next = d.join("next");
    let mut c = tiny_train(&next, "64");
    c.arg("--text")
        .arg(&text)
        .arg("--init-adapter")
        .arg(first.join("adapter_model.gguf"))
        .args(["--max-steps", "1"]);
    run_ok(&mut c);
    let saved = std::fs::read_to_string(next.join("training_parameters.toml")).unwrap();
    assert!(
        saved.contains("rank = 4") && saved.contains("q_proj,k_proj,v_proj,o_proj"),
        "{saved}"
    );

    // Pickle adapters are refused with the conversion command.
    let bin = d.join("old");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("adapter_model.bin"), b"not read").unwrap();
    let out = dry(&d.join("x"), &text, &bin, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("PeftModel") && err.contains("save_pretrained"),
        "{err}"
    );
}
