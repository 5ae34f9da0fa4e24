//! The stage's thread: it takes the stage's messages in order and runs the route's packet plugins,
//! its frame path and the plugins after it, publishing what comes out through the hub's sink; new
//! plugins take over between two units, or at the next video keyframe when one asks to.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::stage::{Message, Processing, Queued};
use super::transcode::{TranscodeStats, Transcoder};
use crate::config::TranscodeConfig;
use crate::hub::{Outlet, Sink, Timeline};
use crate::media::{AccessUnit, StreamDescription};
use crate::plugins::Chain;

/// How long new plugins that take over at a keyframe wait for one before they take over anyway.
const KEYFRAME_SWAP_WAIT: Duration = Duration::from_secs(10);

pub(super) struct Worker {
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
    /// New plugins waiting for the next video keyframe (`swap = "keyframe"`), and until when.
    pending: Option<(Box<Processing>, Instant)>,
}

impl Worker {
    /// A worker with no plugins yet, publishing through `sink`.
    pub(super) fn new(
        sink: Sink,
        queued: Arc<Queued>,
        transcode_stats: Arc<TranscodeStats>,
    ) -> Worker {
        let route = sink.route().to_owned();
        Worker {
            sink,
            queued,
            packets: Chain::new(&route, &[], &[]),
            encoded: Chain::new(&route, &[], &[]),
            frames: Some(Chain::new(&route, &[], &[])),
            transcode: None,
            transcoder: None,
            transcode_stats,
            input: None,
            outlet: None,
            out: Vec::new(),
            staged: Vec::new(),
            pending: None,
        }
    }

    /// Takes the stage's messages until it stops.
    pub(super) fn run(mut self, inbox: mpsc::Receiver<Message>) {
        while let Ok(message) = inbox.recv() {
            match &message {
                Message::Unit(unit) => self.swap_at(unit),
                Message::Processing(_) => {}
                // A publisher's start or end, a flush or the end: no reason to wait any longer.
                _ => self.apply_pending(),
            }
            match message {
                Message::Processing(processing) => {
                    let waits = self.input.is_some()
                        && (processing.packets.waits_for_keyframe(&self.packets)
                            || processing.encoded.waits_for_keyframe(&self.encoded)
                            || self.running_frames().is_some_and(|running| {
                                processing.frames.waits_for_keyframe(running)
                            }));
                    if waits {
                        self.pending = Some((processing, Instant::now() + KEYFRAME_SWAP_WAIT));
                    } else {
                        self.pending = None;
                        self.set_processing(*processing);
                    }
                }
                Message::Start {
                    description,
                    timeline,
                } => {
                    self.retire();
                    self.packets.set_stream(&description.tracks);
                    self.input = Some((description, timeline));
                    self.start();
                }
                Message::Adopt(outlet) => {
                    self.retire();
                    self.packets.set_stream(&outlet.description().tracks);
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

    /// Applies the plugins waiting for a keyframe if `unit` is one (of the video track), or if they
    /// have waited long enough.
    fn swap_at(&mut self, unit: &AccessUnit) {
        let Some((_, deadline)) = &self.pending else {
            return;
        };
        let video_keyframe = unit.keyframe
            && self
                .input
                .as_ref()
                .and_then(|(description, _)| description.video_track())
                == Some(unit.track);
        if video_keyframe || Instant::now() >= *deadline {
            self.apply_pending();
        }
    }

    fn apply_pending(&mut self) {
        if let Some((processing, _)) = self.pending.take() {
            self.set_processing(*processing);
        }
    }

    /// The frame plugins running now, in the transcoder or waiting for one.
    fn running_frames(&self) -> Option<&Chain> {
        match &self.transcoder {
            Some(transcoder) => Some(transcoder.frames()),
            None => self.frames.as_ref(),
        }
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
        let settings = self
            .transcode
            .clone()
            .unwrap_or(TranscodeConfig::at_source_size());
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
                    self.encoded.set_stream(&output.tracks);
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
