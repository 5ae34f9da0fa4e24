//! Measures the brightness of a rectangle of every picture, reading only that rectangle: metric
//! `luma` is its mean Y (0 to 255), `keyframes` counts the pictures decoded from keyframes. The
//! picture goes on unchanged.
//!
//! Config (all optional): `x`, `y`, `width`, `height` of the rectangle in pixels (default: 64 by
//! 64 in the middle of the picture, or the whole picture when it is smaller).

use serde::Deserialize;
use wasmcast_plugin_sdk::{
    Config, Level, Picture, PicturePlugin, PictureVerdict, Plane, add_metric, log, set_metric,
};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    x: Option<u32>,
    y: Option<u32>,
    width: Option<u32>,
    height: Option<u32>,
}

pub struct LumaMeter {
    settings: Settings,
    /// The last read's error, logged once rather than for every picture.
    failing: Option<String>,
}

/// The side of the default square.
const SQUARE: u32 = 64;

impl PicturePlugin for LumaMeter {
    fn new(config: &Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        if settings.width == Some(0) || settings.height == Some(0) {
            return Err("config: width and height are at least 1".into());
        }
        Ok(LumaMeter {
            settings,
            failing: None,
        })
    }

    fn process(&mut self, picture: &mut Picture<'_>) -> PictureVerdict {
        if picture.keyframe() {
            add_metric("keyframes", 1.0);
        }
        let width = self.settings.width.unwrap_or(SQUARE.min(picture.width()));
        let height = self.settings.height.unwrap_or(SQUARE.min(picture.height()));
        let x = self
            .settings
            .x
            .unwrap_or((picture.width() - width.min(picture.width())) / 2);
        let y = self
            .settings
            .y
            .unwrap_or((picture.height() - height.min(picture.height())) / 2);
        match picture.read(Plane::Y, x, y, width, height) {
            Ok(samples) => {
                let sum: u64 = samples.iter().map(|&s| u64::from(s)).sum();
                set_metric("luma", sum as f64 / samples.len().max(1) as f64);
                self.failing = None;
            }
            Err(why) => {
                if self.failing.as_ref() != Some(&why) {
                    log(Level::Warn, &format!("cannot measure: {why}"));
                    self.failing = Some(why);
                }
            }
        }
        PictureVerdict::Keep
    }
}

wasmcast_plugin_sdk::export_picture_plugin!(LumaMeter);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmcast_plugin_sdk::mock::{self, PictureBuffer};

    #[test]
    fn measures_the_middle_square_and_counts_keyframes() {
        let mut buffer = PictureBuffer::filled(320, 240, [20, 128, 128]);
        // A bright 64x64 square in the middle: rows 88..152, columns 128..192.
        for row in 88..152 {
            buffer.data[row * 320 + 128..row * 320 + 192].fill(220);
        }
        let mut plugin = LumaMeter::new(&Config::default()).expect("new");
        plugin.process(&mut Picture::mock(&mut buffer));
        buffer.keyframe = false;
        plugin.process(&mut Picture::mock(&mut buffer));
        assert_eq!(mock::metrics().get("luma"), Some(&220.0));
        assert_eq!(mock::metrics().get("keyframes"), Some(&1.0));
    }

    #[test]
    fn a_rectangle_off_the_picture_is_logged_once() {
        mock::set_config(r#"{"x": 300, "width": 64}"#);
        let mut plugin = LumaMeter::new(&Config::from_host().expect("config")).expect("new");
        let mut buffer = PictureBuffer::filled(320, 240, [20, 128, 128]);
        for _ in 0..3 {
            plugin.process(&mut Picture::mock(&mut buffer));
        }
        let warnings = mock::logs()
            .iter()
            .filter(|(level, _)| *level == Level::Warn)
            .count();
        assert_eq!(warnings, 1, "{:?}", mock::logs());
    }
}
