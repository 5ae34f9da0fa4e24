//! Counts the units it sees, and keeps the count across instances through `snapshot`/`restore`.
//!
//! Metrics: `count` (units counted, carried over), `instance` (a number drawn when the instance
//! starts: it changes only when the host makes a new instance) and `first_unit_keyframe` (1 when
//! the first unit this instance saw was a video keyframe), `video_width` (of the stream it was
//! made for, from `stream-description`). Config: `trap_after`
//! makes each instance panic after that many units of its own, and `label` is any text (changing
//! it is a config change and nothing else).

use serde::Deserialize;
use wasmcast_plugin_sdk::{
    AccessUnit, Codec, Config, Level, PacketPlugin, Verdict, log, set_metric, stream_description,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    trap_after: Option<u64>,
    #[serde(default)]
    label: String,
}

struct Counter {
    count: u64,
    seen_here: u64,
    trap_after: Option<u64>,
}

impl PacketPlugin for Counter {
    fn new(config: &Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        log(
            Level::Info,
            &format!("counting, labelled `{}`", settings.label),
        );
        // The low digits of the clock tell instances apart well enough for a test.
        set_metric(
            "instance",
            (wasmcast_plugin_sdk::monotonic_micros() % 1_000_000) as f64,
        );
        // No unit yet.
        set_metric("first_unit_keyframe", -1.0);
        // The stream it was made for: the width of its video.
        let stream: serde_json::Value = serde_json::from_str(&stream_description())
            .map_err(|err| format!("the stream description is not JSON: {err}"))?;
        let width = stream["tracks"]
            .as_array()
            .and_then(|tracks| tracks.iter().find_map(|t| t["width"].as_f64()))
            .unwrap_or(0.0);
        set_metric("video_width", width);
        Ok(Counter {
            count: 0,
            seen_here: 0,
            trap_after: settings.trap_after,
        })
    }

    fn process(&mut self, unit: AccessUnit) -> Verdict {
        self.count += 1;
        self.seen_here += 1;
        if self.seen_here == 1 {
            let video_keyframe = unit.keyframe && matches!(unit.codec, Codec::H264 | Codec::H265);
            set_metric("first_unit_keyframe", f64::from(u8::from(video_keyframe)));
        }
        set_metric("count", self.count as f64);
        if self.trap_after.is_some_and(|after| self.seen_here >= after) {
            panic!("asked to trap after {} units", self.seen_here);
        }
        Verdict::Pass
    }

    fn snapshot(&self) -> Vec<u8> {
        self.count.to_le_bytes().to_vec()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let bytes: [u8; 8] = snapshot
            .try_into()
            .map_err(|_| format!("a snapshot of {} bytes; 8 expected", snapshot.len()))?;
        self.count = u64::from_le_bytes(bytes);
        set_metric("count", self.count as f64);
        Ok(())
    }
}

wasmcast_plugin_sdk::export_packet_plugin!(Counter);
