//! Never returns from its first call: the host's time limit must stop it.

use wasmcast_plugin_sdk::{AccessUnit, Config, PacketPlugin, Verdict, monotonic_micros};

struct Spin;

impl PacketPlugin for Spin {
    fn new(_config: &Config) -> Result<Self, String> {
        Ok(Spin)
    }

    fn process(&mut self, _unit: AccessUnit) -> Verdict {
        // Calls the host so the loop has a visible effect and is not optimised away.
        while monotonic_micros() > 0 {}
        Verdict::Pass
    }
}

wasmcast_plugin_sdk::export_packet_plugin!(Spin);
