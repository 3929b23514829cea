//! What the two pictures share: the embedded font, the palette, the title and
//! legend strip, and the atomic PNG write.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::text::{font, Canvas, FONT_BYTES};
use crate::Error;

/// The drawing area every picture is drawn on.
pub(crate) type Area<'a> = DrawingArea<Canvas<'a>, Shift>;

pub(crate) const FAMILY: &str = "sans-serif";

pub(crate) const LOSS_RAW: RGBColor = RGBColor(240, 150, 150);
pub(crate) const LOSS_SMOOTH: RGBColor = RGBColor(200, 20, 20);
pub(crate) const LR: RGBColor = RGBColor(30, 100, 220);
pub(crate) const EVAL: RGBColor = RGBColor(20, 150, 60);
pub(crate) const CHECKPOINT: RGBColor = RGBColor(140, 60, 190);
pub(crate) const INK: RGBColor = RGBColor(30, 30, 30);
pub(crate) const MUTED: RGBColor = RGBColor(100, 100, 100);
pub(crate) const GRID: RGBColor = RGBColor(228, 228, 228);

/// Height of the strip above the chart that holds the title, subtitle and legend.
pub(crate) const HEADER_PX: u32 = 92;

/// The embedded font, also registered with plotters as its `sans-serif` family.
fn ensure_font(path: &Path) -> Result<&'static ab_glyph::FontRef<'static>, Error> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let registered =
        *REGISTERED.get_or_init(|| register_font(FAMILY, FontStyle::Normal, FONT_BYTES).is_ok());
    font()
        .filter(|_| registered)
        .ok_or_else(|| render_error(path, "the embedded font could not be loaded"))
}

pub(crate) fn render_error(path: &Path, message: impl ToString) -> Error {
    Error::Render {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

pub(crate) fn check_size(width: u32, height: u32) -> Result<(), Error> {
    for (field, v) in [("width", width), ("height", height)] {
        if !(320..=8000).contains(&v) {
            return Err(Error::BadOption {
                field,
                value: v.to_string(),
                expected: "a size in pixels from 320 to 8000",
            });
        }
    }
    Ok(())
}

/// Draws with `draw` into a `width`x`height` PNG written to a temporary file next
/// to `path`, then renames it over `path`, so readers never see half a picture.
pub(crate) fn write_png_atomically(
    path: &Path,
    (width, height): (u32, u32),
    draw: impl FnOnce(&Area<'_>) -> Result<(), String>,
) -> Result<(), Error> {
    let font = ensure_font(path)?;
    let name = path
        .file_name()
        .ok_or_else(|| render_error(path, "the output path has no file name"))?
        .to_string_lossy();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let io = |action, source| Error::Io {
        action,
        path: path.to_owned(),
        source,
    };
    // The `.png` suffix tells the bitmap backend which encoder to use.
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.tmp"))
        .suffix(".png")
        .tempfile_in(dir)
        .map_err(|e| io("cannot create a temporary file for", e))?;
    let drawn = (|| {
        let root =
            Canvas::new(BitMapBackend::new(tmp.path(), (width, height)), font).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        draw(&root)?;
        root.present().map_err(|e| e.to_string())
    })();
    // On an error the temporary file is removed when `tmp` drops.
    drawn.map_err(|m| render_error(path, m))?;
    tmp.persist(path)
        .map_err(|e| io("cannot move the rendered PNG to", e.error))?;
    Ok(())
}

/// One legend entry: how its sample is drawn, and its label.
pub(crate) enum Key {
    Line(RGBColor, u32),
    Dot(RGBColor),
    Dashed(RGBColor),
}

/// Draws the title (centred), a muted subtitle and a one-row legend in the header strip.
pub(crate) fn draw_header(
    area: &Area<'_>,
    title: &str,
    subtitle: &str,
    keys: &[(Key, String)],
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<_>| e.to_string();
    let (w, _) = area.dim_in_pixel();
    let centred = |text: &str, style: &TextStyle<'_>, y: i32| -> Result<(), String> {
        let (tw, _) = area.estimate_text_size(text, style).map_err(err)?;
        let x = (i64::from(w) - i64::from(tw)).max(0) / 2;
        area.draw(&Text::new(text.to_owned(), (x as i32, y), style.clone()))
            .map_err(err)
    };
    centred(title, &(FAMILY, 24).into_font().color(&INK), 8)?;
    if !subtitle.is_empty() {
        centred(subtitle, &(FAMILY, 15).into_font().color(&MUTED), 38)?;
    }
    let label_style = (FAMILY, 15).into_font().color(&INK);
    let mut widths = Vec::with_capacity(keys.len());
    for (_, label) in keys {
        widths.push(area.estimate_text_size(label, &label_style).map_err(err)?.0 as i32);
    }
    let sample = 28;
    let gap = 26;
    let total: i32 =
        widths.iter().map(|t| sample + 6 + t).sum::<i32>() + gap * (keys.len() as i32 - 1).max(0);
    let mut x = ((w as i32 - total) / 2).max(4);
    let y = 72;
    for ((key, label), tw) in keys.iter().zip(widths) {
        match key {
            Key::Line(c, width) => area
                .draw(&PathElement::new(
                    vec![(x, y), (x + sample, y)],
                    c.stroke_width(*width),
                ))
                .map_err(err)?,
            Key::Dot(c) => area
                .draw(&Circle::new((x + sample / 2, y), 5, c.filled()))
                .map_err(err)?,
            Key::Dashed(c) => {
                for dx in (0..sample).step_by(8) {
                    area.draw(&PathElement::new(
                        vec![(x + dx, y), (x + dx + 4, y)],
                        c.stroke_width(2),
                    ))
                    .map_err(err)?;
                }
            }
        }
        area.draw(&Text::new(
            label.clone(),
            (x + sample + 6, y - 9),
            label_style.clone(),
        ))
        .map_err(err)?;
        x += sample + 6 + tw + gap;
    }
    Ok(())
}

/// Short tick labels: `0.5`, `12`, `1.25`.
pub(crate) fn plain_tick(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_owned()
    }
}

/// Learning-rate tick labels in scientific notation: `3.0e-4`.
pub(crate) fn sci_tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if (1e-2..1e3).contains(&v.abs()) {
        plain_tick(v)
    } else {
        format!("{v:.1e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_short() {
        assert_eq!(plain_tick(0.5), "0.5");
        assert_eq!(plain_tick(12.0), "12");
        assert_eq!(plain_tick(1.25), "1.25");
        assert_eq!(plain_tick(-0.0001), "0");
        assert_eq!(sci_tick(3e-4), "3.0e-4");
        assert_eq!(sci_tick(0.0), "0");
        assert_eq!(sci_tick(0.5), "0.5");
    }
}
