//! MP4 demuxing: sample tables to access units.
//!
//! [`Mp4Media::parse`] reads the boxes (not `mdat`) once; [`Mp4Media::access_unit`] turns one sample's
//! bytes into an Annex B or raw AAC [`AccessUnit`] on a timeline that keeps counting across loops.
//! Reading the bytes is the caller's business.

use std::io::{Read, Seek, SeekFrom};
use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::{BufMut, Bytes, BytesMut};
use re_mp4::{Mp4, StsdBoxContent};

use super::Error;
use crate::media::{AAC_SAMPLE_RATES, AccessUnit, Codec, StreamDescription, Track};

const NANOS_PER_SECOND: i128 = 1_000_000_000;
/// A sample larger than this is taken as corruption rather than read into memory.
pub const MAX_SAMPLE_SIZE: u64 = 64 << 20;

const START_CODE: [u8; 4] = [0, 0, 0, 1];
/// The largest index (moov or moof box) read into memory.
const MAX_INDEX_SIZE: usize = 256 << 20;

/// Where a sample is and when it plays, in the track's own timescale.
#[derive(Clone, Copy, Debug)]
pub struct SampleRef {
    pub offset: u64,
    pub size: u64,
    pub dts: i64,
    pub pts: i64,
    pub sync: bool,
}

#[derive(Debug)]
struct FileTrack {
    codec: Codec,
    /// AVCC/HVCC NAL length field size; `None` for audio.
    length_size: Option<usize>,
    /// Parameter sets to put in front of every keyframe, in Annex B.
    parameter_sets: Bytes,
    timescale: i128,
    samples: Vec<SampleRef>,
}

/// One sample in playing order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scheduled {
    pub track: usize,
    pub sample: usize,
    /// Decode time from the start of the file's timeline (never negative).
    pub at_nanos: u64,
}

/// The playable tracks of one MP4 file.
#[derive(Debug)]
pub struct Mp4Media {
    description: StreamDescription,
    tracks: Vec<FileTrack>,
    schedule: Vec<Scheduled>,
    /// How far the timeline advances on each loop, so timestamps never go backwards.
    period_nanos: i128,
    /// Added to every decode time so the earliest is zero.
    dts_shift_nanos: i128,
    skipped: Vec<String>,
}

/// Where an audio track's presentation starts on its own clock, by its edit list: AAC encoders
/// put out a frame or two of priming first (ffmpeg's: 1024 samples), which the edit list skips.
/// Taking it off every sample's time makes a unit's time the moment its decoded sound plays, as
/// in MPEG-TS and RTP. Edits of more than a second are not priming and are left alone.
fn presentation_start(trak: &re_mp4::TrakBox, timescale: u64) -> i64 {
    trak.edts
        .as_ref()
        .and_then(|edts| edts.elst.as_ref())
        .and_then(|elst| {
            // An empty edit (media time -1, stored as all ones) is a gap, not a start.
            elst.entries
                .iter()
                .map(|e| e.media_time)
                .find(|&t| t != u64::MAX && t != u64::from(u32::MAX))
        })
        .filter(|&t| t <= timescale)
        .map_or(0, |t| t as i64)
}

impl Mp4Media {
    /// Reads the file's boxes. `size` is the file's length.
    pub fn parse<R: Read + Seek>(mut reader: R, size: u64) -> Result<Mp4Media, Error> {
        check_index(&mut reader, size)?;
        // re_mp4 indexes its tables without bounds checks; a corrupt file must not take the
        // server down, so a panic in it is this file's error.
        let mp4 = catch_unwind(AssertUnwindSafe(|| Mp4::read(reader, size)))
            .map_err(|_| Error::Corrupt("inconsistent sample tables".into()))?
            .map_err(|err| Error::Corrupt(err.to_string()))?;
        let mut tracks = Vec::new();
        let mut skipped = Vec::new();
        for (id, track) in mp4.tracks() {
            let trak = mp4.moov.traks.iter().find(|t| t.tkhd.track_id == *id);
            let Some(trak) = trak else { continue };
            let described = describe(&trak.mdia.minf.stbl.stsd.contents);
            let (codec, length_size, parameter_sets, dimensions) = match described {
                Ok(described) => described,
                Err(why) => {
                    skipped.push(format!("track {id}: {why}"));
                    continue;
                }
            };
            if track.samples.is_empty() || track.timescale == 0 {
                skipped.push(format!("track {id}: no samples"));
                continue;
            }
            let start = if codec.is_video() {
                0
            } else {
                presentation_start(trak, track.timescale)
            };
            let samples = track
                .samples
                .iter()
                .map(|s| SampleRef {
                    offset: s.offset,
                    size: s.size,
                    dts: s.decode_timestamp - start,
                    pts: s.composition_timestamp - start,
                    sync: s.is_sync,
                })
                .collect();
            tracks.push((
                FileTrack {
                    codec: codec.clone(),
                    length_size,
                    parameter_sets,
                    timescale: i128::from(track.timescale),
                    samples,
                },
                Track { codec, dimensions },
            ));
        }
        if tracks.is_empty() {
            return Err(Error::NoTracks(skipped.join("; ")));
        }
        let (tracks, described): (Vec<FileTrack>, Vec<Track>) = tracks.into_iter().unzip();
        Ok(Mp4Media::new(tracks, described, skipped))
    }

    fn new(tracks: Vec<FileTrack>, described: Vec<Track>, skipped: Vec<String>) -> Mp4Media {
        let nanos = |t: &FileTrack, ticks: i64| i128::from(ticks) * NANOS_PER_SECOND / t.timescale;
        let min_dts = tracks
            .iter()
            .filter_map(|t| t.samples.first().map(|s| nanos(t, s.dts)))
            .min()
            .unwrap_or(0);
        let mut period_nanos = 0;
        let mut schedule = Vec::new();
        for (index, track) in tracks.iter().enumerate() {
            // The last sample lasts as long as the one before it.
            let frame = match track.samples.as_slice() {
                [.., before, last] => last.dts - before.dts,
                _ => track.timescale as i64 / 25,
            };
            for (i, sample) in track.samples.iter().enumerate() {
                let at = nanos(track, sample.dts) - min_dts;
                period_nanos = period_nanos
                    .max(at + nanos(track, frame))
                    .max(nanos(track, sample.pts + frame));
                schedule.push(Scheduled {
                    track: index,
                    sample: i,
                    at_nanos: u64::try_from(at).unwrap_or(0),
                });
            }
        }
        // Stable: samples of one track keep their order when two tracks share a time.
        schedule.sort_by_key(|s| s.at_nanos);
        Mp4Media {
            description: StreamDescription { tracks: described },
            tracks,
            schedule,
            period_nanos: period_nanos.max(1),
            dts_shift_nanos: -min_dts,
            skipped,
        }
    }

    pub fn description(&self) -> &StreamDescription {
        &self.description
    }

    /// Tracks that are in the file but cannot be played, with the reason.
    pub fn skipped_tracks(&self) -> &[String] {
        &self.skipped
    }

    /// Every sample of one pass through the file, in decode order across tracks.
    pub fn schedule(&self) -> &[Scheduled] {
        &self.schedule
    }

    /// The length of one pass, in nanoseconds.
    pub fn period_nanos(&self) -> u64 {
        u64::try_from(self.period_nanos).unwrap_or(u64::MAX)
    }

    pub fn sample(&self, track: usize, sample: usize) -> Option<&SampleRef> {
        self.tracks.get(track)?.samples.get(sample)
    }

    /// Builds the access unit of one sample from its bytes, on pass number `pass` of the file.
    pub fn access_unit(
        &self,
        track: usize,
        sample: usize,
        bytes: &[u8],
        pass: u64,
    ) -> Result<AccessUnit, Error> {
        let file_track = self
            .tracks
            .get(track)
            .ok_or_else(|| Error::Corrupt(format!("no track {track}")))?;
        let sample_ref = file_track
            .samples
            .get(sample)
            .ok_or_else(|| Error::Corrupt(format!("no sample {sample} in track {track}")))?;
        let clock = i128::from(file_track.codec.clock_rate());
        let pass_nanos = i128::from(pass) * self.period_nanos;
        // Each timestamp is derived from absolute time, so loops never accumulate rounding.
        let ticks = |t: i64| {
            let nanos = pass_nanos
                + self.dts_shift_nanos
                + i128::from(t) * NANOS_PER_SECOND / file_track.timescale;
            i64::try_from(nanos * clock / NANOS_PER_SECOND).unwrap_or(i64::MAX)
        };
        let data = match file_track.length_size {
            Some(length_size) => {
                let nal_type_of: fn(u8) -> u8 = match file_track.codec {
                    Codec::H265 { .. } => |b| (b >> 1) & 0x3f,
                    _ => |b| b & 0x1f,
                };
                let parameter_set_types: &[u8] = match file_track.codec {
                    Codec::H265 { .. } => &[32, 33, 34],
                    _ => &[7, 8],
                };
                let prefix = if sample_ref.sync {
                    &file_track.parameter_sets[..]
                } else {
                    &[]
                };
                avcc_to_annex_b(bytes, length_size, prefix, |first| {
                    parameter_set_types.contains(&nal_type_of(first))
                })
                .map_err(|why| Error::Corrupt(format!("track {track} sample {sample}: {why}")))?
            }
            None => Bytes::copy_from_slice(bytes),
        };
        Ok(AccessUnit {
            track,
            pts: ticks(sample_ref.pts),
            dts: ticks(sample_ref.dts),
            keyframe: sample_ref.sync,
            data,
        })
    }
}

/// Checks the index boxes (moov, moof) before re_mp4 reads them, for two kinds of corruption it does
/// not survive: a child box whose size is smaller than its header (re_mp4 then loops forever on it),
/// and a sample table that claims more samples than the file has bytes (re_mp4 builds one entry per
/// claimed sample first, so a count of billions takes minutes and gigabytes).
fn check_index<R: Read + Seek>(reader: &mut R, size: u64) -> Result<(), Error> {
    let io = |err: std::io::Error| Error::Corrupt(err.to_string());
    let mut at = 0u64;
    while at + 8 <= size {
        reader.seek(SeekFrom::Start(at)).map_err(io)?;
        let mut header = [0u8; 16];
        reader.read_exact(&mut header[..8]).map_err(io)?;
        let mut box_size = u64::from(u32::from_be_bytes([
            header[0], header[1], header[2], header[3],
        ]));
        let mut header_size = 8;
        if box_size == 1 {
            reader.read_exact(&mut header[8..]).map_err(io)?;
            box_size = u64::from_be_bytes([
                header[8], header[9], header[10], header[11], header[12], header[13], header[14],
                header[15],
            ]);
            header_size = 16;
        } else if box_size == 0 {
            box_size = size - at;
        }
        if box_size < header_size || box_size > size - at {
            return Err(Error::Corrupt(format!(
                "a `{}` box of {box_size} bytes at offset {at} runs past the end of the {size}-byte file",
                String::from_utf8_lossy(&header[4..8])
            )));
        }
        if matches!(&header[4..8], b"moov" | b"moof") {
            let payload = usize::try_from(box_size - header_size)
                .ok()
                .filter(|&len| len <= MAX_INDEX_SIZE)
                .ok_or_else(|| Error::Corrupt(format!("a {box_size}-byte index box")))?;
            let mut index = vec![0u8; payload];
            reader.read_exact(&mut index).map_err(io)?;
            check_children(&index, 0)?;
            for (name, count_at) in [(b"stsz", 8), (b"trun", 4)] {
                for found in index
                    .windows(4)
                    .enumerate()
                    .filter(|(_, w)| w == name)
                    .map(|(i, _)| i)
                {
                    let count = index
                        .get(found + 4 + count_at..found + 8 + count_at)
                        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                    if u64::from(count) > size {
                        return Err(Error::Corrupt(format!(
                            "a sample table claims {count} samples in a file of {size} bytes"
                        )));
                    }
                }
            }
        }
        at += box_size;
    }
    reader.seek(SeekFrom::Start(0)).map_err(io)?;
    Ok(())
}

/// Boxes made of other boxes, which re_mp4 walks child by child.
const CONTAINERS: [&[u8; 4]; 12] = [
    b"moov", b"trak", b"mdia", b"minf", b"stbl", b"dinf", b"edts", b"mvex", b"moof", b"traf",
    b"udta", b"ilst",
];

/// Every child box of `data` (a container's payload) has a sane size, recursively.
fn check_children(data: &[u8], depth: usize) -> Result<(), Error> {
    let mut at = 0;
    while let Some(header) = data.get(at..at + 8) {
        let mut size = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let mut header_size = 8;
        if size == 1 {
            let Some(large) = data.get(at + 8..at + 16) else {
                break;
            };
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(large);
            size = usize::try_from(u64::from_be_bytes(bytes)).unwrap_or(usize::MAX);
            header_size = 16;
        }
        if size < header_size || size > data.len() - at {
            return Err(Error::Corrupt(format!(
                "a `{}` box of {size} bytes does not fit its container",
                String::from_utf8_lossy(&header[4..8])
            )));
        }
        let payload = &data[at + header_size..at + size];
        if depth < 16 && CONTAINERS.iter().any(|c| c[..] == header[4..8]) {
            check_children(payload, depth + 1)?;
        } else if depth < 16 && &header[4..8] == b"meta" {
            // A full box: version and flags come before its children.
            check_children(payload.get(4..).unwrap_or(&[]), depth + 1)?;
        }
        at += size;
    }
    Ok(())
}

type Described = (Codec, Option<usize>, Bytes, Option<(u32, u32)>);

fn describe(contents: &StsdBoxContent) -> Result<Described, String> {
    match contents {
        StsdBoxContent::Avc1(avc1) => {
            let avcc = &avc1.avcc.contents;
            let sps = avcc.sequence_parameter_sets.first();
            let pps = avcc.picture_parameter_sets.first();
            let (Some(sps), Some(pps)) = (sps, pps) else {
                return Err("H.264 track without SPS/PPS in its avcC box".into());
            };
            let sets = [&sps.bytes[..], &pps.bytes[..]];
            Ok((
                Codec::H264 {
                    sps: Bytes::copy_from_slice(&sps.bytes),
                    pps: Bytes::copy_from_slice(&pps.bytes),
                },
                Some(usize::from(avcc.length_size_minus_one & 3) + 1),
                annex_b(&sets),
                Some((u32::from(avc1.width), u32::from(avc1.height))),
            ))
        }
        StsdBoxContent::Hvc1(hevc) | StsdBoxContent::Hev1(hevc) => {
            let hvcc = &hevc.hvcc.contents;
            let find = |nal_type: u8| {
                hvcc.arrays
                    .iter()
                    .find(|a| a.nal_unit_type & 0x3f == nal_type)
                    .and_then(|a| a.nalus.first())
                    .map(|n| &n.data[..])
            };
            let (Some(vps), Some(sps), Some(pps)) = (find(32), find(33), find(34)) else {
                return Err("H.265 track without VPS/SPS/PPS in its hvcC box".into());
            };
            Ok((
                Codec::H265 {
                    vps: Bytes::copy_from_slice(vps),
                    sps: Bytes::copy_from_slice(sps),
                    pps: Bytes::copy_from_slice(pps),
                },
                Some(usize::from(hvcc.length_size_minus_one & 3) + 1),
                annex_b(&[vps, sps, pps]),
                Some((u32::from(hevc.width), u32::from(hevc.height))),
            ))
        }
        StsdBoxContent::Mp4a(mp4a) => {
            let Some(esds) = &mp4a.esds else {
                return Err("AAC track without an esds box".into());
            };
            let specific = &esds.es_desc.dec_config.dec_specific;
            if specific.profile == 0 || specific.profile > 30 {
                return Err(format!(
                    "AAC object type {} is not supported",
                    specific.profile
                ));
            }
            let sample_rate = AAC_SAMPLE_RATES
                .get(usize::from(specific.freq_index))
                .copied()
                .unwrap_or(u32::from(mp4a.samplerate.value()));
            let config = [
                (specific.profile << 3) | (specific.freq_index >> 1),
                ((specific.freq_index & 1) << 7) | ((specific.chan_conf & 0x0f) << 3),
            ];
            Ok((
                Codec::Aac {
                    config: Bytes::copy_from_slice(&config),
                    sample_rate,
                    channels: u16::from(specific.chan_conf).max(1),
                },
                None,
                Bytes::new(),
                None,
            ))
        }
        other => Err(format!(
            "codec {} is not supported (H.264, H.265 and AAC are)",
            other.codec_string().unwrap_or_else(|| "unknown".into())
        )),
    }
}

fn annex_b(nals: &[&[u8]]) -> Bytes {
    let mut out = BytesMut::new();
    for nal in nals {
        out.put_slice(&START_CODE);
        out.put_slice(nal);
    }
    out.freeze()
}

/// Converts length-prefixed NAL units to Annex B, with `prefix` (parameter sets) in front unless the
/// sample carries its own (`is_parameter_set` looks at a NAL's first byte).
fn avcc_to_annex_b(
    mut data: &[u8],
    length_size: usize,
    prefix: &[u8],
    is_parameter_set: impl Fn(u8) -> bool,
) -> Result<Bytes, String> {
    let mut out = BytesMut::with_capacity(prefix.len() + data.len() + 16);
    let mut has_parameter_sets = false;
    while !data.is_empty() {
        let Some(length_bytes) = data.get(..length_size) else {
            return Err("truncated NAL length".into());
        };
        let length = length_bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        let Some(nal) = data.get(length_size..length_size + length) else {
            return Err(format!("NAL of {length} bytes runs past the sample"));
        };
        data = &data[length_size + length..];
        let Some(&first) = nal.first() else { continue };
        has_parameter_sets |= is_parameter_set(first);
        out.put_slice(&START_CODE);
        out.put_slice(nal);
    }
    if out.is_empty() {
        return Err("sample holds no NAL unit".into());
    }
    if prefix.is_empty() || has_parameter_sets {
        return Ok(out.freeze());
    }
    let mut with_prefix = BytesMut::with_capacity(prefix.len() + out.len());
    with_prefix.put_slice(prefix);
    with_prefix.put_slice(&out);
    Ok(with_prefix.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avcc_becomes_annex_b_with_parameter_sets_on_keyframes() {
        let sample = [0, 0, 0, 2, 0x65, 0xaa, 0, 0, 0, 1, 0x06];
        let prefix = annex_b(&[&[0x67, 1], &[0x68, 2]]);
        let out = avcc_to_annex_b(&sample, 4, &prefix, |b| matches!(b & 0x1f, 7 | 8)).unwrap();
        assert_eq!(
            &out[..],
            &[
                0, 0, 0, 1, 0x67, 1, 0, 0, 0, 1, 0x68, 2, 0, 0, 0, 1, 0x65, 0xaa, 0, 0, 0, 1, 0x06
            ]
        );
    }

    #[test]
    fn sample_with_its_own_parameter_sets_gets_no_prefix() {
        let sample = [0, 2, 0x67, 9, 0, 1, 0x65];
        let prefix = annex_b(&[&[0x67, 1]]);
        let out = avcc_to_annex_b(&sample, 2, &prefix, |b| matches!(b & 0x1f, 7 | 8)).unwrap();
        assert_eq!(&out[..], &[0, 0, 0, 1, 0x67, 9, 0, 0, 0, 1, 0x65]);
    }

    #[test]
    fn corrupt_lengths_are_errors() {
        assert!(avcc_to_annex_b(&[0, 0, 0, 9, 1], 4, &[], |_| false).is_err());
        assert!(avcc_to_annex_b(&[0, 0], 4, &[], |_| false).is_err());
        assert!(avcc_to_annex_b(&[], 4, &[], |_| false).is_err());
    }

    #[test]
    fn a_sample_count_beyond_the_file_is_refused_at_once() {
        let mut file = vec![
            0, 0, 0, 16, b'f', b't', b'y', b'p', b'i', b's', b'o', b'm', 0, 0, 0, 0,
        ];
        let stsz = [
            0, 0, 0, 20, b's', b't', b's', b'z', 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff,
        ];
        file.extend_from_slice(&[0, 0, 0, 28, b'm', b'o', b'o', b'v']);
        file.extend_from_slice(&stsz);
        let size = file.len() as u64;
        let err = Mp4Media::parse(std::io::Cursor::new(file), size).expect_err("refused");
        assert!(
            err.to_string().contains("claims 4294967295 samples"),
            "{err}"
        );
    }

    #[test]
    fn a_box_smaller_than_its_header_is_refused() {
        let mut file = vec![
            0, 0, 0, 16, b'f', b't', b'y', b'p', b'i', b's', b'o', b'm', 0, 0, 0, 0,
        ];
        file.extend_from_slice(&[
            0, 0, 0, 24, b'm', b'o', b'o', b'v', 0, 0, 0, 16, b't', b'r', b'a', b'k',
        ]);
        file.extend_from_slice(&[0, 0, 0, 0, b'm', b'd', b'i', b'a']);
        let size = file.len() as u64;
        let err = Mp4Media::parse(std::io::Cursor::new(file), size).expect_err("refused");
        assert!(err.to_string().contains("`mdia` box of 0 bytes"), "{err}");
    }

    #[test]
    fn garbage_is_a_parse_error_not_a_panic() {
        let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
        let size = garbage.len() as u64;
        assert!(Mp4Media::parse(std::io::Cursor::new(garbage), size).is_err());
    }
}
