//! The host side of a plugin instance: the state its store holds, the `host` interface it imports
//! (`log`, `config`, events, metrics, keyframe requests), and its stdout and stderr, all held to
//! one log budget a second.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::{Level, blocking, host_api};
use crate::events::Events;

/// Log lines a plugin instance may write per second (`log`, stdout and stderr together); the rest
/// are counted and reported.
const LOG_LINES_PER_SECOND: u32 = 50;
/// Log bytes a plugin instance may write per second, likewise.
const LOG_BYTES_PER_SECOND: usize = 16 * 1024;
/// Events a plugin may emit per second on a route; the rest are counted, not sent.
const EVENTS_PER_SECOND: u32 = 20;
/// The largest event payload, in bytes of JSON text.
const MAX_EVENT_PAYLOAD: usize = 4096;
/// Metric names one plugin may set on one route.
const MAX_METRICS: usize = 32;
/// The longest event or metric name.
const MAX_NAME: usize = 64;

/// Counters of one plugin on one route, for the API, the status page and metrics; the instances
/// a link makes over time share them.
#[derive(Debug, Default)]
pub struct PluginStats {
    pub calls: AtomicU64,
    pub errors: AtomicU64,
    /// Time spent in calls, in nanoseconds.
    pub nanos: AtomicU64,
    pub restarts: AtomicU64,
    pub dropped: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// Events sent, and those over the instance's budget (or refused: a bad name or payload).
    pub events: AtomicU64,
    pub events_refused: AtomicU64,
    /// Snapshots taken, and restores an instance accepted.
    pub snapshots: AtomicU64,
    pub restores: AtomicU64,
    /// The plugin's own metrics (`set-metric`, `add-metric`).
    pub metrics: Mutex<BTreeMap<String, f64>>,
    /// What the plugin may still emit this second: the plugin's on its route, not an instance's,
    /// so that a plugin that traps and restarts gets no fresh budget.
    event_budget: Mutex<EventBudget>,
}

/// Asks the route for a keyframe.
pub type KeyframeRequest = Arc<dyn Fn() + Send + Sync>;

/// Where an instance reports what it finds (events, metrics, keyframe requests), and the stream
/// it sees.
#[derive(Clone)]
pub struct Reporter {
    pub events: Events,
    pub stats: Arc<PluginStats>,
    pub request_keyframe: KeyframeRequest,
    /// The stream description as the JSON `stream-description` gives.
    pub stream: Arc<str>,
}

/// What a plugin may still emit this second on its route.
#[derive(Debug)]
struct EventBudget {
    window_start: Instant,
    sent: u32,
}

impl Default for EventBudget {
    fn default() -> EventBudget {
        EventBudget {
            window_start: Instant::now(),
            sent: 0,
        }
    }
}

impl EventBudget {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.sent = 0;
        }
        self.sent += 1;
        self.sent <= EVENTS_PER_SECOND
    }
}

/// Whether `name` can name an event or a metric: 1 to 64 of `a-z`, `0-9`, `-`, `_`, `.`.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("a name has 1 to {MAX_NAME} characters"));
    }
    match name
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-' | '_' | '.'))
    {
        Some(c) => Err(format!(
            "`{c}` cannot be in a name (use a-z, 0-9, -, _ and .)"
        )),
        None => Ok(()),
    }
}

/// What a plugin instance's store holds.
pub(super) struct PluginState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limits: StoreLimits,
    pub(super) names: Arc<Names>,
    pub(super) config: Arc<str>,
    pub(super) log: Arc<Mutex<LogBudget>>,
    /// When the call under way must end, for blocking WASI calls.
    pub(super) deadline: Instant,
    pub(super) reporter: Reporter,
}

impl PluginState {
    pub(super) fn deadlined(&mut self) -> blocking::Deadlined<'_> {
        blocking::Deadlined {
            table: &mut self.table,
            deadline: self.deadline,
        }
    }
}

/// What an instance may still log this second, shared by `log`, stdout and stderr.
#[derive(Debug)]
pub(super) struct LogBudget {
    names: Arc<Names>,
    window_start: Instant,
    lines: u32,
    bytes: usize,
    suppressed: u64,
}

impl LogBudget {
    pub(super) fn new(names: Arc<Names>) -> LogBudget {
        LogBudget {
            names,
            window_start: Instant::now(),
            lines: 0,
            bytes: 0,
            suppressed: 0,
        }
    }

    /// Writes `message` to the log if this second's budget allows it; counts it otherwise.
    fn write(&mut self, level: Level, message: &str) {
        let now = Instant::now();
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            if self.suppressed > 0 {
                tracing::warn!(
                    plugin = %self.names.plugin,
                    route = %self.names.route,
                    "{} plugin log lines suppressed (over {LOG_LINES_PER_SECOND} lines or {LOG_BYTES_PER_SECOND} bytes a second)",
                    self.suppressed
                );
                self.suppressed = 0;
            }
            self.window_start = now;
            self.lines = 0;
            self.bytes = 0;
        }
        if self.lines >= LOG_LINES_PER_SECOND || self.bytes + message.len() > LOG_BYTES_PER_SECOND {
            self.suppressed += 1;
            return;
        }
        self.lines += 1;
        self.bytes += message.len();
        log_line(&self.names, level, message);
    }
}

/// Who an instance is, for its log lines.
#[derive(Debug)]
pub struct Names {
    pub plugin: String,
    pub route: String,
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl host_api::Host for PluginState {
    fn log(&mut self, level: Level, message: String) {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write(level, &message);
    }

    fn monotonic_micros(&mut self) -> u64 {
        static START: OnceLock<Instant> = OnceLock::new();
        let start = *START.get_or_init(Instant::now);
        u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn wall_clock_micros(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }

    fn config(&mut self) -> String {
        self.config.to_string()
    }

    fn route(&mut self) -> String {
        self.names.route.clone()
    }

    fn emit(&mut self, name: String, payload: String) -> Result<(), String> {
        let stats = &self.reporter.stats;
        let refused = |why: String| {
            stats.events_refused.fetch_add(1, Ordering::Relaxed);
            Err(why)
        };
        if let Err(why) = check_name(&name) {
            return refused(why);
        }
        if payload.len() > MAX_EVENT_PAYLOAD {
            return refused(format!(
                "the payload has {} bytes; at most {MAX_EVENT_PAYLOAD}",
                payload.len()
            ));
        }
        let payload: serde_json::Value = match serde_json::from_str(&payload) {
            Ok(value) => value,
            Err(err) => return refused(format!("the payload is not JSON: {err}")),
        };
        let within_budget = stats
            .event_budget
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if !within_budget {
            stats.events_refused.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        stats.events.fetch_add(1, Ordering::Relaxed);
        self.reporter
            .events
            .publish(&self.names.route, &self.names.plugin, &name, payload);
        Ok(())
    }

    fn set_metric(&mut self, name: String, value: f64) {
        self.update_metric(name, |_| value);
    }

    fn add_metric(&mut self, name: String, delta: f64) {
        self.update_metric(name, |old| old + delta);
    }

    fn request_keyframe(&mut self) {
        (self.reporter.request_keyframe)();
    }

    fn stream_description(&mut self) -> String {
        self.reporter.stream.to_string()
    }
}

impl PluginState {
    /// Sets metric `name` to `update(old value)`; a bad name, a value that is not finite or a
    /// name past the plugin's first [`MAX_METRICS`] is left out (and logged, within the budget).
    fn update_metric(&mut self, name: String, update: impl FnOnce(f64) -> f64) {
        let refusal = {
            let mut metrics = self
                .reporter
                .stats
                .metrics
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let known = metrics.contains_key(&name);
            match check_name(&name) {
                Err(why) => Some(why),
                Ok(()) if !known && metrics.len() >= MAX_METRICS => Some(format!(
                    "a plugin may set at most {MAX_METRICS} metrics on a route"
                )),
                Ok(()) => {
                    let value = update(metrics.get(&name).copied().unwrap_or(0.0));
                    if value.is_finite() {
                        metrics.insert(name.clone(), value);
                        None
                    } else {
                        Some("its value is not a finite number".to_owned())
                    }
                }
            }
        };
        if let Some(why) = refusal {
            self.log
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .write(Level::Warn, &format!("metric `{name}` left out: {why}"));
        }
    }
}

fn log_line(names: &Names, level: Level, message: &str) {
    let (plugin, route) = (&names.plugin, &names.route);
    match level {
        Level::Trace => tracing::trace!(target: "wasmcast::plugin", plugin, route, "{message}"),
        Level::Debug => tracing::debug!(target: "wasmcast::plugin", plugin, route, "{message}"),
        Level::Info => tracing::info!(target: "wasmcast::plugin", plugin, route, "{message}"),
        Level::Warn => tracing::warn!(target: "wasmcast::plugin", plugin, route, "{message}"),
        Level::Error => tracing::error!(target: "wasmcast::plugin", plugin, route, "{message}"),
    }
}

/// A plugin's stdout or stderr: whole lines go to the log under its name, within its budget.
#[derive(Clone)]
pub(super) struct LogStream {
    pub(super) budget: Arc<Mutex<LogBudget>>,
    pub(super) level: Level,
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineWriter {
            stream: self.clone(),
            line: Vec::new(),
        })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only the WASI 0.2 stream is used: plugins are WASI 0.2 components.
        Box::new(tokio::io::sink())
    }
}

/// Longest line kept before it is written out anyway.
const MAX_LINE: usize = 4096;

struct LineWriter {
    stream: LogStream,
    line: Vec<u8>,
}

impl LineWriter {
    fn emit(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        let text = text.trim_end();
        if !text.is_empty() {
            self.stream
                .budget
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .write(self.stream.level, text);
        }
        self.line.clear();
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}

impl OutputStream for LineWriter {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        for &byte in &bytes {
            if byte == b'\n' || self.line.len() >= MAX_LINE {
                self.emit();
                if byte == b'\n' {
                    continue;
                }
            }
            self.line.push(byte);
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        self.emit();
    }
}
