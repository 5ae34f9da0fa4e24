//! The stream hub of one route: published once, read by many.
//!
//! The publisher packetizes each access unit into RTP once; readers share the result through a
//! ring bounded in units and in bytes (see [`super::ring`]). The hub keeps the current group of
//! pictures so a new reader starts at once on the latest keyframe. A reader that falls a whole ring
//! behind is moved forward to the next keyframe and counted; nothing a reader does can delay the
//! publisher or another reader.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;

use super::publish::{Outlet, PublishClaim, Revocation, Revoked};
use super::reader::Reader;
use super::ring::Ring;
use super::timeline::{MediaInfo, Timeline, TrackRtp};
use super::{Processor, Unit};
use crate::config::MemoryBudget;
use crate::media::StreamDescription;
use crate::rtp::Packetizer;

/// Access units the ring holds: several seconds of a 25 fps video plus its audio.
pub(super) const RING_CAPACITY: usize = 512;

/// Where a route's source stands, for readers and for the status page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceState {
    /// No media now: the source is starting, or waits for a publisher to (re)connect.
    Waiting,
    Live,
    /// The source stopped for good, e.g. the end of a file that does not loop.
    Ended,
    /// The source cannot run; the reason is for people.
    Failed(String),
}

/// Counters of one stream, read by the status page and metrics.
#[derive(Debug, Default)]
pub struct StreamStats {
    pub units_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub readers: AtomicUsize,
    /// Times a reader fell a whole ring behind and was moved forward to the next keyframe.
    pub readers_too_slow: AtomicU64,
    pub source_errors: AtomicU64,
    pub publishers: AtomicU64,
    /// RTP packets and bytes sent to readers, summed over readers.
    pub packets_out: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Units dropped because the plugin stage fell behind.
    pub plugin_queue_drops: AtomicU64,
    /// Units dropped for being larger than the route's `max_unit_mb`.
    pub units_over_budget: AtomicU64,
    /// The current publisher's video has pictures out of presentation order (B-frames), which
    /// browsers do not play over WebRTC.
    pub video_reordered: AtomicBool,
}

pub(super) struct Shared {
    pub(super) state: SourceState,
    pub(super) media: Option<Arc<MediaInfo>>,
    /// Where units go to readers; `None` once the stream is closed.
    pub(super) ring: Option<Ring<Unit>>,
    /// Units since the latest video keyframe (empty until one arrives).
    pub(super) gop: Vec<Arc<Unit>>,
    pub(super) gop_bytes: usize,
    /// A publisher holds the stream (or is about to).
    pub(super) claimed: bool,
    /// Who holds the claim when a publisher from outside does (the user its credentials named,
    /// if any), and how to end them.
    pub(super) claimant: Option<(Option<String>, Revocation)>,
    /// Bumped by every publisher, so readers notice a change of source.
    pub(super) generation: u64,
}

/// One route's hub.
pub struct Stream {
    name: String,
    pub(super) budget: MemoryBudget,
    shared: Mutex<Shared>,
    /// Woken whenever the source state changes.
    pub(super) state_changed: Notify,
    /// The route's pipeline, from the first time the route has plugins or re-encodes.
    processor: OnceLock<Arc<dyn Processor>>,
    /// A reader asked for a keyframe (a new RTSP reader, a WebRTC PLI): a re-encoding route's
    /// encoder makes one at once.
    keyframe_wanted: AtomicBool,
    pub stats: StreamStats,
}

impl Shared {
    pub(super) fn release_claim(&mut self) {
        self.claimed = false;
        self.claimant = None;
    }
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").field("name", &self.name).finish()
    }
}

/// Another publisher holds the stream.
#[derive(Debug, thiserror::Error)]
#[error("route `{0}` already has a publisher")]
pub struct Busy(pub String);

impl Stream {
    /// A stream with the default [`MemoryBudget`].
    pub fn new(name: &str) -> Arc<Stream> {
        Stream::with_budget(name, MemoryBudget::default())
    }

    pub fn with_budget(name: &str, budget: MemoryBudget) -> Arc<Stream> {
        let ring = Ring::new(RING_CAPACITY, budget.route_buffer_bytes);
        Arc::new(Stream {
            name: name.to_owned(),
            budget,
            shared: Mutex::new(Shared {
                state: SourceState::Waiting,
                media: None,
                ring: Some(ring),
                gop: Vec::new(),
                gop_bytes: 0,
                claimed: false,
                claimant: None,
                generation: 0,
            }),
            state_changed: Notify::new(),
            processor: OnceLock::new(),
            keyframe_wanted: AtomicBool::new(false),
            stats: StreamStats::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// What this route's publishers may make the server hold.
    pub fn budget(&self) -> MemoryBudget {
        self.budget
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding this lock leaves plain data behind, still consistent enough to serve.
        self.shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn state(&self) -> SourceState {
        self.lock().state.clone()
    }

    /// The media now published (or last published), if any.
    pub fn media(&self) -> Option<Arc<MediaInfo>> {
        self.lock().media.clone()
    }

    /// Reserves the stream for the route's own source (a file, a pull); a second claim gets
    /// [`Busy`] until the first lets go. The router stops its sources itself, so a reload does not
    /// revoke this claim.
    pub fn claim(self: &Arc<Self>) -> Result<PublishClaim, Busy> {
        self.claim_for(None)
    }

    /// Reserves the stream for a publisher from outside (RTSP RECORD, HTTP push, WHIP) that logged
    /// in as `user`, so that a reload can end it: one that takes `user` off the route's `publish`
    /// list, removes the route or gives it another source.
    pub fn claim_as(self: &Arc<Self>, user: Option<String>) -> Result<PublishClaim, Busy> {
        self.claim_for(Some(user))
    }

    fn claim_for(
        self: &Arc<Self>,
        publisher: Option<Option<String>>,
    ) -> Result<PublishClaim, Busy> {
        let mut shared = self.lock();
        if shared.claimed {
            return Err(Busy(self.name.clone()));
        }
        shared.claimed = true;
        let revocation = Revocation::default();
        shared.claimant = publisher.map(|user| (user, revocation.clone()));
        Ok(PublishClaim::new(Arc::clone(self), revocation))
    }

    /// Ends the publisher unless its user is in `allowed` (empty: anyone may publish).
    pub fn revoke_publisher_unless(&self, allowed: &[String]) {
        if allowed.is_empty() {
            return;
        }
        let shared = self.lock();
        if let (true, Some((user, revocation))) = (shared.claimed, &shared.claimant)
            && !user.as_ref().is_some_and(|user| allowed.contains(user))
        {
            tracing::info!(
                route = self.name,
                user = user.as_deref().unwrap_or("-"),
                "publisher ended: no longer on the route's publish list"
            );
            revocation.revoke(Revoked::NotOnPublishList);
        }
    }

    /// Ends the publisher from outside that holds the stream, if one does.
    pub fn revoke_publisher(&self, reason: Revoked) {
        let shared = self.lock();
        if let (true, Some((_, revocation))) = (shared.claimed, &shared.claimant) {
            tracing::info!(route = self.name, "publisher ended: {reason}");
            revocation.revoke(reason);
        }
    }

    /// Starts a publisher's half that packetizes and fans out: on the publisher's thread, or on the
    /// route's pipeline thread.
    pub(super) fn start_outlet(
        self: &Arc<Self>,
        description: StreamDescription,
        timeline: Timeline,
    ) -> Outlet {
        let mut shared = self.lock();
        let previous = shared.media.clone();
        let epoch = previous.as_ref().map_or(timeline.anchor, |m| m.epoch);
        let continues = previous.as_ref().is_some_and(|m| {
            m.tracks.len() == description.tracks.len()
                && m.tracks
                    .iter()
                    .zip(&description.tracks)
                    .all(|(rtp, t)| rtp.continues(&t.codec))
        });
        let mut tracks = Vec::with_capacity(description.tracks.len());
        let mut packetizers = Vec::with_capacity(description.tracks.len());
        for (index, track) in description.tracks.iter().enumerate() {
            let rtp = match &previous {
                Some(media) if continues => media.tracks[index].clone(),
                _ => TrackRtp::new(index, &track.codec),
            };
            // rtp(pts) = base + ticks(belongs_at(pts) - epoch), where
            // belongs_at(pts) = anchor + (nanos(pts) - anchor_nanos).
            let since_epoch = timeline.anchor.saturating_duration_since(epoch).as_nanos() as i128;
            let offset = rtp
                .base_timestamp
                .wrapping_add(rtp.ticks(since_epoch))
                .wrapping_sub(rtp.ticks(timeline.anchor_nanos));
            packetizers.push(Packetizer::new(
                &track.codec,
                rtp.payload_type,
                rtp.ssrc,
                rtp.next_seq,
                offset,
            ));
            tracks.push(rtp);
        }
        if previous.is_some() && !continues {
            // Readers set up for other tracks cannot follow: end them, new readers get the new SDP.
            self.renew_ring(&mut shared);
        }
        let outlet_description = description.clone();
        shared.media = Some(Arc::new(MediaInfo {
            description,
            tracks,
            epoch,
        }));
        shared.state = SourceState::Live;
        shared.gop.clear();
        shared.gop_bytes = 0;
        shared.generation += 1;
        let generation = shared.generation;
        drop(shared);
        self.stats.publishers.fetch_add(1, Ordering::Relaxed);
        self.stats.video_reordered.store(false, Ordering::Relaxed);
        self.state_changed.notify_waiters();
        Outlet::new(
            Arc::clone(self),
            outlet_description,
            packetizers,
            generation,
            timeline,
        )
    }

    /// Sends what is published from now on through `processor` (the route's pipeline) rather
    /// than straight to the readers. A stream takes one processor for its life; `false` if it has
    /// one already.
    pub fn attach(&self, processor: Arc<dyn Processor>) -> bool {
        self.processor.set(processor).is_ok()
    }

    /// The route's pipeline, once it has one.
    pub(super) fn processor(&self) -> Option<&Arc<dyn Processor>> {
        self.processor.get()
    }

    /// The narrow way in for the route's pipeline.
    pub fn sink(self: &Arc<Self>) -> Sink {
        Sink(Arc::clone(self))
    }

    /// Asks a re-encoding route for a keyframe now; a no-op for other routes.
    pub fn request_keyframe(&self) {
        self.keyframe_wanted.store(true, Ordering::Relaxed);
    }

    /// Marks the source as stopped for good or failed.
    ///
    /// A source that ended (a file played once) ends its readers too, as the end of a file would:
    /// they see the end of the stream rather than silence.
    pub fn set_state(&self, state: SourceState) {
        if matches!(state, SourceState::Failed(_)) {
            self.stats.source_errors.fetch_add(1, Ordering::Relaxed);
        }
        let mut shared = self.lock();
        if state == SourceState::Ended && shared.ring.is_some() {
            self.renew_ring(&mut shared);
            shared.gop.clear();
            shared.gop_bytes = 0;
        }
        shared.state = state;
        drop(shared);
        self.state_changed.notify_waiters();
    }

    /// Waits up to `timeout` for a source that has not produced media yet (a file being opened,
    /// a publisher about to connect); returns the state then.
    pub async fn wait_while_waiting(&self, timeout: Duration) -> SourceState {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.state_changed.notified();
            let state = self.state();
            if state != SourceState::Waiting {
                return state;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.state();
            }
        }
    }

    /// Ends the stream: every reader's [`Reader::next`] returns `None`, the publisher ends and
    /// the pipeline stops.
    pub fn close(&self) {
        if let Some(processor) = self.processor.get() {
            processor.stop();
        }
        self.revoke_publisher(Revoked::RouteRemoved);
        let mut shared = self.lock();
        if let Some(ring) = shared.ring.take() {
            ring.close();
        }
        shared.gop.clear();
        shared.gop_bytes = 0;
    }

    /// Ends the readers of the ring (after what they have not read yet) and starts a new one.
    fn renew_ring(&self, shared: &mut Shared) {
        if let Some(old) = shared
            .ring
            .replace(Ring::new(RING_CAPACITY, self.budget.route_buffer_bytes))
        {
            old.close();
        }
    }

    /// The latest video keyframe, with the media it belongs to and its publisher's generation (a
    /// change of either is a new picture), while the route is live.
    pub fn latest_keyframe(&self) -> Option<(Arc<Unit>, Arc<MediaInfo>, u64)> {
        let shared = self.lock();
        if shared.state != SourceState::Live {
            return None;
        }
        let keyframe = shared.gop.first()?;
        Some((
            Arc::clone(keyframe),
            Arc::clone(shared.media.as_ref()?),
            shared.generation,
        ))
    }

    /// A reader that starts at the latest keyframe, or `None` while there is no media.
    pub fn subscribe(self: &Arc<Self>) -> Option<Reader> {
        let shared = self.lock();
        if shared.state != SourceState::Live {
            return None;
        }
        let media = Arc::clone(shared.media.as_ref()?);
        let receiver = shared.ring.as_ref()?.subscribe();
        let backlog = shared.gop.clone();
        let generation = shared.generation;
        drop(shared);
        self.stats.readers.fetch_add(1, Ordering::Relaxed);
        Some(Reader::new(
            Arc::clone(self),
            media,
            backlog,
            generation,
            receiver,
        ))
    }
}

/// What a route's pipeline may do to its hub: publish what it makes, ask for a keyframe, fail.
pub struct Sink(Arc<Stream>);

impl Sink {
    /// The route's name, for logs and thread names.
    pub fn route(&self) -> &str {
        self.0.name()
    }

    /// What the route may hold.
    pub fn budget(&self) -> MemoryBudget {
        self.0.budget
    }

    /// Starts publishing `description`, whose timestamps follow `timeline`.
    pub fn start(&self, description: StreamDescription, timeline: Timeline) -> Outlet {
        self.0.start_outlet(description, timeline)
    }

    /// Whether a reader asked for a keyframe since the last call.
    pub fn take_keyframe_request(&self) -> bool {
        self.0.keyframe_wanted.swap(false, Ordering::Relaxed)
    }

    /// The route cannot run; `reason` is for people.
    pub fn fail(&self, reason: String) {
        self.0.set_state(SourceState::Failed(reason));
    }
}
