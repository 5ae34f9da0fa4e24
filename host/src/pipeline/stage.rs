//! The stage of a route: a thread between the route's publisher and its hub, running its packet
//! plugins and, when the route re-encodes, its frame path (decode, frame plugins, encode; see
//! [`super::transcode`]).
//!
//! Plugins and codecs are CPU work of unknown cost, so they never run on the async runtime nor on a source's
//! own thread: the publisher queues each unit for the stage (a bounded number of them; past that,
//! units are dropped and counted, video until its next keyframe), and the stage runs the chain and
//! packetizes what comes out. Everything about a route's publishers goes through the same queue —
//! a publisher starting, its units, its end, a new chain — so the stage sees them in order: a new
//! chain takes over between two units, and a new publisher continues the old one's sequence
//! numbers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use super::transcode::{TranscodeStats, Transcoder};
use crate::config::{DEFAULT_TRANSCODE_KBPS, TranscodeConfig};
use crate::hub::{Outlet, Processor, Sink, Stream, Timeline};
use crate::media::{AccessUnit, StreamDescription};
use crate::plugins::{Chain, KeyframeRequest, Kind, LoadedPlugin, PluginStatus};

/// Units waiting for the stage at most: about two seconds of 30 fps video with its audio. Their
/// bytes are capped too, by the route's `route_buffer_mb`.
const MAX_QUEUED_UNITS: usize = 128;

/// What waits in a stage's queue now.
#[derive(Debug, Default)]
struct Queued {
    units: AtomicUsize,
    bytes: AtomicUsize,
}

impl Queued {
    fn add(&self, bytes: usize) {
        self.units.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn remove(&self, bytes: usize) {
        self.units.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }
}

enum Message {
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
struct Processing {
    packets: Chain,
    frames: Chain,
    /// Packet plugins listed after a frame plugin: they run on the re-encoded output.
    encoded: Chain,
    /// Re-encode (with the frame plugins in between) when set, or when there are frame plugins.
    transcode: Option<TranscodeConfig>,
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
        let worker = Worker {
            sink: stream.sink(),
            queued: Arc::clone(&queued),
            packets: Chain::new(stream.name(), &[], &[]),
            encoded: Chain::new(stream.name(), &[], &[]),
            frames: Some(Chain::new(stream.name(), &[], &[])),
            transcode: None,
            transcoder: None,
            transcode_stats: Arc::clone(&transcode_stats),
            input: None,
            outlet: None,
            out: Vec::new(),
            staged: Vec::new(),
        };
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

struct Worker {
    sink: Sink,
    queued: Arc<Queued>,
    packets: Chain,
    /// Packet plugins on the re-encoded output.
    encoded: Chain,
    /// The frame plugins, while no transcoder holds them.
    frames: Option<Chain>,
    transcode: Option<TranscodeConfig>,
    transcoder: Option<Transcoder>,
    transcode_stats: Arc<TranscodeStats>,
    /// The running publisher's tracks and timeline: plugins are told each unit's codec, and a
    /// transcoder starts from them.
    input: Option<(StreamDescription, Timeline)>,
    /// Publishes into the hub; with a transcoder, made at its first keyframe.
    outlet: Option<Outlet>,
    out: Vec<AccessUnit>,
    staged: Vec<AccessUnit>,
}

impl Worker {
    fn run(mut self, inbox: mpsc::Receiver<Message>) {
        while let Ok(message) = inbox.recv() {
            match message {
                Message::Processing(processing) => self.set_processing(*processing),
                Message::Start {
                    description,
                    timeline,
                } => {
                    self.retire();
                    self.input = Some((description, timeline));
                    self.start();
                }
                Message::Adopt(outlet) => {
                    self.retire();
                    self.input = Some((outlet.description().clone(), outlet.timeline()));
                    if self.transcoding() {
                        // The publisher's own outlet cannot carry re-encoded video: start anew.
                        drop(outlet);
                        self.start();
                    } else {
                        self.outlet = Some(outlet);
                    }
                }
                Message::Unit(unit) => {
                    self.queued.remove(unit.data.len());
                    self.process(unit);
                }
                Message::End => self.retire(),
                Message::Flush(done) => {
                    let _ = done.send(());
                }
                Message::Stop => break,
            }
        }
        self.retire();
    }

    fn transcoding(&self) -> bool {
        self.transcode.is_some()
            || self.frames.as_ref().is_some_and(|f| !f.status().is_empty())
            || self.transcoder.is_some()
    }

    /// Starts publishing the current input: at once, or through a new transcoder.
    fn start(&mut self) {
        let Some((description, timeline)) = self.input.clone() else {
            return;
        };
        let wants_transcoder = self.transcode.is_some()
            || self.frames.as_ref().is_some_and(|f| !f.status().is_empty());
        if !wants_transcoder {
            self.outlet = Some(self.sink.start(description, timeline));
            return;
        }
        let settings = self.transcode.clone().unwrap_or(TranscodeConfig {
            width: None,
            height: None,
            fps: None,
            bitrate_kbps: DEFAULT_TRANSCODE_KBPS,
            keyframe_interval: None,
            audio: true,
        });
        let frames = self
            .frames
            .take()
            .unwrap_or_else(|| Chain::new(self.sink.route(), &[], &[]));
        match Transcoder::new(
            self.sink.route(),
            &settings,
            &description,
            frames,
            Arc::clone(&self.transcode_stats),
        ) {
            Ok(transcoder) => self.transcoder = Some(transcoder),
            Err(err) => {
                tracing::error!(route = self.sink.route(), "cannot transcode: {err}");
                self.sink.fail(format!("cannot transcode: {err}"));
            }
        }
    }

    fn set_processing(&mut self, mut processing: Processing) {
        processing.packets.take_over(&mut self.packets);
        processing.packets.start();
        processing.encoded.take_over(&mut self.encoded);
        processing.encoded.start();
        self.encoded = processing.encoded;
        let running_frames = match (&mut self.transcoder, &mut self.frames) {
            (Some(transcoder), _) => Some(transcoder.frames_mut()),
            (None, frames) => frames.as_mut(),
        };
        if let Some(running) = running_frames {
            processing.frames.take_over(running);
        }
        processing.frames.start();
        self.packets = processing.packets;
        let settings_changed = processing.transcode != self.transcode
            || (self.transcoder.is_none() && !processing.frames.status().is_empty())
            || (self.transcoder.is_some()
                && processing.transcode.is_none()
                && processing.frames.status().is_empty());
        self.transcode = processing.transcode;
        match (&mut self.transcoder, settings_changed) {
            (Some(transcoder), false) => transcoder.set_frames(processing.frames),
            _ => {
                // New settings need a new encoder and a new stream description; readers
                // continue at the new stream's first keyframe.
                let restart = settings_changed && self.input.is_some();
                let input = self.input.clone();
                if restart {
                    self.retire();
                }
                self.frames = Some(processing.frames);
                if restart {
                    self.input = input;
                    self.start();
                }
            }
        }
    }

    fn process(&mut self, unit: AccessUnit) {
        let Some((description, _)) = &self.input else {
            return;
        };
        self.packets
            .process(unit, &description.tracks, &mut self.out);
        if let Some(transcoder) = &mut self.transcoder {
            let keyframe_wanted = self.sink.take_keyframe_request();
            for unit in self.out.drain(..) {
                transcoder.process(unit, keyframe_wanted, &mut self.staged);
            }
            for unit in self.staged.drain(..) {
                if self.outlet.is_none() {
                    // The re-encoded stream starts at its first keyframe, which carries the
                    // encoder's parameter sets: only then can it be described.
                    let Some(output) = (unit.track == 0 && unit.keyframe)
                        .then(|| transcoder.describe(&unit))
                        .flatten()
                    else {
                        continue;
                    };
                    let Some((_, timeline)) = &self.input else {
                        continue;
                    };
                    self.outlet = Some(self.sink.start(output, *timeline));
                }
                if let Some(outlet) = &mut self.outlet {
                    self.encoded
                        .process(unit, &outlet.description().tracks, &mut self.out);
                    for unit in self.out.drain(..) {
                        outlet.send(unit);
                    }
                }
            }
        } else if let Some(outlet) = &mut self.outlet {
            for unit in self.out.drain(..) {
                outlet.send(unit);
            }
        } else {
            self.out.clear();
        }
    }

    fn retire(&mut self) {
        if let Some(mut outlet) = self.outlet.take() {
            outlet.retire();
        }
        if let Some(transcoder) = self.transcoder.take() {
            self.frames = Some(transcoder.into_frames());
        }
        self.input = None;
    }
}
