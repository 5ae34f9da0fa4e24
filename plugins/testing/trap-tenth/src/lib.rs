//! Panics on the 10th unit of each instance: the host must restart it and keep the route flowing.

use wasmcast_plugin_sdk::{AccessUnit, Config, PacketPlugin, Verdict};

struct TrapTenth {
    seen: u32,
}

impl PacketPlugin for TrapTenth {
    fn new(_config: &Config) -> Result<Self, String> {
        Ok(TrapTenth { seen: 0 })
    }

    fn process(&mut self, _unit: AccessUnit) -> Verdict {
        self.seen += 1;
        if self.seen == 10 {
            panic!("this is the 10th unit");
        }
        Verdict::Pass
    }
}

wasmcast_plugin_sdk::export_packet_plugin!(TrapTenth);
