//! Hides rectangles of the picture: blacked out, or pixelated into coarse blocks.
//!
//! Config: `boxes = [{ x = 10, y = 20, width = 100, height = 80 }, …]` in pixels of the picture the
//! plugin sees (after scaling), `mode = "black"` (default) or `"pixelate"`, and `block = 16`, the
//! size of a pixelated block.

use serde::Deserialize;
use wasmcast_plugin_sdk::{Config, Frame, FramePlugin, FrameVerdict};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    boxes: Vec<Rect>,
    #[serde(default)]
    mode: Mode,
    #[serde(default = "default_block")]
    block: u32,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct Rect {
    x: u32,
    y: u32,
    width: u32,
    height: u32,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Mode {
    #[default]
    Black,
    Pixelate,
}

fn default_block() -> u32 {
    16
}

struct PrivacyBox {
    settings: Settings,
}

impl FramePlugin for PrivacyBox {
    fn new(config: &Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        if settings.boxes.is_empty() {
            return Err("config.boxes: give at least one { x, y, width, height }".into());
        }
        if settings.block < 2 {
            return Err("config.block: must be at least 2".into());
        }
        Ok(PrivacyBox { settings })
    }

    fn process(&mut self, mut frame: Frame) -> FrameVerdict {
        let width = frame.width;
        let planes = frame.planes_mut();
        for (index, (plane, stride, rows)) in planes.into_iter().enumerate() {
            // Chroma planes are half the size: halve the rectangles (rounding outwards).
            let shift = u32::from(index > 0);
            let (plane_w, plane_h) = ((width + shift) >> shift, rows as u32);
            for rect in &self.settings.boxes {
                let x0 = (rect.x >> shift).min(plane_w);
                let y0 = (rect.y >> shift).min(plane_h);
                let x1 = ((rect.x + rect.width + shift) >> shift).min(plane_w);
                let y1 = ((rect.y + rect.height + shift) >> shift).min(plane_h);
                let area = Area {
                    x0: x0 as usize,
                    y0: y0 as usize,
                    x1: x1 as usize,
                    y1: y1 as usize,
                    stride,
                };
                match self.settings.mode {
                    Mode::Black => area.fill(plane, if index == 0 { 16 } else { 128 }),
                    Mode::Pixelate => {
                        area.pixelate(plane, (self.settings.block >> shift).max(1) as usize)
                    }
                }
            }
        }
        FrameVerdict::Replace(frame)
    }
}

struct Area {
    x0: usize,
    y0: usize,
    x1: usize,
    y1: usize,
    stride: usize,
}

impl Area {
    fn fill(&self, plane: &mut [u8], value: u8) {
        for y in self.y0..self.y1 {
            if let Some(row) = plane.get_mut(y * self.stride + self.x0..y * self.stride + self.x1) {
                row.fill(value);
            }
        }
    }

    fn pixelate(&self, plane: &mut [u8], block: usize) {
        for by in (self.y0..self.y1).step_by(block) {
            for bx in (self.x0..self.x1).step_by(block) {
                let cell = Area {
                    x0: bx,
                    y0: by,
                    x1: (bx + block).min(self.x1),
                    y1: (by + block).min(self.y1),
                    stride: self.stride,
                };
                let (mut sum, mut count) = (0u32, 0u32);
                for y in cell.y0..cell.y1 {
                    for &v in plane
                        .get(y * self.stride + cell.x0..y * self.stride + cell.x1)
                        .unwrap_or(&[])
                    {
                        sum += u32::from(v);
                        count += 1;
                    }
                }
                if let Some(mean) = sum.checked_div(count) {
                    cell.fill(plane, mean as u8);
                }
            }
        }
    }
}

wasmcast_plugin_sdk::export_frame_plugin!(PrivacyBox);
