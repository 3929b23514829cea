use std::path::{Path, PathBuf};

use plot_report::{read_log, Error};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/training_log.jsonl")
}

#[test]
fn reads_the_fixture_log() {
    let log = read_log(fixture()).unwrap();
    assert_eq!(log.records.len(), 182);
    assert_eq!(
        log.records.iter().filter(|r| r.eval_loss.is_some()).count(),
        6
    );
    let names: Vec<&str> = log
        .records
        .iter()
        .filter_map(|r| r.checkpoint.as_deref())
        .collect();
    assert_eq!(
        names,
        [
            "checkpoint-45-loss-1_76",
            "checkpoint-60-epoch-1",
            "checkpoint-98-loss-1_36",
            "checkpoint-120-epoch-2",
            "checkpoint-180-final"
        ]
    );
    let last = log.records.last().unwrap();
    assert_eq!((last.step, last.epoch, last.lr), (180, 3.0, Some(0.0)));
}

#[test]
fn a_bad_line_names_the_file_and_line() {
    let dir = std::env::temp_dir().join(format!("plot-report-read-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("training_log.jsonl");
    let mut text = std::fs::read_to_string(fixture()).unwrap();
    // A run killed mid-write leaves half a line.
    text.push_str("{\"step\": 181, \"epoch\": 3.01, \"lo");
    std::fs::write(&path, text).unwrap();
    let err = read_log(&path).unwrap_err();
    assert!(matches!(err, Error::BadLine { line: 183, .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("training_log.jsonl, line 183"), "{msg}");

    let err = read_log(dir.join("missing.jsonl")).unwrap_err().to_string();
    assert!(err.contains("missing.jsonl"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
