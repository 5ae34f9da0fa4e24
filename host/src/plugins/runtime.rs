//! The wasmtime side: one engine for the process, the host functions plugins import, and plugin
//! instances that run one call at a time under a time and a memory limit.
//!
//! What a plugin can make the host hold is bounded: its time per call (wasm code through the
//! epoch, blocking WASI calls through [`blocking`]), its linear memory, its tables, memories and
//! instances, the units and bytes one call may hand back, and the bytes a second it may log.

mod blocking;
mod host;
mod instance;
mod picture;

use std::sync::OnceLock;
use std::time::Duration;

use wasmtime::Engine;
use wasmtime::component::{Component, HasSelf, Linker};

use super::Error;
use host::PluginState;
pub use host::{KeyframeRequest, Names, PluginStats, Reporter};
pub use instance::{FrameVerdict, Instance, Verdict};

mod packet_world {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wasmcast:plugin/packet-plugin",
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

mod frame_world {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wasmcast:plugin/frame-plugin",
        ownership: Borrowing { duplicate_if_necessary: true },
        with: { "wasmcast:plugin/host": super::packet_world::wasmcast::plugin::host },
    });
}

mod picture_world {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wasmcast:plugin/picture-plugin",
        ownership: Borrowing { duplicate_if_necessary: true },
        imports: { "wasmcast:plugin/pictures": trappable },
        with: {
            "wasmcast:plugin/host": super::packet_world::wasmcast::plugin::host,
            "wasmcast:plugin/pictures.picture": super::picture::LentPicture,
        },
    });
}

/// The optional exports, `state` and `wants`: only their bindings are used, looked up on any
/// plugin.
mod optional_world {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wasmcast:plugin/selective-packet-plugin",
        ownership: Borrowing { duplicate_if_necessary: true },
        with: {
            "wasmcast:plugin/host": super::packet_world::wasmcast::plugin::host,
            "wasmcast:plugin/packets": super::packet_world::wasmcast::plugin::packets,
        },
    });
}

use optional_world::exports::wasmcast::plugin::state as wit_state;
use optional_world::exports::wasmcast::plugin::wants as wit_wants;
use packet_world::wasmcast::plugin::host::{self as host_api, Level};
use packet_world::wasmcast::plugin::packets as wit;

/// The export that makes a component a packet plugin, without its version.
pub const PACKET_EXPORT: &str = "wasmcast:plugin/packet-filter";
/// The export that makes a component a frame plugin, without its version.
pub const FRAME_EXPORT: &str = "wasmcast:plugin/frame-filter";
/// The export that makes a component a picture plugin (a frame plugin whose pictures stay in the
/// host), without its version.
pub const PICTURE_EXPORT: &str = "wasmcast:plugin/picture-filter";
/// The plugin interface's version this host implements; it runs plugins of any 0.1.x.
pub const WORLD_VERSION: &str = "0.1.2";
/// The largest snapshot a plugin may hand over.
pub const MAX_SNAPSHOT_BYTES: usize = 16 << 20;

/// Whether the export `name` is `interface` of a version this host runs (0.1.x): wasmtime links
/// semver-compatible names, and a plugin built against an older or newer 0.1 runs here.
fn exports_interface(name: &str, interface: &str) -> bool {
    name.strip_prefix(interface)
        .and_then(|rest| rest.strip_prefix("@0.1."))
        .is_some_and(|patch| !patch.is_empty() && patch.bytes().all(|b| b.is_ascii_digit()))
}

/// How often the epoch ticks: the granularity of time limits.
const EPOCH_TICK: Duration = Duration::from_millis(1);
/// Table elements, tables, linear memories and core instances one plugin instance may have. A
/// Rust component needs a few of each (and a few thousand table elements); these leave room for
/// components from other languages while a table that grows without end traps.
const MAX_TABLE_ELEMENTS: usize = 1 << 18;
const MAX_TABLES: usize = 64;
const MAX_MEMORIES: usize = 16;
const MAX_INSTANCES: usize = 64;
/// Host resources (WASI streams, pollables, files, sockets; frames) one instance may hold at once.
/// Each is host memory outside the instance's memory limit, and a file or a socket is one of the
/// server's file descriptors; a plugin that opens them without end traps here instead.
pub(super) const MAX_HOST_RESOURCES: usize = 256;
/// Units one `replace` may hand back, and their bytes together: a plugin adds a unit or a few
/// (an SEI, a split frame), not a flood.
pub const MAX_REPLACE_UNITS: usize = 64;
pub const MAX_REPLACE_BYTES: usize = 32 << 20;

/// Why a plugin call or instantiation failed.
#[derive(Debug, thiserror::Error)]
pub enum Fault {
    #[error("ran past its time limit of {0:?}")]
    TimeLimit(Duration),
    #[error("grew past its memory limit of {} MiB", .0 >> 20)]
    MemoryLimit(usize),
    #[error("grew a table past {MAX_TABLE_ELEMENTS} elements")]
    TableLimit,
    #[error("held more than {MAX_HOST_RESOURCES} host resources at once (streams, files, sockets)")]
    ResourceLimit,
    #[error("trapped: {0}")]
    Trap(String),
    #[error("its init refused the config: {0}")]
    Init(String),
    #[error("{0}")]
    Invalid(String),
}

/// The process-wide engine, with its epoch ticking; an error when wasmtime cannot be set up with
/// epoch interruption or the clock cannot run, since plugins would then run without time limits.
pub fn engine() -> Result<&'static Engine, Error> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut config = wasmtime::Config::new();
            config.epoch_interruption(true);
            // Async component functions are not part of the interface; without them a call costs
            // a fraction of what it does with.
            config.concurrency_support(false);
            let engine = Engine::new(&config)
                .map_err(|err| format!("cannot set up wasmtime for plugins: {err:#}"))?;
            let ticker = engine.weak();
            std::thread::Builder::new()
                .name("plugin-epoch".into())
                .spawn(move || {
                    while let Some(engine) = ticker.upgrade() {
                        engine.increment_epoch();
                        drop(engine);
                        std::thread::sleep(EPOCH_TICK);
                    }
                })
                .map_err(|err| format!("cannot start the plugins' time-limit clock: {err}"))?;
            Ok(engine)
        })
        .as_ref()
        .map_err(|why| Error::Setup(why.clone()))
}

/// The linker with WASI and the `host` interface; shared by every instance.
fn linker() -> Result<&'static Linker<PluginState>, Error> {
    static LINKER: OnceLock<Result<Linker<PluginState>, String>> = OnceLock::new();
    LINKER
        .get_or_init(|| {
            let mut linker = Linker::new(engine().map_err(|err| err.to_string())?);
            wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
                .and_then(|()| {
                    // The blocking calls again, over wasmtime-wasi's, held to the call's deadline.
                    linker.allow_shadowing(true);
                    wasmtime_wasi::p2::bindings::sync::io::poll::add_to_linker::<
                        PluginState,
                        blocking::HasDeadline,
                    >(&mut linker, PluginState::deadlined)?;
                    wasmtime_wasi::p2::bindings::sync::io::streams::add_to_linker::<
                        PluginState,
                        blocking::HasDeadline,
                    >(&mut linker, PluginState::deadlined)?;
                    linker.allow_shadowing(false);
                    host_api::add_to_linker::<PluginState, HasSelf<PluginState>>(
                        &mut linker,
                        |state| state,
                    )?;
                    picture_world::wasmcast::plugin::pictures::add_to_linker::<
                        PluginState,
                        HasSelf<PluginState>,
                    >(&mut linker, |state| state)
                })
                .map_err(|err| format!("cannot link the plugin host functions: {err}"))?;
            Ok(linker)
        })
        .as_ref()
        .map_err(|why| Error::Setup(why.clone()))
}

/// Which kind of plugin a component is: a packet plugin, or a frame plugin (of either frame
/// world: both run on the decoded pictures of a route).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Packet,
    Frame,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Packet => "packet",
            Kind::Frame => "frame",
        }
    }
}

/// A compiled component, ready to be instantiated quickly.
pub struct Compiled {
    pub kind: Kind,
    pre: Pre,
    /// Where its `state` export is, when it has one.
    state: Option<wit_state::GuestIndices>,
    /// Where its `wants` export is, when a packet plugin has one.
    wants: Option<wit_wants::GuestIndices>,
}

impl Compiled {
    /// Whether the plugin exports `state` (snapshot and restore).
    pub fn stateful(&self) -> bool {
        self.state.is_some()
    }
}

/// The world a component exports.
enum World {
    Packet,
    Frame,
    Picture,
}

enum Pre {
    Packet(packet_world::PacketPluginPre<PluginState>),
    Frame(frame_world::FramePluginPre<PluginState>),
    Picture(picture_world::PicturePluginPre<PluginState>),
}

impl Compiled {
    /// Compiles `bytes` and checks that it is a plugin whose imports the host provides.
    pub fn new(bytes: &[u8]) -> Result<Compiled, Error> {
        let engine = engine()?;
        let component = Component::new(engine, bytes)
            .map_err(|err| Error::NotAComponent(format!("{err:#}")))?;
        let exports: Vec<String> = component
            .component_type()
            .exports(engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let exported = |interface| exports.iter().any(|e| exports_interface(e, interface));
        let world = if exported(PACKET_EXPORT) {
            World::Packet
        } else if exported(FRAME_EXPORT) {
            World::Frame
        } else if exported(PICTURE_EXPORT) {
            World::Picture
        } else {
            return Err(Error::NotAPlugin {
                exports: if exports.is_empty() {
                    "nothing".to_owned()
                } else {
                    exports.join(", ")
                },
            });
        };
        let pre = linker()?
            .instantiate_pre(&component)
            .map_err(|err| Error::Link(format!("{err:#}")))?;
        let state = exports
            .iter()
            .any(|e| exports_interface(e, "wasmcast:plugin/state"))
            .then(|| wit_state::GuestIndices::new(&pre))
            .transpose()
            .map_err(|err| Error::World("stateful", format!("{err:#}")))?;
        let wants = (matches!(world, World::Packet) && exported("wasmcast:plugin/wants"))
            .then(|| wit_wants::GuestIndices::new(&pre))
            .transpose()
            .map_err(|err| Error::World("selective-packet-plugin", format!("{err:#}")))?;
        let (kind, pre) = match world {
            World::Packet => (
                Kind::Packet,
                Pre::Packet(
                    packet_world::PacketPluginPre::new(pre)
                        .map_err(|err| Error::World("packet-plugin", format!("{err:#}")))?,
                ),
            ),
            World::Frame => (
                Kind::Frame,
                Pre::Frame(
                    frame_world::FramePluginPre::new(pre)
                        .map_err(|err| Error::World("frame-plugin", format!("{err:#}")))?,
                ),
            ),
            World::Picture => (
                Kind::Frame,
                Pre::Picture(
                    picture_world::PicturePluginPre::new(pre)
                        .map_err(|err| Error::World("picture-plugin", format!("{err:#}")))?,
                ),
            ),
        };
        Ok(Compiled {
            kind,
            pre,
            state,
            wants,
        })
    }
}
