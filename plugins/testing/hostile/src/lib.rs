//! One plugin per way of holding the host hostage, chosen by its `attack` config key; each must be
//! stopped by a limit while the route keeps flowing:
//! - `sleep-process`: sleeps an hour in every call (a blocking WASI call, not wasm code);
//! - `sleep-init`: sleeps an hour in `init`;
//! - `replace-flood`: answers every unit with a hundred thousand copies of it;
//! - `log-flood`: writes a thousand log lines and a megabyte to stdout per unit.

use std::time::Duration;

use wasmcast_plugin_sdk::{AccessUnit, Config, Level, PacketPlugin, Verdict, log};

enum Attack {
    SleepProcess,
    ReplaceFlood,
    LogFlood,
}

struct Hostile {
    attack: Attack,
}

const HOUR: Duration = Duration::from_secs(3600);

impl PacketPlugin for Hostile {
    fn new(config: &Config) -> Result<Self, String> {
        let attack = match config.get::<String>("attack")?.as_deref() {
            Some("sleep-process") => Attack::SleepProcess,
            Some("sleep-init") => {
                std::thread::sleep(HOUR);
                Attack::SleepProcess
            }
            Some("replace-flood") => Attack::ReplaceFlood,
            Some("log-flood") => Attack::LogFlood,
            other => return Err(format!("unknown attack {other:?}")),
        };
        Ok(Hostile { attack })
    }

    fn process(&mut self, unit: AccessUnit) -> Verdict {
        match self.attack {
            Attack::SleepProcess => {
                std::thread::sleep(HOUR);
                Verdict::Pass
            }
            Attack::ReplaceFlood => {
                let empty = AccessUnit {
                    data: Vec::new(),
                    ..unit
                };
                Verdict::Replace(vec![empty; 100_000])
            }
            Attack::LogFlood => {
                for i in 0..1000 {
                    log(Level::Info, &format!("flood line {i}"));
                }
                let line = "x".repeat(1023);
                for _ in 0..1024 {
                    println!("{line}");
                }
                Verdict::Pass
            }
        }
    }
}

wasmcast_plugin_sdk::export_packet_plugin!(Hostile);
