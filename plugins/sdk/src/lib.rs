//! Write wasmcast plugins in Rust.
//!
//! A packet plugin is a type that implements [`PacketPlugin`], exported with [`export_packet_plugin!`]
//! (enable the `packet` feature); a frame plugin implements [`FramePlugin`] and is exported with
//! [`export_frame_plugin!`] (the `frame` feature); a picture plugin, whose pictures stay in the
//! host and are read and written by rectangle, implements [`PicturePlugin`] and is exported with
//! [`export_picture_plugin!`] (the `picture` feature). Build it with `cargo build --release --target
//! wasm32-wasip2` and name the `.wasm` in a `[plugins.NAME]` table of the server's config.
//!
//! ```ignore
//! use wasmcast_plugin_sdk::{AccessUnit, Config, PacketPlugin, Verdict};
//!
//! #[derive(Default)]
//! struct KeyframesOnly;
//!
//! impl PacketPlugin for KeyframesOnly {
//!     fn new(_config: &Config) -> Result<Self, String> {
//!         Ok(KeyframesOnly)
//!     }
//!     fn process(&mut self, unit: AccessUnit) -> Verdict {
//!         if unit.keyframe { Verdict::Pass } else { Verdict::Drop }
//!     }
//! }
//!
//! wasmcast_plugin_sdk::export_packet_plugin!(KeyframesOnly);
//! ```
//!
//! The host makes one instance per route and calls it one unit at a time, so `&mut self` is the
//! plugin's state. A panic traps the instance: the host logs it, applies the plugin's `on_error`
//! policy to that unit and starts a fresh instance.
//!
//! State that should outlive an instance (a new build of the plugin, a change of its config, a
//! trap) goes through `snapshot` and `restore`, which both traits have (by default: nothing to
//! keep). Events ([`emit`]) and metrics ([`set_metric`], [`add_metric`]) tell the server what the
//! plugin finds.
//!
//! A plugin's own `cargo test` (built for the machine, not wasm32) runs against [`mock`], a host in
//! the test's process that records what the plugin logged, emitted and set.
//!
//! Helpers: [`nal`] walks the NAL units of H.264/H.265 access units and writes SEI messages;
//! `draw` (frame plugins) puts rectangles and text on pictures.

// The generated bindings name this crate by its path, from inside it as from plugins.
extern crate self as wasmcast_plugin_sdk;

#[cfg(not(any(feature = "packet", feature = "frame", feature = "picture")))]
compile_error!("enable the `packet`, `frame` or `picture` feature of wasmcast-plugin-sdk");

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

#[doc(hidden)]
pub mod bindings {
    #[cfg(feature = "packet")]
    pub mod packet {
        wit_bindgen::generate!({
            path: "../../wit",
            world: "wasmcast:plugin/selective-packet-plugin",
            pub_export_macro: true,
            export_macro_name: "export_packet_world",
            default_bindings_module: "wasmcast_plugin_sdk::bindings::packet",
            runtime_path: "wasmcast_plugin_sdk::__wit_bindgen::rt",
        });
    }

    #[cfg(feature = "frame")]
    pub mod frame {
        wit_bindgen::generate!({
            path: "../../wit",
            world: "wasmcast:plugin/stateful-frame-plugin",
            pub_export_macro: true,
            export_macro_name: "export_frame_world",
            default_bindings_module: "wasmcast_plugin_sdk::bindings::frame",
            runtime_path: "wasmcast_plugin_sdk::__wit_bindgen::rt",
        });
    }

    #[cfg(feature = "picture")]
    pub mod picture {
        wit_bindgen::generate!({
            path: "../../wit",
            world: "wasmcast:plugin/stateful-picture-plugin",
            pub_export_macro: true,
            export_macro_name: "export_picture_world",
            default_bindings_module: "wasmcast_plugin_sdk::bindings::picture",
            runtime_path: "wasmcast_plugin_sdk::__wit_bindgen::rt",
        });
    }
}

/// The `state` export both plugin kinds share: the plugin's `snapshot` and `restore`, on the
/// instance the export macro keeps (`STATE`) for its `Export` type. For those macros only.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_state {
    ($world:ident, $plugin_trait:ident) => {
        impl $crate::bindings::$world::exports::wasmcast::plugin::state::Guest for Export {
            fn snapshot() -> ::std::vec::Vec<u8> {
                STATE.with(|state| match state.borrow().as_ref() {
                    ::core::option::Option::Some(plugin) => $crate::$plugin_trait::snapshot(plugin),
                    ::core::option::Option::None => ::std::vec::Vec::new(),
                })
            }

            fn restore(
                snapshot: ::std::vec::Vec<u8>,
            ) -> ::core::result::Result<(), ::std::string::String> {
                STATE.with(|state| match state.borrow_mut().as_mut() {
                    ::core::option::Option::Some(plugin) => {
                        $crate::$plugin_trait::restore(plugin, &snapshot)
                    }
                    ::core::option::Option::None => ::core::result::Result::Ok(()),
                })
            }
        }
    };
}

#[cfg(feature = "packet")]
mod packet;
#[cfg(feature = "packet")]
pub use packet::{AccessUnit, Codec, PacketPlugin, Verdict};

#[cfg(feature = "frame")]
mod frame;
#[cfg(feature = "frame")]
pub use frame::{Frame, FramePlugin, FrameVerdict};

#[cfg(feature = "picture")]
mod picture;
#[cfg(feature = "picture")]
pub use picture::{Picture, PicturePlugin, PictureVerdict, Plane};

#[cfg(feature = "frame")]
pub mod draw;
mod host;
#[cfg(not(target_arch = "wasm32"))]
pub mod mock;
pub mod nal;
pub use host::{
    Config, Level, add_metric, emit, log, monotonic_micros, request_keyframe, route, set_metric,
    stream_description, wall_clock_micros,
};
