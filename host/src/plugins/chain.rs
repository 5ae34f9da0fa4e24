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

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::runtime::{FrameVerdict, Instance, KeyframeRequest, PluginStats, Verdict};
use super::{Fault, LoadedPlugin, stream_description};
use crate::config::{OnError, SwapAt};
use crate::media::Picture;
use crate::media::{AccessUnit, Track};

/// After an instance cannot be started, how long the plugin is skipped before the next try.
const RESTART_BACKOFF: Duration = Duration::from_secs(1);
/// At most one fault log line per plugin and route in this time; the rest are counted.
const FAULT_LOG_INTERVAL: Duration = Duration::from_secs(1);
/// Faults in a row after which a plugin is suspended (its units bypassed or dropped without a
/// call): a plugin that fails every call would otherwise cost its time limit on every unit.
const FAULTS_BEFORE_SUSPENSION: u32 = 3;
/// The first suspension; each further one in a row doubles, up to the longest.
const FIRST_SUSPENSION: Duration = Duration::from_secs(1);
const LONGEST_SUSPENSION: Duration = Duration::from_secs(30);

/// What a call needs besides its unit: the route's name, its keyframe request, the stream JSON.
type Context<'a> = (&'a str, &'a KeyframeRequest, &'a Arc<str>);

/// A plugin of a route's chain, as the API shows it.
#[derive(Clone, Debug)]
pub struct PluginStatus {
    pub name: String,
    pub wasm: String,
    pub kind: &'static str,
    pub stats: Arc<PluginStats>,
}

/// One plugin of a chain.
struct Link {
    plugin: Arc<LoadedPlugin>,
    stats: Arc<PluginStats>,
    instance: Option<Instance>,
    /// No new instance before this, after one failed to start.
    retry_at: Option<Instant>,
    last_fault_log: Option<Instant>,
    faults_unlogged: u64,
    faults_in_a_row: u32,
    /// The last snapshot of the plugin's state, which the next instance starts from.
    saved: Option<Bytes>,
    /// Whether the state kept on disk was looked for (once per link, before its first instance).
    disk_read: bool,
    /// When the running instance's state is next saved.
    next_snapshot: Option<Instant>,
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
            .map(|plugin| Link {
                stats: previous
                    .iter()
                    .find(|p| p.name == plugin.name)
                    .map_or_else(Arc::default, |p| Arc::clone(&p.stats)),
                plugin: Arc::clone(plugin),
                instance: None,
                retry_at: None,
                last_fault_log: None,
                faults_unlogged: 0,
                faults_in_a_row: 0,
                saved: None,
                disk_read: false,
                next_snapshot: None,
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

impl Link {
    fn ensure_instance(
        &mut self,
        route: &str,
        request_keyframe: &KeyframeRequest,
        stream: &Arc<str>,
    ) -> bool {
        if self.instance.is_some() {
            return true;
        }
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return false;
        }
        if !self.disk_read {
            self.disk_read = true;
            if self.saved.is_none()
                && let Some(store) = &self.plugin.state
            {
                self.saved = store.load(route, &self.plugin.name);
            }
        }
        let started = self
            .plugin
            .instantiate_reporting(
                route,
                Arc::clone(&self.stats),
                Arc::clone(request_keyframe),
                Arc::clone(stream),
            )
            .and_then(|mut instance| {
                let Some(saved) = &self.saved else {
                    return Ok(instance);
                };
                match instance.restore(saved) {
                    Ok(Ok(())) => {
                        self.stats.restores.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(why)) => tracing::warn!(
                        plugin = %self.plugin.name,
                        route,
                        "plugin refused its saved state ({why}); it starts afresh"
                    ),
                    // A state the plugin cannot even read would fail every instance after this
                    // one (and, kept on disk, every start): it is let go.
                    Err(fault) => {
                        self.saved = None;
                        return Err(fault);
                    }
                }
                Ok(instance)
            });
        match started {
            Ok(instance) => {
                self.instance = Some(instance);
                self.retry_at = None;
                self.next_snapshot = self
                    .plugin
                    .config
                    .snapshot_every
                    .filter(|_| self.plugin.stateful())
                    .map(|every| Instant::now() + every);
                true
            }
            Err(fault) => {
                self.retry_at = Some(Instant::now() + RESTART_BACKOFF);
                self.fault(route, &fault, "cannot start", "retrying in a second");
                false
            }
        }
    }

    /// Calls the plugin through `call`, with its instance started if needed, timed and counted;
    /// `Err` is the unit's fault (`None`: the plugin is suspended or cannot start), already logged.
    fn invoke<T>(
        &mut self,
        (route, request_keyframe, stream): Context<'_>,
        call: impl FnOnce(&mut Instance) -> Result<T, Fault>,
    ) -> Result<T, ()> {
        if !self.ensure_instance(route, request_keyframe, stream) {
            return Err(());
        }
        let Some(instance) = self.instance.as_mut() else {
            return Err(());
        };
        let started = Instant::now();
        let outcome = call(instance);
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        self.stats.nanos.fetch_add(
            u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        match outcome {
            Ok(value) => {
                self.faults_in_a_row = 0;
                if self.next_snapshot.is_some_and(|at| started >= at) {
                    self.save_state(route);
                }
                Ok(value)
            }
            Err(fault) => {
                // A trapped instance refuses every later call: the next unit gets a new one.
                self.instance = None;
                self.stats.restarts.fetch_add(1, Ordering::Relaxed);
                self.faults_in_a_row += 1;
                let next = match self.suspension() {
                    Some(pause) => {
                        self.retry_at = Some(Instant::now() + pause);
                        format!(
                            "{} faults in a row: suspended for {pause:?}",
                            self.faults_in_a_row
                        )
                    }
                    None => "instance restarted".to_owned(),
                };
                self.fault(route, &fault, "failed", &next);
                Err(())
            }
        }
    }

    /// Saves the running instance's state as the one the next instance starts from; a failed
    /// snapshot is the instance's fault (the last good one is kept).
    fn save_state(&mut self, route: &str) {
        let Some(instance) = self.instance.as_mut() else {
            return;
        };
        self.next_snapshot = self
            .plugin
            .config
            .snapshot_every
            .map(|every| Instant::now() + every);
        match instance.snapshot() {
            Ok(Some(snapshot)) => {
                self.stats.snapshots.fetch_add(1, Ordering::Relaxed);
                let snapshot = Bytes::from(snapshot);
                if let Some(store) = &self.plugin.state {
                    store.save(route, &self.plugin.name, snapshot.clone());
                }
                self.saved = Some(snapshot);
            }
            Ok(None) => {}
            Err(fault) => {
                self.instance = None;
                self.stats.restarts.fetch_add(1, Ordering::Relaxed);
                self.fault(
                    route,
                    &fault,
                    "failed to save its state",
                    "instance restarted",
                );
            }
        }
    }

    fn process(
        &mut self,
        unit: AccessUnit,
        tracks: &[Track],
        context: Context<'_>,
        out: &mut Vec<AccessUnit>,
    ) {
        let Some(track) = tracks.get(unit.track) else {
            return;
        };
        let (route, request_keyframe, stream) = context;
        if self.ensure_instance(route, request_keyframe, stream)
            && self
                .instance
                .as_ref()
                .is_some_and(|instance| !instance.wants(&track.codec))
        {
            // Not a codec the plugin named: the unit goes past it uncalled.
            out.push(unit);
            return;
        }
        match self.invoke(context, |instance| {
            instance.process_unit(&unit, &track.codec, tracks)
        }) {
            Ok(Verdict::Pass) => out.push(unit),
            Ok(Verdict::Drop) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Verdict::Replace(units)) => out.extend(units),
            Err(()) => {
                if self.plugin.config.on_error == OnError::Bypass {
                    out.push(unit);
                }
            }
        }
    }

    /// Runs a frame plugin on `picture`; false when the picture is to be left out.
    fn process_picture(
        &mut self,
        picture: &mut Picture,
        route: &str,
        request_keyframe: &KeyframeRequest,
        stream: &Arc<str>,
    ) -> bool {
        match self.invoke((route, request_keyframe, stream), |instance| {
            instance.process_picture(picture)
        }) {
            Ok(FrameVerdict::Pass) => true,
            Ok(FrameVerdict::Replace(data)) => {
                picture.data = data;
                true
            }
            Ok(FrameVerdict::Drop) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
            Err(()) => self.plugin.config.on_error == OnError::Bypass,
        }
    }

    /// How long to leave the plugin alone after its latest fault, if at all.
    fn suspension(&self) -> Option<Duration> {
        let beyond = self.faults_in_a_row.checked_sub(FAULTS_BEFORE_SUSPENSION)?;
        Some(
            FIRST_SUSPENSION
                .saturating_mul(1 << beyond.min(5))
                .min(LONGEST_SUSPENSION),
        )
    }

    fn fault(&mut self, route: &str, fault: &Fault, what: &str, next: &str) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        let message = format!("{what}: {fault}");
        *self
            .stats
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(message.clone());
        let now = Instant::now();
        if self
            .last_fault_log
            .is_some_and(|at| now.duration_since(at) < FAULT_LOG_INTERVAL)
        {
            self.faults_unlogged += 1;
            return;
        }
        let policy = match self.plugin.config.on_error {
            OnError::Bypass => "bypassed",
            OnError::Drop => "dropped",
        };
        tracing::warn!(
            plugin = %self.plugin.name,
            route,
            errors = self.stats.errors.load(Ordering::Relaxed),
            "plugin {message}; unit {policy}, {next}{}",
            if self.faults_unlogged > 0 {
                format!(" ({} more faults since the last report)", self.faults_unlogged)
            } else {
                String::new()
            }
        );
        self.last_fault_log = Some(now);
        self.faults_unlogged = 0;
    }
}
