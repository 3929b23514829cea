//! Speed of reading a long training log and rendering it.
//!
//! `cargo bench -p plot-report` prints the time to parse and to render a
//! 100,000-step log (a long run logged every optimizer step) and a
//! 10,000-point schedule preview.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use plot_report::{render, render_schedule, GraphOptions, LogRecord, RunLog};

fn long_log(steps: u64) -> String {
    (1..=steps)
        .map(|step| {
            let t = step as f64 / steps as f64;
            LogRecord {
                step,
                epoch: 3.0 * t,
                loss: Some(
                    1.2 + 1.3 * (-5.0 * t).exp()
                        + 0.1 * ((step * 7919 % 1000) as f64 / 1000.0 - 0.5),
                ),
                lr: Some(3e-4 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())),
                eval_loss: (step % 1000 == 0).then(|| 1.3 + 1.2 * (-5.0 * t).exp()),
                checkpoint: (step % 10_000 == 0).then(|| format!("checkpoint-{step}")),
                time_s: Some(step as f64 * 0.5),
                ..LogRecord::default()
            }
            .to_json_line()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let text = long_log(100_000);
    let dir = std::env::temp_dir().join(format!("plot-report-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut group = c.benchmark_group("plot-report");
    group.sample_size(10);
    group.bench_function("parse 100k-line log", |b| {
        b.iter(|| RunLog::parse(black_box(&text), "bench").expect("valid log"))
    });
    let log = RunLog::parse(&text, "bench").expect("valid log");
    let png = dir.join("training_graph.png");
    group.bench_function("render 100k-step graph", |b| {
        b.iter(|| render(black_box(&log), &png, &GraphOptions::default()).expect("render"))
    });
    let curve: Vec<(f64, f64)> = (0..=10_000)
        .map(|s| (f64::from(s), 1.0 - f64::from(s) / 1e4))
        .collect();
    let preview = dir.join("schedule.png");
    group.bench_function("render 10k-point schedule", |b| {
        b.iter(|| render_schedule(black_box(&curve), "linear", &preview).expect("render"))
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
