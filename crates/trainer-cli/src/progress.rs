//! Progress display: a bar on a terminal, one JSON line per step otherwise.

use std::io::IsTerminal;
use std::time::Instant;

use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressStyle};
use plot_report::LogRecord;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// A bar on a terminal, JSON lines when stderr is not a terminal.
    Auto,
    /// Always a bar.
    Bar,
    /// One JSON object per optimizer step on stderr.
    Jsonl,
    /// Nothing per step.
    None,
}

/// The per-step reporter of a run.
pub struct Progress {
    bar: Option<ProgressBar>,
    jsonl: bool,
    started: Instant,
}

impl Progress {
    /// A reporter for a run of `total` steps starting after `done` steps.
    pub fn new(mode: ProgressMode, done: u64, total: u64) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let (bar, jsonl) = match mode {
            ProgressMode::Auto if terminal => (true, false),
            ProgressMode::Auto => (false, true),
            ProgressMode::Bar => (true, false),
            ProgressMode::Jsonl => (false, true),
            ProgressMode::None => (false, false),
        };
        let bar = bar.then(|| {
            let pb = ProgressBar::new(total);
            pb.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} steps | {msg} | {elapsed_precise} < {eta_precise}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            pb.set_position(done);
            pb
        });
        Self {
            bar,
            jsonl,
            started: Instant::now(),
        }
    }

    /// Seconds since the reporter started.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Reports one finished step.
    pub fn step(&self, rec: &LogRecord) {
        if let Some(pb) = &self.bar {
            pb.set_position(rec.step);
            pb.set_message(format!(
                "epoch {:.2} | loss {:.4} | lr {:.2e} | {:.0} tok/s",
                rec.epoch,
                rec.loss.unwrap_or(f64::NAN),
                rec.lr.unwrap_or(0.0),
                rec.tokens_per_s.unwrap_or(0.0)
            ));
        } else if self.jsonl {
            eprintln!("{}", rec.to_json_line().trim_end());
        }
    }

    /// Prints a message without breaking the bar.
    pub fn message(&self, msg: &str) {
        match &self.bar {
            Some(pb) => pb.println(msg),
            None => eprintln!("{msg}"),
        }
    }

    /// Ends the bar.
    pub fn finish(&self) {
        if let Some(pb) = &self.bar {
            pb.finish();
        }
    }
}
