//! A route's RTP identity: per-track SSRC, sequence numbers and clock, which outlive publishers,
//! and how a source's timestamps map to wall-clock time.

use std::time::Instant;

use crate::media::{Codec, StreamDescription};
use crate::rtp;

/// Per-track RTP identity. It outlives publishers: a publisher that replaces another with the same
/// kind of track keeps the SSRC, the sequence numbers and a clock that never runs backwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackRtp {
    pub payload_type: u8,
    pub ssrc: u32,
    pub clock_rate: u32,
    pub(super) video: bool,
    /// RTP timestamp at the stream's epoch.
    pub(super) base_timestamp: u32,
    pub(super) next_seq: u16,
}

impl TrackRtp {
    pub(super) fn new(index: usize, codec: &Codec) -> TrackRtp {
        TrackRtp {
            payload_type: rtp::payload_type(index),
            ssrc: rand::random(),
            clock_rate: codec.clock_rate(),
            video: codec.is_video(),
            base_timestamp: rand::random(),
            next_seq: rand::random(),
        }
    }

    pub(super) fn continues(&self, codec: &Codec) -> bool {
        self.clock_rate == codec.clock_rate() && self.video == codec.is_video()
    }

    /// RTP ticks in `nanos` nanoseconds, modulo 2^32.
    pub(super) fn ticks(&self, nanos: i128) -> u32 {
        // RTP timestamps are modulo 2^32; truncation is the intent.
        (nanos * i128::from(self.clock_rate) / NANOS_PER_SECOND) as u32
    }
}

const NANOS_PER_SECOND: i128 = 1_000_000_000;

/// How a source's timestamps map to wall-clock time: the unit whose timestamp is `anchor_nanos`
/// (in nanoseconds on the source's clock, shared by all its tracks) belongs at `anchor`.
#[derive(Clone, Copy, Debug)]
pub struct Timeline {
    pub anchor: Instant,
    pub anchor_nanos: i128,
}

/// What egress needs to describe a stream and to report on it in RTCP.
#[derive(Debug)]
pub struct MediaInfo {
    pub description: StreamDescription,
    pub tracks: Vec<TrackRtp>,
    /// RTP timestamps count from here: `base_timestamp` at `epoch`, one tick per clock period after.
    pub(super) epoch: Instant,
}

impl MediaInfo {
    /// The RTP timestamp of `track` that corresponds to the instant `now`, for sender reports.
    pub fn rtp_timestamp_at(&self, track: usize, now: Instant) -> Option<u32> {
        let info = self.tracks.get(track)?;
        let elapsed = now.saturating_duration_since(self.epoch).as_nanos() as i128;
        Some(info.base_timestamp.wrapping_add(info.ticks(elapsed)))
    }

    /// The instant a `timestamp` of `track` corresponds to, found from its distance to `now` (so
    /// wrapping of the 32-bit clock does not matter for timestamps within half a wrap of now).
    pub fn instant_of(&self, track: usize, timestamp: u32, now: Instant) -> Option<Instant> {
        let info = self.tracks.get(track)?;
        let now_timestamp = self.rtp_timestamp_at(track, now)?;
        // The signed distance is the intent: a unit may be stamped a little ahead of now.
        let behind = i128::from(now_timestamp.wrapping_sub(timestamp) as i32);
        let nanos = behind * NANOS_PER_SECOND / i128::from(info.clock_rate.max(1));
        let offset = std::time::Duration::from_nanos(u64::try_from(nanos.unsigned_abs()).ok()?);
        if nanos >= 0 {
            now.checked_sub(offset)
        } else {
            now.checked_add(offset)
        }
    }
}
