//! The JSON API under `/api/v1/` (the Prometheus text at `/metrics` is in `metrics`).
//!
//! - `GET /api/v1/config`: the running config's version and routes, and why the last reload was
//!   refused; `POST /api/v1/reload` reloads now.
//! - `GET /api/v1/routes`: each route's source state, codecs, readers, plugins and counters.
//! - `GET /api/v1/sessions`: every client session; `DELETE /api/v1/sessions/ID` ends one.
//! - `GET /api/v1/events`: plugins' events as they happen (Server-Sent Events, see `sse`).

use std::sync::atomic::Ordering;

use hyper::{Method, StatusCode};

use super::{Reply, State, respond, text};
use crate::control::{ReloadHandle, ReloadOutcome};
use crate::hub::SourceState;
use crate::sessions::EndedBy;

pub(super) async fn handle(state: &State, method: &Method, path: &str) -> Reply {
    match (method, path, state.reload.get()) {
        (&Method::GET, "config", Some(reload)) => config_status(reload),
        (&Method::POST, "reload", Some(reload)) => reload_now(reload).await,
        (_, "config" | "reload", None) => text(
            StatusCode::NOT_FOUND,
            "this server was started without a config file to reload",
        ),
        (&Method::GET, "routes", _) => routes(state),
        (&Method::GET, "sessions", _) => sessions(state),
        (&Method::DELETE, path, _) if path.starts_with("sessions/") => {
            let id = &path["sessions/".len()..];
            if state.sessions.end(id, EndedBy::Operator) {
                json(StatusCode::OK, &serde_json::json!({ "kicked": id }))
            } else {
                text(StatusCode::NOT_FOUND, format!("no session `{id}`"))
            }
        }
        _ => text(StatusCode::NOT_FOUND, format!("nothing at /api/v1/{path}")),
    }
}

fn state_name(state: &SourceState) -> (&'static str, Option<&str>) {
    match state {
        SourceState::Waiting => ("waiting", None),
        SourceState::Live => ("live", None),
        SourceState::Ended => ("ended", None),
        SourceState::Failed(reason) => ("failed", Some(reason)),
    }
}

fn routes(state: &State) -> Reply {
    let routes: Vec<serde_json::Value> = state
        .router
        .streams()
        .iter()
        .map(|(name, stream)| {
            let source_state = stream.state();
            let (source, reason) = state_name(&source_state);
            let codecs: Vec<&str> = stream
                .media()
                .map(|m| {
                    m.description
                        .tracks
                        .iter()
                        .map(|t| t.codec.name())
                        .collect()
                })
                .unwrap_or_default();
            let stats = &stream.stats;
            let plugins: Vec<serde_json::Value> = state
                .router
                .plugins(name)
                .iter()
                .map(|plugin| {
                    let stats = &plugin.stats;
                    serde_json::json!({
                        "name": plugin.name,
                        "wasm": plugin.wasm,
                        "kind": plugin.kind,
                        "calls": stats.calls.load(Ordering::Relaxed),
                        "errors": stats.errors.load(Ordering::Relaxed),
                        "restarts": stats.restarts.load(Ordering::Relaxed),
                        "dropped": stats.dropped.load(Ordering::Relaxed),
                        "call_seconds": stats.nanos.load(Ordering::Relaxed) as f64 / 1e9,
                        "last_error": *stats.last_error.lock().unwrap_or_else(|p| p.into_inner()),
                        "events": stats.events.load(Ordering::Relaxed),
                        "events_refused": stats.events_refused.load(Ordering::Relaxed),
                        "snapshots": stats.snapshots.load(Ordering::Relaxed),
                        "restores": stats.restores.load(Ordering::Relaxed),
                        "metrics": *stats.metrics.lock().unwrap_or_else(|p| p.into_inner()),
                    })
                })
                .collect();
            let transcode = state.router.transcode_stats(name).map(|t| {
                serde_json::json!({
                    "decoded": t.decoded.load(Ordering::Relaxed),
                    "decode_errors": t.decode_errors.load(Ordering::Relaxed),
                    "encoded": t.encoded.load(Ordering::Relaxed),
                    "dropped": t.dropped.load(Ordering::Relaxed),
                    "duplicated": t.duplicated.load(Ordering::Relaxed),
                    "skipped": t.skipped.load(Ordering::Relaxed),
                })
            });
            let on_demand = state.router.demand(name).map(|demand| {
                serde_json::json!({
                    "pattern": demand.pattern,
                    "running": demand.running(),
                    "close_after_s": demand.close_after.as_secs(),
                })
            });
            serde_json::json!({
                "name": name,
                "on_demand": on_demand,
                "plugins": plugins,
                "transcode": transcode,
                "plugin_queue_drops": stats.plugin_queue_drops.load(Ordering::Relaxed),
                "units_over_budget": stats.units_over_budget.load(Ordering::Relaxed),
                "source": source,
                "source_error": reason,
                "codecs": codecs,
                "readers": stats.readers.load(Ordering::Relaxed),
                "units_in": stats.units_in.load(Ordering::Relaxed),
                "bytes_in": stats.bytes_in.load(Ordering::Relaxed),
                "packets_out": stats.packets_out.load(Ordering::Relaxed),
                "bytes_out": stats.bytes_out.load(Ordering::Relaxed),
                "readers_too_slow": stats.readers_too_slow.load(Ordering::Relaxed),
                "source_errors": stats.source_errors.load(Ordering::Relaxed),
                "publishers": stats.publishers.load(Ordering::Relaxed),
            })
        })
        .collect();
    json(StatusCode::OK, &serde_json::Value::from(routes))
}

fn sessions(state: &State) -> Reply {
    let sessions: Vec<serde_json::Value> = state
        .sessions
        .list()
        .into_iter()
        .map(|session| {
            let started = session
                .started
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            serde_json::json!({
                "id": session.id,
                "kind": session.kind.as_str(),
                "route": session.route,
                "peer": session.peer.to_string(),
                "started_unix": started,
            })
        })
        .collect();
    json(StatusCode::OK, &serde_json::Value::from(sessions))
}

pub(super) fn json(status: StatusCode, value: &serde_json::Value) -> Reply {
    respond(status, "application/json", value.to_string())
}

/// `GET /api/v1/config`: the running config's version and routes, and why the last reload was
/// refused, if it was.
fn config_status(reload: &ReloadHandle) -> Reply {
    let status = reload.status();
    let loaded_at = status
        .loaded_at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json(
        StatusCode::OK,
        &serde_json::json!({
            "path": status.path.display().to_string(),
            "version": status.version,
            "loaded_at_unix": loaded_at,
            "reloads": status.reloads,
            "routes": status.routes,
            "patterns": status.patterns,
            "error": status.last_error,
        }),
    )
}

/// `POST /api/v1/reload`: reloads now; 422 with the problems when the file is refused.
async fn reload_now(reload: &ReloadHandle) -> Reply {
    match reload.reload("API").await {
        ReloadOutcome::Applied(changes) => json(
            StatusCode::OK,
            &serde_json::json!({
                "outcome": "applied",
                "added": changes.added,
                "changed": changes.changed,
                "removed": changes.removed,
            }),
        ),
        ReloadOutcome::Unchanged => json(
            StatusCode::OK,
            &serde_json::json!({ "outcome": "unchanged" }),
        ),
        ReloadOutcome::Refused(error) => json(
            StatusCode::UNPROCESSABLE_ENTITY,
            &serde_json::json!({ "outcome": "refused", "error": error }),
        ),
    }
}
