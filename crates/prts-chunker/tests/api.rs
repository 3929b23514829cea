use std::path::PathBuf;

use prts_chunker::{chunk, read_text, ChunkConfig, ChunkError, EosPlacement, WhitespaceCounter};

/// A fresh scratch folder under the system temp dir.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("prts-chunker-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn bad_cutoff_names_the_setting() {
    let err = chunk("a.", &ChunkConfig::new(4), &WhitespaceCounter).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            ChunkError::Config {
                field: "cutoff",
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains("at least 9"), "{msg}");
}

#[test]
fn folder_is_joined_in_natural_order_with_the_hard_cut() {
    let dir = scratch("folder");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("10.txt"), "Ten.").unwrap();
    std::fs::write(dir.join("2.txt"), "\u{feff}Two.\r\nLines.").unwrap();
    std::fs::write(dir.join("sub/1.txt"), "Sub one.").unwrap();
    std::fs::write(dir.join("notes.md"), "ignored").unwrap();
    std::fs::write(dir.join(".hidden.txt"), "ignored").unwrap();
    let text = read_text(&dir, "###").unwrap();
    assert_eq!(text, "Two.\nLines.###Ten.###Sub one.");
    // Without a hard cut, files are separated by a blank line so sentences do not merge.
    assert_eq!(
        read_text(&dir, "").unwrap(),
        "Two.\nLines.\n\nTen.\n\nSub one."
    );
    // Each file ends at a hard cut: its last block gets EOS.
    let cfg = ChunkConfig::new(16)
        .with_hard_cut("###")
        .with_eos(EosPlacement::HardCutOnly);
    let out = chunk(&text, &cfg, &WhitespaceCounter).unwrap();
    let eos: Vec<(&str, bool)> = out
        .blocks
        .iter()
        .map(|b| (b.text.as_str(), b.eos))
        .collect();
    assert_eq!(
        eos,
        [("Two.\nLines.", true), ("Ten.", true), ("Sub one.", false)]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn invalid_utf8_reports_file_offset_and_line() {
    let dir = scratch("utf8");
    let file = dir.join("bad.txt");
    std::fs::write(&file, b"fine\nstill fine\nbad \xC3\x28 here").unwrap();
    let err = read_text(&file, "").unwrap_err();
    match &err {
        ChunkError::InvalidUtf8 { path, offset, line } => {
            assert_eq!(path, &file);
            assert_eq!((*offset, *line), (20, 3));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        err.to_string()
            .contains("bad.txt is not valid UTF-8 at byte 20 (line 3)"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_and_empty_inputs_are_clear_errors() {
    let dir = scratch("empty");
    let err = read_text(&dir, "").unwrap_err();
    assert!(err.to_string().contains("holds no .txt file"), "{err}");
    let err = read_text(&dir.join("nope.txt"), "").unwrap_err();
    assert!(
        matches!(err, ChunkError::Io { .. }) && err.to_string().contains("nope.txt"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn empty_text_gives_no_blocks() {
    let out = chunk(
        " \n\n ",
        &ChunkConfig::new(16).with_hard_cut("\n\n"),
        &WhitespaceCounter,
    )
    .unwrap();
    assert!(out.blocks.is_empty());
    assert_eq!(out.summary.sentences, 0);
}
