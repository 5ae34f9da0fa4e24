//! Burns the wall-clock time (UTC, to the millisecond) and the route's name into the top-left
//! corner of every picture, white on a black box, with a small built-in 5x7 bitmap font.
//!
//! Config: `x = 8`, `y = 8` (pixels), `scale = 2` (pixels per font dot), `route = true` (the second
//! line with the route's name).

use serde::Deserialize;
use wasmcast_plugin_sdk::{Config, Frame, FramePlugin, FrameVerdict, route, wall_clock_micros};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "margin")]
    x: u32,
    #[serde(default = "margin")]
    y: u32,
    #[serde(default = "two")]
    scale: u32,
    #[serde(default = "yes")]
    route: bool,
}

fn margin() -> u32 {
    8
}
fn two() -> u32 {
    2
}
fn yes() -> bool {
    true
}

struct Clock {
    settings: Settings,
    route: String,
}

impl FramePlugin for Clock {
    fn new(config: &Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        if !(1..=16).contains(&settings.scale) {
            return Err("config.scale: give 1 to 16".into());
        }
        Ok(Clock {
            settings,
            route: route(),
        })
    }

    fn process(&mut self, mut frame: Frame) -> FrameVerdict {
        let micros = wall_clock_micros();
        let day_ms = (micros / 1000) % 86_400_000;
        let time = format!(
            "{:02}:{:02}:{:02}.{:03} UTC",
            day_ms / 3_600_000,
            day_ms / 60_000 % 60,
            day_ms / 1000 % 60,
            day_ms % 1000
        );
        let mut lines = vec![time];
        if self.settings.route {
            lines.push(self.route.to_uppercase());
        }
        let scale = self.settings.scale;
        let line_height = (GLYPH_ROWS + 2) * scale;
        let width = frame.width;
        let [(luma, stride, rows), (u, u_stride, _), (v, v_stride, _)] = frame.planes_mut();
        let mut canvas = Canvas {
            luma,
            stride,
            width,
            height: rows as u32,
        };
        let widest = lines.iter().map(|l| l.len() as u32).max().unwrap_or(0);
        let (box_w, box_h) = (
            widest * (GLYPH_COLUMNS + 1) * scale + 2 * scale,
            lines.len() as u32 * line_height + scale,
        );
        let (x0, y0) = (self.settings.x, self.settings.y);
        canvas.rect(x0, y0, box_w, box_h, 16);
        for (i, line) in lines.iter().enumerate() {
            canvas.text(x0 + scale, y0 + scale + i as u32 * line_height, line, scale);
        }
        // Neutral chroma under the box: the text is white, the box black, whatever was there.
        for (plane, plane_stride) in [(u, u_stride), (v, v_stride)] {
            let mut chroma = Canvas {
                luma: plane,
                stride: plane_stride,
                width: width.div_ceil(2),
                height: (rows as u32).div_ceil(2),
            };
            chroma.rect(
                x0 / 2,
                y0 / 2,
                box_w.div_ceil(2) + 1,
                box_h.div_ceil(2) + 1,
                128,
            );
        }
        FrameVerdict::Replace(frame)
    }
}

struct Canvas<'a> {
    luma: &'a mut [u8],
    stride: usize,
    width: u32,
    height: u32,
}

impl Canvas<'_> {
    fn rect(&mut self, x: u32, y: u32, w: u32, h: u32, value: u8) {
        let (x1, y1) = ((x + w).min(self.width), (y + h).min(self.height));
        for row in y.min(y1)..y1 {
            let start = row as usize * self.stride;
            if let Some(span) = self
                .luma
                .get_mut(start + x.min(x1) as usize..start + x1 as usize)
            {
                span.fill(value);
            }
        }
    }

    fn text(&mut self, x: u32, y: u32, text: &str, scale: u32) {
        for (i, c) in text.chars().enumerate() {
            let glyph = glyph(c);
            let left = x + i as u32 * (GLYPH_COLUMNS + 1) * scale;
            for (row, bits) in glyph.iter().enumerate() {
                for column in 0..GLYPH_COLUMNS {
                    if bits & (1 << (GLYPH_COLUMNS - 1 - column)) != 0 {
                        self.rect(
                            left + column * scale,
                            y + row as u32 * scale,
                            scale,
                            scale,
                            235,
                        );
                    }
                }
            }
        }
    }
}

const GLYPH_COLUMNS: u32 = 5;
const GLYPH_ROWS: u32 = 7;

/// The 5x7 dots of `c`, a row per byte, the leftmost dot in bit 4. Letters are shown in capitals.
fn glyph(c: char) -> [u8; 7] {
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

wasmcast_plugin_sdk::export_frame_plugin!(Clock);
