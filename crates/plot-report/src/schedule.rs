//! The schedule preview: the learning-rate curve alone, drawn before training.

use std::path::Path;

use plotters::prelude::*;

use crate::canvas::{
    check_size, draw_header, plain_tick, sci_tick, write_png_atomically, Key, FAMILY, GRID,
    HEADER_PX, INK, LR,
};
use crate::smooth::padded_range;
use crate::Error;

/// How [`render_schedule_with`] draws a schedule preview.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleOptions {
    /// The title, e.g. `"cosine, 3 epochs, 120 steps"`.
    pub title: String,
    /// X axis label; `"optimizer step"` by default.
    pub x_label: String,
    /// Y axis label; `"learning rate"` by default.
    pub y_label: String,
    /// Width in pixels (320..=8000).
    pub width: u32,
    /// Height in pixels (320..=8000).
    pub height: u32,
}

impl Default for ScheduleOptions {
    fn default() -> Self {
        ScheduleOptions {
            title: "Learning-rate schedule".into(),
            x_label: "optimizer step".into(),
            y_label: "learning rate".into(),
            width: 1000,
            height: 600,
        }
    }
}

/// Renders the LR curve through `points` (x = optimizer step, y = learning rate
/// or multiplier) to a PNG at `path`, atomically. Use [`render_schedule_with`]
/// to label the x axis as epochs or change the size.
pub fn render_schedule(points: &[(f64, f64)], title: &str, path: &Path) -> Result<(), Error> {
    let opts = ScheduleOptions {
        title: title.to_owned(),
        ..ScheduleOptions::default()
    };
    render_schedule_with(points, &opts, path)
}

/// [`render_schedule`] with every option.
pub fn render_schedule_with(
    points: &[(f64, f64)],
    opts: &ScheduleOptions,
    path: &Path,
) -> Result<(), Error> {
    check_size(opts.width, opts.height)?;
    if let Some((index, &(x, y))) = points
        .iter()
        .enumerate()
        .find(|(_, p)| !(p.0.is_finite() && p.1.is_finite()))
    {
        return Err(Error::BadPoint { index, x, y });
    }
    let (x0, x1) = padded_range(points.iter().map(|p| p.0), 0.01)
        .ok_or(Error::NothingToPlot("the schedule has no points"))?;
    let y_min = points.iter().map(|p| p.1).fold(0.0, f64::min);
    let y_max = points.iter().map(|p| p.1).fold(0.0, f64::max);
    let (y0, y1) = if y_max > y_min {
        (
            y_min - (y_max - y_min) * 0.02 * f64::from(u8::from(y_min < 0.0)),
            y_max + (y_max - y_min) * 0.08,
        )
    } else {
        (0.0, 1.0)
    };
    let peak = points.iter().copied().max_by(|a, b| a.1.total_cmp(&b.1));
    let sub = match (peak, points.last()) {
        (Some((px, py)), Some(&(_, last))) => format!(
            "{} points  ·  peak {} at {}  ·  final {}",
            points.len(),
            sci_tick(py),
            plain_tick(px),
            sci_tick(last)
        ),
        _ => String::new(),
    };
    let keys = [(Key::Line(LR, 2), opts.y_label.clone())];
    write_png_atomically(path, (opts.width, opts.height), |root| {
        let err = |e: DrawingAreaErrorKind<_>| e.to_string();
        let (header, body) = root.split_vertically(HEADER_PX);
        draw_header(&header, &opts.title, &sub, &keys)?;
        let mut chart = ChartBuilder::on(&body)
            .margin_left(12)
            .margin_right(28)
            .margin_bottom(10)
            .margin_top(6)
            .x_label_area_size(52)
            .y_label_area_size(84)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(err)?;
        let x_fmt = |v: &f64| plain_tick(*v);
        let y_fmt = |v: &f64| sci_tick(*v);
        chart
            .configure_mesh()
            .x_desc(opts.x_label.as_str())
            .y_desc(opts.y_label.as_str())
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
            .draw_series(LineSeries::new(points.iter().copied(), LR.stroke_width(2)))
            .map_err(err)?;
        if points.len() == 1 {
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 4, LR.filled())))
                .map_err(err)?;
        }
        Ok(())
    })
}
