//! For people who write plugins: a new plugin project from a template (`wasmcast plugin new`) and
//! a plugin loaded straight from its file for a trial run (`wasmcast plugin run`, which
//! `pipeline::trial` carries out).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::runtime::Compiled;
use super::{LoadedPlugin, digest};
use crate::config::{OnError, Origin, PluginConfig, WasmSource};
use crate::events::Events;

/// Why a project could not be made or a trial could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "`{0}` is not a plugin name: use lowercase letters, digits and `-`, starting with a letter"
    )]
    Name(String),
    #[error("{} already exists; choose another name or directory", .0.display())]
    Exists(PathBuf),
    #[error(
        "cannot find the plugin SDK at {}; pass --sdk with the path of plugins/sdk in a wasmcast checkout",
        .0.display()
    )]
    NoSdk(PathBuf),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Plugin { path: PathBuf, source: super::Error },
}

/// Where `wasmcast plugin new` finds the SDK unless told: the checkout this binary was built from.
pub fn default_sdk_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/sdk")
}

/// The kinds of project `wasmcast plugin new` makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Template {
    /// Sees access units.
    Packet,
    /// Sees decoded pictures, copied in.
    Frame,
    /// Sees decoded pictures lent by the server, read and written by rectangle.
    Picture,
}

impl Template {
    /// The SDK feature that builds it.
    fn feature(self) -> &'static str {
        match self {
            Template::Packet => "packet",
            Template::Frame => "frame",
            Template::Picture => "picture",
        }
    }
}

/// Makes a new plugin project `name` from `template` in `parent`, depending on the SDK at `sdk`;
/// returns its directory.
pub fn new_project(
    parent: &Path,
    name: &str,
    sdk: &Path,
    template: Template,
) -> Result<PathBuf, Error> {
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        return Err(Error::Name(name.to_owned()));
    }
    let sdk = sdk
        .canonicalize()
        .ok()
        .filter(|p| p.join("Cargo.toml").is_file())
        .ok_or_else(|| Error::NoSdk(sdk.to_owned()))?;
    let dir = parent.join(name);
    if dir.exists() {
        return Err(Error::Exists(dir));
    }
    let files = [
        ("Cargo.toml", cargo_toml(name, &sdk, template)),
        (".cargo/config.toml", CARGO_CONFIG.to_owned()),
        (
            "src/lib.rs",
            match template {
                Template::Packet => PACKET_LIB_RS,
                Template::Frame => FRAME_LIB_RS,
                Template::Picture => PICTURE_LIB_RS,
            }
            .to_owned(),
        ),
        ("wasmcast.example.toml", example_config(name, template)),
        (".gitignore", "/target\n".to_owned()),
    ];
    for (file, contents) in files {
        let path = dir.join(file);
        let write = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&path, contents));
        write.map_err(|source| Error::Write { path, source })?;
    }
    Ok(dir)
}

fn cargo_toml(name: &str, sdk: &Path, template: Template) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

# A plugin is a library built as a WASI 0.2 component (see .cargo/config.toml).
[lib]
crate-type = ["cdylib"]

[dependencies]
wasmcast-plugin-sdk = {{ path = "{sdk}", features = ["{feature}"] }}
serde = {{ version = "1", features = ["derive"] }}

[profile.release]
lto = true
codegen-units = 1
strip = true
# A panic traps the instance; wasmcast logs the panic message and starts a fresh instance.
panic = "abort"

# Its own workspace, wherever it is created.
[workspace]
"#,
        sdk = sdk.display().to_string().replace('\\', "/"),
        feature = template.feature()
    )
}

const CARGO_CONFIG: &str = r#"# Plugins are built for WASI 0.2 (once: `rustup target add wasm32-wasip2`).
[build]
target = "wasm32-wasip2"

[target.wasm32-wasip2]
# WebAssembly SIMD: pixel and byte loops run several times faster.
rustflags = ["-C", "target-feature=+simd128"]
"#;

const PACKET_LIB_RS: &str = r#"//! A wasmcast packet plugin: it sees every access unit of the route it runs on.
//!
//! This one passes everything on and logs a line every `report_every` keyframes. Change `process`
//! to change the stream: return `Verdict::Drop` to leave a unit out, or change `unit.data` and
//! return `Verdict::Replace(vec![unit])`.

use serde::Deserialize;
use wasmcast_plugin_sdk::{AccessUnit, Codec, Config, Level, PacketPlugin, Verdict, log};

/// The plugin's `config` table in the server's config.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_report_every")]
    report_every: u64,
}

fn default_report_every() -> u64 {
    10
}

struct Plugin {
    settings: Settings,
    keyframes: u64,
    bytes: u64,
}

impl PacketPlugin for Plugin {
    fn new(config: &Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        if settings.report_every == 0 {
            return Err("config.report_every: must be at least 1".into());
        }
        Ok(Plugin {
            settings,
            keyframes: 0,
            bytes: 0,
        })
    }

    fn process(&mut self, unit: AccessUnit) -> Verdict {
        self.bytes += unit.data.len() as u64;
        if matches!(unit.codec, Codec::H264 | Codec::H265) && unit.keyframe {
            self.keyframes += 1;
            if self.keyframes % self.settings.report_every == 0 {
                log(
                    Level::Info,
                    &format!("{} keyframes, {} bytes so far", self.keyframes, self.bytes),
                );
            }
        }
        Verdict::Pass
    }
}

wasmcast_plugin_sdk::export_packet_plugin!(Plugin);
"#;

const FRAME_LIB_RS: &str = r##"//! A wasmcast frame plugin: it sees every decoded picture (I420) of the route it runs on.
//!
//! This one measures each picture's mean brightness (the metric `brightness`, on /metrics) and
//! emits a `dark` or `light` event when it crosses `threshold`. To change the picture, change
//! `frame.data` (see `Frame::planes_mut`) and return `FrameVerdict::Replace(frame)`.

use serde::Deserialize;
use wasmcast_plugin_sdk::{Config, Frame, FramePlugin, FrameVerdict, Level, emit, log, set_metric};

/// The plugin's `config` table in the server's config.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_threshold")]
    threshold: f64,
}

fn default_threshold() -> f64 {
    40.0
}

struct Plugin {
    settings: Settings,
    dark: Option<bool>,
}

impl FramePlugin for Plugin {
    fn new(config: &Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        if !(0.0..=255.0).contains(&settings.threshold) {
            return Err("config.threshold: give 0 to 255".into());
        }
        Ok(Plugin {
            settings,
            dark: None,
        })
    }

    fn process(&mut self, frame: Frame) -> FrameVerdict {
        // Every 4th pixel of every 4th row of the Y plane is plenty for a mean.
        let (width, height, stride) = (frame.width as usize, frame.height as usize, frame.y_stride as usize);
        let (mut sum, mut count) = (0u64, 0u64);
        for row in (0..height).step_by(4) {
            for &luma in frame.data[row * stride..][..width].iter().step_by(4) {
                sum += u64::from(luma);
                count += 1;
            }
        }
        let brightness = sum as f64 / count.max(1) as f64;
        set_metric("brightness", brightness);
        let dark = brightness < self.settings.threshold;
        if self.dark != Some(dark) {
            self.dark = Some(dark);
            let name = if dark { "dark" } else { "light" };
            if let Err(why) = emit(name, &brightness) {
                log(Level::Warn, &format!("cannot emit {name}: {why}"));
            }
        }
        FrameVerdict::Pass
    }
}

wasmcast_plugin_sdk::export_frame_plugin!(Plugin);

// `cargo test --target x86_64-unknown-linux-gnu` (your machine's target) runs these natively,
// against the SDK's mock host, which records what the plugin emitted and set.
#[cfg(test)]
mod tests {
    use super::*;
    use wasmcast_plugin_sdk::mock;

    fn picture(luma: u8) -> Frame {
        let (width, height) = (64, 48);
        let mut data = vec![128; width as usize * height as usize * 3 / 2];
        data[..(width * height) as usize].fill(luma);
        Frame { width, height, y_stride: width, u_stride: width / 2, v_stride: width / 2, pts: 0, data }
    }

    #[test]
    fn crossing_the_threshold_emits_an_event() {
        mock::reset();
        let mut plugin = Plugin::new(&Config::from_json(r#"{"threshold": 40}"#).unwrap()).unwrap();
        plugin.process(picture(200));
        plugin.process(picture(10));
        let names: Vec<String> = mock::events().into_iter().map(|(name, _)| name).collect();
        assert_eq!(names, ["light", "dark"]);
        assert_eq!(mock::metrics()["brightness"], 10.0);
    }
}
"##;

const PICTURE_LIB_RS: &str = r##"//! A wasmcast picture plugin: it sees every decoded picture (I420) of the route it runs on, lent by
//! the server rather than copied in. It reads the rectangles it needs (`Picture::read`) and writes
//! those it changes (`Picture::write`, `Picture::fill`); nothing else is copied.
//!
//! This one measures each picture's mean brightness from every 4th row of the Y plane (the metric
//! `brightness`, on /metrics) and emits a `dark` or `light` event when it crosses `threshold`.

use serde::Deserialize;
use wasmcast_plugin_sdk::{
    Config, Level, Picture, PicturePlugin, PictureVerdict, Plane, emit, log, set_metric,
};

/// The plugin's `config` table in the server's config.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_threshold")]
    threshold: f64,
}

fn default_threshold() -> f64 {
    40.0
}

struct Plugin {
    settings: Settings,
    dark: Option<bool>,
}

impl PicturePlugin for Plugin {
    fn new(config: &Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        if !(0.0..=255.0).contains(&settings.threshold) {
            return Err("config.threshold: give 0 to 255".into());
        }
        Ok(Plugin {
            settings,
            dark: None,
        })
    }

    fn process(&mut self, picture: &mut Picture<'_>) -> PictureVerdict {
        let (width, height) = (picture.width(), picture.height());
        let (mut sum, mut count) = (0u64, 0u64);
        for row in (0..height).step_by(4) {
            // Each row read fits the picture; an error would only leave it out of the mean.
            if let Ok(luma) = picture.read(Plane::Y, 0, row, width, 1) {
                sum += luma.iter().map(|&l| u64::from(l)).sum::<u64>();
                count += luma.len() as u64;
            }
        }
        let brightness = sum as f64 / count.max(1) as f64;
        set_metric("brightness", brightness);
        let dark = brightness < self.settings.threshold;
        if self.dark != Some(dark) {
            self.dark = Some(dark);
            let name = if dark { "dark" } else { "light" };
            if let Err(why) = emit(name, &brightness) {
                log(Level::Warn, &format!("cannot emit {name}: {why}"));
            }
        }
        PictureVerdict::Keep
    }
}

wasmcast_plugin_sdk::export_picture_plugin!(Plugin);

// `cargo test --target x86_64-unknown-linux-gnu` (your machine's target) runs these natively,
// against the SDK's mock host, which records what the plugin emitted and set.
#[cfg(test)]
mod tests {
    use super::*;
    use wasmcast_plugin_sdk::mock::{self, PictureBuffer};

    #[test]
    fn crossing_the_threshold_emits_an_event() {
        mock::reset();
        let mut plugin = Plugin::new(&Config::from_json(r#"{"threshold": 40}"#).unwrap()).unwrap();
        for luma in [200, 10] {
            let mut buffer = PictureBuffer::filled(64, 48, [luma, 128, 128]);
            plugin.process(&mut Picture::mock(&mut buffer));
        }
        let names: Vec<String> = mock::events().into_iter().map(|(name, _)| name).collect();
        assert_eq!(names, ["light", "dark"]);
        assert_eq!(mock::metrics()["brightness"], 10.0);
    }
}
"##;

fn example_config(name: &str, template: Template) -> String {
    let crate_file = name.replace('-', "_");
    let config = match template {
        Template::Packet => "report_every = 10",
        Template::Frame | Template::Picture => "threshold = 40",
    };
    format!(
        r#"# Add these tables to your wasmcast.toml (paths are relative to that file).
[plugins.{name}]
wasm = "target/wasm32-wasip2/release/{crate_file}.wasm"
config = {{ {config} }}
# on_error = "bypass"     # or "drop": what becomes of a unit whose call failed
# time_limit_ms = 50      # per call
# memory_limit_mb = 64

[routes.{name}-demo]
source = "file:../media/sample.mp4"
plugins = ["{name}"]
"#
    )
}

/// A plugin read from `wasm` for a trial run, with the given config (JSON) and limits, its events
/// going to `events`; checked by instantiating it once.
pub fn load_for_trial(
    wasm: &Path,
    config: &str,
    time_limit: Duration,
    memory_limit: usize,
    events: &Events,
) -> Result<Arc<LoadedPlugin>, Error> {
    let plugin_error = |source: super::Error| Error::Plugin {
        path: wasm.to_owned(),
        source,
    };
    let bytes = std::fs::read(wasm).map_err(|source| Error::Read {
        path: wasm.to_owned(),
        source,
    })?;
    let compiled = Compiled::new(&bytes).map_err(plugin_error)?;
    let plugin = Arc::new(LoadedPlugin {
        name: wasm
            .file_stem()
            .map_or_else(|| "plugin".into(), |s| s.to_string_lossy().into_owned()),
        config: PluginConfig {
            wasm: WasmSource::File(wasm.to_owned()),
            config: config.to_owned(),
            on_error: OnError::Bypass,
            time_limit,
            // A trial runs the file as fast as it can: its calls take all the time there is.
            cpu_percent: 100,
            memory_limit,
            env: Default::default(),
            dirs: Default::default(),
            network: false,
            snapshot_every: None,
            swap: Default::default(),
            origin: Origin::default(),
        },
        digest: digest(&bytes),
        compiled: Arc::new(compiled),
        events: events.clone(),
        // A trial run on a file keeps no state.
        state: None,
    });
    plugin
        .instantiate("trial")
        .map_err(|fault| plugin_error(fault.into()))?;
    Ok(plugin)
}
