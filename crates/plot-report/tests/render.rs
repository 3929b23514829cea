use std::fs::File;
use std::path::{Path, PathBuf};

use plot_report::{
    read_log, render, render_schedule, render_schedule_with, Error, GraphOptions, LogRecord,
    RunLog, ScheduleOptions,
};

// The documented palette (docs/plot-report.md).
const LOSS_RAW: [u8; 3] = [240, 150, 150];
const LOSS_SMOOTH: [u8; 3] = [200, 20, 20];
const LR: [u8; 3] = [30, 100, 220];
const EVAL: [u8; 3] = [20, 150, 60];
const CHECKPOINT: [u8; 3] = [140, 60, 190];

struct Image {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

impl Image {
    fn decode(path: &Path) -> Image {
        let decoder = png::Decoder::new(File::open(path).unwrap());
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        let channels = match info.color_type {
            png::ColorType::Rgb => 3,
            png::ColorType::Rgba => 4,
            other => panic!("unexpected colour type {other:?}"),
        };
        let rgb = buf[..info.buffer_size()]
            .chunks(channels)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect();
        Image {
            width: info.width as usize,
            height: info.height as usize,
            rgb,
        }
    }

    /// Pixels of exactly `colour` inside the plot area: clear of the title and
    /// legend strip above, the axis labels on both sides and the x labels below.
    fn count_in_plot_area(&self, colour: [u8; 3]) -> usize {
        let (x0, x1) = (self.width * 15 / 100, self.width * 85 / 100);
        let (y0, y1) = (self.height * 20 / 100, self.height * 85 / 100);
        (y0..y1)
            .flat_map(|y| (x0..x1).map(move |x| (x, y)))
            .filter(|&(x, y)| {
                let i = (y * self.width + x) * 3;
                self.rgb[i..i + 3] == colour
            })
            .count()
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("plot-report-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn fixture_log() -> RunLog {
    read_log(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/training_log.jsonl"))
        .unwrap()
}

#[test]
fn training_graph_has_its_size_and_every_series() {
    let dir = temp_dir("graph");
    let path = dir.join("training_graph.png");
    render(
        &fixture_log(),
        &path,
        &GraphOptions::with_title("fixture LR and Loss vs Epoch"),
    )
    .unwrap();
    let img = Image::decode(&path);
    assert_eq!((img.width, img.height), (1000, 600));
    for (name, colour, at_least) in [
        ("raw loss", LOSS_RAW, 300),
        ("smoothed loss", LOSS_SMOOTH, 300),
        ("learning rate", LR, 300),
        ("eval loss", EVAL, 6 * 40),
        ("checkpoints", CHECKPOINT, 5 * 60),
    ] {
        let n = img.count_in_plot_area(colour);
        assert!(
            n >= at_least,
            "{name}: {n} pixels of {colour:?}, expected at least {at_least}"
        );
    }
    // Only the PNG is left: the temporary file was renamed.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn absent_series_leave_no_pixels_and_size_is_honoured() {
    let dir = temp_dir("plain");
    let path = dir.join("plain.png");
    let log = RunLog::from(
        fixture_log()
            .records
            .into_iter()
            .filter(|r| r.loss.is_some())
            .map(|r| LogRecord {
                eval_loss: None,
                checkpoint: None,
                ..r
            })
            .collect::<Vec<_>>(),
    );
    let opts = GraphOptions {
        width: 640,
        height: 400,
        smoothing: 0.0,
        ..GraphOptions::default()
    };
    render(&log, &path, &opts).unwrap();
    let img = Image::decode(&path);
    assert_eq!((img.width, img.height), (640, 400));
    assert!(img.count_in_plot_area(LOSS_RAW) > 100);
    assert!(img.count_in_plot_area(LR) > 100);
    for colour in [LOSS_SMOOTH, EVAL, CHECKPOINT] {
        assert_eq!(img.count_in_plot_area(colour), 0, "{colour:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn schedule_preview_draws_only_the_lr_curve() {
    let dir = temp_dir("schedule");
    let path = dir.join("schedule.png");
    let points: Vec<(f64, f64)> = (0..=50)
        .map(|s| (f64::from(s), 1.0 - f64::from(s) / 50.0))
        .collect();
    render_schedule(&points, "linear, 50 steps", &path).unwrap();
    let img = Image::decode(&path);
    assert_eq!((img.width, img.height), (1000, 600));
    assert!(img.count_in_plot_area(LR) > 500);
    for colour in [LOSS_RAW, LOSS_SMOOTH, EVAL, CHECKPOINT] {
        assert_eq!(img.count_in_plot_area(colour), 0, "{colour:?}");
    }
    let opts = ScheduleOptions {
        x_label: "epoch".into(),
        width: 800,
        height: 320,
        ..Default::default()
    };
    render_schedule_with(&[(0.0, 0.5)], &opts, &path).unwrap();
    assert_eq!(
        (Image::decode(&path).width, Image::decode(&path).height),
        (800, 320)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_is_an_error_and_leaves_no_file() {
    let dir = temp_dir("errors");
    let path = dir.join("out.png");
    let only_steps = RunLog::from(vec![LogRecord {
        step: 1,
        epoch: 0.1,
        ..Default::default()
    }]);
    let cases: Vec<(Result<(), Error>, &str)> = vec![
        (
            render(&RunLog::default(), &path, &GraphOptions::default()),
            "nothing to plot",
        ),
        (
            render(&only_steps, &path, &GraphOptions::default()),
            "nothing to plot",
        ),
        (
            render(
                &fixture_log(),
                &path,
                &GraphOptions {
                    smoothing: 1.0,
                    ..Default::default()
                },
            ),
            "smoothing",
        ),
        (
            render(
                &fixture_log(),
                &path,
                &GraphOptions {
                    width: 10,
                    ..Default::default()
                },
            ),
            "width",
        ),
        (render_schedule(&[], "t", &path), "no points"),
        (
            render_schedule(&[(0.0, 1.0), (1.0, f64::NAN)], "t", &path),
            "point 1",
        ),
        (
            render(
                &fixture_log(),
                &dir.join("no-such-dir/out.png"),
                &GraphOptions::default(),
            ),
            "no-such-dir",
        ),
    ];
    for (result, want) in cases {
        let msg = result.unwrap_err().to_string();
        assert!(msg.contains(want), "{want}: {msg}");
    }
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_one_record_log_renders() {
    let dir = temp_dir("one");
    let path = dir.join("one.png");
    let log = RunLog::from(vec![LogRecord {
        step: 1,
        epoch: 0.0,
        loss: Some(2.0),
        lr: Some(1e-4),
        ..Default::default()
    }]);
    render(&log, &path, &GraphOptions::default()).unwrap();
    let img = Image::decode(&path);
    // A single point draws no line, so it is marked with a dot.
    assert!(img.count_in_plot_area(LOSS_RAW) > 20);
    assert!(img.count_in_plot_area(LR) > 20);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn many_checkpoints_get_markers_but_no_guide_lines() {
    let dir = temp_dir("many");
    let path = dir.join("many.png");
    let records: Vec<LogRecord> = fixture_log()
        .records
        .into_iter()
        .filter(|r| r.loss.is_some())
        .map(|r| LogRecord {
            checkpoint: (r.step % 2 == 0).then(|| format!("checkpoint-{}", r.step)),
            ..r
        })
        .collect();
    render(&RunLog::from(records), &path, &GraphOptions::default()).unwrap();
    let n = Image::decode(&path).count_in_plot_area(CHECKPOINT);
    // 90 triangles (overlapping) show; 90 full-height dashed lines (~200 px each) would not fit this bound.
    assert!(n > 200 && n < 90 * 100, "{n}");
    std::fs::remove_dir_all(&dir).unwrap();
}
