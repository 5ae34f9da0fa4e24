//! The units that flow through wasmcast: codec descriptions and access units.
//!
//! Sources produce [`AccessUnit`]s described by a [`StreamDescription`]; the router fans them out and
//! the egress protocols read them. Video payloads are Annex B (start codes, parameter sets in front of
//! every keyframe); AAC payloads are raw access units without ADTS headers.

use bytes::Bytes;

/// RTP clock rate of every video track (RFC 6184 / RFC 7798).
pub const VIDEO_CLOCK_RATE: u32 = 90_000;

/// Codec and out-of-band parameters of one track.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Codec {
    H264 {
        sps: Bytes,
        pps: Bytes,
    },
    H265 {
        vps: Bytes,
        sps: Bytes,
        pps: Bytes,
    },
    /// MPEG-4 AAC; `config` is the AudioSpecificConfig.
    Aac {
        config: Bytes,
        sample_rate: u32,
        channels: u16,
    },
}

impl Codec {
    pub fn is_video(&self) -> bool {
        matches!(self, Codec::H264 { .. } | Codec::H265 { .. })
    }

    /// The RTP clock rate for this codec.
    pub fn clock_rate(&self) -> u32 {
        match self {
            Codec::H264 { .. } | Codec::H265 { .. } => VIDEO_CLOCK_RATE,
            Codec::Aac { sample_rate, .. } => *sample_rate,
        }
    }

    /// A short human name, for logs and status pages.
    pub fn name(&self) -> &'static str {
        match self {
            Codec::H264 { .. } => "H264",
            Codec::H265 { .. } => "H265",
            Codec::Aac { .. } => "AAC",
        }
    }
}

/// One track of a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Track {
    pub codec: Codec,
    /// Picture size, when the source knows it.
    pub dimensions: Option<(u32, u32)>,
}

/// The tracks a source publishes, in track-index order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamDescription {
    pub tracks: Vec<Track>,
}

impl StreamDescription {
    /// The index of the first video track, which decides where readers may start.
    pub fn video_track(&self) -> Option<usize> {
        self.tracks.iter().position(|t| t.codec.is_video())
    }
}

/// One access unit (a whole picture, or one audio frame) of one track.
///
/// Timestamps are in the track's clock ([`Codec::clock_rate`]) on the source's timeline, which only
/// ever moves forward (a looped file keeps counting across the loop point).
#[derive(Clone, Debug)]
pub struct AccessUnit {
    pub track: usize,
    pub pts: i64,
    pub dts: i64,
    /// A picture a decoder can start from (IDR/IRAP, with parameter sets in front). Audio units are
    /// all keyframes.
    pub keyframe: bool,
    pub data: Bytes,
}

/// Iterates over the NAL units of an Annex B buffer, without their start codes.
pub fn annex_b_nal_units(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = data;
    std::iter::from_fn(move || {
        loop {
            let start = find_start_code(rest)?;
            let after = &rest[start.end..];
            let (nal, next) = match find_start_code(after) {
                Some(next) => (&after[..next.start], &after[next.start..]),
                None => (after, &after[after.len()..]),
            };
            rest = next;
            // Trailing zero bytes belong to the next start code (zero_byte) or are padding.
            let nal = trim_trailing_zeros(nal);
            if !nal.is_empty() {
                return Some(nal);
            }
        }
    })
}

fn trim_trailing_zeros(mut nal: &[u8]) -> &[u8] {
    while let [head @ .., 0] = nal {
        nal = head;
    }
    nal
}

/// The position of the first `00 00 01` start code in `data`.
fn find_start_code(data: &[u8]) -> Option<std::ops::Range<usize>> {
    let mut i = 0;
    while i + 3 <= data.len() {
        // Skip ahead quickly: a start code needs data[i+2] == 1 and two zeros before it.
        match data[i + 2] {
            1 if data[i] == 0 && data[i + 1] == 0 => return Some(i..i + 3),
            0 => i += 1,
            _ => i += 3,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_annex_b_with_three_and_four_byte_start_codes() {
        let data = [
            0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 4, 5, 0,
        ];
        let nals: Vec<&[u8]> = annex_b_nal_units(&data).collect();
        assert_eq!(
            nals,
            vec![&[0x67, 1, 2][..], &[0x68, 3][..], &[0x65, 4, 5][..]]
        );
    }

    #[test]
    fn annex_b_without_start_code_has_no_units() {
        assert_eq!(annex_b_nal_units(&[1, 2, 3, 4]).count(), 0);
        assert_eq!(annex_b_nal_units(&[]).count(), 0);
    }
}
