//! A host in the plugin's own process, for its `cargo test` (any target but wasm32): what the
//! plugin logs, emits and sets is recorded per thread, and checked as the server would (event and
//! metric names, payload size, the metric cap). Set the route's name and the plugin's config before
//! making the plugin; read what it did after.
//!
//! ```ignore
//! use wasmcast_plugin_sdk::{mock, Config, FramePlugin};
//!
//! let mut plugin = Motion::new(&Config::from_json(r#"{"sensitivity": 60}"#).unwrap()).unwrap();
//! plugin.process(frame);
//! assert!(mock::events().iter().any(|(name, _)| name == "motion-start"));
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Instant, SystemTime};

use serde_json::Value;

use crate::Level;

/// The largest event payload and the most metric names, as on the server.
const MAX_EVENT_PAYLOAD: usize = 4096;
const MAX_METRICS: usize = 32;

struct MockHost {
    route: String,
    config: String,
    stream: String,
    started: Instant,
    logs: Vec<(Level, String)>,
    events: Vec<(String, Value)>,
    metrics: BTreeMap<String, f64>,
    keyframe_requests: u64,
}

thread_local! {
    static HOST: RefCell<MockHost> = RefCell::new(MockHost {
        route: "test".to_owned(),
        config: "{}".to_owned(),
        stream: r#"{"tracks":[]}"#.to_owned(),
        started: Instant::now(),
        logs: Vec::new(),
        events: Vec::new(),
        metrics: BTreeMap::new(),
        keyframe_requests: 0,
    });
}

fn with<T>(f: impl FnOnce(&mut MockHost) -> T) -> T {
    HOST.with(|host| f(&mut host.borrow_mut()))
}

/// Sets the route's name that `route()` gives (default `test`).
pub fn set_route(name: &str) {
    with(|host| host.route = name.to_owned());
}

/// Sets the config JSON that `Config::from_host` reads (default `{}`).
pub fn set_config(json: &str) {
    with(|host| host.config = json.to_owned());
}

/// Sets the stream description JSON that `stream_description()` gives (default no tracks).
pub fn set_stream_description(json: &str) {
    with(|host| host.stream = json.to_owned());
}

/// Forgets what was logged, emitted, set and asked for so far.
pub fn reset() {
    with(|host| {
        host.logs.clear();
        host.events.clear();
        host.metrics.clear();
        host.keyframe_requests = 0;
    });
}

/// Lines logged so far, with their levels.
pub fn logs() -> Vec<(Level, String)> {
    with(|host| host.logs.clone())
}

/// Events emitted so far: name and payload.
pub fn events() -> Vec<(String, Value)> {
    with(|host| host.events.clone())
}

/// The plugin's metrics now.
pub fn metrics() -> BTreeMap<String, f64> {
    with(|host| host.metrics.clone())
}

/// How often the plugin asked for a keyframe.
pub fn keyframe_requests() -> u64 {
    with(|host| host.keyframe_requests)
}

/// Whether `name` can name an event or a metric on the server.
fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a name: 1 to 64 of a-z, 0-9, -, _ and ."
        ))
    }
}

pub(crate) fn log(level: Level, message: &str) {
    eprintln!("[{level:?}] {message}");
    with(|host| host.logs.push((level, message.to_owned())));
}

pub(crate) fn monotonic_micros() -> u64 {
    with(|host| u64::try_from(host.started.elapsed().as_micros()).unwrap_or(u64::MAX))
}

pub(crate) fn wall_clock_micros() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

pub(crate) fn config() -> String {
    with(|host| host.config.clone())
}

pub(crate) fn route() -> String {
    with(|host| host.route.clone())
}

pub(crate) fn emit(name: &str, payload: &str) -> Result<(), String> {
    check_name(name)?;
    if payload.len() > MAX_EVENT_PAYLOAD {
        return Err(format!(
            "the payload has {} bytes; at most {MAX_EVENT_PAYLOAD}",
            payload.len()
        ));
    }
    let payload: Value =
        serde_json::from_str(payload).map_err(|err| format!("the payload is not JSON: {err}"))?;
    with(|host| host.events.push((name.to_owned(), payload)));
    Ok(())
}

/// Sets metric `name` as the server would: a bad name, a value that is not finite or a name past
/// the first 32 panics here, so that a test sees it (the server leaves it out and logs why).
fn update_metric(name: &str, update: impl FnOnce(f64) -> f64) {
    if let Err(why) = check_name(name) {
        panic!("metric {why}");
    }
    with(|host| {
        let known = host.metrics.contains_key(name);
        assert!(
            known || host.metrics.len() < MAX_METRICS,
            "a plugin may set at most {MAX_METRICS} metrics"
        );
        let value = update(host.metrics.get(name).copied().unwrap_or(0.0));
        assert!(value.is_finite(), "metric `{name}` is set to {value}");
        host.metrics.insert(name.to_owned(), value);
    });
}

pub(crate) fn set_metric(name: &str, value: f64) {
    update_metric(name, |_| value);
}

pub(crate) fn add_metric(name: &str, delta: f64) {
    update_metric(name, |old| old + delta);
}

pub(crate) fn stream_description() -> String {
    with(|host| host.stream.clone())
}

pub(crate) fn request_keyframe() {
    with(|host| host.keyframe_requests += 1);
}

/// A decoded I420 picture for a picture plugin's tests, to lend through
/// [`Picture::mock`](crate::Picture::mock): Y, then U, then V, packed, as the host holds it. Its
/// rectangles are checked as the host checks them.
#[cfg(feature = "picture")]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PictureBuffer {
    pub width: u32,
    pub height: u32,
    pub pts: i64,
    pub keyframe: bool,
    pub data: Vec<u8>,
}

#[cfg(feature = "picture")]
impl PictureBuffer {
    /// A `width` x `height` picture with every sample of each plane at `y`, `u` and `v`.
    pub fn filled(width: u32, height: u32, [y, u, v]: [u8; 3]) -> PictureBuffer {
        let luma = width as usize * height as usize;
        let chroma = width.div_ceil(2) as usize * height.div_ceil(2) as usize;
        let mut data = vec![y; luma + 2 * chroma];
        data[luma..luma + chroma].fill(u);
        data[luma + chroma..].fill(v);
        PictureBuffer {
            width,
            height,
            pts: 0,
            keyframe: true,
            data,
        }
    }

    pub(crate) fn width(&self) -> u32 {
        self.width
    }

    pub(crate) fn height(&self) -> u32 {
        self.height
    }

    pub(crate) fn pts(&self) -> i64 {
        self.pts
    }

    pub(crate) fn keyframe(&self) -> bool {
        self.keyframe
    }

    /// The byte ranges of the rows of a rectangle, or why it does not fit. The host's own check
    /// lives in the server, which this crate does not depend on.
    fn rows(
        &self,
        plane: crate::Plane,
        x: u32,
        y: u32,
        width: u32,
        height: u32,
    ) -> Result<Vec<std::ops::Range<usize>>, String> {
        let (luma_w, luma_h) = (self.width as usize, self.height as usize);
        let (chroma_w, chroma_h) = (luma_w.div_ceil(2), luma_h.div_ceil(2));
        let (start, plane_w, plane_h) = match plane {
            crate::Plane::Y => (0, luma_w, luma_h),
            crate::Plane::U => (luma_w * luma_h, chroma_w, chroma_h),
            crate::Plane::V => (luma_w * luma_h + chroma_w * chroma_h, chroma_w, chroma_h),
        };
        let (x, y, width, height) = (x as usize, y as usize, width as usize, height as usize);
        if x.checked_add(width).is_none_or(|end| end > plane_w)
            || y.checked_add(height).is_none_or(|end| end > plane_h)
        {
            return Err(format!(
                "{width}x{height} at ({x}, {y}) does not fit in the {plane:?} plane of \
                 {plane_w}x{plane_h}"
            ));
        }
        Ok((y..y + height)
            .map(|row| start + row * plane_w + x..start + row * plane_w + x + width)
            .collect())
    }

    pub(crate) fn read(
        &self,
        plane: crate::Plane,
        x: u32,
        y: u32,
        width: u32,
        height: u32,
    ) -> Result<Vec<u8>, String> {
        let rows = self.rows(plane, x, y, width, height)?;
        Ok(rows
            .into_iter()
            .flat_map(|row| self.data[row].to_vec())
            .collect())
    }

    pub(crate) fn write(
        &mut self,
        plane: crate::Plane,
        x: u32,
        y: u32,
        width: u32,
        data: &[u8],
    ) -> Result<(), String> {
        if width == 0 || !data.len().is_multiple_of(width as usize) {
            return Err(format!(
                "{} bytes are not whole rows of {width} samples",
                data.len()
            ));
        }
        let height = u32::try_from(data.len() / width as usize).unwrap_or(u32::MAX);
        let rows = self.rows(plane, x, y, width, height)?;
        for (row, source) in rows.into_iter().zip(data.chunks_exact(width as usize)) {
            self.data[row].copy_from_slice(source);
        }
        Ok(())
    }

    pub(crate) fn fill(
        &mut self,
        plane: crate::Plane,
        x: u32,
        y: u32,
        width: u32,
        height: u32,
        value: u8,
    ) -> Result<(), String> {
        for row in self.rows(plane, x, y, width, height)? {
            self.data[row].fill(value);
        }
        Ok(())
    }
}
