//! The stream hub of one route: published once, read by many.
//!
//! The publisher packetizes each access unit into RTP once; readers share the result through a
//! ring bounded in units and in bytes (see [`super::ring`]). The hub keeps the current group of pictures so a new reader starts at
//! once on the latest keyframe. A reader that falls a whole ring behind is moved forward to the next
//! keyframe and counted; nothing a reader does can delay the publisher or another reader.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::ring::{Recv, Ring, RingReader};
use super::stage::{Stage, StageInput};
use crate::config::{MemoryBudget, TranscodeConfig};
use crate::media::{AccessUnit, StreamDescription};
use crate::plugins::{Kind, LoadedPlugin, PluginStatus};
use crate::rtp::{self, Packetizer, RtpUnit};
use crate::transcode::TranscodeStats;

/// Access units the ring holds: several seconds of a 25 fps video plus its audio.
const RING_CAPACITY: usize = 512;
/// The kept group of pictures is dropped past this size (a source with very rare keyframes); new
/// readers then wait for the next keyframe.
const MAX_GOP_BYTES: usize = 32 << 20;
const MAX_GOP_UNITS: usize = 4096;
/// How much faster than real time a new reader gets the kept GOP.
const CATCH_UP_SPEED: u32 = 2;
/// The longest a backlog unit is held back.
const MAX_CATCH_UP_WAIT: Duration = Duration::from_secs(1);

/// An access unit and its RTP packets, shared by every reader.
#[derive(Debug)]
pub struct Unit {
    pub au: AccessUnit,
    pub rtp: RtpUnit,
    /// Which publisher made it: a change tells readers the source was replaced.
    pub generation: u64,
}

/// Per-track RTP identity. It outlives publishers: a publisher that replaces another with the same
/// kind of track keeps the SSRC, the sequence numbers and a clock that never runs backwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackRtp {
    pub payload_type: u8,
    pub ssrc: u32,
    pub clock_rate: u32,
    video: bool,
    /// RTP timestamp at the stream's epoch.
    base_timestamp: u32,
    next_seq: u16,
}

impl TrackRtp {
    fn new(index: usize, codec: &crate::media::Codec) -> TrackRtp {
        TrackRtp {
            payload_type: rtp::payload_type(index),
            ssrc: rand::random(),
            clock_rate: codec.clock_rate(),
            video: codec.is_video(),
            base_timestamp: rand::random(),
            next_seq: rand::random(),
        }
    }

    fn continues(&self, codec: &crate::media::Codec) -> bool {
        self.clock_rate == codec.clock_rate() && self.video == codec.is_video()
    }

    /// RTP ticks in `nanos` nanoseconds, modulo 2^32.
    fn ticks(&self, nanos: i128) -> u32 {
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
    epoch: Instant,
}

impl MediaInfo {
    /// The RTP timestamp of `track` that corresponds to the instant `now`, for sender reports.
    pub fn rtp_timestamp_at(&self, track: usize, now: Instant) -> Option<u32> {
        let info = self.tracks.get(track)?;
        let elapsed = now.saturating_duration_since(self.epoch).as_nanos() as i128;
        Some(info.base_timestamp.wrapping_add(info.ticks(elapsed)))
    }
}

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

struct Shared {
    state: SourceState,
    media: Option<Arc<MediaInfo>>,
    /// Where units go to readers; `None` once the stream is closed.
    ring: Option<Ring<Unit>>,
    /// Units since the latest video keyframe (empty until one arrives).
    gop: Vec<Arc<Unit>>,
    gop_bytes: usize,
    /// A publisher holds the stream (or is about to).
    claimed: bool,
    /// Who holds the claim (the user its credentials named, if any), and how to end them.
    claimant: Option<(Option<String>, Revocation)>,
    /// Bumped by every publisher, so readers notice a change of source.
    generation: u64,
}

/// One route's hub.
pub struct Stream {
    name: String,
    budget: MemoryBudget,
    shared: Mutex<Shared>,
    /// Woken whenever the source state changes.
    state_changed: Notify,
    /// The processing stage, from the first time the route has plugins or re-encodes.
    stage: OnceLock<Stage>,
    /// A reader asked for a keyframe (a new RTSP reader, a WebRTC PLI): a re-encoding route's
    /// encoder makes one at once.
    keyframe_wanted: AtomicBool,
    pub stats: StreamStats,
}

impl Shared {
    fn release_claim(&mut self) {
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
            stage: OnceLock::new(),
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

    fn lock(&self) -> MutexGuard<'_, Shared> {
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

    /// Reserves the stream for one publisher; a second gets [`Busy`] until the first lets go.
    pub fn claim(self: &Arc<Self>) -> Result<PublishClaim, Busy> {
        self.claim_as(None)
    }

    /// [`Stream::claim`] for a publisher that logged in as `user`, so that a reload that takes
    /// `user` off the route's `publish` list can end it.
    pub fn claim_as(self: &Arc<Self>, user: Option<String>) -> Result<PublishClaim, Busy> {
        let mut shared = self.lock();
        if shared.claimed {
            return Err(Busy(self.name.clone()));
        }
        shared.claimed = true;
        let revocation = Revocation::default();
        shared.claimant = Some((user, revocation.clone()));
        Ok(PublishClaim {
            stream: Some(Arc::clone(self)),
            revocation,
        })
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
            revocation.revoke();
        }
    }

    /// Starts a publisher's half that packetizes and fans out: on the publisher's thread, or on the
    /// plugin stage's.
    pub(super) fn start_core(
        self: &Arc<Self>,
        description: StreamDescription,
        timeline: Timeline,
    ) -> Core {
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
        let video_track = description.video_track();
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
        Core {
            stream: Arc::clone(self),
            packetizers,
            video_track,
            generation,
            timeline,
            last_video_pts: None,
            retired: false,
            skipping_video: false,
        }
    }

    /// Runs `plugins` on every unit published from now on (swapped in between two units, with no
    /// unit lost), and re-encodes the video when `transcode` is set or frame plugins are among
    /// them. The stage thread starts the first time there is something to do.
    pub fn set_processing(
        self: &Arc<Self>,
        plugins: &[Arc<LoadedPlugin>],
        transcode: Option<TranscodeConfig>,
    ) {
        if plugins.is_empty() && transcode.is_none() && self.stage.get().is_none() {
            return;
        }
        let (frames, packets): (Vec<_>, Vec<_>) = plugins
            .iter()
            .cloned()
            .partition(|p| p.kind() == Kind::Frame);
        let stage = self.stage.get_or_init(|| Stage::spawn(self));
        stage.set_processing(&self.name, &packets, &frames, transcode);
    }

    /// Counters of the route's frame path, once it has a stage.
    pub fn transcode_stats(&self) -> Option<Arc<TranscodeStats>> {
        self.stage.get().map(|s| Arc::clone(s.transcode_stats()))
    }

    /// Asks a re-encoding route for a keyframe now; a no-op for other routes.
    pub fn request_keyframe(&self) {
        self.keyframe_wanted.store(true, Ordering::Relaxed);
    }

    pub(super) fn take_keyframe_request(&self) -> bool {
        self.keyframe_wanted.swap(false, Ordering::Relaxed)
    }

    /// The plugins running on this stream, with their counters.
    pub fn plugins(&self) -> Vec<PluginStatus> {
        self.stage.get().map(Stage::status).unwrap_or_default()
    }

    /// The plugin stage's input, once the stream has one.
    fn stage_input(&self) -> Option<StageInput> {
        self.stage.get().map(Stage::input)
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

    /// Ends the stream: every reader's [`Reader::next`] returns `None`, and the plugin stage stops.
    pub fn close(&self) {
        if let Some(stage) = self.stage.get() {
            stage.stop();
        }
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
        Some(Reader {
            stream: Arc::clone(self),
            video_track: media.description.video_track(),
            // With video, a reader must start on a keyframe: the backlog starts with one, and
            // without a backlog the reader waits for the next.
            waiting_for_keyframe: media.description.video_track().is_some() && backlog.is_empty(),
            media,
            backlog: backlog.into_iter(),
            catch_up: None,
            generation,
            receiver,
        })
    }
}

/// The right to publish into a stream, held from the moment a publisher connects until it leaves.
pub struct PublishClaim {
    stream: Option<Arc<Stream>>,
    revocation: Revocation,
}

/// Tells a publisher that it lost its right to publish (a reload took it off the `publish` list).
#[derive(Clone, Debug, Default)]
pub struct Revocation(Arc<Notify>);

impl Revocation {
    fn revoke(&self) {
        // A stored permit: the publisher hears it even if it is not waiting right now.
        self.0.notify_one();
    }

    /// Completes when the publisher must end.
    pub async fn revoked(&self) {
        self.0.notified().await;
    }
}

impl PublishClaim {
    /// What tells this claim's publisher to end.
    pub fn revocation(&self) -> Revocation {
        self.revocation.clone()
    }

    /// Starts publishing `description`, whose timestamps follow `timeline`.
    pub fn start(mut self, description: StreamDescription, timeline: Timeline) -> Publisher {
        // The claim passes to the publisher, which releases it on drop.
        let stream = self.stream.take().expect("a claim is started once");
        let video_track = description.video_track();
        let path = match stream.stage_input() {
            Some(stage) => {
                // The stage starts the core after it is done with the previous publisher's units,
                // so sequence numbers continue in order.
                stage.start(description, timeline);
                PublishPath::Staged(stage)
            }
            None => PublishPath::Direct(stream.start_core(description, timeline)),
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
    /// The plugin stage fell behind: video waits for the next keyframe.
    skipping_video: bool,
}

enum PublishPath {
    /// No plugins: units are packetized on the publisher's thread.
    Direct(Core),
    /// Units go to the plugin stage, which owns the core.
    Staged(StageInput),
}

impl Publisher {
    /// Hands `au` to every reader (through the route's plugins, if it has any). Units of unknown
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

    fn send_within_budget(&mut self, au: AccessUnit) {
        if let PublishPath::Direct(core) = &mut self.path {
            match self.stream.stage_input() {
                None => return core.send(au),
                Some(stage) => {
                    // The route got plugins while this publisher was live: its core moves to the
                    // stage, with its sequence numbers.
                    if let PublishPath::Direct(core) =
                        std::mem::replace(&mut self.path, PublishPath::Staged(stage.clone()))
                    {
                        stage.adopt(core);
                    }
                }
            }
        }
        let PublishPath::Staged(stage) = &self.path else {
            return;
        };
        let video = self.video_track == Some(au.track);
        if video && self.skipping_video {
            if !au.keyframe || stage.is_full(au.data.len()) {
                self.stream
                    .stats
                    .plugin_queue_drops
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
            self.skipping_video = false;
        }
        if !stage.unit(au) {
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
            PublishPath::Direct(core) => core.retire(true),
            PublishPath::Staged(stage) => {
                // The stage retires the core after the units still queued; the claim is free now.
                stage.end();
                self.stream.lock().release_claim();
            }
        }
    }
}

/// The half of a publisher that packetizes units and hands them to readers.
pub(super) struct Core {
    stream: Arc<Stream>,
    packetizers: Vec<Packetizer>,
    video_track: Option<usize>,
    generation: u64,
    timeline: Timeline,
    last_video_pts: Option<i64>,
    retired: bool,
    /// A video unit was dropped for the budget: the next one readers get is a keyframe.
    skipping_video: bool,
}

impl Core {
    /// How this core's timestamps map to wall-clock time.
    pub(super) fn timeline(&self) -> Timeline {
        self.timeline
    }

    /// Packetizes `au` and hands it to every reader. Units of unknown tracks are dropped.
    pub(super) fn send(&mut self, au: AccessUnit) {
        let Some(packetizer) = self.packetizers.get_mut(au.track) else {
            return;
        };
        let size = au.data.len();
        let video = Some(au.track) == self.video_track;
        let budget = self.stream.budget;
        if video && self.skipping_video && !au.keyframe {
            return;
        }
        // Plugins' and encoders' output is held to the same budget as what publishers send.
        if size > budget.max_unit_bytes {
            self.stream
                .stats
                .units_over_budget
                .fetch_add(1, Ordering::Relaxed);
            self.skipping_video |= video;
            return;
        }
        if video {
            self.skipping_video = false;
        }
        let rtp = packetizer.packetize(&au);
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
    /// for the next publisher, and waits for one. With `release_claim`, the stream is free for a
    /// new publisher in the same step.
    pub(super) fn retire(&mut self, release_claim: bool) {
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

impl Drop for Core {
    fn drop(&mut self) {
        self.retire(false);
    }
}

/// One reader's view of a stream: the kept GOP first, then live units.
pub struct Reader {
    stream: Arc<Stream>,
    media: Arc<MediaInfo>,
    video_track: Option<usize>,
    waiting_for_keyframe: bool,
    backlog: std::vec::IntoIter<Arc<Unit>>,
    /// When the first backlog unit went out, and its decode time.
    catch_up: Option<(tokio::time::Instant, Duration)>,
    /// The publisher generation this reader is following.
    generation: u64,
    receiver: RingReader<Unit>,
}

impl Reader {
    pub fn media(&self) -> &Arc<MediaInfo> {
        &self.media
    }

    /// The counters of the stream this reader reads.
    pub fn stats(&self) -> &StreamStats {
        &self.stream.stats
    }

    /// The units already waiting for this reader, without taking them.
    pub fn backlog(&self) -> &[Arc<Unit>] {
        self.backlog.as_slice()
    }

    /// The next unit to send, or `None` once the stream is closed.
    ///
    /// The kept GOP is handed out faster than real time but not in one burst: its keyframe at once,
    /// the rest at [`CATCH_UP_SPEED`] times its own pace, so a UDP reader's socket buffer is not
    /// flooded. Cancel-safe: a unit is taken only when it is returned.
    pub async fn next(&mut self) -> Option<Arc<Unit>> {
        loop {
            let backlog_unit = self.backlog.as_slice().first().cloned();
            let unit = match backlog_unit {
                Some(unit) => {
                    let at = self.decode_time(&unit);
                    let (started, first) = *self
                        .catch_up
                        .get_or_insert_with(|| (tokio::time::Instant::now(), at));
                    // A unit far in the future is a discontinuity, not something to wait for.
                    let due = started + at.saturating_sub(first) / CATCH_UP_SPEED;
                    if due.saturating_duration_since(tokio::time::Instant::now())
                        < MAX_CATCH_UP_WAIT
                    {
                        tokio::time::sleep_until(due).await;
                    }
                    self.backlog.next();
                    unit
                }
                None => match self.receiver.recv().await {
                    Recv::Unit(unit) => unit,
                    Recv::Closed => return None,
                    Recv::Lagged => {
                        self.stream
                            .stats
                            .readers_too_slow
                            .fetch_add(1, Ordering::Relaxed);
                        self.waiting_for_keyframe = self.video_track.is_some();
                        continue;
                    }
                },
            };
            if unit.generation != self.generation {
                // A new publisher: its stream can only be joined at a keyframe.
                self.generation = unit.generation;
                self.waiting_for_keyframe = self.video_track.is_some();
            }
            if self.waiting_for_keyframe {
                if Some(unit.au.track) != self.video_track || !unit.au.keyframe {
                    continue;
                }
                self.waiting_for_keyframe = false;
            }
            return Some(unit);
        }
    }

    /// When a unit is due on the stream's timeline, from its decode timestamp.
    fn decode_time(&self, unit: &Unit) -> Duration {
        let rate = self
            .media
            .tracks
            .get(unit.au.track)
            .map_or(1, |t| u128::from(t.clock_rate.max(1)));
        let dts = u128::try_from(unit.au.dts).unwrap_or(0);
        Duration::from_nanos(u64::try_from(dts * 1_000_000_000 / rate).unwrap_or(u64::MAX))
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stream.stats.readers.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{Codec, Track};
    use bytes::Bytes;

    fn description() -> StreamDescription {
        StreamDescription {
            tracks: vec![
                Track {
                    codec: Codec::H264 {
                        sps: Bytes::from_static(&[0x67]),
                        pps: Bytes::from_static(&[0x68]),
                    },
                    dimensions: None,
                },
                Track {
                    codec: Codec::Aac {
                        config: Bytes::from_static(&[0x11, 0x90]),
                        sample_rate: 48000,
                        channels: 2,
                    },
                    dimensions: None,
                },
            ],
        }
    }

    pub(crate) fn start(stream: &Arc<Stream>, anchor: Instant) -> Publisher {
        let timeline = Timeline {
            anchor,
            anchor_nanos: 0,
        };
        stream.claim().expect("free").start(description(), timeline)
    }

    fn au(track: usize, pts: i64, keyframe: bool) -> AccessUnit {
        AccessUnit {
            track,
            pts,
            dts: pts,
            keyframe,
            data: Bytes::from_static(&[0, 0, 0, 1, 0x65, 1]),
        }
    }

    #[tokio::test]
    async fn new_reader_starts_at_latest_keyframe() {
        let stream = Stream::new("test");
        assert!(stream.subscribe().is_none(), "no media yet");
        let mut publisher = start(&stream, Instant::now());
        publisher.send(au(0, 0, true));
        publisher.send(au(0, 3600, false));
        publisher.send(au(0, 7200, true));
        publisher.send(au(1, 7000, true));
        publisher.send(au(0, 10800, false));
        let mut reader = stream.subscribe().expect("media");
        let pts: Vec<i64> = [
            reader.next().await.unwrap(),
            reader.next().await.unwrap(),
            reader.next().await.unwrap(),
        ]
        .iter()
        .map(|u| u.au.pts)
        .collect();
        assert_eq!(pts, vec![7200, 7000, 10800]);
        publisher.send(au(0, 14400, false));
        assert_eq!(reader.next().await.unwrap().au.pts, 14400);
        assert_eq!(stream.stats.readers.load(Ordering::Relaxed), 1);
        drop(reader);
        assert_eq!(stream.stats.readers.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn slow_reader_skips_to_next_keyframe_and_others_are_untouched() {
        let stream = Stream::new("test");
        let mut publisher = start(&stream, Instant::now());
        publisher.send(au(0, 0, true));
        let mut slow = stream.subscribe().expect("media");
        let mut fast = stream.subscribe().expect("media");
        for i in 1..=(RING_CAPACITY as i64 + 10) {
            publisher.send(au(0, i * 3600, false));
            assert_eq!(
                fast.next().await.unwrap().au.pts,
                if i == 1 { 0 } else { (i - 1) * 3600 }
            );
        }
        publisher.send(au(0, 999_999, true));
        publisher.send(au(0, 1_000_000, false));
        // The slow reader still has its backlog, then it lagged: it resumes at the keyframe.
        assert_eq!(slow.next().await.unwrap().au.pts, 0);
        assert_eq!(slow.next().await.unwrap().au.pts, 999_999);
        assert_eq!(slow.next().await.unwrap().au.pts, 1_000_000);
        assert_eq!(stream.stats.readers_too_slow.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn units_over_the_budget_are_dropped_and_a_slow_reader_skips_past_the_ring_bytes() {
        let budget = MemoryBudget {
            max_unit_bytes: 1000,
            route_buffer_bytes: 8000,
        };
        let stream = Stream::with_budget("test", budget);
        let mut publisher = start(&stream, Instant::now());
        let unit = |pts: i64, keyframe: bool, size: usize| AccessUnit {
            data: Bytes::from(vec![1u8; size]),
            ..au(0, pts, keyframe)
        };
        assert!(publisher.send(unit(0, true, 500)));
        assert!(
            !publisher.send(unit(3600, true, 1001)),
            "over max_unit_bytes"
        );
        assert_eq!(stream.stats.units_over_budget.load(Ordering::Relaxed), 1);
        let mut slow = stream.subscribe().expect("media");
        assert_eq!(slow.next().await.unwrap().au.pts, 0, "the kept keyframe");
        // 18 units of 900 bytes (and their packets) are far over the ring's 8000 bytes: it keeps the
        // last few, and a reader that read none of them goes on at the first keyframe among them.
        for i in 2..20 {
            assert!(publisher.send(unit(i * 3600, i % 5 == 0, 900)));
        }
        let next = slow.next().await.unwrap();
        assert_eq!(
            stream.stats.readers_too_slow.load(Ordering::Relaxed),
            1,
            "the slow reader fell out of the ring"
        );
        assert!(
            next.au.keyframe && next.au.pts == 15 * 3600,
            "{:?}",
            next.au
        );
    }

    #[tokio::test]
    async fn close_ends_readers() {
        let stream = Stream::new("test");
        let mut publisher = start(&stream, Instant::now());
        publisher.send(au(0, 0, true));
        let mut reader = stream.subscribe().expect("media");
        stream.close();
        assert_eq!(reader.next().await.unwrap().au.pts, 0);
        assert!(reader.next().await.is_none());
    }

    #[tokio::test]
    async fn a_returning_publisher_continues_the_rtp_stream_for_readers() {
        let stream = Stream::new("test");
        let t0 = Instant::now();
        let mut first = start(&stream, t0);
        assert!(stream.claim().is_err(), "one publisher at a time");
        first.send(au(0, 0, true));
        first.send(au(0, 3600, false));
        let mut reader = stream.subscribe().expect("media");
        let a = reader.next().await.unwrap();
        let b = reader.next().await.unwrap();
        drop(first);
        assert_eq!(stream.state(), SourceState::Waiting);

        // The new publisher's clock restarts at zero, ten seconds later in wall-clock time.
        let mut second = start(&stream, t0 + Duration::from_secs(10));
        second.send(au(0, 0, false));
        second.send(au(0, 3600, true));
        let c = reader.next().await.unwrap();
        assert!(
            c.au.keyframe,
            "after a change of publisher the reader resumes at a keyframe"
        );
        let first_packet =
            |u: &Unit| crate::rtp::header_seq_and_timestamp(&u.rtp.packets[0]).unwrap();
        let (seq_b, ts_b) = first_packet(&b);
        let (seq_c, ts_c) = first_packet(&c);
        assert_eq!(
            a.rtp.packets[0][8..12],
            c.rtp.packets[0][8..12],
            "same SSRC"
        );
        assert_eq!(seq_c, seq_b.wrapping_add(2), "sequence numbers continue");
        assert_eq!(
            ts_c.wrapping_sub(ts_b),
            10 * 90_000,
            "the RTP clock followed the wall clock"
        );
    }

    #[tokio::test]
    async fn a_publisher_with_other_tracks_ends_old_readers() {
        let stream = Stream::new("test");
        let mut first = start(&stream, Instant::now());
        first.send(au(0, 0, true));
        let mut reader = stream.subscribe().expect("media");
        drop(first);
        let audio_only = StreamDescription {
            tracks: vec![description().tracks[1].clone()],
        };
        let timeline = Timeline {
            anchor: Instant::now(),
            anchor_nanos: 0,
        };
        let _second = stream.claim().expect("free").start(audio_only, timeline);
        assert!(reader.next().await.is_some(), "the backlog it already had");
        assert!(reader.next().await.is_none());
    }

    #[test]
    fn rtp_clock_follows_the_timeline() {
        let start = Instant::now();
        let stream = Stream::new("test");
        let _publisher = super::tests::start(&stream, start);
        let media = stream.media().unwrap();
        let at_start = media.rtp_timestamp_at(0, start).unwrap();
        let later = media
            .rtp_timestamp_at(0, start + Duration::from_secs(2))
            .unwrap();
        assert_eq!(later.wrapping_sub(at_start), 180_000);
        let audio_start = media.rtp_timestamp_at(1, start).unwrap();
        let audio_later = media
            .rtp_timestamp_at(1, start + Duration::from_millis(500))
            .unwrap();
        assert_eq!(audio_later.wrapping_sub(audio_start), 24_000);
    }
}
