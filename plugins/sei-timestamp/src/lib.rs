//! Stamps video pictures with the wall-clock time they passed through the server, for measuring
//! latency downstream: each H.264 (or H.265) access unit gets a "user data unregistered" SEI message
//! whose payload is the 16-byte UUID `wasmcast:latency` followed by the time in microseconds since
//! the Unix epoch, 8 bytes big-endian. A player that reads the SEI and compares it with its own clock
//! knows how old the picture is.
//!
//! Config: `every = N` stamps every Nth picture (default 1: all of them).

use serde::Deserialize;
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

    fn process(&mut self, mut unit: AccessUnit) -> Verdict {
        let h265 = match unit.codec {
            Codec::H264 => false,
            Codec::H265 => true,
            Codec::Aac | Codec::Opus => return Verdict::Pass,
        };
        let stamp = self.pictures == 0;
        self.pictures = (self.pictures + 1) % self.every;
        if !stamp {
            return Verdict::Pass;
        }
        let sei = sei_nal(h265, wall_clock_micros());
        unit.data = insert_before_first_slice(&unit.data, &sei, h265);
        Verdict::Replace(vec![unit])
    }
}

/// A whole SEI NAL unit with its start code: one user-data-unregistered message.
fn sei_nal(h265: bool, micros: u64) -> Vec<u8> {
    let mut payload = Vec::with_capacity(24);
    payload.extend_from_slice(&SEI_UUID);
    payload.extend_from_slice(&micros.to_be_bytes());
    let mut rbsp = vec![5, payload.len() as u8];
    rbsp.extend_from_slice(&payload);
    rbsp.push(0x80);
    let mut nal = vec![0, 0, 0, 1];
    if h265 {
        // PREFIX_SEI_NUT (39), layer 0, temporal id 1.
        nal.extend_from_slice(&[39 << 1, 1]);
    } else {
        nal.push(6);
    }
    escape_emulation(&rbsp, &mut nal);
    nal
}

/// Appends `rbsp` to `out` with an emulation prevention byte wherever two zeros precede a byte ≤ 3.
fn escape_emulation(rbsp: &[u8], out: &mut Vec<u8>) {
    let mut zeros = 0;
    for &byte in rbsp {
        if zeros >= 2 && byte <= 3 {
            out.push(3);
            zeros = 0;
        }
        out.push(byte);
        zeros = if byte == 0 { zeros + 1 } else { 0 };
    }
}

/// `unit` with `nal` placed in front of its first slice (SEI messages precede the picture's slices
/// and follow its delimiter and parameter sets).
fn insert_before_first_slice(unit: &[u8], nal: &[u8], h265: bool) -> Vec<u8> {
    let at = first_slice_start(unit, h265).unwrap_or(unit.len());
    let mut out = Vec::with_capacity(unit.len() + nal.len());
    out.extend_from_slice(&unit[..at]);
    out.extend_from_slice(nal);
    out.extend_from_slice(&unit[at..]);
    out
}

/// Where the start code of the first slice NAL unit begins.
fn first_slice_start(unit: &[u8], h265: bool) -> Option<usize> {
    let mut i = 0;
    while i + 3 < unit.len() {
        if unit[i] == 0 && unit[i + 1] == 0 && unit[i + 2] == 1 {
            let header = unit[i + 3];
            let slice = if h265 {
                (header >> 1) & 0x3f < 32
            } else {
                matches!(header & 0x1f, 1..=5)
            };
            if slice {
                // Take a four-byte start code whole.
                return Some(if i > 0 && unit[i - 1] == 0 { i - 1 } else { i });
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    None
}

wasmcast_plugin_sdk::export_packet_plugin!(SeiTimestamp);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sei_goes_before_the_first_slice() {
        let unit = [
            0, 0, 0, 1, 0x67, 1, 0, 0, 0, 1, 0x68, 2, 0, 0, 0, 1, 0x65, 3,
        ];
        let out = insert_before_first_slice(&unit, &[0, 0, 0, 1, 6, 9], false);
        assert_eq!(&out[..12], &unit[..12]);
        assert_eq!(&out[12..18], &[0, 0, 0, 1, 6, 9]);
        assert_eq!(&out[18..], &unit[12..]);
    }

    #[test]
    fn escapes_start_code_emulation() {
        let mut out = Vec::new();
        escape_emulation(&[0, 0, 1, 0, 0, 0, 7], &mut out);
        assert_eq!(out, [0, 0, 3, 1, 0, 0, 3, 0, 7]);
    }
}
