//! The stream hub of one route: published once, read by many.
//!
//! The publisher packetizes each access unit into RTP once; readers share the result through a
//! bounded broadcast ring. The hub keeps the current group of pictures so a new reader starts at
//! once on the latest keyframe. A reader that falls a whole ring behind is moved forward to the next
//! keyframe and counted; nothing a reader does can delay the publisher or another reader.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, broadcast};

use crate::media::{AccessUnit, StreamDescription};
use crate::rtp::{self, Packetizer, RtpUnit};

/// Access units the ring holds: several seconds of a 25 fps video plus its audio.
const RING_CAPACITY: usize = 512;
/// The kept group of pictures is dropped past this size (a source with very rare keyframes); new
/// readers then wait for the next keyframe.
const MAX_GOP_BYTES: usize = 32 << 20;
const MAX_GOP_UNITS: usize = 4096;
/// How much faster than real time a new reader gets the kept GOP.
const CATCH_UP_SPEED: u32 = 2;

/// An access unit and its RTP packets, shared by every reader.
#[derive(Debug)]
pub struct Unit {
    pub au: AccessUnit,
    pub rtp: RtpUnit,
}

/// Per-track RTP identity, fixed for as long as one publisher runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackRtp {
    pub payload_type: u8,
    pub ssrc: u32,
    pub clock_rate: u32,
    timestamp_offset: u32,
}

/// What egress needs to describe a stream and to report on it in RTCP.
#[derive(Debug)]
pub struct MediaInfo {
    pub description: StreamDescription,
    pub tracks: Vec<TrackRtp>,
    /// The instant the source's timeline starts: a unit with timestamp `t` belongs at
    /// `timeline_start + t / clock_rate`.
    timeline_start: Instant,
}

impl MediaInfo {
    /// The RTP timestamp of `track` that corresponds to the instant `now`, for sender reports.
    pub fn rtp_timestamp_at(&self, track: usize, now: Instant) -> Option<u32> {
        let info = self.tracks.get(track)?;
        let elapsed = now.saturating_duration_since(self.timeline_start);
        let ticks = elapsed.as_nanos() * u128::from(info.clock_rate) / 1_000_000_000;
        // RTP timestamps are modulo 2^32.
        Some(info.timestamp_offset.wrapping_add(ticks as u32))
    }
}

/// Where a route's source stands, for readers and for the status page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceState {
    /// No media yet.
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
}

struct Shared {
    state: SourceState,
    media: Option<Arc<MediaInfo>>,
    sender: Option<broadcast::Sender<Arc<Unit>>>,
    /// Units since the latest video keyframe (empty until one arrives).
    gop: Vec<Arc<Unit>>,
    gop_bytes: usize,
}

/// One route's hub.
pub struct Stream {
    name: String,
    shared: Mutex<Shared>,
    /// Woken whenever the source state changes.
    state_changed: Notify,
    pub stats: StreamStats,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").field("name", &self.name).finish()
    }
}

impl Stream {
    pub fn new(name: &str) -> Arc<Stream> {
        let (sender, _) = broadcast::channel(RING_CAPACITY);
        Arc::new(Stream {
            name: name.to_owned(),
            shared: Mutex::new(Shared {
                state: SourceState::Waiting,
                media: None,
                sender: Some(sender),
                gop: Vec::new(),
                gop_bytes: 0,
            }),
            state_changed: Notify::new(),
            stats: StreamStats::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
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

    /// The media now published, if any.
    pub fn media(&self) -> Option<Arc<MediaInfo>> {
        self.lock().media.clone()
    }

    /// Starts a publisher for `description`, whose timestamps count from `timeline_start`.
    pub fn publish(
        self: &Arc<Self>,
        description: StreamDescription,
        timeline_start: Instant,
    ) -> Publisher {
        let mut packetizers = Vec::with_capacity(description.tracks.len());
        let mut tracks = Vec::with_capacity(description.tracks.len());
        for (index, track) in description.tracks.iter().enumerate() {
            let rtp = TrackRtp {
                payload_type: rtp::payload_type(index),
                ssrc: rand::random(),
                clock_rate: track.codec.clock_rate(),
                timestamp_offset: rand::random(),
            };
            packetizers.push(Packetizer::new(
                &track.codec,
                rtp.payload_type,
                rtp.ssrc,
                rand::random(),
                rtp.timestamp_offset,
            ));
            tracks.push(rtp);
        }
        let video_track = description.video_track();
        let media = Arc::new(MediaInfo {
            description,
            tracks,
            timeline_start,
        });
        let mut shared = self.lock();
        shared.media = Some(media);
        shared.state = SourceState::Live;
        shared.gop.clear();
        shared.gop_bytes = 0;
        drop(shared);
        self.state_changed.notify_waiters();
        Publisher {
            stream: Arc::clone(self),
            packetizers,
            video_track,
        }
    }

    /// Marks the source as stopped for good or failed; readers stay and see no more media.
    pub fn set_state(&self, state: SourceState) {
        if matches!(state, SourceState::Failed(_)) {
            self.stats.source_errors.fetch_add(1, Ordering::Relaxed);
        }
        self.lock().state = state;
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

    /// Ends the stream: every reader's [`Reader::next`] returns `None`.
    pub fn close(&self) {
        let mut shared = self.lock();
        shared.sender = None;
        shared.gop.clear();
        shared.gop_bytes = 0;
    }

    /// A reader that starts at the latest keyframe, or `None` while there is no media.
    pub fn subscribe(self: &Arc<Self>) -> Option<Reader> {
        let shared = self.lock();
        let media = Arc::clone(shared.media.as_ref()?);
        let receiver = shared.sender.as_ref()?.subscribe();
        let backlog = shared.gop.clone();
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
            receiver,
        })
    }
}

/// The one writer of a stream.
pub struct Publisher {
    stream: Arc<Stream>,
    packetizers: Vec<Packetizer>,
    video_track: Option<usize>,
}

impl Publisher {
    /// Packetizes `au` and hands it to every reader. Units of unknown tracks are dropped.
    pub fn send(&mut self, au: AccessUnit) {
        let Some(packetizer) = self.packetizers.get_mut(au.track) else {
            return;
        };
        let rtp = packetizer.packetize(&au);
        let size = au.data.len();
        let starts_gop = Some(au.track) == self.video_track && au.keyframe;
        let unit = Arc::new(Unit { au, rtp });
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
        if let Some(sender) = &shared.sender {
            // An error only means nobody is reading right now.
            let _ = sender.send(unit);
        }
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
    receiver: broadcast::Receiver<Arc<Unit>>,
}

impl Reader {
    pub fn media(&self) -> &Arc<MediaInfo> {
        &self.media
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
                    tokio::time::sleep_until(started + at.saturating_sub(first) / CATCH_UP_SPEED)
                        .await;
                    self.backlog.next();
                    unit
                }
                None => match self.receiver.recv().await {
                    Ok(unit) => unit,
                    Err(broadcast::error::RecvError::Closed) => return None,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.stream
                            .stats
                            .readers_too_slow
                            .fetch_add(1, Ordering::Relaxed);
                        self.waiting_for_keyframe = self.video_track.is_some();
                        continue;
                    }
                },
            };
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
        let mut publisher = stream.publish(description(), Instant::now());
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
        let mut publisher = stream.publish(description(), Instant::now());
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
    async fn close_ends_readers() {
        let stream = Stream::new("test");
        let mut publisher = stream.publish(description(), Instant::now());
        publisher.send(au(0, 0, true));
        let mut reader = stream.subscribe().expect("media");
        stream.close();
        assert_eq!(reader.next().await.unwrap().au.pts, 0);
        assert!(reader.next().await.is_none());
    }

    #[test]
    fn rtp_clock_follows_the_timeline() {
        let start = Instant::now();
        let stream = Stream::new("test");
        let _publisher = stream.publish(description(), start);
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
