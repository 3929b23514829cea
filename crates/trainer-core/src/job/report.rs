//! `report_to`: where a job reports its figures besides the training log. TensorBoard is the one
//! integration: event files in the output folder's `runs/`, one event per logged step.

use std::path::Path;

use plot_report::{EventWriter, LogRecord};

use crate::error::{Error, Result};

/// The folder of TensorBoard event files in an output folder (as the Hugging Face Trainer names it).
pub const RUNS_DIR: &str = "runs";

/// TensorBoard tags, named as the Hugging Face Trainer names them (`train/tokens_per_second` is this
/// trainer's own): training loss, learning rate, gradient norm (before clipping), epoch, tokens per second
/// (scored tokens of the step over its time) and eval loss.
pub const TENSORBOARD_TAGS: [&str; 6] = [
    "train/loss",
    "train/learning_rate",
    "train/grad_norm",
    "train/epoch",
    "train/tokens_per_second",
    "eval/loss",
];

/// Where a job reports to, read from the `report_to` setting with [`ReportTo::parse`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReportTo {
    /// Write TensorBoard event files into the output folder's [`RUNS_DIR`].
    pub tensorboard: bool,
}

impl ReportTo {
    /// Reads the `report_to` values: `"tensorboard"`; `"none"` or nothing for no report; `"all"` is every
    /// integration this trainer has, i.e. TensorBoard. Anything else (`"wandb"`, ...) is an
    /// [`Error::Setting`] for field `report_to`.
    pub fn parse<S: AsRef<str>>(values: &[S]) -> Result<ReportTo> {
        let mut out = ReportTo::default();
        for v in values {
            match v.as_ref().trim().to_ascii_lowercase().as_str() {
                "tensorboard" | "all" => out.tensorboard = true,
                "none" | "" => {}
                other => {
                    return Err(Error::setting(
                        "report_to",
                        format!(
                            "`{other}` is not supported: this trainer reports to TensorBoard only \
                             (report_to = [\"tensorboard\"], files in the output folder's {RUNS_DIR}/; view them \
                             with `tensorboard --logdir OUTPUT/{RUNS_DIR}`), besides its training log; use \
                             \"tensorboard\" or \"none\""
                        ),
                    ))
                }
            }
        }
        Ok(out)
    }
}

/// A job's TensorBoard events file.
pub(crate) struct TensorBoard {
    writer: EventWriter,
}

impl TensorBoard {
    /// A new events file in `dir`. A run resumed after step `resumed_at` marks a session start at the next
    /// step, so TensorBoard drops what an earlier run logged after the checkpoint.
    pub(crate) fn open(dir: &Path, resumed_at: Option<u64>) -> Result<Self> {
        let mut writer = EventWriter::create(dir)?;
        if let Some(step) = resumed_at {
            writer.write_session_start(step + 1)?;
        }
        Ok(Self { writer })
    }

    /// Writes the figures of one log record (those it has) as one event at its step.
    pub(crate) fn write(&mut self, r: &LogRecord) -> Result<()> {
        let values = [
            r.loss,
            r.lr,
            r.grad_norm,
            Some(r.epoch),
            r.tokens_per_s,
            r.eval_loss,
        ];
        let scalars: Vec<(&str, f64)> = TENSORBOARD_TAGS
            .iter()
            .zip(values)
            .filter_map(|(&tag, v)| v.map(|v| (tag, v)))
            .collect();
        Ok(self.writer.write_scalars(r.step, &scalars)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_to_accepts_tensorboard_and_none_and_refuses_the_rest() {
        assert!(ReportTo::parse(&["tensorboard"]).unwrap().tensorboard);
        assert!(
            ReportTo::parse(&["none", "TensorBoard "])
                .unwrap()
                .tensorboard
        );
        assert!(!ReportTo::parse::<&str>(&[]).unwrap().tensorboard);
        assert!(!ReportTo::parse(&["none"]).unwrap().tensorboard);
        match ReportTo::parse(&["tensorboard", "wandb"]).unwrap_err() {
            Error::Setting { field, message } => {
                assert_eq!(field, "report_to");
                assert!(
                    message.contains("`wandb` is not supported") && message.contains("TensorBoard")
                );
            }
            e => panic!("{e}"),
        }
    }
}
