//! Forwards every access unit unchanged: the baseline for measuring what a plugin call costs, and
//! the smallest plugin to start from.

use wasmcast_plugin_sdk::{AccessUnit, Config, PacketPlugin, Verdict};

struct Passthrough;

impl PacketPlugin for Passthrough {
    fn new(_config: &Config) -> Result<Self, String> {
        Ok(Passthrough)
    }

    fn process(&mut self, _unit: AccessUnit) -> Verdict {
        Verdict::Pass
    }
}

wasmcast_plugin_sdk::export_packet_plugin!(Passthrough);
