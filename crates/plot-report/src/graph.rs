//! `training_graph.png`: loss, smoothed loss, eval loss and checkpoints on the
//! left axis, learning rate on the right axis, all against epoch.

use std::path::Path;

use plotters::prelude::*;

use crate::canvas::{
    check_size, draw_header, plain_tick, sci_tick, write_png_atomically, Key, CHECKPOINT, EVAL,
    FAMILY, GRID, HEADER_PX, INK, LOSS_RAW, LOSS_SMOOTH, LR,
};
use crate::smooth::{ema, padded_range};
use crate::{Error, RunLog};

/// Above this many checkpoints, no dashed guide lines are drawn, only the markers.
const MAX_CHECKPOINT_GUIDES: usize = 30;

/// How [`render`] draws the training graph.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphOptions {
    /// The title, e.g. `"my-lora LR and Loss vs Epoch"` (the original's wording).
    pub title: String,
    /// Width in pixels (320..=8000).
    pub width: u32,
    /// Height in pixels (320..=8000).
    pub height: u32,
    /// Weight of the debiased moving average drawn over the loss, in `[0, 1)`;
    /// 0 disables the smoothed line.
    pub smoothing: f64,
}

impl Default for GraphOptions {
    /// 1000x600 pixels (the original's 10x6 inches at 100 dpi), smoothing 0.9.
    fn default() -> Self {
        GraphOptions {
            title: "LR and Loss vs Epoch".into(),
            width: 1000,
            height: 600,
            smoothing: 0.9,
        }
    }
}

impl GraphOptions {
    /// The defaults with `title`.
    #[must_use]
    pub fn with_title(title: impl Into<String>) -> Self {
        GraphOptions {
            title: title.into(),
            ..Self::default()
        }
    }
}

struct Series {
    loss: Vec<(f64, f64)>,
    smooth: Vec<(f64, f64)>,
    lr: Vec<(f64, f64)>,
    eval: Vec<(f64, f64)>,
    /// (epoch, loss at that point if known).
    checkpoints: Vec<(f64, Option<f64>)>,
}

fn collect(log: &RunLog, smoothing: f64) -> Series {
    let pick = |f: fn(&crate::LogRecord) -> Option<f64>| -> Vec<(f64, f64)> {
        log.records
            .iter()
            .filter_map(|r| f(r).filter(|v| v.is_finite()).map(|v| (r.epoch, v)))
            .collect()
    };
    let loss = pick(|r| r.loss);
    let smooth = if smoothing > 0.0 {
        let values: Vec<f64> = loss.iter().map(|p| p.1).collect();
        loss.iter()
            .map(|p| p.0)
            .zip(ema(&values, smoothing))
            .collect()
    } else {
        Vec::new()
    };
    // A checkpoint sits on the loss curve: its own loss, else the last smoothed
    // (or raw) loss logged at or before its step.
    let mut checkpoints = Vec::new();
    let mut last_loss = None;
    let mut k = 0;
    for r in &log.records {
        if r.loss.is_some_and(f64::is_finite) {
            last_loss = smooth.get(k).or(loss.get(k)).map(|p| p.1);
            k += 1;
        }
        if r.checkpoint.is_some() {
            checkpoints.push((r.epoch, r.loss.filter(|v| v.is_finite()).or(last_loss)));
        }
    }
    Series {
        loss,
        smooth,
        lr: pick(|r| r.lr),
        eval: pick(|r| r.eval_loss),
        checkpoints,
    }
}

/// The x range: every epoch with a 1% margin, not starting below 0 when the run
/// starts at or after 0 (a single epoch is centred instead).
fn epoch_range(log: &RunLog) -> (f64, f64) {
    let epochs = || log.records.iter().map(|r| r.epoch);
    let (x0, x1) = padded_range(epochs(), 0.01).unwrap_or((0.0, 1.0));
    let first = epochs().fold(f64::INFINITY, f64::min);
    let last = epochs().fold(f64::NEG_INFINITY, f64::max);
    if first < last && first >= 0.0 {
        (x0.max(0.0), x1)
    } else {
        (x0, x1)
    }
}

fn subtitle(log: &RunLog, s: &Series) -> String {
    let mut parts = Vec::new();
    if let Some(last) = log.records.last() {
        parts.push(format!(
            "{} steps, epoch {}",
            last.step,
            plain_tick(last.epoch)
        ));
    }
    if let Some(&(_, l)) = s.loss.last() {
        match s.smooth.last() {
            Some(&(_, sm)) => parts.push(format!("last loss {l:.3} (smoothed {sm:.3})")),
            None => parts.push(format!("last loss {l:.3}")),
        }
    }
    if let Some(&(e, best)) = s.eval.iter().min_by(|a, b| a.1.total_cmp(&b.1)) {
        parts.push(format!(
            "best eval loss {best:.3} at epoch {}",
            plain_tick(e)
        ));
    }
    if !s.checkpoints.is_empty() {
        parts.push(format!("{} checkpoints", s.checkpoints.len()));
    }
    parts.join("  ·  ")
}

/// Renders `log` as a PNG at `path` (written atomically: temporary file, then rename).
///
/// Left axis: the raw loss (light red), its smoothed line (dark red), eval-loss
/// points (green) and checkpoint markers (a purple triangle on the loss curve,
/// plus a dashed vertical line when there are at most 30 checkpoints). Right axis: the learning rate (blue). X axis: epoch.
pub fn render(log: &RunLog, path: &Path, opts: &GraphOptions) -> Result<(), Error> {
    check_size(opts.width, opts.height)?;
    if !(opts.smoothing.is_finite() && (0.0..1.0).contains(&opts.smoothing)) {
        return Err(Error::BadOption {
            field: "smoothing",
            value: opts.smoothing.to_string(),
            expected: "a weight in [0, 1) (0 disables smoothing, 0.9 is typical)",
        });
    }
    let timeline = log.timeline();
    let log = &timeline;
    let s = collect(log, opts.smoothing);
    if s.loss.is_empty() && s.lr.is_empty() && s.eval.is_empty() {
        return Err(Error::NothingToPlot(
            "the training log has no `loss`, `lr` or `eval_loss` values",
        ));
    }
    let (x0, x1) = epoch_range(log);
    let (l0, l1) =
        padded_range(s.loss.iter().chain(&s.eval).map(|p| p.1), 0.06).unwrap_or((0.0, 1.0));
    let lr_max = s.lr.iter().map(|p| p.1).fold(0.0, f64::max);
    let (r0, r1) = (0.0, if lr_max > 0.0 { lr_max * 1.08 } else { 1.0 });

    let mut keys = Vec::new();
    if !s.loss.is_empty() {
        keys.push((Key::Line(LOSS_RAW, 2), "loss".to_owned()));
    }
    if !s.smooth.is_empty() {
        keys.push((Key::Line(LOSS_SMOOTH, 3), "smoothed loss".to_owned()));
    }
    if !s.eval.is_empty() {
        keys.push((Key::Dot(EVAL), "eval loss".to_owned()));
    }
    if !s.checkpoints.is_empty() {
        keys.push((Key::Dashed(CHECKPOINT), "checkpoint".to_owned()));
    }
    if !s.lr.is_empty() {
        keys.push((Key::Line(LR, 2), "learning rate (right axis)".to_owned()));
    }
    let sub = subtitle(log, &s);

    write_png_atomically(path, (opts.width, opts.height), |root| {
        let err = |e: DrawingAreaErrorKind<_>| e.to_string();
        let (header, body) = root.split_vertically(HEADER_PX);
        draw_header(&header, &opts.title, &sub, &keys)?;
        let mut chart = ChartBuilder::on(&body)
            .margin_left(12)
            .margin_right(12)
            .margin_bottom(10)
            .margin_top(6)
            .x_label_area_size(52)
            .y_label_area_size(76)
            .right_y_label_area_size(92)
            .build_cartesian_2d(x0..x1, l0..l1)
            .map_err(err)?
            .set_secondary_coord(x0..x1, r0..r1);
        let x_fmt = |v: &f64| plain_tick(*v);
        let y_fmt = |v: &f64| plain_tick(*v);
        let lr_fmt = |v: &f64| sci_tick(*v);
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc("loss")
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .label_style((FAMILY, 14).into_font().color(&INK))
            .axis_desc_style((FAMILY, 17).into_font().color(&INK))
            .light_line_style(WHITE)
            .bold_line_style(GRID)
            .axis_style(INK)
            .draw()
            .map_err(err)?;
        chart
            .configure_secondary_axes()
            .y_desc("learning rate")
            .y_label_formatter(&lr_fmt)
            .label_style((FAMILY, 14).into_font().color(&LR))
            .axis_desc_style((FAMILY, 17).into_font().color(&LR))
            .axis_style(LR)
            .draw()
            .map_err(err)?;

        // With many checkpoints the guide lines would hide the curves: triangles only.
        let guides = if s.checkpoints.len() <= MAX_CHECKPOINT_GUIDES {
            s.checkpoints.as_slice()
        } else {
            &[]
        };
        for &(x, _) in guides {
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(x, l0), (x, l1)],
                    5,
                    5,
                    CHECKPOINT.stroke_width(1),
                ))
                .map_err(err)?;
        }
        chart
            .draw_series(LineSeries::new(
                s.loss.iter().copied(),
                LOSS_RAW.stroke_width(2),
            ))
            .map_err(err)?;
        chart
            .draw_series(LineSeries::new(
                s.smooth.iter().copied(),
                LOSS_SMOOTH.stroke_width(3),
            ))
            .map_err(err)?;
        chart
            .draw_secondary_series(LineSeries::new(s.lr.iter().copied(), LR.stroke_width(2)))
            .map_err(err)?;
        // A single point draws no line: mark it.
        if s.loss.len() == 1 {
            chart
                .draw_series(s.loss.iter().map(|&p| Circle::new(p, 4, LOSS_RAW.filled())))
                .map_err(err)?;
        }
        if s.lr.len() == 1 {
            chart
                .draw_secondary_series(s.lr.iter().map(|&p| Circle::new(p, 4, LR.filled())))
                .map_err(err)?;
        }
        chart
            .draw_series(s.eval.iter().map(|&p| Circle::new(p, 5, EVAL.filled())))
            .map_err(err)?;
        chart
            .draw_series(s.checkpoints.iter().filter_map(|&(x, y)| {
                y.map(|y| TriangleMarker::new((x, y), 7, CHECKPOINT.filled()))
            }))
            .map_err(err)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LogRecord;

    #[test]
    fn checkpoints_sit_on_the_latest_loss() {
        let log = RunLog::from(vec![
            LogRecord {
                step: 1,
                epoch: 0.1,
                loss: Some(2.0),
                ..Default::default()
            },
            LogRecord {
                step: 2,
                epoch: 0.2,
                loss: Some(1.0),
                checkpoint: Some("a".into()),
                ..Default::default()
            },
            LogRecord {
                step: 2,
                epoch: 0.2,
                checkpoint: Some("b".into()),
                ..Default::default()
            },
            LogRecord {
                step: 0,
                epoch: 0.0,
                checkpoint: Some("c".into()),
                ..Default::default()
            },
        ]);
        let s = collect(&log, 0.0);
        assert_eq!(
            s.checkpoints,
            [(0.2, Some(1.0)), (0.2, Some(1.0)), (0.0, Some(1.0))]
        );
        let s = collect(&RunLog::from(vec![log.records[3].clone()]), 0.5);
        assert_eq!(s.checkpoints, [(0.0, None)]);
    }

    #[test]
    fn subtitle_summarises_the_run() {
        let log = RunLog::from(vec![
            LogRecord {
                step: 1,
                epoch: 0.5,
                loss: Some(2.0),
                eval_loss: Some(2.5),
                ..Default::default()
            },
            LogRecord {
                step: 2,
                epoch: 1.0,
                loss: Some(1.0),
                eval_loss: Some(2.25),
                ..Default::default()
            },
        ]);
        let s = collect(&log, 0.0);
        assert_eq!(
            subtitle(&log, &s),
            "2 steps, epoch 1  ·  last loss 1.000  ·  best eval loss 2.250 at epoch 1"
        );
    }
}
