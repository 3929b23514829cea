//! Renders the training graph (loss, LR, eval loss, checkpoints) and schedule
//! previews to PNG, from the training log the trainer writes.
//!
//! The trainer appends one [`LogRecord`] per optimizer step (and per event) to
//! `training_log.jsonl` with [`LogRecord::to_json_line`]; [`read_log`] reads it
//! back (a bad line is an error naming its line number) and [`render`] draws
//! `training_graph.png`: loss, a smoothed loss line, eval-loss points and
//! checkpoint markers on the left axis, the learning rate on the right axis,
//! epoch along the bottom — the original Training PRO's twin-axis graph, plus
//! what it lacked. [`render_schedule`] draws the LR curve alone, for a preview
//! before any model is loaded.
//!
//! [`EventWriter`] writes the same figures as TensorBoard event files (`events.out.tfevents.*`) and
//! [`read_event_dir`] reads them back.
//!
//! The font (DejaVu Sans) is embedded, so rendering needs no system font
//! library. PNGs are written to a temporary file and renamed into place.
//!
//! ```
//! use plot_report::{read_log, render, render_schedule, GraphOptions, LogRecord};
//!
//! let dir = std::env::temp_dir().join(format!("plot-report-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let log_path = dir.join("training_log.jsonl");
//!
//! // What the trainer writes, one line per optimizer step.
//! let mut text = String::new();
//! for step in 1..=40u64 {
//!     let epoch = step as f64 / 20.0;
//!     let record = LogRecord {
//!         step,
//!         epoch,
//!         loss: Some(2.5 / (1.0 + epoch) + 0.05 * (step % 3) as f64),
//!         lr: Some(3e-4 * (1.0 - step as f64 / 41.0)),
//!         eval_loss: (step % 20 == 0).then(|| 2.4 / (1.0 + epoch)),
//!         checkpoint: (step == 20).then(|| "checkpoint-20-epoch-1".to_string()),
//!         ..LogRecord::default()
//!     };
//!     text.push_str(&record.to_json_line());
//! }
//! std::fs::write(&log_path, text)?;
//!
//! let log = read_log(&log_path)?;
//! assert_eq!(log.records.len(), 40);
//! render(&log, &dir.join("training_graph.png"), &GraphOptions::with_title("demo LR and Loss vs Epoch"))?;
//!
//! let curve: Vec<(f64, f64)> = (0..=100).map(|s| (s as f64, 1.0 - s as f64 / 100.0)).collect();
//! render_schedule(&curve, "linear, 100 steps", &dir.join("schedule.png"))?;
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod canvas;
mod error;
mod graph;
mod log;
mod schedule;
mod smooth;
mod tensorboard;
mod text;

pub use error::Error;
pub use graph::{render, GraphOptions};
pub use log::{read_log, ControlRecord, ControlResult, LogRecord, RunLog};
pub use schedule::{render_schedule, render_schedule_with, ScheduleOptions};
pub use tensorboard::{
    parse_events, read_event_dir, read_event_file, EventWriter, TbEvent, EVENTS_FILE_PREFIX,
    FILE_VERSION,
};
