//! End to end on the real model with tiny settings: train, interrupt
//! (SIGINT) and resume to an identical adapter, checkpoints named by the
//! policy, the graph, `eval` and `merge`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::{cli, model, run_ok, sample_text, tempdir, tiny_train};

/// A few kilobytes of the sample, cut at a line end.
fn small_text(dir: &Path) -> PathBuf {
    let full = std::fs::read_to_string(sample_text()).unwrap();
    let mut end = 3000;
    while !full.is_char_boundary(end) || !full[..end].ends_with('\n') {
        end += 1;
    }
    let p = dir.join("small.txt");
    std::fs::write(&p, &full[..end]).unwrap();
    p
}

fn train_cmd(text: &Path, out: &Path) -> Command {
    let mut c = tiny_train(out, "64");
    c.arg("--text")
        .arg(text)
        .args(["--epochs", "0.6", "--save-every", "3"]);
    c
}

/// Runs `c`, asserting success, and returns its stderr.
fn stderr_ok(mut c: Command) -> String {
    String::from_utf8_lossy(&run_ok(&mut c).stderr).into_owned()
}

fn tensors(path: &Path) -> std::collections::HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap()
}

fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn train_interrupt_resume_eval_merge() {
    let d = tempdir("e2e");
    let text = small_text(&d);

    // 1. Straight through.
    let straight = d.join("straight");
    let log = stderr_ok(train_cmd(&text, &straight));
    assert!(log.contains("finished"), "{log}");
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "training_parameters.toml",
        "training_log.jsonl",
        "training_graph.png",
    ] {
        assert!(straight.join(f).is_file(), "{f} missing");
    }
    let records: Vec<serde_json::Value> =
        std::fs::read_to_string(straight.join("training_log.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    let total = records.len() as u64;
    assert!(total >= 6, "only {total} steps");
    let first = records[0]["loss"].as_f64().unwrap();
    let last = records.last().unwrap()["loss"].as_f64().unwrap();
    assert!(last < first, "loss did not go down: {first} -> {last}");
    let saved: Vec<&str> = records
        .iter()
        .filter_map(|r| r["checkpoint"].as_str())
        .collect();
    assert_eq!(saved[0], "checkpoint-3", "{saved:?}");
    assert!(straight.join("checkpoint-3/run_state.json").is_file());

    // 2. Interrupted with SIGINT after step 2, then resumed.
    let resumed = d.join("resumed");
    let mut child = train_cmd(&text, &resumed)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains("\"step\":2,") {
            let ok = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(ok.success());
            break;
        }
    }
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("--resume latest")),
        "{rest:?}"
    );
    let mut c = cli();
    c.arg("train").arg("--output").arg(&resumed).args([
        "--resume",
        "latest",
        "--progress",
        "jsonl",
    ]);
    let log = stderr_ok(c);
    assert!(log.contains("resuming from"), "{log}");
    let a = std::fs::read(straight.join("adapter_model.safetensors")).unwrap();
    let b = std::fs::read(resumed.join("adapter_model.safetensors")).unwrap();
    assert!(
        a == b,
        "interrupted + resumed adapter differs from the straight run"
    );

    // 3. A different rank on resume is refused.
    let mut c = cli();
    c.arg("train")
        .arg("--output")
        .arg(&resumed)
        .args(["--resume", "latest", "--rank", "8"]);
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(2));

    // 4. eval: perplexity with the adapter is recorded; logits dump works.
    let csv = d.join("evals.csv");
    let mut c = cli();
    c.arg("eval")
        .arg("--model")
        .arg(model())
        .arg("--adapter")
        .arg(&straight)
        .arg("--text")
        .arg(&text);
    c.args(["--stride", "64", "--max-length", "128"])
        .arg("--csv")
        .arg(&csv);
    let out = run_ok(&mut c);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("perplexity "));
    assert_eq!(std::fs::read_to_string(&csv).unwrap().lines().count(), 2);

    // 5. merge in f32 gives the logits of base + adapter; the default for this quantized base is bf16.
    let merged = d.join("merged");
    let merged_bf16 = d.join("merged-bf16");
    for (out, dtype) in [(&merged, Some("f32")), (&merged_bf16, None)] {
        let mut c = cli();
        c.arg("merge")
            .arg("--model")
            .arg(model())
            .arg("--adapter")
            .arg(&straight)
            .arg("--out")
            .arg(out);
        if let Some(t) = dtype {
            c.args(["--dtype", t]);
        }
        stderr_ok(c);
    }
    let config = std::fs::read_to_string(merged_bf16.join("config.json")).unwrap();
    assert!(config.contains("\"torch_dtype\": \"bfloat16\""), "{config}");
    let ids = "1,504,3458,282,253,1789,28,1206,314,2";
    let dump = |model: &Path, adapter: Option<&Path>, out: &Path| {
        let mut c = cli();
        c.arg("eval")
            .arg("--model")
            .arg(model)
            .args(["--ids", ids])
            .arg("--dump-logits")
            .arg(out);
        if let Some(a) = adapter {
            c.arg("--adapter").arg(a);
        }
        stderr_ok(c);
        tensors(out).remove("logits").unwrap()
    };
    let with_adapter = dump(&model(), Some(&straight), &d.join("a.safetensors"));
    let from_merged = dump(&merged, None, &d.join("m.safetensors"));
    let base = dump(&model(), None, &d.join("b.safetensors"));
    let diff = max_abs_diff(&with_adapter, &from_merged);
    assert!(diff < 1e-3, "merged logits differ by {diff}");
    let from_bf16 = dump(&merged_bf16, None, &d.join("m16.safetensors"));
    let diff = max_abs_diff(&with_adapter, &from_bf16);
    assert!(diff < 0.5, "bf16 merged logits differ by {diff}");
    assert!(
        max_abs_diff(&with_adapter, &base) > 1e-3,
        "the adapter changed nothing"
    );

    // 6. generate runs on the result (greedy, a few tokens): the adapter applied to the stored Q4_1 weights says
    // what the merged f32 folder says.
    let mut c = cli();
    c.arg("generate")
        .arg("--model")
        .arg(model())
        .arg("--adapter")
        .arg(&straight);
    c.args(["--prompt", "And Joseph said", "--max-tokens", "5"]);
    let out = run_ok(&mut c);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with("And Joseph said") && said.trim().len() > "And Joseph said".len(),
        "{said}"
    );
    let mut c = cli();
    c.arg("generate").arg("--model").arg(&merged);
    c.args(["--prompt", "And Joseph said", "--max-tokens", "5"]);
    let out = run_ok(&mut c);
    assert_eq!(String::from_utf8_lossy(&out.stdout), said);
    let _ = std::fs::remove_dir_all(&d);
}
