//! Publishing a live feed whose codec parameters may only show up in the media itself (pushes,
//! RTSP publishers, pulled streams).
//!
//! Tracks are declared up front, their parameters learned from the SDP or from the first keyframe
//! or audio header. Publishing starts once every track is known, or after [`TRACK_DISCOVERY`] with
//! the tracks known by then. Keyframes without parameter sets in front get them, so any keyframe is
//! a place a reader can start.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::media::{
    AccessUnit, Codec, StreamDescription, Track, inspect_video_unit, with_parameter_sets,
};
use crate::router::{PublishClaim, Publisher, Stream, Timeline};

/// How long to wait for a track's codec parameters before starting without it.
pub const TRACK_DISCOVERY: Duration = Duration::from_secs(3);

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

    /// Publishes one unit of a declared track; `now` is when it arrived.
    pub fn send(&mut self, mut unit: AccessUnit, now: Instant) {
        let Some(track) = self.tracks.get_mut(unit.track) else {
            return;
        };
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
                since_first.saturating_mul(clock) / 1_000_000_000 - unit.dts
            });
            unit.pts += offset;
            unit.dts += offset;
        }
        if self.publisher.is_none() {
            let ready = self.tracks.iter().all(|t| t.codec.is_some());
            let waited = self
                .first_media
                .is_some_and(|t| now.duration_since(t) >= TRACK_DISCOVERY);
            if !(ready || waited && self.tracks.iter().any(|t| t.codec.is_some())) {
                return;
            }
            self.start(&unit, now);
        }
        let (Some(publisher), Some(Some(index))) =
            (&mut self.publisher, self.published.get(unit.track))
        else {
            return;
        };
        unit.track = *index;
        self.units += 1;
        publisher.send(unit);
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
                        dimensions: None,
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
            .map_or(crate::media::VIDEO_CLOCK_RATE, Codec::clock_rate);
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
