//! Passes only the video keyframes: a preview at the source's keyframe rate, for thumbnails and
//! low-bandwidth monitoring.
//!
//! Config: `audio = false` drops the audio too. Players still see the audio track in the stream's
//! description and some (ffprobe, OpenCV) wait for it, so audio is kept unless asked.

use serde::Deserialize;
use wasmcast_plugin_sdk::{AccessUnit, Codec, Config, PacketPlugin, Verdict};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "keep")]
    audio: bool,
}

fn keep() -> bool {
    true
}

struct Keyframes {
    settings: Settings,
}

impl PacketPlugin for Keyframes {
    fn new(config: &Config) -> Result<Self, String> {
        Ok(Keyframes {
            settings: config.parse()?,
        })
    }

    fn process(&mut self, unit: AccessUnit) -> Verdict {
        let video = matches!(unit.codec, Codec::H264 | Codec::H265);
        let keep = if video {
            unit.keyframe
        } else {
            self.settings.audio
        };
        if keep { Verdict::Pass } else { Verdict::Drop }
    }
}

wasmcast_plugin_sdk::export_packet_plugin!(Keyframes);
