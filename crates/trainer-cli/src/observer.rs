//! The command line's observer of a training job: a progress bar on a terminal or one JSON line per step,
//! one line per checkpoint, eval and control command, and the graph re-rendered from the log after each
//! checkpoint and at the end.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressStyle};
use plot_report::{read_log, render, GraphOptions, LogRecord};
use trainer_core::job::{
    ControlCommand, ControlOutcome, Flow, Observer, Report, Saved, Start, GRAPH_FILE, LOG_FILE,
};
use trainer_core::EvalStats;

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

/// Prints a running job's progress on stderr and keeps its graph current.
pub struct CliObserver {
    mode: ProgressMode,
    bar: Option<ProgressBar>,
    output: PathBuf,
}

impl CliObserver {
    /// An observer of a run writing into `output`.
    pub fn new(mode: ProgressMode, output: &Path) -> Self {
        Self {
            mode,
            bar: None,
            output: output.to_path_buf(),
        }
    }

    fn jsonl(&self) -> bool {
        match self.mode {
            ProgressMode::Auto => !std::io::stderr().is_terminal(),
            ProgressMode::Jsonl => true,
            ProgressMode::Bar | ProgressMode::None => false,
        }
    }

    /// Prints a line without breaking the bar.
    fn message(&self, msg: &str) {
        match &self.bar {
            Some(pb) => pb.println(msg),
            None => eprintln!("{msg}"),
        }
    }

    /// "NAME LR and Loss vs Epoch", NAME being the output folder's name.
    fn title(&self) -> String {
        let name = self
            .output
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "training".into());
        format!("{name} LR and Loss vs Epoch")
    }

    /// Re-renders the graph from the log; a failure is a warning, never the end of the run.
    fn render_graph(&self) {
        let drawn = read_log(self.output.join(LOG_FILE)).and_then(|log| {
            render(
                &log,
                &self.output.join(GRAPH_FILE),
                &GraphOptions::with_title(self.title()),
            )
        });
        if let Err(e) = drawn {
            self.message(&format!(
                "warning: cannot draw the graph: {:#}",
                anyhow::Error::from(e)
            ));
        }
    }
}

impl Observer for CliObserver {
    fn on_start(&mut self, start: &Start) {
        let bar = match self.mode {
            ProgressMode::Auto => std::io::stderr().is_terminal(),
            ProgressMode::Bar => true,
            ProgressMode::Jsonl | ProgressMode::None => false,
        };
        self.bar = bar.then(|| {
            let pb = ProgressBar::new(start.total_steps);
            pb.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} steps | {msg} | {elapsed_precise} < {eta_precise}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            pb.set_position(start.step);
            pb
        });
    }

    fn on_step(&mut self, rec: &LogRecord) -> Flow {
        if let Some(pb) = &self.bar {
            pb.set_position(rec.step);
            pb.set_message(format!(
                "epoch {:.2} | loss {:.4} | lr {:.2e} | {:.0} tok/s",
                rec.epoch,
                rec.loss.unwrap_or(f64::NAN),
                rec.lr.unwrap_or(0.0),
                rec.tokens_per_s.unwrap_or(0.0)
            ));
        } else if self.jsonl() {
            eprintln!("{}", rec.to_json_line().trim_end());
        }
        if rec.checkpoint.is_some() {
            self.render_graph();
        }
        Flow::Continue
    }

    fn on_eval(&mut self, step: u64, eval: &EvalStats) -> Flow {
        self.message(&format!(
            "step {step}: eval loss {:.4} ({} tokens)",
            eval.loss, eval.tokens
        ));
        Flow::Continue
    }

    fn on_checkpoint(&mut self, saved: &Saved<'_>) {
        self.message(&format!("saved {}", saved.path.display()));
    }

    fn on_control(&mut self, outcome: &ControlOutcome) {
        match outcome {
            ControlOutcome::Applied(ControlCommand::Set { assignment }) => {
                self.message(&format!("control: set {assignment}"));
            }
            ControlOutcome::Applied(_) => {}
            ControlOutcome::Rejected { command, reason } => {
                let what = match command {
                    ControlCommand::Set { assignment } => format!("set {assignment}"),
                    other => format!("{other:?}"),
                };
                self.message(&format!("warning: control {what}: {reason}"));
            }
            ControlOutcome::Unreadable { reason } => self.message(&format!("warning: {reason}")),
        }
    }

    fn on_finish(&mut self, _report: &Report) {
        self.render_graph();
        if let Some(pb) = &self.bar {
            pb.finish();
        }
    }
}
