//! Renders the pictures shown in `docs/plot-report.md` into `docs/images/`:
//! the training graph of the test fixture log and a warmup + cosine schedule preview.
//!
//! Run from anywhere: `cargo run -p plot-report --example docs_images`.

use std::path::Path;

use plot_report::{read_log, render, render_schedule, GraphOptions};

fn main() -> Result<(), plot_report::Error> {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let images = crate_dir.join("../../docs/images");
    let log = read_log(crate_dir.join("tests/fixtures/training_log.jsonl"))?;
    let graph = images.join("training_graph.png");
    render(
        &log,
        &graph,
        &GraphOptions::with_title("example-lora LR and Loss vs Epoch"),
    )?;

    // 180 optimizer steps, 10 warmup steps, then cosine decay (HF semantics).
    let (total, warmup) = (180.0, 10.0);
    let curve: Vec<(f64, f64)> = (0..=180)
        .map(|step| {
            let s = f64::from(step);
            let m = if s < warmup {
                s / warmup
            } else {
                0.5 * (1.0 + (std::f64::consts::PI * (s - warmup) / (total - warmup)).cos())
            };
            (s, 3e-4 * m)
        })
        .collect();
    let preview = images.join("schedule_preview.png");
    render_schedule(&curve, "cosine, 10 warmup steps, 180 steps", &preview)?;
    println!("wrote {} and {}", graph.display(), preview.display());
    Ok(())
}
