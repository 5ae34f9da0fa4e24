//! Drawing on I420 pictures: filled and outlined rectangles and text in a 5x7 dot font (digits,
//! capitals and `: . - _`; other letters are drawn as capitals). Everything is clipped to the
//! picture, so a box partly outside it is drawn where it is inside.
//!
//! A frame plugin gets a [`Canvas`] from its frame with `frame.canvas()`:
//!
//! ```ignore
//! let mut canvas = frame.canvas();
//! canvas.fill_rect(Rect { x: 8, y: 8, width: 120, height: 20 }, Yuv::BLACK);
//! canvas.text(10, 10, 2, "CAM 1", Yuv::WHITE);
//! ```

/// A colour as its Y, U and V values (video range: Y 16–235, U and V 16–240, 128 is grey).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Yuv {
    pub y: u8,
    pub u: u8,
    pub v: u8,
}

impl Yuv {
    pub const BLACK: Yuv = Yuv {
        y: 16,
        u: 128,
        v: 128,
    };
    pub const WHITE: Yuv = Yuv {
        y: 235,
        u: 128,
        v: 128,
    };
    pub const RED: Yuv = Yuv {
        y: 81,
        u: 90,
        v: 240,
    };
    pub const GREEN: Yuv = Yuv {
        y: 145,
        u: 54,
        v: 34,
    };
}

/// A rectangle in pixels of the picture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// One plane: its bytes, the bytes from one row to the next, and its size in samples.
pub struct Plane<'a> {
    pub data: &'a mut [u8],
    pub stride: usize,
    pub width: u32,
    pub height: u32,
}

impl Plane<'_> {
    /// Sets the samples of the rectangle from `(x0, y0)` to `(x1, y1)` (exclusive), clipped.
    fn fill(&mut self, (x0, y0): (u32, u32), (x1, y1): (u32, u32), value: u8) {
        let (x1, y1) = (x1.min(self.width), y1.min(self.height));
        for row in y0.min(y1)..y1 {
            let start = row as usize * self.stride;
            if let Some(span) = self
                .data
                .get_mut(start + x0.min(x1) as usize..start + x1 as usize)
            {
                span.fill(value);
            }
        }
    }
}

/// An I420 picture to draw on: a full-size Y plane, and U and V planes of half its width and
/// height (rounded up).
pub struct Canvas<'a> {
    pub y: Plane<'a>,
    pub u: Plane<'a>,
    pub v: Plane<'a>,
}

/// Columns and rows of a glyph of the font, in dots.
pub const GLYPH_COLUMNS: u32 = 5;
pub const GLYPH_ROWS: u32 = 7;

impl Canvas<'_> {
    /// Fills `rect` with `color` (its chroma on every 2x2 block the rectangle touches).
    pub fn fill_rect(&mut self, rect: Rect, color: Yuv) {
        let (x1, y1) = (rect.x + rect.width, rect.y + rect.height);
        self.y.fill((rect.x, rect.y), (x1, y1), color.y);
        let (cx0, cy0, cx1, cy1) = (rect.x / 2, rect.y / 2, x1.div_ceil(2), y1.div_ceil(2));
        self.u.fill((cx0, cy0), (cx1, cy1), color.u);
        self.v.fill((cx0, cy0), (cx1, cy1), color.v);
    }

    /// Draws the outline of `rect`, `thickness` pixels wide, inside it.
    pub fn outline_rect(&mut self, rect: Rect, thickness: u32, color: Yuv) {
        let t = thickness.min(rect.width).min(rect.height);
        let Rect {
            x,
            y,
            width,
            height,
        } = rect;
        let edges = [
            Rect { height: t, ..rect },
            Rect {
                y: y + height - t,
                height: t,
                ..rect
            },
            Rect { width: t, ..rect },
            Rect {
                x: x + width - t,
                width: t,
                ..rect
            },
        ];
        for edge in edges {
            self.fill_rect(edge, color);
        }
    }

    /// Draws `text` with its top left corner at `(x, y)`, each dot of the font `scale` pixels
    /// square, a dot's width between letters. See [`text_size`] for the room it takes.
    pub fn text(&mut self, x: u32, y: u32, scale: u32, text: &str, color: Yuv) {
        for (i, c) in text.chars().enumerate() {
            let left = x + i as u32 * (GLYPH_COLUMNS + 1) * scale;
            for (row, bits) in glyph(c).iter().enumerate() {
                for column in 0..GLYPH_COLUMNS {
                    if bits & (1 << (GLYPH_COLUMNS - 1 - column)) != 0 {
                        let dot = Rect {
                            x: left + column * scale,
                            y: y + row as u32 * scale,
                            width: scale,
                            height: scale,
                        };
                        self.fill_rect(dot, color);
                    }
                }
            }
        }
    }
}

/// The width and height in pixels [`Canvas::text`] draws `text` in at `scale`.
pub fn text_size(text: &str, scale: u32) -> (u32, u32) {
    let letters = text.chars().count() as u32;
    (
        (letters * (GLYPH_COLUMNS + 1)).saturating_sub(1) * scale,
        GLYPH_ROWS * scale,
    )
}

/// The 5x7 dots of `c`, a row per byte, the leftmost dot in bit 4. Letters are shown in capitals;
/// a character the font lacks is a question mark.
pub fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        ' ' => [0; 7],
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '_' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F],
        'A' => [0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        _ => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A grey `width` x `height` I420 picture, its planes back to back.
    fn picture(width: u32, height: u32) -> Vec<u8> {
        vec![128; (width * height + 2 * width.div_ceil(2) * height.div_ceil(2)) as usize]
    }

    fn canvas(data: &mut [u8], width: u32, height: u32) -> Canvas<'_> {
        let (cw, ch) = (width.div_ceil(2), height.div_ceil(2));
        let (y, rest) = data.split_at_mut((width * height) as usize);
        let (u, v) = rest.split_at_mut((cw * ch) as usize);
        let plane = |data, width: u32, height| Plane {
            data,
            stride: width as usize,
            width,
            height,
        };
        Canvas {
            y: plane(y, width, height),
            u: plane(u, cw, ch),
            v: plane(v, cw, ch),
        }
    }

    #[test]
    fn a_rectangle_past_the_edge_is_clipped_and_colours_its_chroma() {
        let (width, height) = (16, 8);
        let mut data = picture(width, height);
        let mut canvas = canvas(&mut data, width, height);
        let rect = Rect {
            x: 13,
            y: 5,
            width: 10,
            height: 10,
        };
        canvas.fill_rect(rect, Yuv::RED);
        let y = |x: u32, row: u32| data[(row * width + x) as usize];
        assert_eq!(y(13, 5), Yuv::RED.y);
        assert_eq!(y(15, 7), Yuv::RED.y);
        assert_eq!(y(12, 5), 128);
        assert_eq!(y(13, 4), 128);
        let u = |x: u32, row: u32| data[(width * height + row * 8 + x) as usize];
        // Columns 13-15 touch chroma columns 6 and 7; rows 5-7 touch chroma rows 2 and 3.
        assert_eq!(u(6, 2), Yuv::RED.u);
        assert_eq!(u(7, 3), Yuv::RED.u);
        assert_eq!(u(5, 2), 128);
        assert_eq!(u(6, 1), 128);
    }

    #[test]
    fn an_outline_leaves_the_inside_alone() {
        let (width, height) = (20, 20);
        let mut data = picture(width, height);
        let rect = Rect {
            x: 2,
            y: 2,
            width: 10,
            height: 10,
        };
        canvas(&mut data, width, height).outline_rect(rect, 2, Yuv::WHITE);
        let y = |x: u32, row: u32| data[(row * width + x) as usize];
        assert_eq!(y(2, 2), 235);
        assert_eq!(y(11, 11), 235);
        assert_eq!(y(3, 7), 235);
        assert_eq!(y(4, 4), 128);
        assert_eq!(y(12, 12), 128);
    }

    #[test]
    fn text_draws_the_glyphs_dots_at_scale() {
        let (width, height) = (40, 20);
        let mut data = picture(width, height);
        canvas(&mut data, width, height).text(1, 1, 2, "1-", Yuv::WHITE);
        let y = |x: u32, row: u32| data[(row * width + x) as usize];
        // '1' has its top dot in column 2 of row 0: pixels 5-6, rows 1-2 at scale 2.
        assert_eq!((y(5, 1), y(6, 2), y(4, 1), y(7, 1)), (235, 235, 128, 128));
        // '-' is row 3 across: at x 1 + 12, row 1 + 6.
        assert_eq!((y(13, 7), y(22, 8), y(13, 5)), (235, 235, 128));
        assert_eq!(text_size("1-", 2), (22, 14));
    }
}
