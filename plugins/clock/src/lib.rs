//! Burns the wall-clock time (UTC, to the millisecond) and the route's name into the top-left
//! corner of every picture, white on a black box, in the SDK's 5x7 dot font.
//!
//! Config: `x = 8`, `y = 8` (pixels), `scale = 2` (pixels per font dot), `route = true` (the second
//! line with the route's name).

use serde::Deserialize;
use wasmcast_plugin_sdk::draw::{GLYPH_ROWS, Rect, Yuv, text_size};
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
        let widest = lines
            .iter()
            .map(|l| text_size(l, scale).0)
            .max()
            .unwrap_or(0);
        let (x0, y0) = (self.settings.x, self.settings.y);
        let mut canvas = frame.canvas();
        // White text on a black box, whatever was there.
        canvas.fill_rect(
            Rect {
                x: x0,
                y: y0,
                width: widest + 2 * scale,
                height: lines.len() as u32 * line_height + scale,
            },
            Yuv::BLACK,
        );
        for (i, line) in lines.iter().enumerate() {
            let y = y0 + scale + i as u32 * line_height;
            canvas.text(x0 + scale, y, scale, line, Yuv::WHITE);
        }
        FrameVerdict::Replace(frame)
    }
}

wasmcast_plugin_sdk::export_frame_plugin!(Clock);
