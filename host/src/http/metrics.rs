//! `GET /metrics`: the Prometheus text format, per route, per plugin, and server-wide.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use hyper::StatusCode;

use super::{Reply, State, respond};
use crate::hub::{SourceState, Stream, StreamStats};
use crate::plugins::{PluginStats, PluginStatus};
use crate::router::RouterHandle;

/// A per-route metric: name, type, help text, and how to read it from a stream's counters.
type RouteMetric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&StreamStats) -> u64,
);

/// `GET /metrics` in the Prometheus text format.
pub(super) fn metrics(state: &State) -> Reply {
    let streams = state.router.streams();
    let mut out = String::with_capacity(4096);
    let per_route: [RouteMetric; 10] = [
        (
            "wasmcast_readers",
            "gauge",
            "Readers of the route now.",
            |s| s.readers.load(Ordering::Relaxed) as u64,
        ),
        (
            "wasmcast_units_in_total",
            "counter",
            "Access units published into the route.",
            |s| s.units_in.load(Ordering::Relaxed),
        ),
        (
            "wasmcast_bytes_in_total",
            "counter",
            "Payload bytes published into the route.",
            |s| s.bytes_in.load(Ordering::Relaxed),
        ),
        (
            "wasmcast_packets_out_total",
            "counter",
            "RTP packets sent to the route's readers.",
            |s| s.packets_out.load(Ordering::Relaxed),
        ),
        (
            "wasmcast_bytes_out_total",
            "counter",
            "RTP bytes sent to the route's readers.",
            |s| s.bytes_out.load(Ordering::Relaxed),
        ),
        (
            "wasmcast_readers_too_slow_total",
            "counter",
            "Times a reader was skipped to the next keyframe.",
            |s| s.readers_too_slow.load(Ordering::Relaxed),
        ),
        (
            "wasmcast_source_errors_total",
            "counter",
            "Source failures and unreadable samples.",
            |s| s.source_errors.load(Ordering::Relaxed),
        ),
        (
            "wasmcast_plugin_queue_drops_total",
            "counter",
            "Units dropped because the route's plugins fell behind.",
            |s| s.plugin_queue_drops.load(Ordering::Relaxed),
        ),
        (
            "wasmcast_units_over_budget_total",
            "counter",
            "Units dropped for the route's memory budget (server.max_unit_mb, route_buffer_mb).",
            |s| s.units_over_budget.load(Ordering::Relaxed),
        ),
        (
            "wasmcast_publishers_total",
            "counter",
            "Publishers that started on the route.",
            |s| s.publishers.load(Ordering::Relaxed),
        ),
    ];
    // Writing to a String cannot fail.
    for (name, kind, help, value) in per_route {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (route, stream) in streams.iter() {
            let _ = writeln!(out, "{name}{{route=\"{route}\"}} {}", value(&stream.stats));
        }
    }
    let _ = writeln!(
        out,
        "# HELP wasmcast_source_live Whether the route's source is live (1) or not (0).\n# TYPE wasmcast_source_live gauge"
    );
    for (route, stream) in streams.iter() {
        let live = u8::from(stream.state() == SourceState::Live);
        let _ = writeln!(out, "wasmcast_source_live{{route=\"{route}\"}} {live}");
    }
    plugin_metrics(&state.router, &streams, &mut out);
    opus_metrics(state, &mut out);
    event_metrics(state, &mut out);
    let gate = &state.gate;
    let _ = writeln!(
        out,
        "# HELP wasmcast_connections_open Open RTSP and HTTP connections.\n# TYPE wasmcast_connections_open gauge\nwasmcast_connections_open {}",
        gate.open()
    );
    let _ = writeln!(
        out,
        "# HELP wasmcast_connections_refused_total Connections closed at accept, by the cap they met.\n# TYPE wasmcast_connections_refused_total counter"
    );
    for (cap, count) in [
        ("max_connections", &gate.refused_total),
        ("max_connections_per_address", &gate.refused_per_address),
        ("connection_rate_per_address", &gate.refused_rate),
    ] {
        let _ = writeln!(
            out,
            "wasmcast_connections_refused_total{{cap=\"{cap}\"}} {}",
            count.load(Ordering::Relaxed)
        );
    }
    let sessions = state.sessions.list();
    let _ = writeln!(
        out,
        "# HELP wasmcast_sessions Client sessions now.\n# TYPE wasmcast_sessions gauge"
    );
    for kind in [
        crate::sessions::SessionKind::RtspReader,
        crate::sessions::SessionKind::RtspPublisher,
        crate::sessions::SessionKind::HttpPush,
    ] {
        let count = sessions.iter().filter(|s| s.kind == kind).count();
        let _ = writeln!(
            out,
            "wasmcast_sessions{{kind=\"{}\"}} {count}",
            kind.as_str()
        );
    }
    if let Some(reload) = state.reload.get() {
        let _ = writeln!(
            out,
            "# HELP wasmcast_config_reloads_total Config reloads applied.\n# TYPE wasmcast_config_reloads_total counter\nwasmcast_config_reloads_total {}",
            reload.status().reloads
        );
    }
    respond(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        out,
    )
}

/// A per-plugin metric: name, type, help text, and how to read it from a plugin's counters.
type PluginMetric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&PluginStats) -> f64,
);

/// Per plugin and route: calls, errors and time in calls.
fn plugin_metrics(
    router: &RouterHandle,
    streams: &BTreeMap<String, Arc<Stream>>,
    out: &mut String,
) {
    let chains: Vec<(&String, Vec<PluginStatus>)> = streams
        .keys()
        .map(|route| (route, router.plugins(route)))
        .collect();
    let metrics: [PluginMetric; 8] = [
        (
            "wasmcast_plugin_calls_total",
            "counter",
            "Plugin calls.",
            |s| s.calls.load(Ordering::Relaxed) as f64,
        ),
        (
            "wasmcast_plugin_errors_total",
            "counter",
            "Plugin calls that trapped or ran past a limit, and instances that could not start.",
            |s| s.errors.load(Ordering::Relaxed) as f64,
        ),
        (
            "wasmcast_plugin_call_seconds_total",
            "counter",
            "Time spent in plugin calls.",
            |s| s.nanos.load(Ordering::Relaxed) as f64 / 1e9,
        ),
        (
            "wasmcast_plugin_dropped_total",
            "counter",
            "Units a plugin dropped.",
            |s| s.dropped.load(Ordering::Relaxed) as f64,
        ),
        (
            "wasmcast_plugin_events_total",
            "counter",
            "Events a plugin emitted.",
            |s| s.events.load(Ordering::Relaxed) as f64,
        ),
        (
            "wasmcast_plugin_events_refused_total",
            "counter",
            "Events refused: over the plugin's budget of events a second, or a bad name or payload.",
            |s| s.events_refused.load(Ordering::Relaxed) as f64,
        ),
        (
            "wasmcast_plugin_snapshots_total",
            "counter",
            "Snapshots of a plugin's state taken.",
            |s| s.snapshots.load(Ordering::Relaxed) as f64,
        ),
        (
            "wasmcast_plugin_restores_total",
            "counter",
            "Instances that started from a saved state.",
            |s| s.restores.load(Ordering::Relaxed) as f64,
        ),
    ];
    for (name, kind, help, value) in metrics {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (route, chain) in &chains {
            for plugin in chain {
                let _ = writeln!(
                    out,
                    "{name}{{route=\"{route}\",plugin=\"{}\"}} {}",
                    plugin.name,
                    value(&plugin.stats)
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP wasmcast_plugin_metric A plugin's own metric (set-metric, add-metric), by its name.\n# TYPE wasmcast_plugin_metric gauge"
    );
    for (route, chain) in &chains {
        for plugin in chain {
            let metrics = plugin
                .stats
                .metrics
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            for (name, value) in metrics {
                let _ = writeln!(
                    out,
                    "wasmcast_plugin_metric{{route=\"{route}\",plugin=\"{}\",name=\"{name}\"}} {value}",
                    plugin.name
                );
            }
        }
    }
}

/// What the Opus renditions of AAC routes cost.
fn opus_metrics(state: &State, out: &mut String) {
    let opus = state.webrtc.opus_stats();
    let _ = writeln!(
        out,
        "# HELP wasmcast_opus_renditions Routes whose AAC is being turned into Opus for WebRTC viewers now.\n# TYPE wasmcast_opus_renditions gauge\nwasmcast_opus_renditions {}",
        opus.running
    );
    let _ = writeln!(
        out,
        "# HELP wasmcast_opus_frames_total 20 ms Opus frames made from AAC.\n# TYPE wasmcast_opus_frames_total counter\nwasmcast_opus_frames_total {}",
        opus.frames
    );
    let _ = writeln!(
        out,
        "# HELP wasmcast_opus_transcode_seconds_total Time spent decoding AAC, resampling and encoding Opus.\n# TYPE wasmcast_opus_transcode_seconds_total counter\nwasmcast_opus_transcode_seconds_total {:.6}",
        opus.transcode_seconds
    );
}

/// The events' counters: published, streams open, webhook deliveries.
fn event_metrics(state: &State, out: &mut String) {
    let stats = state.events.stats();
    let _ = writeln!(
        out,
        "# HELP wasmcast_events_total Events plugins published.\n# TYPE wasmcast_events_total counter\nwasmcast_events_total {}",
        stats.published.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP wasmcast_event_streams Event streams open (GET /api/v1/events).\n# TYPE wasmcast_event_streams gauge\nwasmcast_event_streams {}",
        state.event_streams.open()
    );
    let _ = writeln!(
        out,
        "# HELP wasmcast_webhook_events_total Events for webhooks, by outcome (dropped: the webhook's queue was full).\n# TYPE wasmcast_webhook_events_total counter"
    );
    for (outcome, count) in [
        ("delivered", &stats.webhook_delivered),
        ("failed", &stats.webhook_failed),
        ("dropped", &stats.webhook_dropped),
    ] {
        let _ = writeln!(
            out,
            "wasmcast_webhook_events_total{{outcome=\"{outcome}\"}} {}",
            count.load(Ordering::Relaxed)
        );
    }
}
