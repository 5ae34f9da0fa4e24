//! One reader's view of a hub, paced: the kept GOP first, faster than real time, then live units.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Unit;
use super::ring::{Arrivals, Recv, RingReader};
use super::stream::{Stream, StreamStats};
use super::timeline::MediaInfo;

/// How much faster than real time a new reader gets the kept GOP.
const CATCH_UP_SPEED: u32 = 2;
/// The longest a backlog unit is held back.
const MAX_CATCH_UP_WAIT: Duration = Duration::from_secs(1);

/// What [`Reader::try_next`] found.
pub enum Next {
    Unit(Arc<Unit>),
    /// The next unit is a kept one held back until then (catching up at a measured pace).
    NotBefore(tokio::time::Instant),
    /// Nothing yet: the next arrival in the ring may bring something.
    Nothing,
    /// The stream is closed and everything was read.
    Closed,
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
    arrivals: Arrivals<Unit>,
}

impl Reader {
    pub(super) fn new(
        stream: Arc<Stream>,
        media: Arc<MediaInfo>,
        backlog: Vec<Arc<Unit>>,
        generation: u64,
        receiver: RingReader<Unit>,
    ) -> Reader {
        let video_track = media.description.video_track();
        Reader {
            stream,
            video_track,
            // With video, a reader must start on a keyframe: the backlog starts with one, and
            // without a backlog the reader waits for the next.
            waiting_for_keyframe: video_track.is_some() && backlog.is_empty(),
            media,
            backlog: backlog.into_iter(),
            catch_up: None,
            generation,
            arrivals: receiver.arrivals(),
            receiver,
        }
    }

    pub fn media(&self) -> &Arc<MediaInfo> {
        &self.media
    }

    /// The track the reader starts on a keyframe of, if the stream has video.
    pub fn video_track(&self) -> Option<usize> {
        self.video_track
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
    /// the rest at `CATCH_UP_SPEED` times its own pace, so a UDP reader's socket buffer is not
    /// flooded. Cancel-safe: a unit is taken only when it is returned.
    pub async fn next(&mut self) -> Option<Arc<Unit>> {
        let arrivals = self.arrivals.clone();
        loop {
            let arrived = arrivals.notified();
            tokio::pin!(arrived);
            // Registered before looking, so a unit sent in between still wakes this reader.
            arrived.as_mut().enable();
            match self.try_next(tokio::time::Instant::now()) {
                Next::Unit(unit) => return Some(unit),
                Next::Closed => return None,
                Next::NotBefore(due) => tokio::time::sleep_until(due).await,
                Next::Nothing => arrived.await,
            }
        }
    }

    /// The next unit if it may go at `now`, without waiting: what [`Reader::next`] does for one
    /// reader, for a task that serves many readers of one ring and waits on their
    /// [`Reader::arrivals`] and the earliest [`Next::NotBefore`] itself.
    pub fn try_next(&mut self, now: tokio::time::Instant) -> Next {
        loop {
            let backlog_unit = self.backlog.as_slice().first().cloned();
            let unit = match backlog_unit {
                Some(unit) => {
                    let at = self.decode_time(&unit);
                    let (started, first) = *self.catch_up.get_or_insert((now, at));
                    // A unit far in the future is a discontinuity, not something to wait for.
                    let due = started + at.saturating_sub(first) / CATCH_UP_SPEED;
                    let wait = due.saturating_duration_since(now);
                    if !wait.is_zero() && wait < MAX_CATCH_UP_WAIT {
                        return Next::NotBefore(due);
                    }
                    self.backlog.next();
                    unit
                }
                None => match self.receiver.try_recv() {
                    Some(Recv::Unit(unit)) => unit,
                    Some(Recv::Closed) => return Next::Closed,
                    None => return Next::Nothing,
                    Some(Recv::Lagged) => {
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
            return Next::Unit(unit);
        }
    }

    /// The waiter for this reader's ring: it wakes when a unit arrives or the ring closes.
    pub fn arrivals(&self) -> &Arrivals<Unit> {
        &self.arrivals
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
