//! `chunk`, `schedule`, `plot` and `control` as a user runs them.

use crate::common::{cli, repo, run_ok, sample_text, tempdir};

fn tokenizer_file() -> std::path::PathBuf {
    repo().join("testdata/smollm2-tokenizer.json")
}

#[test]
fn chunk_writes_blocks_within_the_cutoff() {
    let d = tempdir("chunk");
    let out_file = d.join("blocks.jsonl");
    let out = run_ok(
        cli()
            .args(["chunk", "--cutoff", "64", "--text"])
            .arg(sample_text())
            .arg("--tokenizer")
            .arg(tokenizer_file())
            .arg("--out")
            .arg(&out_file),
    );
    let text = std::fs::read_to_string(&out_file).unwrap();
    let mut main = 0;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["tokens"].as_u64().unwrap() <= 64, "{line}");
        if v["kind"] == "main" {
            main += 1;
        }
    }
    assert!(main > 50, "only {main} main blocks");
    assert!(String::from_utf8_lossy(&out.stderr).contains("longest block"));
}

#[test]
fn schedule_prints_multipliers_and_draws() {
    let d = tempdir("schedule");
    let png = d.join("lr.png");
    let out = run_ok(
        cli()
            .args([
                "schedule", "--name", "cosine", "--total", "10", "--warmup", "2", "--png",
            ])
            .arg(&png),
    );
    let values: Vec<f64> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(values.len(), 11);
    assert_eq!(values[0], 0.0);
    assert_eq!(values[2], 1.0);
    assert!(values[10].abs() < 1e-12);
    assert!(std::fs::metadata(&png).unwrap().len() > 1000);
}

#[test]
fn plot_rerenders_a_log() {
    let d = tempdir("plot");
    let log = d.join("training_log.jsonl");
    let mut text = String::new();
    for s in 1..=20 {
        text.push_str(&format!(
            "{{\"step\":{s},\"epoch\":{},\"loss\":{},\"lr\":0.0003}}\n",
            f64::from(s) / 10.0,
            3.0 - f64::from(s) * 0.05
        ));
    }
    std::fs::write(&log, text).unwrap();
    let png = d.join("g.png");
    run_ok(cli().arg("plot").arg(&log).arg("--out").arg(&png));
    assert!(std::fs::metadata(&png).unwrap().len() > 1000);
}

#[test]
fn control_queues_commands_and_rejects_unknown_settings() {
    let d = tempdir("control");
    let stray = cli().arg("control").arg(&d).arg("stop").output().unwrap();
    assert_eq!(
        stray.status.code(),
        Some(2),
        "a folder without a run was accepted"
    );
    std::fs::write(d.join("training_parameters.toml"), "rank = 8\n").unwrap();
    run_ok(
        cli()
            .arg("control")
            .arg(&d)
            .args(["set", "stop_at_loss=1.5"]),
    );
    let bad = cli()
        .arg("control")
        .arg(&d)
        .args(["set", "rank=3"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let queued = std::fs::read_to_string(d.join("control.jsonl")).unwrap();
    assert_eq!(queued.lines().count(), 1);
    assert!(queued.contains("stop_at_loss=1.5"));
}
