//! Plugins: WASI components, run by wasmtime, that transform a route's media.
//!
//! In: the `[plugins.NAME]` tables of a [`Config`]. Out: [`LoadedPlugin`]s (compiled once, checked
//! by instantiating them and running their `init`), and [`Chain`]s that run a route's plugins on
//! its access units, one instance per route and plugin, within each plugin's limits. The router
//! runs each chain on a thread of its own (see `router::stage`).

pub mod authoring;
mod chain;
mod runtime;
mod state;

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::config::{Config, PluginConfig, Problem, WasmSource};
use crate::events::Events;
use crate::media::{Codec, Track};

pub use chain::{Chain, PluginStatus};
pub use runtime::{Fault, FrameVerdict, Instance, KeyframeRequest, Kind, PluginStats};
pub use state::StateStore;

use runtime::{Compiled, Names, Reporter};

include!(concat!(env!("OUT_DIR"), "/builtins.rs"));

/// The component of the built-in plugin `name`.
pub fn builtin(name: &str) -> Option<&'static [u8]> {
    BUILTINS
        .iter()
        .find(|(builtin, _)| *builtin == name)
        .map(|(_, wasm)| *wasm)
}

/// The names of the built-in plugins.
pub fn builtin_names() -> Vec<&'static str> {
    BUILTINS.iter().map(|(name, _)| *name).collect()
}

/// Why a plugin cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// wasmtime or the plugins' clock cannot be set up: no plugin can run.
    #[error("{0}")]
    Setup(String),
    #[error("no built-in plugin named `{0}`; the built-in plugins are {list}", list = builtin_names().join(", "))]
    NoBuiltin(String),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not a WebAssembly component ({0}); build it for wasm32-wasip2")]
    NotAComponent(String),
    #[error(
        "exports neither `{}@0.1.x`, `{}@0.1.x` nor `{}@0.1.x` (it exports: {exports}); build \
         it against wit/plugin.wit (wasmcast:plugin@{}), world `packet-plugin`, `frame-plugin` \
         or `picture-plugin`",
        runtime::PACKET_EXPORT,
        runtime::FRAME_EXPORT,
        runtime::PICTURE_EXPORT,
        runtime::WORLD_VERSION
    )]
    NotAPlugin { exports: String },
    #[error("cannot be linked: {0}")]
    Link(String),
    #[error("does not fit world `{0}`: {1}")]
    World(&'static str, String),
    /// The trial instance failed (its `init` refused the config, a grant is missing, …).
    #[error(transparent)]
    Trial(#[from] Fault),
    /// What went wrong with the component named here.
    #[error("{wasm}: {source}")]
    In { wasm: String, source: Box<Error> },
}

/// A plugin compiled and checked, ready to be instantiated on routes.
pub struct LoadedPlugin {
    pub name: String,
    pub config: PluginConfig,
    /// A hash of the component's bytes: a new build of the file is a new plugin.
    pub digest: u64,
    compiled: Arc<Compiled>,
    events: Events,
    /// Where its state is kept across restarts, if anywhere.
    state: Option<Arc<StateStore>>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.name)
            .field("wasm", &self.config.wasm.to_string())
            .field("digest", &format_args!("{:016x}", self.digest))
            .finish()
    }
}

impl LoadedPlugin {
    pub fn kind(&self) -> Kind {
        self.compiled.kind
    }

    /// Whether `other` runs the same code with the same settings.
    pub fn same_as(&self, other: &LoadedPlugin) -> bool {
        self.name == other.name && self.digest == other.digest && self.config == other.config
    }

    /// Whether the plugin exports `state`, so that its state outlives its instances.
    pub fn stateful(&self) -> bool {
        self.compiled.stateful()
    }

    /// A new instance for `route`, with its `init` run; what it reports is counted nowhere and
    /// its keyframe requests go nowhere (see [`Chain`] for instances on a route).
    pub fn instantiate(&self, route: &str) -> Result<Instance, Fault> {
        self.instantiate_reporting(route, Arc::default(), Arc::new(|| {}), Arc::from("{}"))
    }

    /// A new instance for `route` that counts in `stats`, asks `request_keyframe` for keyframes
    /// and sees the stream `stream` describes.
    fn instantiate_reporting(
        &self,
        route: &str,
        stats: Arc<PluginStats>,
        request_keyframe: KeyframeRequest,
        stream: Arc<str>,
    ) -> Result<Instance, Fault> {
        let names = Arc::new(Names {
            plugin: self.name.clone(),
            route: route.to_owned(),
        });
        let reporter = Reporter {
            events: self.events.clone(),
            stats,
            request_keyframe,
            stream,
        };
        Instance::new(&self.compiled, &self.config, names, reporter)
    }
}

/// Loaded plugins by name.
pub type Plugins = BTreeMap<String, Arc<LoadedPlugin>>;

/// Loads plugins and keeps what it compiled, so an unchanged component is never compiled twice.
#[derive(Clone, Default)]
pub struct Loader {
    compiled: Arc<Mutex<HashMap<u64, Arc<Compiled>>>>,
    /// Where the plugins' events go.
    events: Events,
    /// Where their state is kept across restarts (`[server] state_dir`).
    state: Option<Arc<StateStore>>,
}

impl Loader {
    /// A loader whose plugins publish their events to `events`.
    pub fn new(events: Events) -> Loader {
        Loader {
            compiled: Arc::default(),
            events,
            state: None,
        }
    }

    /// This loader, with its plugins' state kept in `state` across restarts.
    pub fn keeping_state_in(mut self, state: Arc<StateStore>) -> Loader {
        self.state = Some(state);
        self
    }

    /// Where the plugins it loads publish their events.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Loads every plugin `config` names and checks the routes' chains, reusing the plugins of
    /// `running` that did not change. Slow (compiling takes tens of milliseconds a component): call
    /// it off the async runtime.
    pub fn load_all(&self, config: &Config, running: &Plugins) -> Result<Plugins, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut plugins = Plugins::new();
        for (name, plugin) in &config.plugins {
            match self.load(name, plugin, running.get(name)) {
                Ok(loaded) => {
                    plugins.insert(name.clone(), loaded);
                }
                Err(err) => problems.push(
                    plugin
                        .origin
                        .problem(format!("plugins.{name}"), err.to_string()),
                ),
            }
        }
        let in_use: Vec<u64> = plugins.values().map(|p| p.digest).collect();
        self.lock().retain(|digest, _| in_use.contains(digest));
        if problems.is_empty() {
            Ok(plugins)
        } else {
            Err(problems)
        }
    }

    fn load(
        &self,
        name: &str,
        config: &PluginConfig,
        running: Option<&Arc<LoadedPlugin>>,
    ) -> Result<Arc<LoadedPlugin>, Error> {
        let bytes =
            match &config.wasm {
                WasmSource::Builtin(builtin_name) => builtin(builtin_name)
                    .map(std::borrow::Cow::Borrowed)
                    .ok_or_else(|| Error::NoBuiltin(builtin_name.clone()))?,
                WasmSource::File(path) => std::fs::read(path)
                    .map(std::borrow::Cow::Owned)
                    .map_err(|source| Error::Read {
                        path: path.clone(),
                        source,
                    })?,
            };
        let within = |err: Error| Error::In {
            wasm: config.wasm.to_string(),
            source: Box::new(err),
        };
        let digest = digest(&bytes);
        if let Some(running) = running
            && running.digest == digest
            && running.config == *config
        {
            return Ok(Arc::clone(running));
        }
        let cached = self.lock().get(&digest).cloned();
        let compiled = match cached {
            Some(compiled) => compiled,
            None => {
                let compiled = Arc::new(Compiled::new(&bytes).map_err(within)?);
                self.lock().insert(digest, Arc::clone(&compiled));
                compiled
            }
        };
        let plugin = LoadedPlugin {
            name: name.to_owned(),
            config: config.clone(),
            digest,
            compiled,
            events: self.events.clone(),
            state: self.state.clone(),
        };
        // A trial instance catches a bad config (the plugin's `init` says why) and missing grants.
        plugin
            .instantiate("(check)")
            .map_err(|fault| within(fault.into()))?;
        Ok(Arc::new(plugin))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Compiled>>> {
        self.compiled.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn digest(bytes: &[u8]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

/// The stream description plugins read (`stream-description`).
fn stream_description(tracks: &[Track]) -> String {
    let tracks: Vec<serde_json::Value> = tracks
        .iter()
        .enumerate()
        .map(|(index, track)| {
            let mut entry = serde_json::json!({
                "track": index,
                "codec": track.codec.name().to_ascii_lowercase(),
                "clock_rate": track.codec.clock_rate(),
            });
            if let Some((width, height)) = track.dimensions {
                entry["width"] = width.into();
                entry["height"] = height.into();
            }
            match track.codec {
                Codec::Aac { channels, .. } | Codec::Opus { channels } => {
                    entry["channels"] = channels.into();
                }
                Codec::H264 { .. } | Codec::H265 { .. } => {}
            }
            entry
        })
        .collect();
    serde_json::json!({ "tracks": tracks }).to_string()
}
