//! The units that flow through wasmcast: codec descriptions and access units.
//!
//! Sources produce [`AccessUnit`]s described by a [`StreamDescription`]; the router fans them out and
//! the egress protocols read them. Video payloads are Annex B (start codes, parameter sets in front of
//! every keyframe); AAC payloads are raw access units without ADTS headers.

use bytes::Bytes;

/// RTP clock rate of every video track (RFC 6184 / RFC 7798).
pub const VIDEO_CLOCK_RATE: u32 = 90_000;
/// RTP clock rate of Opus, whatever its sampling rate (RFC 7587).
pub const OPUS_CLOCK_RATE: u32 = 48_000;
/// The sample rates AAC can have, by their index in an AudioSpecificConfig or ADTS header
/// (ISO/IEC 14496-3); an AAC track's RTP clock is one of them.
pub const AAC_SAMPLE_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

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
    /// Opus, always on a 48 kHz clock (RFC 7587).
    Opus {
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
            Codec::Opus { .. } => OPUS_CLOCK_RATE,
        }
    }

    /// A short human name, for logs and status pages.
    pub fn name(&self) -> &'static str {
        match self {
            Codec::H264 { .. } => "H264",
            Codec::H265 { .. } => "H265",
            Codec::Aac { .. } => "AAC",
            Codec::Opus { .. } => "Opus",
        }
    }

    /// The picture size an H.264 track's SPS gives (h264-reader parses it); `None` for other
    /// codecs and for an SPS it cannot read.
    pub fn picture_size(&self) -> Option<(u32, u32)> {
        let Codec::H264 { sps, .. } = self else {
            return None;
        };
        let rbsp = h264_reader::rbsp::decode_nal(sps).ok()?;
        let sps = h264_reader::nal::sps::SeqParameterSet::from_bits(
            h264_reader::rbsp::BitReader::new(&*rbsp),
        )
        .ok()?;
        sps.pixel_dimensions().ok()
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

/// The NAL unit type of an H.264 NAL unit's first byte.
pub fn h264_nal_type(first: u8) -> u8 {
    first & 0x1f
}

/// The NAL unit type of an H.265 NAL unit's first byte.
pub fn h265_nal_type(first: u8) -> u8 {
    (first >> 1) & 0x3f
}

/// What the NAL units of one video access unit say about it.
#[derive(Debug, Default)]
pub struct VideoUnitInfo {
    pub keyframe: bool,
    pub has_parameter_sets: bool,
    /// The codec with the parameter sets found in the unit, if it carries a full set.
    pub codec: Option<Codec>,
}

/// Inspects an Annex B video access unit of `h265` or H.264.
pub fn inspect_video_unit(data: &[u8], h265: bool) -> VideoUnitInfo {
    let mut info = VideoUnitInfo::default();
    let (mut vps, mut sps, mut pps) = (None, None, None);
    for nal in annex_b_nal_units(data) {
        if h265 {
            match h265_nal_type(nal[0]) {
                16..=21 => info.keyframe = true,
                32 => vps = Some(nal),
                33 => sps = Some(nal),
                34 => pps = Some(nal),
                _ => {}
            }
        } else {
            match h264_nal_type(nal[0]) {
                5 => info.keyframe = true,
                7 => sps = Some(nal),
                8 => pps = Some(nal),
                _ => {}
            }
        }
    }
    info.codec = match (h265, vps, sps, pps) {
        (false, _, Some(sps), Some(pps)) => Some(Codec::H264 {
            sps: Bytes::copy_from_slice(sps),
            pps: Bytes::copy_from_slice(pps),
        }),
        (true, Some(vps), Some(sps), Some(pps)) => Some(Codec::H265 {
            vps: Bytes::copy_from_slice(vps),
            sps: Bytes::copy_from_slice(sps),
            pps: Bytes::copy_from_slice(pps),
        }),
        _ => None,
    };
    info.has_parameter_sets = sps.is_some() && pps.is_some();
    info
}

/// A keyframe with the codec's parameter sets in front, unless it carries its own: readers may
/// start on any keyframe.
pub fn with_parameter_sets(codec: &Codec, data: Bytes) -> Bytes {
    let sets: &[&Bytes] = match codec {
        Codec::H264 { sps, pps } => &[sps, pps],
        Codec::H265 { vps, sps, pps } => &[vps, sps, pps],
        Codec::Aac { .. } | Codec::Opus { .. } => return data,
    };
    let mut out = Vec::with_capacity(data.len() + sets.iter().map(|s| s.len() + 4).sum::<usize>());
    for set in sets {
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(set);
    }
    out.extend_from_slice(&data);
    Bytes::from(out)
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

/// A decoded picture in I420 with tight strides: the Y plane (`width` bytes a row), then U and V
/// (`(width + 1) / 2` a row, `(height + 1) / 2` rows).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Picture {
    pub width: u32,
    pub height: u32,
    /// Presentation time in 90 kHz ticks.
    pub pts: i64,
    /// Decoded from an IDR picture (not a copy the frame rate conversion shows again).
    pub keyframe: bool,
    pub data: Vec<u8>,
}

impl Picture {
    /// Bytes of a picture of this size.
    pub fn size_of(width: u32, height: u32) -> usize {
        let (w, h) = (width as usize, height as usize);
        w * h + 2 * w.div_ceil(2) * h.div_ceil(2)
    }

    pub fn chroma_width(&self) -> u32 {
        self.width.div_ceil(2)
    }
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
