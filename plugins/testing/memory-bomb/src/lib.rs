//! Keeps 16 MiB more of every unit it sees: the host's memory limit must stop it.

use wasmcast_plugin_sdk::{AccessUnit, Config, PacketPlugin, Verdict};

struct MemoryBomb {
    hoard: Vec<Vec<u8>>,
}

impl PacketPlugin for MemoryBomb {
    fn new(_config: &Config) -> Result<Self, String> {
        Ok(MemoryBomb { hoard: Vec::new() })
    }

    fn process(&mut self, unit: AccessUnit) -> Verdict {
        self.hoard
            .push(vec![unit.data.first().copied().unwrap_or(1); 16 << 20]);
        Verdict::Pass
    }
}

wasmcast_plugin_sdk::export_packet_plugin!(MemoryBomb);
