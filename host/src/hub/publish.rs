//! Publishing into a hub: the claim a publisher holds, the publisher itself, and the outlet that
//! packetizes units and hands them to readers (on the publisher's thread, or on the route's
//! pipeline thread when the route has a [`Processor`]).

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use tokio::sync::Notify;

use super::Unit;
use super::stream::{SourceState, Stream};
use super::timeline::{MediaInfo, Timeline};
use crate::media::{AccessUnit, StreamDescription};
use crate::rtp::{Packetizer, RtpUnit};

/// The kept group of pictures is dropped past this size (a source with very rare keyframes); new
/// readers then wait for the next keyframe.
const MAX_GOP_BYTES: usize = 32 << 20;
const MAX_GOP_UNITS: usize = 4096;

/// What runs between a route's publisher and its hub (the route's pipeline), as the hub sees it.
///
/// Everything about the route's publishers goes through it in order — a publisher starting, its
/// units, its end — so the pipeline can continue one publisher's RTP stream with the next. It
/// publishes through the [`Outlet`]s its [`Sink`](super::Sink) starts.
pub trait Processor: Send + Sync {
    /// A publisher starts with `description`, whose timestamps follow `timeline`.
    fn start(&self, description: StreamDescription, timeline: Timeline);
    /// A publisher that was publishing directly hands its outlet over.
    fn adopt(&self, outlet: Outlet);
    /// Whether a unit of `bytes` would fit in the queue now.
    fn has_room(&self, bytes: usize) -> bool;
    /// Queues `unit`; `false` if the pipeline is too far behind to take it.
    fn queue(&self, unit: AccessUnit) -> bool;
    /// The publisher left.
    fn end(&self);
    /// The route is gone: stop for good.
    fn stop(&self);
}

/// The right to publish into a stream, held from the moment a publisher connects until it leaves.
pub struct PublishClaim {
    stream: Option<Arc<Stream>>,
    revocation: Revocation,
}

/// Tells a publisher that it lost its right to publish, and why.
#[derive(Clone, Debug, Default)]
pub struct Revocation(Arc<RevocationState>);

#[derive(Debug, Default)]
struct RevocationState {
    notify: Notify,
    /// The first reason given; a publisher ends once, for one reason.
    reason: OnceLock<Revoked>,
}

/// Why a reload ended a publisher.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Revoked {
    #[error("no longer on the route's publish list")]
    NotOnPublishList,
    #[error("the route was removed")]
    RouteRemoved,
    #[error("the route's source changed")]
    SourceChanged,
}

impl Revocation {
    pub(super) fn revoke(&self, reason: Revoked) {
        let _ = self.0.reason.set(reason);
        // A stored permit: the publisher hears it even if it is not waiting right now.
        self.0.notify.notify_one();
    }

    /// Completes, with the reason, when the publisher must end.
    pub async fn revoked(&self) -> Revoked {
        loop {
            if let Some(reason) = self.0.reason.get() {
                return *reason;
            }
            self.0.notify.notified().await;
        }
    }
}

impl PublishClaim {
    pub(super) fn new(stream: Arc<Stream>, revocation: Revocation) -> PublishClaim {
        PublishClaim {
            stream: Some(stream),
            revocation,
        }
    }

    /// What tells this claim's publisher to end.
    pub fn revocation(&self) -> Revocation {
        self.revocation.clone()
    }

    /// Starts publishing `description`, whose timestamps follow `timeline`.
    pub fn start(mut self, description: StreamDescription, timeline: Timeline) -> Publisher {
        // The claim passes to the publisher, which releases it on drop.
        let stream = self.stream.take().expect("a claim is started once");
        let video_track = description.video_track();
        let path = match stream.processor() {
            Some(processor) => {
                // The pipeline starts the outlet after it is done with the previous publisher's
                // units, so sequence numbers continue in order.
                processor.start(description, timeline);
                PublishPath::Processed(Arc::clone(processor))
            }
            None => PublishPath::Direct(stream.start_outlet(description, timeline)),
        };
        Publisher {
            stream,
            path,
            video_track,
            skipping_video: false,
        }
    }
}

impl Drop for PublishClaim {
    fn drop(&mut self) {
        if let Some(stream) = self.stream.take() {
            stream.lock().release_claim();
        }
    }
}

/// The one writer of a stream.
pub struct Publisher {
    stream: Arc<Stream>,
    path: PublishPath,
    video_track: Option<usize>,
    /// The pipeline fell behind: video waits for the next keyframe.
    skipping_video: bool,
}

enum PublishPath {
    /// No pipeline: units are packetized on the publisher's thread.
    Direct(Outlet),
    /// Units go to the route's pipeline, which owns the outlet.
    Processed(Arc<dyn Processor>),
}

impl Publisher {
    /// Hands `au` to every reader (through the route's pipeline, if it has one). Units of unknown
    /// tracks are dropped.
    ///
    /// A unit over the route's `max_unit_mb` is dropped and counted; `false` says so, and a
    /// publisher that keeps sending such units is the caller's to end.
    pub fn send(&mut self, au: AccessUnit) -> bool {
        if au.data.len() > self.stream.budget.max_unit_bytes {
            self.stream
                .stats
                .units_over_budget
                .fetch_add(1, Ordering::Relaxed);
            self.skipping_video |= self.video_track == Some(au.track);
            return false;
        }
        self.send_within_budget(au);
        true
    }

    /// [`Publisher::send`] for units that are ready together, in order: without a pipeline,
    /// consecutive units of one track may share RTP packets (see
    /// [`Packetizer::packetize_together`]); a pipeline takes them one by one. Returns how many
    /// were over `max_unit_mb` (and dropped).
    pub fn send_together(&mut self, units: Vec<AccessUnit>) -> u32 {
        let within = units
            .iter()
            .all(|au| au.data.len() <= self.stream.budget.max_unit_bytes);
        match &mut self.path {
            PublishPath::Direct(outlet) if within && self.stream.processor().is_none() => {
                outlet.send_together(units);
                0
            }
            _ => units.into_iter().map(|au| u32::from(!self.send(au))).sum(),
        }
    }

    fn send_within_budget(&mut self, au: AccessUnit) {
        if let PublishPath::Direct(outlet) = &mut self.path {
            match self.stream.processor() {
                None => return outlet.send(au),
                Some(processor) => {
                    // The route got a pipeline while this publisher was live: its outlet moves
                    // there, with its sequence numbers.
                    let processor = Arc::clone(processor);
                    if let PublishPath::Direct(outlet) = std::mem::replace(
                        &mut self.path,
                        PublishPath::Processed(Arc::clone(&processor)),
                    ) {
                        processor.adopt(outlet);
                    }
                }
            }
        }
        let PublishPath::Processed(processor) = &self.path else {
            return;
        };
        let video = self.video_track == Some(au.track);
        if video && self.skipping_video {
            if !au.keyframe || !processor.has_room(au.data.len()) {
                self.stream
                    .stats
                    .plugin_queue_drops
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
            self.skipping_video = false;
        }
        if !processor.queue(au) {
            self.stream
                .stats
                .plugin_queue_drops
                .fetch_add(1, Ordering::Relaxed);
            self.skipping_video |= video;
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        match &mut self.path {
            PublishPath::Direct(outlet) => outlet.finish(true),
            PublishPath::Processed(processor) => {
                // The pipeline retires its outlet after the units still queued; the claim is free
                // now.
                processor.end();
                self.stream.lock().release_claim();
            }
        }
    }
}

/// The half of a publisher that packetizes units and hands them to readers.
pub struct Outlet {
    stream: Arc<Stream>,
    description: StreamDescription,
    packetizers: Vec<Packetizer>,
    video_track: Option<usize>,
    generation: u64,
    timeline: Timeline,
    last_video_pts: Option<i64>,
    retired: bool,
    /// A video unit was dropped for the budget: the next one readers get is a keyframe.
    skipping_video: bool,
}

impl Outlet {
    pub(super) fn new(
        stream: Arc<Stream>,
        description: StreamDescription,
        packetizers: Vec<Packetizer>,
        generation: u64,
        timeline: Timeline,
    ) -> Outlet {
        Outlet {
            stream,
            video_track: description.video_track(),
            description,
            packetizers,
            generation,
            timeline,
            last_video_pts: None,
            retired: false,
            skipping_video: false,
        }
    }

    /// How this outlet's timestamps map to wall-clock time.
    pub fn timeline(&self) -> Timeline {
        self.timeline
    }

    /// What this outlet publishes.
    pub fn description(&self) -> &StreamDescription {
        &self.description
    }

    /// Packetizes `au` and hands it to every reader. Units of unknown tracks are dropped.
    pub fn send(&mut self, au: AccessUnit) {
        if !self.admit(&au) {
            return;
        }
        let Some(packetizer) = self.packetizers.get_mut(au.track) else {
            return;
        };
        let rtp = packetizer.packetize(&au);
        self.publish(au, rtp);
    }

    /// [`Outlet::send`] for units that are ready together, in order: consecutive units of one
    /// track may share RTP packets (see [`Packetizer::packetize_together`]).
    pub fn send_together(&mut self, units: Vec<AccessUnit>) {
        let mut units: Vec<AccessUnit> = units.into_iter().filter(|au| self.admit(au)).collect();
        while let Some(first) = units.first() {
            let track = first.track;
            let same = units.iter().take_while(|au| au.track == track).count();
            let run: Vec<AccessUnit> = units.drain(..same).collect();
            let Some(packetizer) = self.packetizers.get_mut(track) else {
                continue;
            };
            let packetized = packetizer.packetize_together(&run);
            for (au, rtp) in run.into_iter().zip(packetized) {
                self.publish(au, rtp);
            }
        }
    }

    /// Whether `au` goes to readers: its track is known, it is within the budget, and it is not
    /// video waiting for a keyframe.
    fn admit(&mut self, au: &AccessUnit) -> bool {
        if au.track >= self.packetizers.len() {
            return false;
        }
        let video = Some(au.track) == self.video_track;
        if video && self.skipping_video && !au.keyframe {
            return false;
        }
        // Plugins' and encoders' output is held to the same budget as what publishers send.
        if au.data.len() > self.stream.budget.max_unit_bytes {
            self.stream
                .stats
                .units_over_budget
                .fetch_add(1, Ordering::Relaxed);
            self.skipping_video |= video;
            return false;
        }
        if video {
            self.skipping_video = false;
        }
        true
    }

    /// Hands a packetized unit to every reader, and keeps it with the GOP it belongs to.
    fn publish(&mut self, au: AccessUnit, rtp: RtpUnit) {
        let size = au.data.len();
        let video = Some(au.track) == self.video_track;
        let starts_gop = video && au.keyframe;
        if video {
            if self.last_video_pts.is_some_and(|last| au.pts < last) {
                self.stream
                    .stats
                    .video_reordered
                    .store(true, Ordering::Relaxed);
            }
            self.last_video_pts = Some(au.pts);
        }
        // The ring holds the unit's data and the RTP packets made of it.
        let held = size + rtp.packets.iter().map(|p| p.len()).sum::<usize>();
        let unit = Arc::new(Unit {
            au,
            rtp,
            generation: self.generation,
        });
        let stats = &self.stream.stats;
        stats.units_in.fetch_add(1, Ordering::Relaxed);
        stats.bytes_in.fetch_add(size as u64, Ordering::Relaxed);

        let mut shared = self.stream.lock();
        let shared = &mut *shared;
        if starts_gop {
            shared.gop.clear();
            shared.gop_bytes = 0;
        }
        if (starts_gop || !shared.gop.is_empty()) && self.video_track.is_some() {
            shared.gop_bytes += size;
            shared.gop.push(Arc::clone(&unit));
            if shared.gop_bytes > MAX_GOP_BYTES || shared.gop.len() > MAX_GOP_UNITS {
                shared.gop.clear();
                shared.gop_bytes = 0;
            }
        }
        if let Some(ring) = &shared.ring {
            ring.send(unit, held);
        }
    }

    /// Ends this publisher's run: the stream remembers where each track's sequence numbers stand
    /// for the next publisher, and waits for one.
    pub fn retire(&mut self) {
        self.finish(false);
    }

    /// [`Outlet::retire`]; with `release_claim`, the stream is free for a new publisher in the same
    /// step.
    fn finish(&mut self, release_claim: bool) {
        if self.retired {
            return;
        }
        self.retired = true;
        let mut shared = self.stream.lock();
        if release_claim {
            shared.release_claim();
        }
        if shared.generation == self.generation {
            if let Some(media) = &shared.media {
                let mut tracks = media.tracks.clone();
                for (rtp, packetizer) in tracks.iter_mut().zip(&self.packetizers) {
                    rtp.next_seq = packetizer.next_seq();
                }
                shared.media = Some(Arc::new(MediaInfo {
                    description: media.description.clone(),
                    tracks,
                    epoch: media.epoch,
                }));
            }
            if shared.state == SourceState::Live {
                shared.state = SourceState::Waiting;
            }
        }
        drop(shared);
        self.stream.state_changed.notify_waiters();
    }
}

impl Drop for Outlet {
    fn drop(&mut self) {
        self.finish(false);
    }
}
