//! Publishing a live feed whose codec parameters may only show up in the media itself (pushes,
//! RTSP publishers, pulled streams).
//!
//! Tracks are declared up front, their parameters learned from the SDP or from the first keyframe
//! or audio header. Publishing starts once every track is known, or after [`TRACK_DISCOVERY`] with
//! the tracks known by then. Keyframes without parameter sets in front get them, so any keyframe is
//! a place a reader can start.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::hub::{PublishClaim, Publisher, Stream, Timeline};
use crate::listen::{Allowance, Budget, Inbound};
use crate::media::{
    AccessUnit, Codec, StreamDescription, Track, inspect_video_unit, with_parameter_sets,
};
use crate::rtp::Depacketized;

/// How long to wait for a track's codec parameters before starting without it.
pub const TRACK_DISCOVERY: Duration = Duration::from_secs(3);

/// Access units over the route's memory budget a publisher may send before it is ended: one can be
/// a glitch, a run of them is a stream this route is not set up for (or an attack).
pub const MAX_UNITS_OVER_BUDGET: u32 = 3;

/// The publisher sent too many access units over the route's memory budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0} access units over the route's memory budget (server.max_unit_mb, server.route_buffer_mb); raise them if the stream is real"
)]
pub struct OverBudget(pub u32);

/// A publisher whose media stays under this rate is taken as gone, and loses its route: enough
/// for the thinnest real feed (an audio-only one sends several kB/s), far above one that only
/// trickles bytes to hold the route.
pub const MIN_PUBLISH_BYTES_PER_SECOND: u64 = 500;
/// The window the rate is measured over; a publisher gets one whole window to start.
pub const PUBLISH_RATE_WINDOW: Duration = Duration::from_secs(10);

/// The most a publisher may send: far above any camera (32 MiB/s is 268 Mb/s), low enough that a
/// flood of media is not taken in faster than a core could throw it away.
pub const PUBLISH_CEILING: Allowance = Allowance {
    per_second: 32 << 20,
    burst: 64 << 20,
};

/// A connection that carries a publisher's media (an RTSP publisher recording over TCP, a WHIP
/// publisher's ICE-TCP connection) is held to the same ceiling as it is read.
pub const PUBLISHER_INBOUND: Inbound = Inbound {
    bytes: PUBLISH_CEILING,
    sender: "a publisher sends its media in real time",
};

/// The most RTP packets a publisher may send: what it costs the server is per packet as much as
/// per byte, and packets of a few bytes each (every one a whole tiny picture, or a fragment of
/// one byte) came in at a million or two a second within the byte ceiling, as fast as a core
/// could take them. A 4K camera at 50 Mb/s sends some 5,000 a second; at full size, packets
/// reach the byte ceiling long before this one.
pub const PUBLISH_PACKET_CEILING: Allowance = Allowance {
    per_second: 50_000,
    burst: 250_000,
};

/// The publisher sent more than [`PUBLISH_CEILING`] or [`PUBLISH_PACKET_CEILING`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TooFast {
    #[error(
        "sent more than {}: a publisher sends its media in real time (ffmpeg -re)",
        PUBLISH_CEILING.in_bytes()
    )]
    Bytes,
    #[error(
        "sent more than {}: a publisher sends its media in real time",
        PUBLISH_PACKET_CEILING.counted("packets")
    )]
    Packets,
}

/// The publisher sent less than `MIN_PUBLISH_BYTES_PER_SECOND` over a whole window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "{bytes} bytes in {seconds} s: under the floor of {MIN_PUBLISH_BYTES_PER_SECOND} bytes/s for a publisher",
    seconds = PUBLISH_RATE_WINDOW.as_secs()
)]
pub struct TooSlow {
    pub bytes: u64,
}

/// Measures what a publisher sends, window by window, and holds it to the ceiling. Time is
/// passed in.
#[derive(Debug)]
pub struct PublishRate {
    window_start: Instant,
    bytes: u64,
    ceiling: Budget,
    packets: Budget,
}

impl PublishRate {
    pub fn new(now: Instant) -> PublishRate {
        PublishRate {
            window_start: now,
            bytes: 0,
            ceiling: Budget::new(PUBLISH_CEILING, now),
            packets: Budget::new(PUBLISH_PACKET_CEILING, now),
        }
    }

    /// Takes `bytes` that arrived at `now`; past the ceiling, the publisher is to be ended.
    pub fn add(&mut self, bytes: usize, now: Instant) -> Result<(), TooFast> {
        let bytes = bytes as u64;
        self.bytes += bytes;
        if self.ceiling.charge(bytes, now) {
            Ok(())
        } else {
            Err(TooFast::Bytes)
        }
    }

    /// Takes an RTP packet of `bytes` that arrived at `now`, held to both ceilings.
    pub fn add_packet(&mut self, bytes: usize, now: Instant) -> Result<(), TooFast> {
        self.add(bytes, now)?;
        if self.packets.charge(1, now) {
            Ok(())
        } else {
            Err(TooFast::Packets)
        }
    }

    /// At the end of each window, whether the publisher kept to the floor in it.
    pub fn check(&mut self, now: Instant) -> Result<(), TooSlow> {
        if now.saturating_duration_since(self.window_start) < PUBLISH_RATE_WINDOW {
            return Ok(());
        }
        let floor = MIN_PUBLISH_BYTES_PER_SECOND * PUBLISH_RATE_WINDOW.as_secs();
        let bytes = std::mem::take(&mut self.bytes);
        self.window_start = now;
        if bytes < floor {
            Err(TooSlow { bytes })
        } else {
            Ok(())
        }
    }
}

/// What a declared track carries before its parameters are known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrackKind {
    H264,
    H265,
    Audio,
}

struct LiveTrack {
    kind: TrackKind,
    codec: Option<Codec>,
    /// With independent clocks: added to this track's timestamps to put them on the shared timeline.
    offset: Option<i64>,
}

/// One live publisher's connection to its stream.
pub struct LivePublisher {
    stream: Arc<Stream>,
    claim: Option<PublishClaim>,
    publisher: Option<Publisher>,
    tracks: Vec<LiveTrack>,
    /// The published index of each declared track, once publishing started.
    published: Vec<Option<usize>>,
    first_media: Option<Instant>,
    /// Whether the tracks' timestamps count from unrelated origins (RTP), rather than one clock (TS).
    independent_clocks: bool,
    /// Units published so far.
    pub units: u64,
    /// Units refused for the route's memory budget so far.
    over_budget: u32,
}

impl LivePublisher {
    /// A publisher whose tracks' timestamps share one clock (an MPEG-TS program).
    pub fn new(stream: Arc<Stream>, claim: PublishClaim) -> LivePublisher {
        LivePublisher {
            stream,
            claim: Some(claim),
            publisher: None,
            tracks: Vec::new(),
            published: Vec::new(),
            first_media: None,
            independent_clocks: false,
            units: 0,
            over_budget: 0,
        }
    }

    /// A publisher whose tracks each have a clock of their own (RTP streams): each track's first
    /// unit is placed on the shared timeline where it arrived.
    pub fn with_independent_clocks(stream: Arc<Stream>, claim: PublishClaim) -> LivePublisher {
        LivePublisher {
            independent_clocks: true,
            ..LivePublisher::new(stream, claim)
        }
    }

    /// The route this publisher publishes into.
    pub fn route(&self) -> &str {
        self.stream.name()
    }

    /// Declares the next track; returns its index. Ignored once publishing started.
    pub fn add_track(&mut self, kind: TrackKind, codec: Option<Codec>) -> usize {
        self.tracks.push(LiveTrack {
            kind,
            codec,
            offset: None,
        });
        self.tracks.len() - 1
    }

    /// Records a track's codec if it was not known yet.
    pub fn learn(&mut self, track: usize, codec: Codec) {
        if let Some(track) = self.tracks.get_mut(track) {
            track.codec.get_or_insert(codec);
        }
    }

    pub fn codec(&self, track: usize) -> Option<&Codec> {
        self.tracks.get(track)?.codec.as_ref()
    }

    /// The tracks known, for logs: e.g. `H264+AAC`.
    pub fn describe(&self) -> String {
        let names: Vec<&str> = self
            .tracks
            .iter()
            .filter_map(|t| t.codec.as_ref().map(Codec::name))
            .collect();
        names.join("+")
    }

    /// The route's memory budget.
    pub fn budget(&self) -> crate::config::MemoryBudget {
        self.stream.budget()
    }

    /// Counts a unit the publisher's demuxer refused for being over the budget.
    pub fn refused_over_budget(&mut self) {
        self.over_budget += 1;
    }

    /// Whether the publisher is still within [`MAX_UNITS_OVER_BUDGET`].
    pub fn check_budget(&self) -> Result<(), OverBudget> {
        if self.over_budget >= MAX_UNITS_OVER_BUDGET {
            Err(OverBudget(self.over_budget))
        } else {
            Ok(())
        }
    }

    /// Publishes what an RTP depacketizer made of one packet of `track` (RTP timestamps are
    /// presentation times; the kind of picture is read from the data).
    pub fn send_depacketized(&mut self, track: usize, units: Vec<Depacketized>, now: Instant) {
        self.send_together(
            units
                .into_iter()
                .map(|unit| AccessUnit {
                    track,
                    pts: unit.timestamp,
                    dts: unit.timestamp,
                    keyframe: true,
                    data: unit.data,
                })
                .collect(),
            now,
        );
    }

    /// Publishes one unit of a declared track; `now` is when it arrived.
    pub fn send(&mut self, unit: AccessUnit, now: Instant) {
        let Some(unit) = self.prepare(unit, now) else {
            return;
        };
        if let Some(publisher) = &mut self.publisher
            && !publisher.send(unit)
        {
            self.over_budget += 1;
        }
    }

    /// Publishes units of declared tracks that arrived together (one packet's, one PES's), in
    /// order: readers may get them in fewer packets (see `Publisher::send_together`).
    pub fn send_together(&mut self, units: Vec<AccessUnit>, now: Instant) {
        let prepared: Vec<AccessUnit> = units
            .into_iter()
            .filter_map(|unit| self.prepare(unit, now))
            .collect();
        if let Some(publisher) = &mut self.publisher {
            self.over_budget += publisher.send_together(prepared);
        }
    }

    /// Readies a unit of a declared track for publishing (its picture kind, parameter sets and
    /// clock), starting the publisher once the tracks are known; `None` when it is not to be
    /// published.
    fn prepare(&mut self, mut unit: AccessUnit, now: Instant) -> Option<AccessUnit> {
        let track = self.tracks.get_mut(unit.track)?;
        if matches!(track.kind, TrackKind::H264 | TrackKind::H265) {
            let info = inspect_video_unit(&unit.data, track.kind == TrackKind::H265);
            if let Some(codec) = info.codec {
                track.codec.get_or_insert(codec);
            }
            unit.keyframe = info.keyframe;
            if info.keyframe
                && !info.has_parameter_sets
                && let Some(codec) = &track.codec
            {
                unit.data = with_parameter_sets(codec, unit.data);
            }
        }
        let first_media = *self.first_media.get_or_insert(now);
        if self.independent_clocks {
            let clock = i64::from(
                track
                    .codec
                    .as_ref()
                    .map_or(crate::media::VIDEO_CLOCK_RATE, Codec::clock_rate),
            );
            let offset = *track.offset.get_or_insert_with(|| {
                let since_first = now.saturating_duration_since(first_media).as_nanos() as i64;
                (since_first.saturating_mul(clock) / 1_000_000_000).saturating_sub(unit.dts)
            });
            // Timestamps come from the publisher: saturate rather than overflow on absurd ones.
            unit.pts = unit.pts.saturating_add(offset);
            unit.dts = unit.dts.saturating_add(offset);
        }
        if self.publisher.is_none() {
            let ready = self.tracks.iter().all(|t| t.codec.is_some());
            let waited = self
                .first_media
                .is_some_and(|t| now.duration_since(t) >= TRACK_DISCOVERY);
            if !(ready || waited && self.tracks.iter().any(|t| t.codec.is_some())) {
                return None;
            }
            self.start(&unit, now);
        }
        self.publisher.as_ref()?;
        let Some(Some(index)) = self.published.get(unit.track) else {
            return None;
        };
        unit.track = *index;
        self.units += 1;
        Some(unit)
    }

    fn start(&mut self, first: &AccessUnit, now: Instant) {
        let Some(claim) = self.claim.take() else {
            return;
        };
        let mut tracks = Vec::new();
        self.published = self
            .tracks
            .iter()
            .enumerate()
            .map(|(index, track)| match &track.codec {
                Some(codec) => {
                    tracks.push(Track {
                        codec: codec.clone(),
                        dimensions: codec.picture_size(),
                    });
                    Some(tracks.len() - 1)
                }
                None => {
                    tracing::warn!(
                        route = self.stream.name(),
                        track = index,
                        "no codec parameters for a {:?} track in time; publishing without it",
                        track.kind
                    );
                    None
                }
            })
            .collect();
        let clock = self
            .codec(first.track)
            .map_or(crate::media::VIDEO_CLOCK_RATE, Codec::clock_rate)
            .max(1);
        let timeline = Timeline {
            anchor: now,
            anchor_nanos: i128::from(first.pts) * 1_000_000_000 / i128::from(clock),
        };
        tracing::info!(
            route = self.stream.name(),
            tracks = self.describe(),
            "publisher live"
        );
        self.publisher = Some(claim.start(StreamDescription { tracks }, timeline));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publisher_in_real_time_keeps_to_the_floor_and_under_the_ceiling() {
        let start = Instant::now();
        let mut rate = PublishRate::new(start);
        // 8 Mb/s in 40 ms units for a minute: a fast camera.
        for step in 1..=1500u32 {
            let now = start + Duration::from_millis(40) * step;
            assert_eq!(rate.add(40_000, now), Ok(()), "at unit {step}");
            assert_eq!(rate.check(now), Ok(()), "at unit {step}");
        }
    }

    #[test]
    fn a_publisher_far_faster_than_real_time_is_over_the_ceiling() {
        let start = Instant::now();
        let mut rate = PublishRate::new(start);
        // 64 MiB at once is the burst; a second later 32 MiB more, and then nothing.
        assert_eq!(rate.add(64 << 20, start), Ok(()));
        let second = start + Duration::from_secs(1);
        assert_eq!(rate.add(32 << 20, second), Ok(()));
        assert_eq!(rate.add(1, second), Err(TooFast::Bytes));
        assert_eq!(
            TooFast::Bytes.to_string(),
            "sent more than 64 MiB at over 32 MiB/s: a publisher sends its media in real time (ffmpeg -re)"
        );
    }

    #[test]
    fn a_publisher_of_tiny_packets_is_held_to_the_packet_ceiling() {
        let start = Instant::now();
        let mut rate = PublishRate::new(start);
        // A 4K camera: 5,000 packets of 1,250 bytes a second, for a minute.
        for step in 1..=60_000u32 {
            let now = start + Duration::from_micros(200) * step;
            assert_eq!(rate.add_packet(1250, now), Ok(()), "at packet {step}");
        }
        // Packets of 20 bytes as fast as they come: the bytes are nothing, the packets are not.
        let later = start + Duration::from_secs(120);
        let mut rate = PublishRate::new(later);
        for _ in 0..250_000 {
            assert_eq!(rate.add_packet(20, later), Ok(()));
        }
        assert_eq!(rate.add_packet(20, later), Err(TooFast::Packets));
        assert_eq!(
            TooFast::Packets.to_string(),
            "sent more than 250000 packets at over 50000 a second: a publisher sends its media in real time"
        );
    }

    #[test]
    fn a_publisher_that_trickles_is_under_the_floor() {
        let start = Instant::now();
        let mut rate = PublishRate::new(start);
        let end = start + PUBLISH_RATE_WINDOW;
        assert_eq!(rate.add(100, end), Ok(()));
        assert_eq!(rate.check(end), Err(TooSlow { bytes: 100 }));
    }
}
