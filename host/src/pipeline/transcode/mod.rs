//! The frame path of a route: decode its H.264, scale, convert the frame rate, run frame plugins,
//! encode H.264 constrained baseline (openh264).
//!
//! In: access units of the route's source, in decode order. Out: the re-encoded video as track 0
//! and, when kept, the audio tracks after it, unchanged. B-frame sources are decoded without
//! flushing after each unit, so pictures come out in presentation order; each takes the smallest
//! presentation time not yet used. Runs on the route's stage thread, never on the async runtime.

mod scale;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use openh264::OpenH264API;
use openh264::decoder::{Decoder, DecoderConfig, Flush};
use openh264::encoder::{
    BitRate, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, Profile,
    RateControlMode, UsageType,
};
use openh264::formats::{YUVSlices, YUVSource};

use crate::config::TranscodeConfig;
use crate::media::{AccessUnit, Codec, Picture, StreamDescription, Track, inspect_video_unit};
use crate::plugins::Chain;

pub use scale::scale;

/// Frame rate the encoder plans its bit budget for when the route sets none.
const DEFAULT_FPS: f64 = 25.0;
/// Presentation times waiting for their pictures (the decoder's reordering delay, with margin).
const MAX_PENDING_PTS: usize = 32;
const TICKS_PER_SECOND: f64 = 90_000.0;

/// Counters of a route's frame path, for the API and metrics.
#[derive(Debug, Default)]
pub struct TranscodeStats {
    pub decoded: AtomicU64,
    pub decode_errors: AtomicU64,
    pub encoded: AtomicU64,
    /// Pictures left out by the frame rate conversion or by frame plugins.
    pub dropped: AtomicU64,
    /// Pictures shown twice by the frame rate conversion.
    pub duplicated: AtomicU64,
    /// Pictures the encoder skipped to hold the bit rate.
    pub skipped: AtomicU64,
}

/// Why a route's video cannot be transcoded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the route has no video to transcode")]
    NoVideo,
    #[error("transcoding takes H.264 sources; this one is {0}")]
    Codec(&'static str),
    #[error("openh264: {0}")]
    Codec264(String),
}

/// One route's frame path for one publisher.
pub struct Transcoder {
    route: String,
    settings: TranscodeConfig,
    video_in: usize,
    /// Output track of each input track (video: 0; audio: after it, or left out).
    track_map: Vec<Option<usize>>,
    input: StreamDescription,
    decoder: Decoder,
    pending_pts: BinaryHeap<Reverse<(i64, bool)>>,
    frames: Chain,
    rate: Option<RateConverter>,
    encoder: Option<Encoder>,
    stats: Arc<TranscodeStats>,
}

impl Transcoder {
    pub fn new(
        route: &str,
        settings: &TranscodeConfig,
        input: &StreamDescription,
        mut frames: Chain,
        stats: Arc<TranscodeStats>,
    ) -> Result<Transcoder, Error> {
        let video_in = input.video_track().ok_or(Error::NoVideo)?;
        frames.set_stream(&input.tracks);
        if !matches!(input.tracks[video_in].codec, Codec::H264 { .. }) {
            return Err(Error::Codec(input.tracks[video_in].codec.name()));
        }
        let mut track_map = vec![None; input.tracks.len()];
        track_map[video_in] = Some(0);
        let mut next = 1;
        for (index, track) in input.tracks.iter().enumerate() {
            if index != video_in && !track.codec.is_video() && settings.audio {
                track_map[index] = Some(next);
                next += 1;
            }
        }
        let decoder = Decoder::with_api_config(
            OpenH264API::from_source(),
            DecoderConfig::new().flush_after_decode(Flush::NoFlush),
        )
        .map_err(|err| Error::Codec264(err.to_string()))?;
        Ok(Transcoder {
            route: route.to_owned(),
            settings: settings.clone(),
            video_in,
            track_map,
            input: input.clone(),
            decoder,
            pending_pts: BinaryHeap::new(),
            frames,
            rate: settings.fps.map(RateConverter::new),
            encoder: None,
            stats,
        })
    }

    /// Swaps in another chain of frame plugins, between two pictures.
    pub fn set_frames(&mut self, frames: Chain) {
        self.frames = frames;
    }

    /// The frame plugins running now.
    pub fn frames(&self) -> &Chain {
        &self.frames
    }

    /// The frame plugins running now, to change.
    pub fn frames_mut(&mut self) -> &mut Chain {
        &mut self.frames
    }

    /// Ends this transcoder, handing back its frame plugins.
    pub fn into_frames(self) -> Chain {
        self.frames
    }

    /// The stream this transcoder publishes, once `first` (its first encoded keyframe, with the
    /// encoder's parameter sets) is known.
    pub fn describe(&self, first: &AccessUnit) -> Option<StreamDescription> {
        let codec = inspect_video_unit(&first.data, false).codec?;
        let mut tracks = vec![Track {
            codec,
            dimensions: self.output_size(),
        }];
        for (index, track) in self.input.tracks.iter().enumerate() {
            if self.track_map[index].is_some_and(|out| out > 0) {
                tracks.push(track.clone());
            }
        }
        Some(StreamDescription { tracks })
    }

    fn output_size(&self) -> Option<(u32, u32)> {
        match (self.settings.width, self.settings.height) {
            (Some(w), Some(h)) => Some((w, h)),
            _ => self.input.tracks[self.video_in].dimensions,
        }
    }

    /// Takes one input unit; what is ready to publish is appended to `out`. With
    /// `keyframe_wanted`, the next encoded picture is an IDR.
    pub fn process(&mut self, unit: AccessUnit, keyframe_wanted: bool, out: &mut Vec<AccessUnit>) {
        if keyframe_wanted && let Some(encoder) = &mut self.encoder {
            encoder.force_intra_frame();
        }
        if unit.track != self.video_in {
            if let Some(Some(track)) = self.track_map.get(unit.track) {
                out.push(AccessUnit {
                    track: *track,
                    ..unit
                });
            }
            return;
        }
        self.pending_pts.push(Reverse((unit.pts, unit.keyframe)));
        if self.pending_pts.len() > MAX_PENDING_PTS {
            // Units the decoder never made a picture of (errors): their times are stale.
            self.pending_pts.pop();
        }
        let decoded = match self.decoder.decode(&unit.data) {
            Ok(Some(yuv)) => Some(tight_copy(&yuv)),
            Ok(None) => None,
            Err(err) => {
                if self.stats.decode_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(route = %self.route, "H.264 decode error: {err}");
                }
                None
            }
        };
        let Some((width, height, data)) = decoded else {
            return;
        };
        // A keyframe's picture is the first of its sequence in presentation order too.
        let Some(Reverse((pts, keyframe))) = self.pending_pts.pop() else {
            return;
        };
        self.stats.decoded.fetch_add(1, Ordering::Relaxed);
        let mut picture = Picture {
            width,
            height,
            pts,
            keyframe,
            data,
        };
        if let Some((w, h)) = self.output_size()
            && (w, h) != (width, height)
        {
            picture = scale(&picture, w, h);
        }
        match &mut self.rate {
            None => self.filter_and_encode(picture, out),
            Some(rate) => {
                let shown = rate.push(picture);
                if shown.is_empty() {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                } else if shown.len() > 1 {
                    self.stats
                        .duplicated
                        .fetch_add(shown.len() as u64 - 1, Ordering::Relaxed);
                }
                for picture in shown {
                    self.filter_and_encode(picture, out);
                }
            }
        }
    }

    fn filter_and_encode(&mut self, mut picture: Picture, out: &mut Vec<AccessUnit>) {
        if !self.frames.process_picture(&mut picture) {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let encoder = match &mut self.encoder {
            Some(encoder) => encoder,
            None => match self.new_encoder() {
                Ok(encoder) => self.encoder.insert(encoder),
                Err(err) => {
                    tracing::error!(route = %self.route, "cannot start the H.264 encoder: {err}");
                    return;
                }
            },
        };
        let (w, h) = (picture.width as usize, picture.height as usize);
        let cw = w.div_ceil(2);
        let (y, chroma) = picture.data.split_at(w * h);
        let (u, v) = chroma.split_at(cw * h.div_ceil(2));
        let source = YUVSlices::new((y, u, v), (w, h), (w, cw, cw));
        let timestamp =
            openh264::Timestamp::from_millis(u64::try_from(picture.pts / 90).unwrap_or(0));
        let encoded = match encoder.encode_at(&source, timestamp) {
            Ok(encoded) => encoded,
            Err(err) => {
                tracing::warn!(route = %self.route, "H.264 encode error: {err}");
                return;
            }
        };
        let keyframe = match encoded.frame_type() {
            FrameType::IDR => true,
            FrameType::I | FrameType::P | FrameType::IPMixed => false,
            FrameType::Skip | FrameType::Invalid => {
                self.stats.skipped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        self.stats.encoded.fetch_add(1, Ordering::Relaxed);
        out.push(AccessUnit {
            track: 0,
            pts: picture.pts,
            dts: picture.pts,
            keyframe,
            data: Bytes::from(encoded.to_vec()),
        });
    }

    fn new_encoder(&self) -> Result<Encoder, String> {
        let fps = self.settings.fps.unwrap_or(DEFAULT_FPS);
        let interval = self
            .settings
            .keyframe_interval
            .unwrap_or((2.0 * fps).round() as u32);
        let config = EncoderConfig::new()
            .bitrate(BitRate::from_bps(
                self.settings.bitrate_kbps.saturating_mul(1000),
            ))
            .max_frame_rate(FrameRate::from_hz(fps as f32))
            .rate_control_mode(RateControlMode::Bitrate)
            .usage_type(UsageType::CameraVideoRealTime)
            .profile(Profile::Baseline)
            .intra_frame_period(IntraFramePeriod::from_num_frames(interval))
            // openh264 holds the bit rate only by skipping pictures when a source needs more bits
            // than the rate allows; the rate is the contract (like ffserver's VideoBitRate).
            .skip_frames(true)
            .num_threads(1);
        Encoder::with_api_config(OpenH264API::from_source(), config).map_err(|err| err.to_string())
    }
}

/// A decoded picture copied into tight I420 rows.
fn tight_copy(yuv: &impl YUVSource) -> (u32, u32, Vec<u8>) {
    let (w, h) = yuv.dimensions();
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    let (ys, us, vs) = yuv.strides();
    let mut data = Vec::with_capacity(w * h + 2 * cw * ch);
    for (plane, stride, width, rows) in [
        (yuv.y(), ys, w, h),
        (yuv.u(), us, cw, ch),
        (yuv.v(), vs, cw, ch),
    ] {
        for row in 0..rows {
            let start = row * stride;
            data.extend_from_slice(plane.get(start..start + width).unwrap_or(&[]));
        }
    }
    data.resize(w * h + 2 * cw * ch, 128);
    (
        u32::try_from(w).unwrap_or(u32::MAX),
        u32::try_from(h).unwrap_or(u32::MAX),
        data,
    )
}

/// Frame rate conversion: output pictures at fixed slots; each shows the latest source picture at
/// or before it, so pictures are dropped (several in one slot) or repeated (none in a slot).
struct RateConverter {
    interval: f64,
    first: Option<i64>,
    next_slot: u64,
    last: Option<Picture>,
}

impl RateConverter {
    fn new(fps: f64) -> RateConverter {
        RateConverter {
            interval: TICKS_PER_SECOND / fps,
            first: None,
            next_slot: 0,
            last: None,
        }
    }

    fn slot_time(&self, first: i64, slot: u64) -> i64 {
        first + (slot as f64 * self.interval).round() as i64
    }

    /// Takes the next source picture; returns the output pictures now due (before it).
    fn push(&mut self, picture: Picture) -> Vec<Picture> {
        let first = *self.first.get_or_insert(picture.pts);
        let mut due = Vec::new();
        if picture.pts < first {
            // A source that jumped back in time (a new publisher's clock): start over.
            self.first = Some(picture.pts);
            self.next_slot = 0;
            self.last = Some(picture);
            return due;
        }
        while self.slot_time(first, self.next_slot) < picture.pts {
            if let Some(last) = &self.last {
                due.push(Picture {
                    pts: self.slot_time(first, self.next_slot),
                    keyframe: false,
                    ..last.clone()
                });
            }
            self.next_slot += 1;
        }
        self.last = Some(picture);
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picture(pts: i64) -> Picture {
        Picture {
            width: 2,
            height: 2,
            pts,
            keyframe: false,
            data: vec![pts as u8; 6],
        }
    }

    #[test]
    fn rate_conversion_from_25_to_24_drops_one_in_25() {
        let mut rate = RateConverter::new(24.0);
        let mut out = Vec::new();
        for i in 0..=250 {
            out.extend(rate.push(picture(i * 3600)));
        }
        assert_eq!(out.len(), 240, "ten seconds at 24 fps");
        assert!(out.windows(2).all(|w| w[1].pts - w[0].pts == 3750
            || w[1].pts - w[0].pts == 3751
            || w[1].pts - w[0].pts == 3749));
    }

    #[test]
    fn rate_conversion_from_12_to_24_repeats_each_picture() {
        let mut rate = RateConverter::new(24.0);
        let mut out = Vec::new();
        for i in 0..=12 {
            out.extend(rate.push(picture(i * 7500)));
        }
        assert_eq!(out.len(), 24);
        assert_eq!(out[0].data, out[1].data);
        assert_ne!(out[1].data, out[2].data);
    }
}
