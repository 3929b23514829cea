//! A bitmap backend that draws text with the embedded font itself.
//!
//! plotters 0.3.7 registers the font fine, but its `ab_glyph` text renderer
//! drops each glyph's left side bearing and truncates negative offsets toward
//! zero, so glyphs wobble (a decimal point sits two pixels high: "1·5"). This
//! wrapper delegates all drawing to [`BitMapBackend`] except text, which it lays
//! out on a common baseline with kerning and anti-aliased coverage.

use std::sync::OnceLock;

use ab_glyph::{point, Font, FontRef, GlyphId, PxScale, ScaleFont};
use plotters::prelude::{BitMapBackend, DrawingBackend};
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingErrorKind,
};

/// DejaVu Sans (Bitstream Vera license, see `assets/DejaVuSans-LICENSE.txt`),
/// embedded so rendering needs no system font library.
pub(crate) static FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// The parsed embedded font; `None` if it could not be parsed.
pub(crate) fn font() -> Option<&'static FontRef<'static>> {
    static FONT: OnceLock<Option<FontRef<'static>>> = OnceLock::new();
    FONT.get_or_init(|| FontRef::try_from_slice(FONT_BYTES).ok())
        .as_ref()
}

/// Glyphs of one line of text: id and pen x, plus the box (width, height, ascent).
struct Line {
    glyphs: Vec<(GlyphId, f32)>,
    width: f32,
    height: f32,
    ascent: f32,
    scale: PxScale,
}

fn lay_out(font: &FontRef<'static>, size: f64, text: &str) -> Line {
    let scale = PxScale::from(size as f32);
    let scaled = font.as_scaled(scale);
    let mut glyphs = Vec::with_capacity(text.len());
    let mut caret = 0.0f32;
    let mut prev: Option<GlyphId> = None;
    for c in text.chars() {
        let id = scaled.glyph_id(c);
        if let Some(p) = prev {
            caret += scaled.kern(p, id);
        }
        glyphs.push((id, caret));
        caret += scaled.h_advance(id);
        prev = Some(id);
    }
    Line {
        glyphs,
        width: caret,
        height: scaled.ascent() - scaled.descent(),
        ascent: scaled.ascent(),
        scale,
    }
}

/// [`BitMapBackend`] with correct text.
pub(crate) struct Canvas<'a> {
    inner: BitMapBackend<'a>,
    font: &'static FontRef<'static>,
}

impl<'a> Canvas<'a> {
    pub(crate) fn new(inner: BitMapBackend<'a>, font: &'static FontRef<'static>) -> Self {
        Canvas { inner, font }
    }
}

type Res<'a> = Result<(), DrawingErrorKind<<BitMapBackend<'a> as DrawingBackend>::ErrorType>>;

impl<'a> DrawingBackend for Canvas<'a> {
    type ErrorType = <BitMapBackend<'a> as DrawingBackend>::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.inner.get_size()
    }

    fn ensure_prepared(&mut self) -> Res<'a> {
        self.inner.ensure_prepared()
    }

    fn present(&mut self) -> Res<'a> {
        self.inner.present()
    }

    fn draw_pixel(&mut self, point: BackendCoord, color: BackendColor) -> Res<'a> {
        self.inner.draw_pixel(point, color)
    }

    fn draw_line<S: BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> Res<'a> {
        self.inner.draw_line(from, to, style)
    }

    fn draw_rect<S: BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Res<'a> {
        self.inner.draw_rect(upper_left, bottom_right, style, fill)
    }

    fn blit_bitmap(&mut self, pos: BackendCoord, size: (u32, u32), src: &[u8]) -> Res<'a> {
        self.inner.blit_bitmap(pos, size, src)
    }

    fn estimate_text_size<T: BackendTextStyle>(
        &self,
        text: &str,
        style: &T,
    ) -> Result<(u32, u32), DrawingErrorKind<Self::ErrorType>> {
        let line = lay_out(self.font, style.size(), text);
        Ok((line.width.ceil() as u32, line.height.ceil() as u32))
    }

    fn draw_text<T: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &T,
        pos: BackendCoord,
    ) -> Res<'a> {
        let color = style.color();
        if color.alpha == 0.0 {
            return Ok(());
        }
        let line = lay_out(self.font, style.size(), text);
        let (w, h) = (line.width.ceil() as i32, line.height.ceil() as i32);
        let anchor = style.anchor();
        let dx = match anchor.h_pos {
            HPos::Left => 0,
            HPos::Center => -w / 2,
            HPos::Right => -w,
        };
        let dy = match anchor.v_pos {
            VPos::Top => 0,
            VPos::Center => -h / 2,
            VPos::Bottom => -h,
        };
        let transform = style.transform();
        let mut pixels = Vec::new();
        for &(id, x) in &line.glyphs {
            let glyph = id.with_scale_and_position(line.scale, point(x, line.ascent));
            if let Some(outline) = self.font.outline_glyph(glyph) {
                let bounds = outline.px_bounds();
                // px_bounds are whole pixels, so these casts are exact.
                let (bx, by) = (bounds.min.x as i32, bounds.min.y as i32);
                outline.draw(|gx, gy, coverage| {
                    if coverage > 0.0 {
                        let (tx, ty) =
                            transform.transform(bx + gx as i32 + dx, by + gy as i32 + dy);
                        pixels.push(((pos.0 + tx, pos.1 + ty), coverage.min(1.0)));
                    }
                });
            }
        }
        for (p, coverage) in pixels {
            let c = BackendColor {
                alpha: color.alpha * f64::from(coverage),
                rgb: color.rgb,
            };
            self.inner.draw_pixel(p, c)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_font_parses_and_lays_out_on_one_baseline() {
        let font = font().expect("embedded font");
        let line = lay_out(font, 20.0, "1.5 loss");
        assert_eq!(line.glyphs.len(), 8);
        assert!(line.width > 40.0 && line.width < 120.0, "{}", line.width);
        assert!((line.height - 20.0).abs() < 1.0, "{}", line.height);
        // Pen positions strictly increase.
        assert!(line.glyphs.windows(2).all(|w| w[0].1 < w[1].1));
    }
}
