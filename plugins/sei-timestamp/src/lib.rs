//! Stamps video pictures with the wall-clock time they passed through the server, for measuring
//! latency downstream: each H.264 (or H.265) access unit gets a "user data unregistered" SEI message
//! whose payload is the 16-byte UUID `wasmcast:latency` followed by the time in microseconds since
//! the Unix epoch, 8 bytes big-endian. A player that reads the SEI and compares it with its own clock
//! knows how old the picture is.
//!
//! Config: `every = N` stamps every Nth picture (default 1: all of them).

use serde::Deserialize;
use wasmcast_plugin_sdk::nal::{insert_before_first_slice, sei_user_data_unregistered};
use wasmcast_plugin_sdk::{AccessUnit, Codec, Config, PacketPlugin, Verdict, wall_clock_micros};

/// The UUID that marks our SEI messages, in ASCII.
pub const SEI_UUID: [u8; 16] = *b"wasmcast:latency";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "every_picture")]
    every: u32,
}

fn every_picture() -> u32 {
    1
}

struct SeiTimestamp {
    every: u32,
    /// Pictures since the last stamp.
    pictures: u32,
}

impl PacketPlugin for SeiTimestamp {
    fn new(config: &Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        if settings.every == 0 {
            return Err("config.every: must be at least 1".into());
        }
        Ok(SeiTimestamp {
            every: settings.every,
            pictures: 0,
        })
    }

    /// Audio goes past uncalled.
    fn codecs(&self) -> Vec<Codec> {
        vec![Codec::H264, Codec::H265]
    }

    fn process(&mut self, mut unit: AccessUnit) -> Verdict {
        let h265 = match unit.codec {
            Codec::H264 => false,
            Codec::H265 => true,
            // Named in `codecs` or not, audio is passed on untouched.
            Codec::Aac | Codec::Opus => return Verdict::Pass,
        };
        let stamp = self.pictures == 0;
        self.pictures = (self.pictures + 1) % self.every;
        if !stamp {
            return Verdict::Pass;
        }
        let sei = sei_user_data_unregistered(h265, &SEI_UUID, &wall_clock_micros().to_be_bytes());
        unit.data = insert_before_first_slice(&unit.data, &sei, h265);
        Verdict::Replace(vec![unit])
    }
}

wasmcast_plugin_sdk::export_packet_plugin!(SeiTimestamp);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmcast_plugin_sdk::nal;

    #[test]
    fn a_stamp_goes_before_the_first_slice_with_our_uuid() {
        let unit = AccessUnit {
            track: 0,
            codec: Codec::H264,
            clock_rate: 90_000,
            pts: 0,
            dts: 0,
            keyframe: true,
            data: vec![
                0, 0, 0, 1, 0x67, 1, 0, 0, 0, 1, 0x68, 2, 0, 0, 0, 1, 0x65, 3,
            ],
        };
        let mut plugin = SeiTimestamp {
            every: 1,
            pictures: 0,
        };
        let Verdict::Replace(units) = plugin.process(unit) else {
            panic!("a stamped unit");
        };
        let nals: Vec<_> = nal::units(&units[0].data).collect();
        let types: Vec<u8> = nals.iter().map(|n| n.h264_type()).collect();
        assert_eq!(types, [7, 8, 6, 5]);
        // SEI header, payload type 5, size 24, then the UUID.
        assert_eq!(&nals[2].data[3..19], &SEI_UUID);
    }
}
