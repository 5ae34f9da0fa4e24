//! The plugin stage of a route: a thread between the route's publisher and its hub.
//!
//! Plugins are CPU work of unknown cost, so they never run on the async runtime nor on a source's
//! own thread: the publisher queues each unit for the stage (a bounded number of them; past that,
//! units are dropped and counted, video until its next keyframe), and the stage runs the chain and
//! packetizes what comes out. Everything about a route's publishers goes through the same queue —
//! a publisher starting, its units, its end, a new chain — so the stage sees them in order: a new
//! chain takes over between two units, and a new publisher continues the old one's sequence
//! numbers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use super::stream::{Core, Stream, Timeline};
use crate::media::{AccessUnit, StreamDescription};
use crate::plugins::{Chain, LoadedPlugin, PluginStatus};

/// Units waiting for the stage at most: about two seconds of 30 fps video with its audio.
const MAX_QUEUED_UNITS: usize = 128;

enum Message {
    Chain(Chain),
    Start {
        description: StreamDescription,
        timeline: Timeline,
    },
    /// A publisher that was publishing directly hands its core over.
    Adopt(Core),
    Unit(AccessUnit),
    End,
    Stop,
}

/// The stage of one stream, held by the stream.
pub(super) struct Stage {
    input: StageInput,
    status: Arc<Mutex<Vec<PluginStatus>>>,
}

/// The way into a stage, held by the stream's publisher.
#[derive(Clone)]
pub(super) struct StageInput {
    messages: mpsc::Sender<Message>,
    queued: Arc<AtomicUsize>,
}

impl Stage {
    /// Starts the stage thread of `stream`.
    pub(super) fn spawn(stream: &Arc<Stream>) -> Stage {
        let (messages, inbox) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let worker = Worker {
            stream: Arc::clone(stream),
            queued: Arc::clone(&queued),
            chain: Chain::new(stream.name(), &[], &[]),
            core: None,
            description: None,
            out: Vec::new(),
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
            stream.set_state(super::SourceState::Failed(format!(
                "cannot start the plugin thread: {err}"
            )));
        }
        Stage {
            input: StageInput { messages, queued },
            status: Arc::default(),
        }
    }

    pub(super) fn input(&self) -> StageInput {
        self.input.clone()
    }

    /// Swaps in a chain of `plugins`.
    pub(super) fn set_plugins(&self, route: &str, plugins: &[Arc<LoadedPlugin>]) {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let chain = Chain::new(route, plugins, &status);
        *status = chain.status();
        drop(status);
        let _ = self.input.messages.send(Message::Chain(chain));
    }

    pub(super) fn status(&self) -> Vec<PluginStatus> {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) fn stop(&self) {
        let _ = self.input.messages.send(Message::Stop);
    }
}

impl StageInput {
    pub(super) fn start(&self, description: StreamDescription, timeline: Timeline) {
        let _ = self.messages.send(Message::Start {
            description,
            timeline,
        });
    }

    pub(super) fn adopt(&self, core: Core) {
        let _ = self.messages.send(Message::Adopt(core));
    }

    /// Whether the stage has no room for another unit.
    pub(super) fn is_full(&self) -> bool {
        self.queued.load(Ordering::Relaxed) >= MAX_QUEUED_UNITS
    }

    /// Queues `unit`; false if the stage is too far behind to take it.
    pub(super) fn unit(&self, unit: AccessUnit) -> bool {
        if self.is_full() {
            return false;
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        if self.messages.send(Message::Unit(unit)).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    pub(super) fn end(&self) {
        let _ = self.messages.send(Message::End);
    }
}

struct Worker {
    stream: Arc<Stream>,
    queued: Arc<AtomicUsize>,
    chain: Chain,
    core: Option<Core>,
    /// The tracks of the running publisher: plugins are told each unit's codec.
    description: Option<StreamDescription>,
    out: Vec<AccessUnit>,
}

impl Worker {
    fn run(mut self, inbox: mpsc::Receiver<Message>) {
        while let Ok(message) = inbox.recv() {
            match message {
                Message::Chain(mut chain) => {
                    chain.start();
                    self.chain = chain;
                }
                Message::Start {
                    description,
                    timeline,
                } => {
                    self.retire();
                    self.core = Some(self.stream.start_core(description.clone(), timeline));
                    self.description = Some(description);
                }
                Message::Adopt(core) => {
                    self.retire();
                    self.description = self.stream.media().map(|m| m.description.clone());
                    self.core = Some(core);
                }
                Message::Unit(unit) => {
                    self.queued.fetch_sub(1, Ordering::Relaxed);
                    self.process(unit);
                }
                Message::End => self.retire(),
                Message::Stop => break,
            }
        }
        self.retire();
    }

    fn process(&mut self, unit: AccessUnit) {
        let (Some(core), Some(description)) = (&mut self.core, &self.description) else {
            return;
        };
        self.chain.process(unit, &description.tracks, &mut self.out);
        for unit in self.out.drain(..) {
            core.send(unit);
        }
    }

    fn retire(&mut self) {
        if let Some(mut core) = self.core.take() {
            core.retire(false);
        }
        self.description = None;
    }
}
