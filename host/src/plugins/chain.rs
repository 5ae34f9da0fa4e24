//! A route's plugins in order, each with its own instance, run on one access unit at a time.
//!
//! A failing call (trap, time limit, memory limit, a unit the plugin made up for a track that does
//! not exist) is logged with the plugin, the route and the reason, counted, and answered by the
//! plugin's `on_error` policy; the instance is thrown away and a fresh one serves the next unit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::runtime::{FrameVerdict, Instance, Verdict};
use super::{Fault, LoadedPlugin};
use crate::config::OnError;
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

/// Counters of one plugin on one route, for the API, the status page and metrics.
#[derive(Debug, Default)]
pub struct PluginStats {
    pub calls: AtomicU64,
    pub errors: AtomicU64,
    /// Time spent in calls, in nanoseconds.
    pub nanos: AtomicU64,
    pub restarts: AtomicU64,
    pub dropped: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

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
}

/// The plugins of one route.
pub struct Chain {
    route: String,
    links: Vec<Link>,
    /// Buffers reused between units, so a unit costs no allocation here.
    current: Vec<AccessUnit>,
    next: Vec<AccessUnit>,
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
            })
            .collect();
        Chain {
            route: route.to_owned(),
            links,
            current: Vec::new(),
            next: Vec::new(),
        }
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

    /// Starts every plugin's instance now rather than on the first unit.
    pub fn start(&mut self) {
        for link in &mut self.links {
            link.ensure_instance(&self.route);
        }
    }

    /// Runs the chain's frame plugins on `picture`, in order; false when one left it out.
    pub fn process_picture(&mut self, picture: &mut Picture) -> bool {
        for link in &mut self.links {
            if !link.process_picture(picture, &self.route) {
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
                link.process(unit, tracks, &self.route, &mut self.next);
            }
            std::mem::swap(&mut self.current, &mut self.next);
        }
        out.append(&mut self.current);
    }
}

impl Link {
    fn ensure_instance(&mut self, route: &str) -> bool {
        if self.instance.is_some() {
            return true;
        }
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return false;
        }
        match self.plugin.instantiate(route) {
            Ok(instance) => {
                self.instance = Some(instance);
                self.retry_at = None;
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
        route: &str,
        call: impl FnOnce(&mut Instance) -> Result<T, Fault>,
    ) -> Result<T, ()> {
        if !self.ensure_instance(route) {
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

    fn process(
        &mut self,
        unit: AccessUnit,
        tracks: &[Track],
        route: &str,
        out: &mut Vec<AccessUnit>,
    ) {
        let Some(track) = tracks.get(unit.track) else {
            return;
        };
        match self.invoke(route, |instance| {
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
    fn process_picture(&mut self, picture: &mut Picture, route: &str) -> bool {
        match self.invoke(route, |instance| instance.process_picture(picture)) {
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
