//! Drops every audio unit, built against the first published interface (`wit/plugin.wit` of
//! `wasmcast:plugin@0.1.0`, kept here as it was): hosts of later 0.1 versions must still run it.

wit_bindgen::generate!({
    path: "wit",
    world: "wasmcast:plugin/packet-plugin",
});

use exports::wasmcast::plugin::packet_filter::Guest;
use wasmcast::plugin::host::{Level, log};
use wasmcast::plugin::packets::{AccessUnit, Codec, Verdict};

struct VideoOnly;

impl Guest for VideoOnly {
    fn init() -> Result<(), String> {
        log(Level::Info, "a plugin of wasmcast:plugin@0.1.0 runs");
        Ok(())
    }

    fn process(unit: AccessUnit) -> Verdict {
        match unit.codec {
            Codec::Aac | Codec::Opus => Verdict::Drop,
            Codec::H264 | Codec::H265 => Verdict::Pass,
        }
    }
}

export!(VideoOnly);
