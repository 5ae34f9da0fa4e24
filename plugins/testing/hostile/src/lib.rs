//! One plugin per way of holding the host hostage, chosen by its `attack` config key; each must be
//! stopped by a limit while the route keeps flowing:
//! - `sleep-process`: sleeps an hour in every call (a blocking WASI call, not wasm code);
//! - `sleep-init`: sleeps an hour in `init`;
//! - `replace-flood`: answers every unit with a hundred thousand copies of it;
//! - `log-flood`: writes a thousand log lines and a megabyte to stdout per unit;
//! - `false-keyframes`: marks every video unit a keyframe (what new readers would start from);
//! - `time-travel`: hands each unit back a second earlier than the last it returned;
//! - `event-flood`: emits a thousand events per unit (and some with a bad name or a payload too
//!   big), sets a new metric name per unit, and hands over a 32 MiB snapshot;
//! - `restore-trap`: panics when it is given a saved state (then passes units on);
//! - `socket-flood`: with `network` granted, opens a thousand sockets per unit and never closes
//!   them (the host's file descriptors are what it is after);
//! - `wants-flood`: names 200 million codecs it wants (what the host would copy out of it);
//! - `hog`: spins for `spin_ms` (default 30) in every call, within its time limit but slower than
//!   its route (what it is after is a core, for good);
//! - `snapshot-hog`: spins for `spin_ms` (default 30) in every snapshot of its state, and takes
//!   nothing in its calls.

use std::time::Duration;

use wasmcast_plugin_sdk::{
    AccessUnit, Codec, Config, Level, PacketPlugin, Verdict, emit, log, monotonic_micros,
    set_metric,
};

enum Attack {
    SleepProcess,
    ReplaceFlood,
    LogFlood,
    EventFlood,
    FalseKeyframes,
    TimeTravel,
    RestoreTrap,
    SocketFlood,
    WantsFlood,
    Hog { spin_micros: u64 },
    SnapshotHog { spin_micros: u64 },
}

struct Hostile {
    attack: Attack,
    units: u64,
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
            Some("event-flood") => Attack::EventFlood,
            Some("false-keyframes") => Attack::FalseKeyframes,
            Some("time-travel") => Attack::TimeTravel,
            Some("restore-trap") => Attack::RestoreTrap,
            Some("socket-flood") => Attack::SocketFlood,
            Some("wants-flood") => Attack::WantsFlood,
            Some("hog") => Attack::Hog {
                spin_micros: spin_micros(config)?,
            },
            Some("snapshot-hog") => Attack::SnapshotHog {
                spin_micros: spin_micros(config)?,
            },
            other => return Err(format!("unknown attack {other:?}")),
        };
        Ok(Hostile { attack, units: 0 })
    }

    fn codecs(&self) -> Vec<Codec> {
        match self.attack {
            Attack::WantsFlood => vec![Codec::H264; 200 << 20],
            _ => vec![Codec::H264, Codec::H265, Codec::Aac, Codec::Opus],
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        match self.attack {
            Attack::EventFlood => vec![7; 32 << 20],
            Attack::SnapshotHog { spin_micros } => {
                spin(spin_micros);
                self.units.to_le_bytes().to_vec()
            }
            _ => Vec::new(),
        }
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        if matches!(self.attack, Attack::RestoreTrap) {
            panic!("cannot make sense of a state of {} bytes", snapshot.len());
        }
        Ok(())
    }

    fn process(&mut self, unit: AccessUnit) -> Verdict {
        self.units += 1;
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
            Attack::FalseKeyframes => {
                let video = matches!(unit.codec, Codec::H264 | Codec::H265);
                Verdict::Replace(vec![AccessUnit {
                    keyframe: unit.keyframe || video,
                    ..unit
                }])
            }
            Attack::TimeTravel => {
                let back = i64::from(unit.clock_rate) * i64::try_from(self.units).unwrap_or(0);
                Verdict::Replace(vec![AccessUnit {
                    pts: unit.pts - back,
                    dts: unit.dts - back,
                    ..unit
                }])
            }
            Attack::EventFlood => {
                for i in 0..1000 {
                    let _ = emit("flood", &i);
                }
                let _ = emit("Not A Name!", &0);
                let _ = emit("too-big", &"x".repeat(5000));
                set_metric(&format!("metric-{}", self.units), 1.0);
                Verdict::Pass
            }
            Attack::RestoreTrap | Attack::WantsFlood | Attack::SnapshotHog { .. } => Verdict::Pass,
            Attack::Hog { spin_micros } => {
                spin(spin_micros);
                Verdict::Pass
            }
            Attack::SocketFlood => {
                for _ in 0..1000 {
                    match std::net::TcpListener::bind("127.0.0.1:0") {
                        Ok(listener) => std::mem::forget(listener),
                        Err(err) => {
                            log(Level::Warn, &format!("no more sockets: {err}"));
                            break;
                        }
                    }
                }
                Verdict::Pass
            }
        }
    }
}

/// The `spin_ms` of the config, in microseconds.
fn spin_micros(config: &Config) -> Result<u64, String> {
    Ok(config.get::<u64>("spin_ms")?.unwrap_or(30) * 1000)
}

/// Keeps the core busy for `micros`, in wasm code (not a WASI call that waits).
fn spin(micros: u64) {
    let until = monotonic_micros() + micros;
    while monotonic_micros() < until {}
}

wasmcast_plugin_sdk::export_packet_plugin!(Hostile);
