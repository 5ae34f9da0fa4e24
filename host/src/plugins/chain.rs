//! A route's plugins in order, each with its own instance, run on one access unit at a time.
//!
//! A failing call (trap, time limit, memory limit, a unit the plugin made up for a track that does
//! not exist) is logged with the plugin, the route and the reason, counted, and answered by the
//! plugin's `on_error` policy; the instance is thrown away and a fresh one serves the next unit.
//!
//! State: a new chain takes over the old one's links ([`Chain::take_over`]): a plugin whose code
//! and config did not change keeps its instance; one that changed gets a snapshot of the old
//! instance's state. A fresh instance after a trap gets the last snapshot taken at the plugin's
//! `snapshot_every_s`. With `[server] state_dir`, each snapshot is also written to disk, and a
//! link that has none in memory (the server just started) starts from the one on disk.
//!
//! Time: besides each call's time limit, a plugin's calls may take `cpu_percent` of real time on
//! its route; past it, the plugin rests (see `link`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::runtime::{FrameVerdict, Instance, KeyframeRequest, PluginStats, Verdict};
use super::{Fault, LoadedPlugin, stream_description};
use crate::config::{OnError, SwapAt};
use crate::media::Picture;
use crate::media::{AccessUnit, Track};

mod link;

use link::Link;

/// A plugin of a route's chain, as the API shows it.
#[derive(Clone, Debug)]
pub struct PluginStatus {
    pub name: String,
    pub wasm: String,
    pub kind: &'static str,
    pub stats: Arc<PluginStats>,
}

/// The plugins of one route.
pub struct Chain {
    route: String,
    links: Vec<Link>,
    /// Buffers reused between units, so a unit costs no allocation here.
    current: Vec<AccessUnit>,
    next: Vec<AccessUnit>,
    request_keyframe: KeyframeRequest,
    /// The stream the chain sees, and as the JSON its plugins read.
    stream: Vec<Track>,
    stream_json: Arc<str>,
}

impl Chain {
    /// A chain of `plugins` for `route`. Counters of plugins in `previous` carry over by name, so
    /// a swapped plugin keeps counting where it was.
    pub fn new(route: &str, plugins: &[Arc<LoadedPlugin>], previous: &[PluginStatus]) -> Chain {
        let links = plugins
            .iter()
            .map(|plugin| {
                let stats = previous
                    .iter()
                    .find(|p| p.name == plugin.name)
                    .map_or_else(Arc::default, |p| Arc::clone(&p.stats));
                Link::new(Arc::clone(plugin), stats)
            })
            .collect();
        Chain {
            route: route.to_owned(),
            links,
            current: Vec::new(),
            next: Vec::new(),
            request_keyframe: Arc::new(|| {}),
            stream: Vec::new(),
            stream_json: Arc::from(stream_description(&[])),
        }
    }

    /// Tells the chain the stream it sees (the stage does as each publisher starts). When that
    /// changes (other codecs or sizes), each running instance is replaced, its state carried
    /// over, so that its `init` reads the new description.
    pub fn set_stream(&mut self, tracks: &[Track]) {
        if self.stream == tracks {
            return;
        }
        self.stream = tracks.to_vec();
        self.stream_json = Arc::from(stream_description(tracks));
        for link in &mut self.links {
            if link.instance.is_some() {
                link.save_state(&self.route);
                link.instance = None;
            }
        }
    }

    /// The chain whose plugins' `request-keyframe` calls `request`.
    pub fn requesting_keyframes_with(mut self, request: KeyframeRequest) -> Chain {
        self.request_keyframe = request;
        self
    }

    /// Takes over what `old` runs, before this chain starts: each plugin that is in both with the
    /// same code and config keeps its instance (and its snapshot); one whose code or config
    /// changed starts from a snapshot of the old instance's state.
    pub fn take_over(&mut self, old: &mut Chain) {
        if self.stream.is_empty() {
            self.stream = old.stream.clone();
            self.stream_json = Arc::clone(&old.stream_json);
        }
        for link in &mut self.links {
            let Some(at) = old
                .links
                .iter()
                .position(|o| o.plugin.name == link.plugin.name)
            else {
                continue;
            };
            let mut previous = old.links.remove(at);
            if previous.plugin.same_as(&link.plugin) {
                link.instance = previous.instance.take();
                link.next_snapshot = previous.next_snapshot;
            } else if previous.instance.is_some() {
                previous.save_state(&old.route);
            }
            link.saved = previous.saved.take();
            link.disk_read = previous.disk_read;
        }
    }
    /// Whether this chain, to take over from `running`, waits for a keyframe: a plugin of it that
    /// says `swap = "keyframe"` is new or changed.
    pub fn waits_for_keyframe(&self, running: &Chain) -> bool {
        self.links.iter().any(|link| {
            link.plugin.config.swap == SwapAt::Keyframe
                && !running
                    .links
                    .iter()
                    .any(|other| other.plugin.same_as(&link.plugin))
        })
    }

    /// What the API shows of this chain.
    pub fn status(&self) -> Vec<PluginStatus> {
        self.links
            .iter()
            .map(|link| PluginStatus {
                name: link.plugin.name.clone(),
                wasm: link.plugin.config.wasm.to_string(),
                kind: link.plugin.kind().name(),
                stats: Arc::clone(&link.stats),
            })
            .collect()
    }

    /// Starts every plugin's instance now rather than on the first unit, once the stream is known
    /// (its instances read it in `init`).
    pub fn start(&mut self) {
        if self.stream.is_empty() {
            return;
        }
        for link in &mut self.links {
            link.ensure_instance(&self.route, &self.request_keyframe, &self.stream_json);
        }
    }

    /// Runs the chain's frame plugins on `picture`, in order; false when one left it out.
    pub fn process_picture(&mut self, picture: &mut Picture) -> bool {
        for link in &mut self.links {
            if !link.process_picture(
                picture,
                &self.route,
                &self.request_keyframe,
                &self.stream_json,
            ) {
                return false;
            }
        }
        true
    }

    /// Runs `unit` of a stream with `tracks` through the chain; what comes out is appended to `out`.
    pub fn process(&mut self, unit: AccessUnit, tracks: &[Track], out: &mut Vec<AccessUnit>) {
        if self.links.is_empty() {
            out.push(unit);
            return;
        }
        self.current.clear();
        self.current.push(unit);
        for link in &mut self.links {
            self.next.clear();
            for unit in self.current.drain(..) {
                link.process(
                    unit,
                    tracks,
                    (&self.route, &self.request_keyframe, &self.stream_json),
                    &mut self.next,
                );
            }
            std::mem::swap(&mut self.current, &mut self.next);
        }
        out.append(&mut self.current);
    }
}
