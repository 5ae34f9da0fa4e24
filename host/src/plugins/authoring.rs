//! For people who write plugins: a new plugin project from a template (`wasmcast plugin new`) and a
//! trial run of a component over a file, without a server (`wasmcast plugin run`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::runtime::Compiled;
use super::{Chain, LoadedPlugin, digest};
use crate::config::{OnError, Origin, PluginConfig, WasmSource};
use crate::media::AccessUnit;

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
    #[error("{}: {source}", path.display())]
    Input {
        path: PathBuf,
        source: crate::sources::Error,
    },
}

/// Where `wasmcast plugin new` finds the SDK unless told: the checkout this binary was built from.
pub fn default_sdk_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/sdk")
}

/// Makes a new packet plugin project `name` in `parent`, depending on the SDK at `sdk`; returns its
/// directory.
pub fn new_project(parent: &Path, name: &str, sdk: &Path) -> Result<PathBuf, Error> {
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
        ("Cargo.toml", cargo_toml(name, &sdk)),
        (".cargo/config.toml", CARGO_CONFIG.to_owned()),
        ("src/lib.rs", LIB_RS.to_owned()),
        ("wasmcast.example.toml", example_config(name)),
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

fn cargo_toml(name: &str, sdk: &Path) -> String {
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
wasmcast-plugin-sdk = {{ path = "{sdk}", features = ["packet"] }}
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
        sdk = sdk.display().to_string().replace('\\', "/")
    )
}

const CARGO_CONFIG: &str = r#"# Plugins are built for WASI 0.2 (once: `rustup target add wasm32-wasip2`).
[build]
target = "wasm32-wasip2"

[target.wasm32-wasip2]
# WebAssembly SIMD: pixel and byte loops run several times faster.
rustflags = ["-C", "target-feature=+simd128"]
"#;

const LIB_RS: &str = r#"//! A wasmcast packet plugin: it sees every access unit of the route it runs on.
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

fn example_config(name: &str) -> String {
    let crate_file = name.replace('-', "_");
    format!(
        r#"# Add these tables to your wasmcast.toml (paths are relative to that file).
[plugins.{name}]
wasm = "target/wasm32-wasip2/release/{crate_file}.wasm"
config = {{ report_every = 10 }}
# on_error = "bypass"     # or "drop": what becomes of a unit whose call failed
# time_limit_ms = 50      # per call
# memory_limit_mb = 64

[routes.{name}-demo]
source = "file:../media/sample.mp4"
plugins = ["{name}"]
"#
    )
}

/// A trial run: what to run on what.
pub struct Trial {
    pub wasm: PathBuf,
    /// The plugin's config, as JSON.
    pub config: String,
    pub input: PathBuf,
    /// Where to write the video track that comes out (Annex B), if anywhere.
    pub video_out: Option<PathBuf>,
    pub time_limit: Duration,
    pub memory_limit: usize,
}

/// What a trial run saw.
#[derive(Debug, Default)]
pub struct TrialReport {
    /// Units in and out per track, by codec name.
    pub tracks: Vec<(String, u64, u64)>,
    pub errors: u64,
    pub last_error: Option<String>,
    /// Time per unit in the plugin, sorted.
    call_times: Vec<Duration>,
}

impl TrialReport {
    /// The time per call at `quantile` (0.5: the median).
    pub fn call_time(&self, quantile: f64) -> Duration {
        if self.call_times.is_empty() {
            return Duration::ZERO;
        }
        let index = ((self.call_times.len() - 1) as f64 * quantile).round() as usize;
        self.call_times[index.min(self.call_times.len() - 1)]
    }
}

impl std::fmt::Display for TrialReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (index, (codec, units_in, units_out)) in self.tracks.iter().enumerate() {
            writeln!(
                f,
                "track {index} ({codec}): {units_in} units in, {units_out} out"
            )?;
        }
        writeln!(
            f,
            "time per unit: median {:?}, p99 {:?}, max {:?}",
            self.call_time(0.5),
            self.call_time(0.99),
            self.call_time(1.0)
        )?;
        write!(f, "errors: {}", self.errors)?;
        if let Some(error) = &self.last_error {
            write!(f, " (last: {error})")?;
        }
        Ok(())
    }
}

/// Runs the plugin over every access unit of one pass through an MP4 file, as fast as it goes.
pub fn run_trial(trial: &Trial) -> Result<TrialReport, Error> {
    let plugin_error = |source: super::Error| Error::Plugin {
        path: trial.wasm.clone(),
        source,
    };
    let bytes = std::fs::read(&trial.wasm).map_err(|source| Error::Read {
        path: trial.wasm.clone(),
        source,
    })?;
    let compiled = Compiled::new(&bytes).map_err(plugin_error)?;
    let plugin = Arc::new(LoadedPlugin {
        name: trial
            .wasm
            .file_stem()
            .map_or_else(|| "plugin".into(), |s| s.to_string_lossy().into_owned()),
        config: PluginConfig {
            wasm: WasmSource::File(trial.wasm.clone()),
            config: trial.config.clone(),
            on_error: OnError::Bypass,
            time_limit: trial.time_limit,
            memory_limit: trial.memory_limit,
            env: Default::default(),
            dirs: Default::default(),
            network: false,
            snapshot_every: None,
            origin: Origin::default(),
        },
        digest: digest(&bytes),
        compiled: Arc::new(compiled),
        events: Default::default(),
    });
    plugin
        .instantiate("trial")
        .map_err(|fault| plugin_error(fault.into()))?;
    let (description, units) =
        crate::sources::mp4_units(&trial.input).map_err(|source| Error::Input {
            path: trial.input.clone(),
            source,
        })?;
    let mut chain = Chain::new("trial", std::slice::from_ref(&plugin), &[]);
    chain.start();
    let mut report = TrialReport {
        tracks: description
            .tracks
            .iter()
            .map(|t| (t.codec.name().to_owned(), 0, 0))
            .collect(),
        ..TrialReport::default()
    };
    let video_track = description.video_track();
    let mut video = Vec::new();
    let mut out: Vec<AccessUnit> = Vec::new();
    for unit in units {
        let unit = unit.map_err(|source| Error::Input {
            path: trial.input.clone(),
            source,
        })?;
        if let Some(track) = report.tracks.get_mut(unit.track) {
            track.1 += 1;
        }
        let started = Instant::now();
        chain.process(unit, &description.tracks, &mut out);
        report.call_times.push(started.elapsed());
        for unit in out.drain(..) {
            if let Some(track) = report.tracks.get_mut(unit.track) {
                track.2 += 1;
            }
            if Some(unit.track) == video_track && trial.video_out.is_some() {
                video.extend_from_slice(&unit.data);
            }
        }
    }
    report.call_times.sort();
    if let Some(status) = chain.status().first() {
        report.errors = status.stats.errors.load(Ordering::Relaxed);
        report.last_error = status
            .stats
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
    }
    if let Some(path) = &trial.video_out {
        std::fs::write(path, &video).map_err(|source| Error::Write {
            path: path.clone(),
            source,
        })?;
    }
    Ok(report)
}
