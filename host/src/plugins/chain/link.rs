//! One plugin of a route's chain: its instance, started when needed and thrown away when a call
//! fails, its faults and suspensions, its state, and its share of real time.
//!
//! Time: besides each call's time limit, a plugin may take `cpu_percent` of real time on its
//! route, charged to a token bucket of a second's worth: its calls, the starts of its instances
//! and the snapshots of its state. A plugin past it rests (its units bypassed or dropped without a
//! call) until its share has paid for what it took, keeping its instance:
//! a plugin slower than its route cannot keep a core busy for good, nor make the route fall
//! further behind than the pipeline's queue holds.

use super::*;
use crate::listen::{Allowance, Budget};

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
/// What a plugin's share of real time is measured over: the calls of a second's share may come
/// at once, and a plugin past its share rests this long.
const CPU_WINDOW: Duration = Duration::from_secs(1);

/// What a call needs besides its unit: the route's name, its keyframe request, the stream JSON.
pub(super) type Context<'a> = (&'a str, &'a KeyframeRequest, &'a Arc<str>);

/// One plugin of a chain.
pub(super) struct Link {
    pub(super) plugin: Arc<LoadedPlugin>,
    pub(super) stats: Arc<PluginStats>,
    pub(super) instance: Option<Instance>,
    /// No new instance before this, after one failed to start.
    retry_at: Option<Instant>,
    last_fault_log: Option<Instant>,
    faults_unlogged: u64,
    faults_in_a_row: u32,
    /// The time its calls may still take, in nanoseconds (`cpu_percent` of real time).
    cpu: Budget,
    /// No call before this: the plugin took more than its share of real time.
    resting_until: Option<Instant>,
    /// The last snapshot of the plugin's state, which the next instance starts from.
    pub(super) saved: Option<Bytes>,
    /// Whether the state kept on disk was looked for (once per link, before its first instance).
    pub(super) disk_read: bool,
    /// When the running instance's state is next saved.
    pub(super) next_snapshot: Option<Instant>,
}

impl Link {
    pub(super) fn new(plugin: Arc<LoadedPlugin>, stats: Arc<PluginStats>) -> Link {
        Link {
            cpu: Budget::new(cpu_share(plugin.config.cpu_percent), Instant::now()),
            plugin,
            stats,
            instance: None,
            retry_at: None,
            last_fault_log: None,
            faults_unlogged: 0,
            faults_in_a_row: 0,
            resting_until: None,
            saved: None,
            disk_read: false,
            next_snapshot: None,
        }
    }

    pub(super) fn ensure_instance(
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
        let began = Instant::now();
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
        self.charge(route, began, Instant::now());
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
        if self
            .resting_until
            .is_some_and(|until| Instant::now() < until)
        {
            return Err(());
        }
        if !self.ensure_instance(route, request_keyframe, stream) {
            return Err(());
        }
        let Some(instance) = self.instance.as_mut() else {
            return Err(());
        };
        let started = Instant::now();
        let outcome = call(instance);
        let ended = Instant::now();
        let nanos = u64::try_from(ended.duration_since(started).as_nanos()).unwrap_or(u64::MAX);
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        self.stats.nanos.fetch_add(nanos, Ordering::Relaxed);
        self.charge(route, started, ended);
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
    pub(super) fn save_state(&mut self, route: &str) {
        let Some(instance) = self.instance.as_mut() else {
            return;
        };
        let began = Instant::now();
        self.next_snapshot = self.plugin.config.snapshot_every.map(|every| began + every);
        let snapshot = instance.snapshot();
        self.charge(route, began, Instant::now());
        match snapshot {
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

    pub(super) fn process(
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
    pub(super) fn process_picture(
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

    /// Charges the time from `started` to `ended` to the plugin's share of real time: its calls,
    /// and the starts of its instances and the snapshots of its state, which its own code makes
    /// as long as the time limit lets it. Past the share, the plugin rests.
    fn charge(&mut self, route: &str, started: Instant, ended: Instant) {
        let nanos = u64::try_from(ended.duration_since(started).as_nanos()).unwrap_or(u64::MAX);
        let owed = self.cpu.take(nanos, ended);
        if !owed.is_zero() {
            self.rest(route, ended, owed);
        }
    }

    /// Leaves the plugin alone until its share of real time has paid back what it took past it
    /// (`owed`), and for [`CPU_WINDOW`] at least. Its instance (and state) stays; its units get
    /// `on_error` meanwhile.
    fn rest(&mut self, route: &str, now: Instant, owed: Duration) {
        let rest = owed.max(CPU_WINDOW);
        self.resting_until = Some(now + rest);
        let message = format!(
            "took more than its share of real time ({} % of a core)",
            self.plugin.config.cpu_percent
        );
        self.count_error(&message);
        tracing::warn!(
            plugin = %self.plugin.name,
            route,
            errors = self.stats.errors.load(Ordering::Relaxed),
            "plugin {message}: its units are {} without a call for {rest:.1?} (cpu_percent \
             raises its share)",
            self.policy()
        );
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

    /// Counts an error and keeps `message` as the last one (the API and status page show it).
    fn count_error(&self, message: &str) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        *self
            .stats
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(message.to_owned());
    }

    /// What becomes of the units the plugin does not take.
    fn policy(&self) -> &'static str {
        match self.plugin.config.on_error {
            OnError::Bypass => "bypassed",
            OnError::Drop => "dropped",
        }
    }

    fn fault(&mut self, route: &str, fault: &Fault, what: &str, next: &str) {
        let message = format!("{what}: {fault}");
        self.count_error(&message);
        let now = Instant::now();
        if self
            .last_fault_log
            .is_some_and(|at| now.duration_since(at) < FAULT_LOG_INTERVAL)
        {
            self.faults_unlogged += 1;
            return;
        }
        let policy = self.policy();
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

/// `percent` of one core, in nanoseconds of calls a second, with a second's worth at once.
fn cpu_share(percent: u32) -> Allowance {
    let per_second = u64::from(percent) * 10_000_000;
    Allowance {
        per_second,
        burst: per_second * CPU_WINDOW.as_secs(),
    }
}
