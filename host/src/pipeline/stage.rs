//! The stage of a route: a thread between the route's publisher and its hub, running its packet
//! plugins and, when the route re-encodes, its frame path (decode, frame plugins, encode; see
//! [`super::transcode`]).
//!
//! Plugins and codecs are CPU work of unknown cost, so they never run on the async runtime nor on a source's
//! own thread: the publisher queues each unit for the stage (a bounded number of them; past that,
//! units are dropped and counted, video until its next keyframe), and the stage runs the chain and
//! packetizes what comes out. Everything about a route's publishers goes through the same queue —
//! a publisher starting, its units, its end, a new chain — so the stage sees them in order: a new
//! chain takes over between two units (or at the next video keyframe, for plugins that ask), and a
//! new publisher continues the old one's sequence numbers. The thread's side is
//! [`super::worker`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use super::transcode::TranscodeStats;
use super::worker::Worker;
use crate::config::TranscodeConfig;
use crate::hub::{Outlet, Processor, Stream, Timeline};
use crate::media::{AccessUnit, StreamDescription};
use crate::plugins::{Chain, KeyframeRequest, Kind, LoadedPlugin, PluginStatus};

/// Units waiting for the stage at most: about two seconds of 30 fps video with its audio. Their
/// bytes are capped too, by the route's `route_buffer_mb`.
const MAX_QUEUED_UNITS: usize = 128;

/// What waits in a stage's queue now.
#[derive(Debug, Default)]
pub(super) struct Queued {
    units: AtomicUsize,
    bytes: AtomicUsize,
}

impl Queued {
    fn add(&self, bytes: usize) {
        self.units.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(super) fn remove(&self, bytes: usize) {
        self.units.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }
}

pub(super) enum Message {
    /// New packet plugins, frame plugins and transcode settings (boxed: rare, and large).
    Processing(Box<Processing>),
    Start {
        description: StreamDescription,
        timeline: Timeline,
    },
    /// A publisher that was publishing directly hands its outlet over.
    Adopt(Outlet),
    Unit(AccessUnit),
    End,
    /// Answered once everything queued before it has been published.
    Flush(tokio::sync::oneshot::Sender<()>),
    Stop,
}

/// What a stage does to the units that pass through it.
pub(super) struct Processing {
    pub(super) packets: Chain,
    pub(super) frames: Chain,
    /// Packet plugins listed after a frame plugin: they run on the re-encoded output.
    pub(super) encoded: Chain,
    /// Re-encode (with the frame plugins in between) when set, or when there are frame plugins.
    pub(super) transcode: Option<TranscodeConfig>,
}

/// The stage of one route, held by the router; the route's hub holds its input.
#[derive(Clone)]
pub struct Stage {
    route: String,
    input: StageInput,
    status: Arc<Mutex<Vec<PluginStatus>>>,
    transcode_stats: Arc<TranscodeStats>,
    /// What the plugins' `request-keyframe` does: asks the route's encoder or source.
    request_keyframe: KeyframeRequest,
}

/// The way into a stage, held by the route's hub and its publisher.
#[derive(Clone)]
struct StageInput {
    messages: mpsc::Sender<Message>,
    queued: Arc<Queued>,
    /// The route's `route_buffer_mb`, in bytes.
    max_bytes: usize,
}

impl Stage {
    /// Starts the stage thread of `stream`, which sends its publishers' units here from now on.
    pub fn attach(stream: &Arc<Stream>) -> Stage {
        let (messages, inbox) = mpsc::channel();
        let queued = Arc::new(Queued::default());
        let transcode_stats = Arc::new(TranscodeStats::default());
        let worker = Worker::new(
            stream.sink(),
            Arc::clone(&queued),
            Arc::clone(&transcode_stats),
        );
        let spawned = std::thread::Builder::new()
            .name(format!("plugins:{}", stream.name()))
            .spawn(move || worker.run(inbox));
        if let Err(err) = spawned {
            // Without its thread the stage forwards nothing; the route's state says why.
            tracing::error!(
                route = stream.name(),
                "cannot start the plugin thread: {err}"
            );
            stream
                .sink()
                .fail(format!("cannot start the plugin thread: {err}"));
        }
        let input = StageInput {
            messages,
            queued,
            max_bytes: stream.budget().route_buffer_bytes,
        };
        stream.attach(Arc::new(input.clone()));
        // Weak: the stream holds the stage's input, and so its chains.
        let weak = Arc::downgrade(stream);
        Stage {
            route: stream.name().to_owned(),
            input,
            status: Arc::default(),
            transcode_stats,
            request_keyframe: Arc::new(move || {
                if let Some(stream) = weak.upgrade() {
                    stream.request_keyframe();
                }
            }),
        }
    }

    /// Runs `plugins` on every unit published from now on (swapped in between two units, with no
    /// unit lost, the unchanged ones keeping their instances), and re-encodes the video when
    /// `transcode` is set or frame plugins are among them. The list's order holds across kinds:
    /// packet plugins before the first frame plugin see the units as published, frame plugins
    /// the decoded pictures, and packet plugins after a frame plugin the re-encoded units.
    pub fn set_processing(
        &self,
        plugins: &[Arc<LoadedPlugin>],
        transcode: Option<TranscodeConfig>,
    ) {
        let first_frame = plugins
            .iter()
            .position(|p| p.kind() == Kind::Frame)
            .unwrap_or(plugins.len());
        let (before, from_first_frame) = plugins.split_at(first_frame);
        let (frames, encoded): (Vec<_>, Vec<_>) = from_first_frame
            .iter()
            .cloned()
            .partition(|p| p.kind() == Kind::Frame);
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let chain = |plugins: &[Arc<LoadedPlugin>]| {
            Chain::new(&self.route, plugins, &status)
                .requesting_keyframes_with(Arc::clone(&self.request_keyframe))
        };
        let (packets, frames, encoded) = (chain(before), chain(&frames), chain(&encoded));
        *status = packets
            .status()
            .into_iter()
            .chain(frames.status())
            .chain(encoded.status())
            .collect();
        drop(status);
        let _ = self
            .input
            .messages
            .send(Message::Processing(Box::new(Processing {
                packets,
                frames,
                encoded,
                transcode,
            })));
    }

    /// Completes once every unit queued now has gone through the pipeline into the hub (or the
    /// stage is gone).
    pub async fn flush(&self) {
        let (done, flushed) = tokio::sync::oneshot::channel();
        if self.input.messages.send(Message::Flush(done)).is_ok() {
            let _ = flushed.await;
        }
    }

    /// Counters of the route's frame path.
    pub fn transcode_stats(&self) -> &Arc<TranscodeStats> {
        &self.transcode_stats
    }

    /// The plugins running on the route, with their counters.
    pub fn status(&self) -> Vec<PluginStatus> {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Processor for StageInput {
    fn start(&self, description: StreamDescription, timeline: Timeline) {
        let _ = self.messages.send(Message::Start {
            description,
            timeline,
        });
    }

    fn adopt(&self, outlet: Outlet) {
        let _ = self.messages.send(Message::Adopt(outlet));
    }

    fn has_room(&self, bytes: usize) -> bool {
        self.queued.units.load(Ordering::Relaxed) < MAX_QUEUED_UNITS
            && self.queued.bytes.load(Ordering::Relaxed) + bytes <= self.max_bytes
    }

    fn queue(&self, unit: AccessUnit) -> bool {
        let bytes = unit.data.len();
        if !self.has_room(bytes) {
            return false;
        }
        self.queued.add(bytes);
        if self.messages.send(Message::Unit(unit)).is_err() {
            self.queued.remove(bytes);
            return false;
        }
        true
    }

    fn end(&self) {
        let _ = self.messages.send(Message::End);
    }

    fn stop(&self) {
        let _ = self.messages.send(Message::Stop);
    }
}
