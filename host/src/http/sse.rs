//! `GET /api/v1/events`: plugins' events as Server-Sent Events, filtered by `route`, `plugin` and
//! `name` in the query; `after=ID` (or the `Last-Event-ID` header a reconnecting browser sends)
//! first replays the kept events after that one.
//!
//! Every stream is a bound: at most [`MAX_STREAMS`] at once; a subscriber that falls behind loses
//! the oldest events and is told how many (an SSE comment); a client that stops reading is
//! disconnected once its connection's writes have waited too long (the HTTP server's clock on every
//! connection); a keep-alive comment goes out every [`KEEP_ALIVE`].

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::{Reply, State, text};
use crate::events::Event;

/// Event streams open at once, at most.
pub const MAX_STREAMS: usize = 64;
/// How often a comment keeps an idle stream (and the proxies on its way) alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Counts the open streams.
#[derive(Debug, Default)]
pub struct StreamCount(AtomicUsize);

impl StreamCount {
    pub fn open(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// One open stream's place under [`MAX_STREAMS`].
struct Slot(Arc<StreamCount>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Which events a stream carries.
#[derive(Default)]
struct Filter {
    route: Option<String>,
    plugin: Option<String>,
    name: Option<String>,
}

impl Filter {
    fn passes(&self, event: &Event) -> bool {
        self.route.as_ref().is_none_or(|r| *r == event.route)
            && self.plugin.as_ref().is_none_or(|p| *p == event.plugin)
            && self.name.as_ref().is_none_or(|n| *n == event.name)
    }
}

/// The stream of events for one client.
pub(super) fn stream(state: &State, request: &Request<Incoming>) -> Reply {
    let mut filter = Filter::default();
    let mut after = request
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    for (key, value) in url::form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
    {
        match key.as_ref() {
            "route" => filter.route = Some(value.into_owned()),
            "plugin" => filter.plugin = Some(value.into_owned()),
            "name" => filter.name = Some(value.into_owned()),
            "after" => match value.parse() {
                Ok(id) => after = after.or(Some(id)),
                Err(_) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("`after={value}` is not an event id"),
                    );
                }
            },
            other => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("`{other}` is not a filter: use route, plugin, name or after"),
                );
            }
        }
    }
    let open = &state.event_streams.0;
    if open.fetch_add(1, Ordering::Relaxed) >= MAX_STREAMS {
        open.fetch_sub(1, Ordering::Relaxed);
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_STREAMS} event streams are open; try again later"),
        );
    }
    let slot = Slot(Arc::clone(&state.event_streams));
    let (kept, live) = state.events.subscribe(after);
    let started = Instant::now();
    let subscription = Subscription {
        kept: kept.into(),
        live,
        filter,
        last_id: after.unwrap_or(0),
        keep_alive: tokio::time::interval_at(started + KEEP_ALIVE, KEEP_ALIVE),
        _slot: slot,
    };
    let body = futures::stream::unfold(subscription, |mut subscription| async move {
        let chunk = subscription.next_chunk().await?;
        Some((Ok::<_, Infallible>(Frame::data(chunk)), subscription))
    });
    let mut response = Response::new(StreamBody::new(body).boxed_unsync());
    let headers = response.headers_mut();
    for (name, value) in [
        (hyper::header::CONTENT_TYPE, "text/event-stream"),
        (hyper::header::CACHE_CONTROL, "no-cache"),
        // Proxies such as nginx hold the stream back without it.
        (
            hyper::header::HeaderName::from_static("x-accel-buffering"),
            "no",
        ),
    ] {
        headers.insert(name, hyper::header::HeaderValue::from_static(value));
    }
    response
}

struct Subscription {
    kept: VecDeque<Arc<Event>>,
    live: broadcast::Receiver<Arc<Event>>,
    filter: Filter,
    /// The newest event sent: one that came both kept and live is sent once.
    last_id: u64,
    keep_alive: tokio::time::Interval,
    _slot: Slot,
}

impl Subscription {
    /// The next chunk of the stream: an event, a keep-alive, or a note of events missed. `None`
    /// when the server's events end.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            let event = match self.kept.pop_front() {
                Some(event) => event,
                None => tokio::select! {
                    received = self.live.recv() => match received {
                        Ok(event) => event,
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            return Some(Bytes::from(format!(": {missed} events missed (this client fell behind)\n\n")));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    },
                    _ = self.keep_alive.tick() => return Some(Bytes::from_static(b": keep-alive\n\n")),
                },
            };
            if event.id <= self.last_id || !self.filter.passes(&event) {
                continue;
            }
            self.last_id = event.id;
            let Ok(json) = serde_json::to_string(event.as_ref()) else {
                continue;
            };
            return Some(Bytes::from(format!("id: {}\ndata: {json}\n\n", event.id)));
        }
    }
}
