//! H.264 and H.265 access units as packet plugins get them: Annex B byte streams, each NAL unit
//! after a start code (`00 00 01`, or `00 00 00 01`). Iterate their NAL units, find the first
//! slice, and write SEI messages of your own.
//!
//! ```
//! use wasmcast_plugin_sdk::nal;
//!
//! let unit = [0, 0, 0, 1, 0x67, 0x42, 0, 0, 1, 0x65, 0x88];
//! let types: Vec<u8> = nal::units(&unit).map(|nal| nal.h264_type()).collect();
//! assert_eq!(types, [7, 5]);
//!
//! let sei = nal::sei_user_data_unregistered(false, &[0x11; 16], b"hello");
//! let stamped = nal::insert_before_first_slice(&unit, &sei, false);
//! assert_eq!(nal::units(&stamped).map(|nal| nal.h264_type()).collect::<Vec<_>>(), [7, 6, 5]);
//! ```

/// One NAL unit of an access unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NalUnit<'a> {
    /// Where its start code begins in the access unit (a four-byte one counted whole).
    pub start: usize,
    /// The NAL unit itself, header first, without its start code.
    pub data: &'a [u8],
}

impl NalUnit<'_> {
    /// The H.264 `nal_unit_type` (1–5 slices, 5 IDR, 6 SEI, 7 SPS, 8 PPS, 9 delimiter).
    pub fn h264_type(&self) -> u8 {
        self.data.first().map_or(0, |header| header & 0x1f)
    }

    /// The H.265 `nal_unit_type` (0–31 slices, 32 VPS, 33 SPS, 34 PPS, 35 delimiter, 39/40 SEI).
    pub fn h265_type(&self) -> u8 {
        self.data.first().map_or(0, |header| (header >> 1) & 0x3f)
    }

    /// Whether it holds a slice of the picture (H.265 when `h265`, else H.264).
    pub fn is_slice(&self, h265: bool) -> bool {
        if h265 {
            self.h265_type() < 32
        } else {
            matches!(self.h264_type(), 1..=5)
        }
    }
}

/// The NAL units of `unit`, in order. Bytes before the first start code are skipped.
pub fn units(unit: &[u8]) -> NalUnits<'_> {
    NalUnits {
        unit,
        next: next_start_code(unit, 0),
    }
}

/// Iterator over the NAL units of an access unit; see [`units`].
#[derive(Clone, Debug)]
pub struct NalUnits<'a> {
    unit: &'a [u8],
    /// The next start code: where it begins and where its NAL unit begins.
    next: Option<(usize, usize)>,
}

impl<'a> Iterator for NalUnits<'a> {
    type Item = NalUnit<'a>;

    fn next(&mut self) -> Option<NalUnit<'a>> {
        let (start, body) = self.next?;
        self.next = next_start_code(self.unit, body);
        let end = self.next.map_or(self.unit.len(), |(next, _)| next);
        Some(NalUnit {
            start,
            data: &self.unit[body..end],
        })
    }
}

/// The first start code at or after `from`: where it begins (its leading zero of a four-byte one)
/// and where the NAL unit after it begins.
fn next_start_code(unit: &[u8], from: usize) -> Option<(usize, usize)> {
    let at = from + unit.get(from..)?.windows(3).position(|w| w == [0, 0, 1])?;
    let start = if at > from && unit[at - 1] == 0 {
        at - 1
    } else {
        at
    };
    Some((start, at + 3))
}

/// Where the start code of the first slice NAL unit begins, if there is one.
pub fn first_slice_start(unit: &[u8], h265: bool) -> Option<usize> {
    units(unit)
        .find(|nal| nal.is_slice(h265))
        .map(|nal| nal.start)
}

/// `unit` with `nal` (a whole NAL unit with its start code) placed in front of its first slice:
/// SEI messages go after the delimiter and parameter sets and before the picture's slices. With
/// no slice, `nal` goes at the end.
pub fn insert_before_first_slice(unit: &[u8], nal: &[u8], h265: bool) -> Vec<u8> {
    let at = first_slice_start(unit, h265).unwrap_or(unit.len());
    let mut out = Vec::with_capacity(unit.len() + nal.len());
    out.extend_from_slice(&unit[..at]);
    out.extend_from_slice(nal);
    out.extend_from_slice(&unit[at..]);
    out
}

/// A whole SEI NAL unit, start code included, holding one user-data-unregistered message
/// (payload type 5): the 16-byte `uuid` that names your format, then `payload`. Players that do
/// not know the UUID skip it; `ffprobe -show_frames` and GStreamer's `h264parse` list it.
pub fn sei_user_data_unregistered(h265: bool, uuid: &[u8; 16], payload: &[u8]) -> Vec<u8> {
    let size = uuid.len() + payload.len();
    let mut rbsp = Vec::with_capacity(size + size / 255 + 4);
    rbsp.push(5);
    // payload_size: a 0xff byte per whole 255, then the rest.
    rbsp.extend(std::iter::repeat_n(0xff, size / 255));
    rbsp.push((size % 255) as u8);
    rbsp.extend_from_slice(uuid);
    rbsp.extend_from_slice(payload);
    // rbsp_trailing_bits.
    rbsp.push(0x80);
    let mut nal = Vec::with_capacity(rbsp.len() + rbsp.len() / 64 + 6);
    nal.extend_from_slice(&[0, 0, 0, 1]);
    if h265 {
        // PREFIX_SEI_NUT (39), layer 0, temporal id 1.
        nal.extend_from_slice(&[39 << 1, 1]);
    } else {
        nal.push(6);
    }
    escape_emulation(&rbsp, &mut nal);
    nal
}

/// Appends `rbsp` to `out` with an emulation prevention byte (`03`) wherever two zeros precede a
/// byte of 3 or less, so the NAL unit's bytes never look like a start code.
pub fn escape_emulation(rbsp: &[u8], out: &mut Vec<u8>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_found_after_three_and_four_byte_start_codes() {
        let unit = [
            9, 9, 0, 0, 0, 1, 0x67, 1, 0, 0, 1, 0x68, 2, 0, 0, 0, 1, 0x65, 3, 0,
        ];
        let found: Vec<(usize, &[u8])> = units(&unit).map(|n| (n.start, n.data)).collect();
        assert_eq!(
            found,
            [
                (2, &[0x67, 1][..]),
                (8, &[0x68, 2][..]),
                (13, &[0x65, 3, 0][..])
            ]
        );
        assert_eq!(first_slice_start(&unit, false), Some(13));
        assert!(units(&[1, 2, 3]).next().is_none());
    }

    #[test]
    fn h265_types_and_slices() {
        let unit = [
            0,
            0,
            1,
            32 << 1,
            1,
            0,
            0,
            1,
            39 << 1,
            1,
            0,
            0,
            1,
            19 << 1,
            1,
        ];
        let types: Vec<u8> = units(&unit).map(|n| n.h265_type()).collect();
        assert_eq!(types, [32, 39, 19]);
        assert_eq!(first_slice_start(&unit, true), Some(10));
    }

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

    #[test]
    fn sei_payload_sizes_past_255_take_ff_bytes() {
        let payload = vec![7u8; 300];
        let sei = sei_user_data_unregistered(false, &[0xab; 16], &payload);
        assert_eq!(&sei[..5], &[0, 0, 0, 1, 6]);
        // 316 bytes: one 0xff and 61.
        assert_eq!(&sei[5..8], &[5, 0xff, 61]);
        assert_eq!(&sei[8..24], &[0xab; 16]);
        assert_eq!(*sei.last().unwrap(), 0x80);
        let nal = units(&sei).next().unwrap();
        assert_eq!(nal.h264_type(), 6);
    }
}
