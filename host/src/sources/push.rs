//! The `push` source fed over HTTP: an MPEG-TS body (what `ffmpeg -f mpegts http://…` sends)
//! demuxed into access units and published into the route's stream.
//!
//! Sans-IO: the HTTP edge hands over body bytes with the time they arrived; the tracks of the PMT
//! go to a [`LivePublisher`], which starts once their parameters are known.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::live::{LivePublisher, OverBudget, TrackKind};
use super::ts::{Pes, StreamKind, TsDemuxer, TsError};
use crate::hub::{PublishClaim, Stream};
use crate::media::{AAC_SAMPLE_RATES, AccessUnit, Codec, OPUS_CLOCK_RATE};

/// TS bytes after which a stream without one track we can carry is refused.
const MAX_BYTES_WITHOUT_PROGRAM: u64 = 2 << 20;
const TS_CLOCK_RATE: i128 = 90_000;

/// Why a push was refused.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    NotTs(#[from] TsError),
    #[error("the MPEG-TS stream has no H.264, H.265, AAC or Opus track ({0})")]
    NoSupportedStream(String),
    #[error(transparent)]
    OverBudget(#[from] OverBudget),
}

struct IngestTrack {
    pid: u16,
    kind: StreamKind,
    /// The last raw 33-bit timestamp and its unwrapped value.
    last_pts: Option<(u64, i64)>,
}

/// One publisher's MPEG-TS feed.
pub struct TsIngest {
    demuxer: TsDemuxer,
    live: LivePublisher,
    tracks: Vec<IngestTrack>,
    pes: Vec<Pes>,
}

impl TsIngest {
    /// A feed that will publish into the stream `claim` holds.
    pub fn new(stream: Arc<Stream>, claim: PublishClaim) -> TsIngest {
        TsIngest {
            demuxer: TsDemuxer::new(stream.budget().max_unit_bytes),
            live: LivePublisher::new(stream, claim),
            tracks: Vec::new(),
            pes: Vec::new(),
        }
    }

    /// Feeds body bytes that arrived at `now`.
    pub fn push(&mut self, data: &[u8], now: Instant) -> Result<(), IngestError> {
        let mut pes = std::mem::take(&mut self.pes);
        let oversize = self.demuxer.oversize;
        let result = self.demuxer.push(data, &mut pes);
        for _ in oversize..self.demuxer.oversize {
            self.live.refused_over_budget();
        }
        self.take_pes(&mut pes, now);
        self.pes = pes;
        result?;
        self.live.check_budget()?;
        self.check_program(false)
    }

    /// The body ended: publishes what is still buffered.
    pub fn finish(&mut self, now: Instant) -> Result<(), IngestError> {
        let mut pes = std::mem::take(&mut self.pes);
        self.demuxer.finish(&mut pes);
        self.take_pes(&mut pes, now);
        self.check_program(true)
    }

    /// Refuses a stream whose program has nothing we carry, as soon as that is clear.
    fn check_program(&self, ended: bool) -> Result<(), IngestError> {
        if !self.demuxer.streams().is_empty() {
            return Ok(());
        }
        match self.demuxer.unsupported_stream_types() {
            Some(types) => Err(IngestError::NoSupportedStream(format!(
                "its stream types are {}",
                types
                    .iter()
                    .map(|t| format!("0x{t:02x}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            None if ended || self.demuxer.bytes_in() > MAX_BYTES_WITHOUT_PROGRAM => {
                Err(IngestError::NoSupportedStream(format!(
                    "no program table in {} bytes",
                    self.demuxer.bytes_in()
                )))
            }
            None => Ok(()),
        }
    }

    /// The tracks found, for the log.
    pub fn describe(&self) -> String {
        self.live.describe()
    }

    /// Units published so far.
    pub fn units(&self) -> u64 {
        self.live.units
    }

    fn take_pes(&mut self, pes: &mut Vec<Pes>, now: Instant) {
        self.declare_tracks();
        for packet in pes.drain(..) {
            let Some(index) = self.tracks.iter().position(|t| t.pid == packet.pid) else {
                continue;
            };
            // A PES often holds several AAC frames (ffmpeg's TS muxer puts in up to 2930 bytes).
            let units = self.access_units(index, &packet);
            self.live.send_together(units, now);
        }
    }

    /// Declares the PMT's tracks once it is read: video first, then audio, by PID.
    fn declare_tracks(&mut self) {
        if !self.tracks.is_empty() || self.demuxer.streams().is_empty() {
            return;
        }
        let mut streams: Vec<(u16, StreamKind)> = self
            .demuxer
            .streams()
            .iter()
            .map(|(p, k)| (*p, *k))
            .collect();
        streams.sort_by_key(|(pid, kind)| {
            (!matches!(kind, StreamKind::H264 | StreamKind::H265), *pid)
        });
        for (pid, kind) in streams {
            let live_kind = match kind {
                StreamKind::H264 => TrackKind::H264,
                StreamKind::H265 => TrackKind::H265,
                StreamKind::Aac | StreamKind::Opus => TrackKind::Audio,
            };
            self.live.add_track(live_kind, None);
            self.tracks.push(IngestTrack {
                pid,
                kind,
                last_pts: None,
            });
        }
    }

    /// Splits one PES into access units of track `index`, learning audio parameters on the way.
    fn access_units(&mut self, index: usize, pes: &Pes) -> Vec<AccessUnit> {
        let Some(raw_pts) = pes.pts else {
            return Vec::new();
        };
        let track = &mut self.tracks[index];
        let pts90 = unwrap_timestamp(&mut track.last_pts, raw_pts);
        let dts90 = pes.dts.map_or(pts90, |dts| {
            pts90 - i64::try_from(raw_pts.wrapping_sub(dts) & ((1 << 33) - 1)).unwrap_or(0)
        });
        match track.kind {
            StreamKind::H264 | StreamKind::H265 => vec![AccessUnit {
                track: index,
                pts: pts90,
                dts: dts90,
                keyframe: false,
                data: pes.data.clone(),
            }],
            StreamKind::Aac => {
                let (codec, units) = split_adts(&pes.data, index, pts90);
                if let Some(codec) = codec {
                    self.live.learn(index, codec);
                }
                units
            }
            StreamKind::Opus => {
                self.live.learn(index, Codec::Opus { channels: 2 });
                split_opus(&pes.data, index, pts90)
            }
        }
    }
}

/// Extends a 33-bit timestamp into a continuous count, allowing for wraps and small steps back.
fn unwrap_timestamp(last: &mut Option<(u64, i64)>, raw: u64) -> i64 {
    const WRAP: i64 = 1 << 33;
    let value = match *last {
        None => raw as i64,
        Some((last_raw, last_value)) => {
            let mut delta = (raw as i64 - last_raw as i64).rem_euclid(WRAP);
            if delta >= WRAP / 2 {
                delta -= WRAP;
            }
            last_value + delta
        }
    };
    *last = Some((raw, value));
    value
}

fn to_clock(ticks_90k: i64, clock: u32) -> i64 {
    i64::try_from(i128::from(ticks_90k) * i128::from(clock) / TS_CLOCK_RATE).unwrap_or(i64::MAX)
}

/// Splits the ADTS frames of one PES (ffmpeg packs several) into raw AAC units.
fn split_adts(data: &Bytes, track: usize, pts90: i64) -> (Option<Codec>, Vec<AccessUnit>) {
    let mut codec = None;
    let mut units = Vec::new();
    let mut at = 0;
    let mut index = 0i64;
    while at + 7 <= data.len() {
        let h = &data[at..at + 7];
        if h[0] != 0xff || h[1] & 0xf6 != 0xf0 {
            break;
        }
        let protection_absent = h[1] & 0x01 != 0;
        let object_type = (h[2] >> 6) + 1;
        let frequency_index = (h[2] >> 2) & 0x0f;
        let channels = ((h[2] & 0x01) << 2) | (h[3] >> 6);
        let frame_length =
            (usize::from(h[3] & 0x03) << 11) | (usize::from(h[4]) << 3) | usize::from(h[5] >> 5);
        let header_length = if protection_absent { 7 } else { 9 };
        let Some(&sample_rate) = AAC_SAMPLE_RATES.get(usize::from(frequency_index)) else {
            break;
        };
        if frame_length < header_length || at + frame_length > data.len() {
            break;
        }
        let codec: &mut Codec = codec.get_or_insert_with(|| Codec::Aac {
            config: Bytes::copy_from_slice(&[
                (object_type << 3) | (frequency_index >> 1),
                ((frequency_index & 1) << 7) | (channels << 3),
            ]),
            sample_rate,
            channels: u16::from(channels).max(1),
        });
        let pts = to_clock(pts90, codec.clock_rate()) + index * 1024;
        units.push(AccessUnit {
            track,
            pts,
            dts: pts,
            keyframe: true,
            data: data.slice(at + header_length..at + frame_length),
        });
        at += frame_length;
        index += 1;
    }
    (codec, units)
}

/// Splits the Opus packets of one PES, each behind its control header (ETSI TS 102 366 style).
fn split_opus(data: &Bytes, track: usize, pts90: i64) -> Vec<AccessUnit> {
    let mut units = Vec::new();
    let mut at = 0;
    let mut pts = to_clock(pts90, OPUS_CLOCK_RATE);
    while at + 2 <= data.len() {
        if data[at] != 0x7f || data[at + 1] & 0xe0 != 0xe0 {
            break;
        }
        let flags = data[at + 1];
        at += 2;
        let mut size = 0usize;
        while let Some(&byte) = data.get(at) {
            at += 1;
            size += usize::from(byte);
            if byte != 0xff {
                break;
            }
        }
        if flags & 0x10 != 0 {
            at += 2;
        }
        if flags & 0x08 != 0 {
            at += 2;
        }
        if flags & 0x04 != 0 {
            at += 1 + usize::from(data.get(at).copied().unwrap_or(0));
        }
        let Some(packet) = data.get(at..at + size) else {
            break;
        };
        let samples = opus_samples(packet);
        units.push(AccessUnit {
            track,
            pts,
            dts: pts,
            keyframe: true,
            data: data.slice(at..at + size),
        });
        pts += samples;
        at += size;
    }
    units
}

/// Samples (at 48 kHz) in an Opus packet, from its TOC byte (RFC 6716 section 3.1).
fn opus_samples(packet: &[u8]) -> i64 {
    let Some(&toc) = packet.first() else { return 0 };
    let config = toc >> 3;
    let frame = match config {
        0..=11 => [480, 960, 1920, 2880][usize::from(config % 4)],
        12..=15 => [480, 960][usize::from(config % 2)],
        _ => [120, 240, 480, 960][usize::from(config % 4)],
    };
    let frames = match toc & 0x03 {
        0 => 1,
        1 | 2 => 2,
        _ => i64::from(packet.get(1).map_or(0, |b| b & 0x3f)),
    };
    frame * frames
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_unwrap_across_33_bits() {
        let mut last = None;
        assert_eq!(
            unwrap_timestamp(&mut last, (1 << 33) - 3000),
            (1 << 33) - 3000
        );
        assert_eq!(unwrap_timestamp(&mut last, 600), (1 << 33) + 600);
        assert_eq!(
            unwrap_timestamp(&mut last, 300),
            (1 << 33) + 300,
            "a small step back"
        );
    }

    #[test]
    fn adts_frames_are_split_with_their_own_timestamps() {
        let frame = |payload: &[u8]| {
            let length = 7 + payload.len();
            let mut f = vec![
                0xff,
                0xf1,
                (1 << 6) | (3 << 2),
                (2 << 6) | ((length >> 11) as u8 & 3),
                (length >> 3) as u8,
                ((length & 7) << 5) as u8 | 0x1f,
                0xfc,
            ];
            f.extend_from_slice(payload);
            f
        };
        let mut data = frame(&[1, 2, 3]);
        data.extend(frame(&[4, 5]));
        let (codec, units) = split_adts(&Bytes::from(data), 1, 90_000);
        assert_eq!(units.len(), 2);
        assert_eq!(&units[1].data[..], &[4, 5]);
        assert_eq!(units[0].pts, 48_000);
        assert_eq!(units[1].pts, 48_000 + 1024);
        assert_eq!(
            codec,
            Some(Codec::Aac {
                config: Bytes::from_static(&[0x11, 0x90]),
                sample_rate: 48000,
                channels: 2
            })
        );
    }

    #[test]
    fn opus_packets_follow_their_control_headers() {
        // Two 20 ms CELT packets (config 31 → 960 samples, one frame each).
        let data = Bytes::from(vec![0x7f, 0xe0, 2, 0xf8, 1, 0x7f, 0xe0, 1, 0xf8]);
        let units = split_opus(&data, 0, 0);
        assert_eq!(units.len(), 2);
        assert_eq!(units[1].pts - units[0].pts, 960);
        assert_eq!(&units[0].data[..], &[0xf8, 1]);
    }
}
