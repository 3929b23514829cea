//! TensorBoard events: what the writer writes reads back whole, in order; damage is an error, not a
//! silent loss.

use plot_report::{parse_events, read_event_dir, EventWriter, FILE_VERSION};

#[test]
fn written_events_read_back_and_each_writer_gets_its_own_file() {
    let d = tempfile::tempdir().unwrap();
    let runs = d.path().join("runs");
    let mut w = EventWriter::create(&runs).unwrap();
    for step in 1..=3u64 {
        w.write_scalars(
            step,
            &[
                ("train/loss", 2.0 / step as f64),
                ("train/learning_rate", 1e-4),
            ],
        )
        .unwrap();
    }
    w.write_scalars(3, &[("eval/loss", 1.5)]).unwrap();
    let first = w.path().to_path_buf();
    drop(w);
    // A resumed run appends a new file starting with a session start.
    let mut w2 = EventWriter::create(&runs).unwrap();
    w2.write_session_start(2).unwrap();
    w2.write_scalars(3, &[("train/loss", 0.5)]).unwrap();
    assert_ne!(first, w2.path());

    let files = read_event_dir(&runs).unwrap();
    assert_eq!(files.len(), 2);
    assert!(files[0]
        .0
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("events.out.tfevents."));
    let events = &files[0].1;
    assert_eq!(events[0].file_version.as_deref(), Some(FILE_VERSION));
    assert_eq!(events.len(), 5);
    assert_eq!(events[2].step, 2);
    assert_eq!(
        events[2].scalars,
        [
            ("train/loss".to_string(), 1.0f32),
            ("train/learning_rate".to_string(), 1e-4f32)
        ]
    );
    assert_eq!(events[4].scalars, [("eval/loss".to_string(), 1.5f32)]);
    assert!(events[1].wall_time > 1.6e9);
    let resumed = &files[1].1;
    assert!(resumed[1].session_start && resumed[1].step == 2);
    assert_eq!(resumed[2].scalars, [("train/loss".to_string(), 0.5f32)]);
}

#[test]
fn damaged_or_cut_files_are_errors_naming_the_record() {
    let d = tempfile::tempdir().unwrap();
    let mut w = EventWriter::create(d.path()).unwrap();
    w.write_scalars(1, &[("train/loss", 3.0)]).unwrap();
    let bytes = std::fs::read(w.path()).unwrap();
    assert_eq!(parse_events(&bytes, "f").unwrap().len(), 2);
    for cut in 1..bytes.len() {
        if let Ok(events) = parse_events(&bytes[..cut], "f") {
            // Only the boundary after the first record parses.
            assert_eq!(events.len(), 1, "cut at {cut}");
        }
    }
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x20;
        let err = parse_events(&bad, "f").unwrap_err().to_string();
        assert!(err.starts_with("f: record at byte"), "{err}");
    }
}
