//! Motion detection: compares each picture with the previous one on a coarse grid of the Y
//! plane, and emits `motion-start` when enough of the watched area changes and `motion-end` once
//! it has been still for `hold_ms`.
//!
//! Config (all optional):
//! - `sensitivity` (1 to 100, default 50): how small a change of a cell's mean brightness counts.
//! - `min_area` (0 to 1, default 0.01): the share of the watched cells that must change.
//! - `regions`: `[{ x, y, width, height }, …]` in fractions of the picture (0 to 1) to watch;
//!   default the whole picture.
//! - `hold_ms` (default 1000): stillness that ends a motion.
//! - `cell` (4 to 64 pixels, default 16): the grid's cell size.
//! - `draw` (default false): draw a box around what moves.
//!
//! Events: `motion-start` `{ "score", "box": [x, y, width, height], "pts" }` and `motion-end`
//! `{ "duration_ms", "peak_score", "pts" }`. Metrics: `score` (the share of cells changed in the
//! last picture), `active` (1 during a motion) and `motions` (motions seen).

use serde::{Deserialize, Serialize};
use wasmcast_plugin_sdk::draw::{Rect, Yuv};
use wasmcast_plugin_sdk::{
    Config, Frame, FramePlugin, FrameVerdict, Level, add_metric, emit, log, set_metric,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_sensitivity")]
    sensitivity: f64,
    #[serde(default = "default_min_area")]
    min_area: f64,
    #[serde(default)]
    regions: Vec<Region>,
    #[serde(default = "default_hold_ms")]
    hold_ms: u64,
    #[serde(default = "default_cell")]
    cell: u32,
    #[serde(default)]
    draw: bool,
}

fn default_sensitivity() -> f64 {
    50.0
}
fn default_min_area() -> f64 {
    0.01
}
fn default_hold_ms() -> u64 {
    1000
}
fn default_cell() -> u32 {
    16
}

/// A watched part of the picture, in fractions of its size.
#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct Region {
    x: f64,
    y: f64,
    width: f64,
    height: f64,
}

impl Region {
    fn contains(&self, fx: f64, fy: f64) -> bool {
        fx >= self.x && fx < self.x + self.width && fy >= self.y && fy < self.y + self.height
    }
}

#[derive(Serialize)]
struct Start {
    score: f64,
    #[serde(rename = "box")]
    bounds: [u32; 4],
    pts: i64,
}

#[derive(Serialize)]
struct End {
    duration_ms: u64,
    peak_score: f64,
    pts: i64,
}

struct Motion {
    settings: Settings,
    /// Mean brightness of each cell of the previous picture, and the grid's size.
    previous: Vec<u16>,
    grid: (u32, u32),
    /// Which cells are watched.
    watched: Vec<bool>,
    /// The motion under way: when it started and last moved (90 kHz), and its peak score.
    active: Option<Active>,
}

struct Active {
    started: i64,
    last_moved: i64,
    peak: f64,
}

/// Ticks of the 90 kHz picture clock in a millisecond.
const TICKS_PER_MS: i64 = 90;

impl FramePlugin for Motion {
    fn new(config: &Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        if !(1.0..=100.0).contains(&settings.sensitivity) {
            return Err("config.sensitivity: give 1 to 100".into());
        }
        if !(0.0..=1.0).contains(&settings.min_area) {
            return Err("config.min_area: give a share of the picture, 0 to 1".into());
        }
        if !(4..=64).contains(&settings.cell) {
            return Err("config.cell: give 4 to 64 pixels".into());
        }
        for (i, r) in settings.regions.iter().enumerate() {
            let inside = |v: f64| (0.0..=1.0).contains(&v);
            if !(inside(r.x) && inside(r.y) && r.width > 0.0 && r.height > 0.0) {
                return Err(format!(
                    "config.regions[{i}]: x, y, width and height are fractions of the picture (0 to 1)"
                ));
            }
        }
        Ok(Motion {
            settings,
            previous: Vec::new(),
            grid: (0, 0),
            watched: Vec::new(),
            active: None,
        })
    }

    fn process(&mut self, mut frame: Frame) -> FrameVerdict {
        let cells = self.measure(&frame);
        let (columns, rows) = self.grid;
        if cells.len() != self.previous.len() {
            // The first picture, or a new size: nothing to compare with yet.
            self.watched = (0..rows)
                .flat_map(|row| (0..columns).map(move |column| (column, row)))
                .map(|(column, row)| {
                    let (fx, fy) = (
                        (f64::from(column) + 0.5) / f64::from(columns),
                        (f64::from(row) + 0.5) / f64::from(rows),
                    );
                    self.settings.regions.is_empty()
                        || self.settings.regions.iter().any(|r| r.contains(fx, fy))
                })
                .collect();
            self.previous = cells;
            return FrameVerdict::Pass;
        }
        // A change of 4 (sensitivity 100) to 63 (sensitivity 1) levels of mean brightness.
        let threshold = (64.0 - self.settings.sensitivity * 0.6).round() as u16;
        let mut changed = 0usize;
        let mut bounds: Option<(u32, u32, u32, u32)> = None;
        for (index, (now, before)) in cells.iter().zip(&self.previous).enumerate() {
            if !self.watched[index] || now.abs_diff(*before) < threshold {
                continue;
            }
            changed += 1;
            let (column, row) = (index as u32 % columns, index as u32 / columns);
            bounds = Some(match bounds {
                None => (column, row, column, row),
                Some((x0, y0, x1, y1)) => {
                    (x0.min(column), y0.min(row), x1.max(column), y1.max(row))
                }
            });
        }
        self.previous = cells;
        let watched = self.watched.iter().filter(|w| **w).count().max(1);
        let score = changed as f64 / watched as f64;
        set_metric("score", score);
        let moving = changed > 0 && score >= self.settings.min_area;
        let cell = self.settings.cell;
        let pixel_bounds = bounds.map(|(x0, y0, x1, y1)| {
            [
                x0 * cell,
                y0 * cell,
                ((x1 + 1) * cell).min(frame.width) - x0 * cell,
                ((y1 + 1) * cell).min(frame.height) - y0 * cell,
            ]
        });
        self.track(moving, score, pixel_bounds, frame.pts);
        match (self.settings.draw && moving, pixel_bounds) {
            (true, Some(bounds)) => {
                let [x, y, width, height] = bounds;
                let rect = Rect {
                    x,
                    y,
                    width,
                    height,
                };
                frame.canvas().outline_rect(rect, 2, Yuv::WHITE);
                FrameVerdict::Replace(frame)
            }
            _ => FrameVerdict::Pass,
        }
    }
}

impl Motion {
    /// The mean brightness of each cell, from every other pixel of every other row.
    fn measure(&mut self, frame: &Frame) -> Vec<u16> {
        let cell = self.settings.cell;
        let columns = frame.width.div_ceil(cell);
        let rows = frame.height.div_ceil(cell);
        self.grid = (columns, rows);
        let stride = frame.y_stride as usize;
        let mut sums = vec![(0u32, 0u32); (columns * rows) as usize];
        for y in (0..frame.height).step_by(2) {
            let start = y as usize * stride;
            let Some(line) = frame.data.get(start..start + frame.width as usize) else {
                break;
            };
            let row_base = (y / cell * columns) as usize;
            for x in (0..frame.width).step_by(2) {
                let sum = &mut sums[row_base + (x / cell) as usize];
                sum.0 += u32::from(line[x as usize]);
                sum.1 += 1;
            }
        }
        sums.into_iter()
            .map(|(sum, count)| (sum / count.max(1)) as u16)
            .collect()
    }

    /// Starts, extends or ends the motion under way, emitting its events.
    fn track(&mut self, moving: bool, score: f64, bounds: Option<[u32; 4]>, pts: i64) {
        let hold = i64::try_from(self.settings.hold_ms).unwrap_or(i64::MAX) * TICKS_PER_MS;
        match (&mut self.active, moving) {
            (None, true) => {
                self.active = Some(Active {
                    started: pts,
                    last_moved: pts,
                    peak: score,
                });
                set_metric("active", 1.0);
                add_metric("motions", 1.0);
                let start = Start {
                    score,
                    bounds: bounds.unwrap_or_default(),
                    pts,
                };
                if let Err(why) = emit("motion-start", &start) {
                    log(Level::Warn, &format!("cannot emit motion-start: {why}"));
                }
            }
            (Some(active), true) => {
                active.last_moved = pts;
                active.peak = active.peak.max(score);
            }
            (Some(active), false) if pts.saturating_sub(active.last_moved) >= hold => {
                let end = End {
                    duration_ms: u64::try_from((active.last_moved - active.started) / TICKS_PER_MS)
                        .unwrap_or(0),
                    peak_score: active.peak,
                    pts,
                };
                self.active = None;
                set_metric("active", 0.0);
                if let Err(why) = emit("motion-end", &end) {
                    log(Level::Warn, &format!("cannot emit motion-end: {why}"));
                }
            }
            _ => {}
        }
    }
}

wasmcast_plugin_sdk::export_frame_plugin!(Motion);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmcast_plugin_sdk::mock;

    /// A grey 320x240 picture with a white 48-pixel square at `x` (none when `None`), at `pts`.
    fn picture(x: Option<u32>, pts: i64) -> Frame {
        let (width, height) = (320u32, 240u32);
        let mut data = vec![128u8; (width * height * 3 / 2) as usize];
        if let Some(x) = x {
            for row in 96..144 {
                let start = (row * width + x) as usize;
                data[start..start + 48].fill(235);
            }
        }
        Frame {
            width,
            height,
            y_stride: width,
            u_stride: width / 2,
            v_stride: width / 2,
            pts,
            data,
        }
    }

    #[test]
    fn a_moving_square_starts_and_ends_a_motion_with_its_box() {
        mock::reset();
        let config = Config::from_json(r#"{"sensitivity": 60, "hold_ms": 400}"#).expect("config");
        let mut motion = Motion::new(&config).expect("a valid config");
        let tick = 3600; // 25 pictures a second at 90 kHz
        let mut pts = 0;
        for _ in 0..10 {
            assert!(matches!(
                motion.process(picture(None, pts)),
                FrameVerdict::Pass
            ));
            pts += tick;
        }
        assert!(mock::events().is_empty(), "a still picture moves nothing");
        for step in 0..10 {
            motion.process(picture(Some(20 + step * 8), pts));
            pts += tick;
        }
        for _ in 0..20 {
            motion.process(picture(Some(92), pts));
            pts += tick;
        }
        let events = mock::events();
        let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["motion-start", "motion-end"], "{events:?}");
        let bounds = events[0].1["box"].as_array().expect("a box").clone();
        let y = bounds[1].as_u64().expect("y");
        assert!(
            (80..=96).contains(&y),
            "the box is around the square's rows: {bounds:?}"
        );
        assert_eq!(mock::metrics()["motions"], 1.0);
        assert_eq!(mock::metrics()["active"], 0.0);
    }

    #[test]
    fn a_bad_config_says_which_key() {
        let config = Config::from_json(r#"{"sensitivity": 0}"#).expect("config");
        let Err(why) = Motion::new(&config) else {
            panic!("sensitivity 0 is refused");
        };
        assert!(why.contains("config.sensitivity"), "{why}");
    }
}
