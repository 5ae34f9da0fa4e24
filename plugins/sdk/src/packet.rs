//! Packet plugins: they see every compressed access unit of their route.

use crate::Config;

pub use crate::bindings::packet::wasmcast::plugin::packets::{AccessUnit, Codec, Verdict};

/// A packet plugin. The host makes one value per route with [`PacketPlugin::new`], then calls
/// [`PacketPlugin::process`] for every access unit of every track, in decode order.
pub trait PacketPlugin: Sized + 'static {
    /// Reads the plugin's config; an error refuses the plugin (say which key is wrong and why).
    fn new(config: &Config) -> Result<Self, String>;

    /// Decides what becomes of `unit`. [`Verdict::Pass`] forwards the host's own copy of the unit;
    /// return [`Verdict::Replace`] only when the unit changes.
    fn process(&mut self, unit: AccessUnit) -> Verdict;

    /// The codecs whose units [`PacketPlugin::process`] is called for, asked once after
    /// [`PacketPlugin::new`] (default: all of them). Units of other codecs go past the plugin
    /// without a call and without being copied into it: a video-only plugin names the video
    /// codecs.
    fn codecs(&self) -> Vec<Codec> {
        vec![Codec::H264, Codec::H265, Codec::Aac, Codec::Opus]
    }

    /// The state the next instance should start from (empty: nothing to keep). The host asks
    /// before it replaces this instance and at the cadence of the plugin's `snapshot_every_s`.
    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }

    /// Takes over the state of an earlier instance, right after [`PacketPlugin::new`]; an error
    /// (a snapshot of another version, say) is logged and the instance runs as it is.
    fn restore(&mut self, _snapshot: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

/// Exports a [`PacketPlugin`] type as the plugin's implementation of the `packet-plugin` world.
#[macro_export]
macro_rules! export_packet_plugin {
    ($plugin:ty) => {
        const _: () = {
            struct Export;

            ::std::thread_local! {
                static STATE: ::core::cell::RefCell<::core::option::Option<$plugin>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }

            impl $crate::bindings::packet::exports::wasmcast::plugin::packet_filter::Guest
                for Export
            {
                fn init() -> ::core::result::Result<(), ::std::string::String> {
                    let config = $crate::Config::from_host()?;
                    let plugin = <$plugin as $crate::PacketPlugin>::new(&config)?;
                    STATE.with(|state| *state.borrow_mut() = ::core::option::Option::Some(plugin));
                    ::core::result::Result::Ok(())
                }

                fn process(unit: $crate::AccessUnit) -> $crate::Verdict {
                    STATE.with(|state| match state.borrow_mut().as_mut() {
                        ::core::option::Option::Some(plugin) => {
                            $crate::PacketPlugin::process(plugin, unit)
                        }
                        // The host calls `init` first; without it there is nothing to run.
                        ::core::option::Option::None => $crate::Verdict::Pass,
                    })
                }
            }

            impl $crate::bindings::packet::exports::wasmcast::plugin::wants::Guest for Export {
                fn codecs() -> ::std::vec::Vec<$crate::Codec> {
                    STATE.with(|state| match state.borrow().as_ref() {
                        ::core::option::Option::Some(plugin) => {
                            $crate::PacketPlugin::codecs(plugin)
                        }
                        // Asked after `init` only; were it not, every codec is the safe answer.
                        ::core::option::Option::None => ::std::vec![
                            $crate::Codec::H264,
                            $crate::Codec::H265,
                            $crate::Codec::Aac,
                            $crate::Codec::Opus,
                        ],
                    })
                }
            }

            $crate::__export_state!(packet, PacketPlugin);

            $crate::bindings::packet::export_packet_world!(
                Export with_types_in $crate::bindings::packet
            );
        };
    };
}
