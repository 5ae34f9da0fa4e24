//! The HTTP server: MPEG-TS pushes from ffmpeg (`POST|PUT /FEED`), the status page (`GET /`), the
//! browser player (`GET /ROUTE/`) and WHEP (`/ROUTE/whep`, see [`whep`]), `GET /healthz`,
//! `GET /metrics` and the JSON API under `/api/v1/` (see [`api`]).
//!
//! In: HTTP/1.1 requests. Out: push bodies handed to [`TsIngest`] as they arrive, one access-log
//! line per push. Each connection is a task of its own; a bad push gets its own error status.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

mod api;
mod metrics;
mod push;
mod sse;
mod whep;
mod whip;

use crate::auth::{Auth, AuthError, Login};
use crate::control::ReloadHandle;
use crate::events::Events;
use crate::listen::{
    Budget, ConnectionGate, Listener, REQUESTS, Rebind, keep_alive, past_requests,
};
use crate::router::RouterHandle;
use crate::sessions::{ClientLimit, Sessions};
use crate::snapshot::{SnapshotError, Snapshots};
use crate::webrtc::WebRtc;

/// Time a client has to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time an answer's write may wait for a client that takes nothing (as RTSP's egress): a client
/// that stops reading, be it an event stream's or one that pipelines requests and never reads the
/// answers, is cut off rather than held for as long as it likes.
const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// What a connection's read buffer may hold, request head included (hyper's default is some
/// 400 KiB, which a thousand connections trickling heads could make the server hold for the
/// header timeout); a larger head is answered `431` at once. As RTSP's request cap.
const MAX_BUFFER: usize = 64 * 1024;

/// Why the HTTP server cannot start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for HTTP on {addr}: {source}")]
pub struct Error {
    addr: SocketAddr,
    source: std::io::Error,
}

/// A bound HTTP server, ready to run.
pub struct HttpServer {
    listener: Listener,
    rebind: Rebind,
    state: Arc<State>,
}

/// What request handlers reach: the server's parts the HTTP side uses.
pub struct State {
    pub router: RouterHandle,
    pub auth: Auth,
    pub sessions: Sessions,
    /// Admission under `max_clients`, and whether the server drains.
    pub clients: Arc<ClientLimit>,
    /// The RTSP listener, whose port the status page shows.
    pub rtsp: Rebind,
    /// Set once the reload task runs (it needs this server's [`Rebind`] first).
    pub reload: Arc<OnceLock<ReloadHandle>>,
    pub webrtc: WebRtc,
    /// The caps on open connections, shared with the RTSP server (their counters are metrics).
    pub gate: Arc<ConnectionGate>,
    pub snapshots: Snapshots,
    pub events: Events,
    /// The event streams open now (`GET /api/v1/events`).
    pub event_streams: Arc<sse::StreamCount>,
}

impl HttpServer {
    pub async fn bind(addr: SocketAddr, state: State) -> Result<HttpServer, Error> {
        let (listener, rebind) = Listener::bind(addr)
            .await
            .map_err(|source| Error { addr, source })?;
        Ok(HttpServer {
            listener,
            rebind,
            state: Arc::new(state),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The way to move this server to another address while it runs.
    pub fn rebind(&self) -> Rebind {
        self.rebind.clone()
    }

    /// Accepts connections until `shutdown` completes.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((socket, peer)) => {
                        let permit = match self.state.gate.admit(peer.ip()) {
                            Ok(permit) => permit,
                            Err(refusal) => {
                                // Counted in /metrics; a line per refusal would let a flood fill the log.
                            tracing::debug!(%peer, "HTTP connection refused: {refusal}");
                                continue;
                            }
                        };
                        keep_alive(&socket);
                        self.state.gate.bound_send_buffer(&socket);
                        let state = Arc::clone(&self.state);
                        let Ok(local) = socket.local_addr() else { continue };
                        tokio::spawn(async move {
                            let _permit = permit;
                            let requests = std::cell::RefCell::new(Budget::new(REQUESTS, Instant::now()));
                            let service = service_fn(move |request| {
                                let within = requests.borrow_mut().charge(1, Instant::now());
                                let state = Arc::clone(&state);
                                async move {
                                    if !within {
                                        tracing::warn!(%peer, "HTTP connection closed: {}", past_requests());
                                        return Ok(closing(text(StatusCode::TOO_MANY_REQUESTS, past_requests())));
                                    }
                                    Ok::<_, Infallible>(handle(&state, request, local, peer).await)
                                }
                            });
                            let mut socket = tokio_io_timeout::TimeoutStream::new(socket);
                            socket.set_write_timeout(Some(WRITE_STALL_TIMEOUT));
                            let connection = http1::Builder::new()
                                .timer(TokioTimer::new())
                                .header_read_timeout(HEADER_TIMEOUT)
                                .max_buf_size(MAX_BUFFER)
                                .serve_connection(TokioIo::new(Box::pin(socket)), service);
                            if let Err(err) = connection.await {
                                tracing::debug!(%peer, "HTTP connection ended: {err}");
                            }
                        });
                    }
                    Err(err) => {
                        tracing::warn!("HTTP accept failed: {err}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                () = &mut shutdown => return,
            }
        }
    }
}

/// Every answer's body: whole (most) or streamed (events).
type Reply = Response<UnsyncBoxBody<Bytes, Infallible>>;

/// `reply`, after which hyper closes the connection.
fn closing(mut reply: Reply) -> Reply {
    reply.headers_mut().insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    reply
}

/// `GET /`: routes and sessions, refreshed in the browser from the JSON API.
fn status_page(state: &State) -> Reply {
    let port = state.rtsp.local_addr().map_or(0, |a| a.port());
    let page = include_str!("status.html").replace("RTSP_PORT", &port.to_string());
    respond(StatusCode::OK, "text/html; charset=utf-8", page)
}

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut response = Response::new(Full::new(body.into()).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

/// The answer to refused credentials: `429` while the address is throttled, else `401`.
fn refused(err: &AuthError, why: &str) -> Reply {
    match err {
        AuthError::Throttled => text(StatusCode::TOO_MANY_REQUESTS, err.to_string()),
        _ => unauthorized(why),
    }
}

/// `401` with the challenges HTTP clients answer: Basic (a user's password) or a bearer token.
fn unauthorized(why: &str) -> Reply {
    let mut reply = text(StatusCode::UNAUTHORIZED, why);
    reply.headers_mut().insert(
        hyper::header::WWW_AUTHENTICATE,
        hyper::header::HeaderValue::from_static(
            "Basic realm=\"wasmcast\", Bearer realm=\"wasmcast\"",
        ),
    );
    reply
}

fn text(status: StatusCode, body: impl Into<String>) -> Reply {
    let mut body = body.into();
    body.push('\n');
    respond(status, "text/plain; charset=utf-8", body)
}

async fn handle(
    state: &State,
    request: Request<Incoming>,
    local: SocketAddr,
    peer: SocketAddr,
) -> Reply {
    if !state.auth.permits(peer.ip(), None) {
        tracing::info!(%peer, "HTTP request refused by the server's access list");
        return text(
            StatusCode::FORBIDDEN,
            "forbidden by the server's access list",
        );
    }
    let path = request.uri().path().trim_start_matches('/').to_owned();
    let method = request.method().clone();
    let operator = path.starts_with("api/v1/") || path == "metrics";
    if operator && let Some(refusal) = refuse_operator(state, &request, peer, &path) {
        return refusal;
    }
    if path == "api/v1/events" && method == Method::GET {
        return sse::stream(state, &request);
    }
    if let Some(api_path) = path.strip_prefix("api/v1/") {
        return api::handle(state, &method, api_path).await;
    }
    match (&method, path.as_str()) {
        (&Method::GET | &Method::HEAD, "healthz") => text(StatusCode::OK, "ok"),
        // Ready once the server has started its routes and bound its listeners (before that it
        // does not answer); not ready while it drains, so that load balancers send no one new.
        (&Method::GET | &Method::HEAD, "readyz") if state.clients.draining() => {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining")
        }
        (&Method::GET | &Method::HEAD, "readyz") => text(StatusCode::OK, "ready"),
        (&Method::GET, player) if player.ends_with('/') && player.matches('/').count() == 1 => {
            whep::player(state, player.trim_end_matches('/'), peer)
        }
        (_, whep_path) if whep_resource(whep_path).is_some() => {
            let Some((route, session)) = whep_resource(whep_path) else {
                return text(StatusCode::NOT_FOUND, "no WHEP resource");
            };
            let (route, session) = (route.to_owned(), session.map(str::to_owned));
            whep::handle(state, request, &route, session.as_deref(), local, peer).await
        }
        (_, whip_path) if resource(whip_path, "whip").is_some() => {
            let Some((feed, session)) = resource(whip_path, "whip") else {
                return text(StatusCode::NOT_FOUND, "no WHIP resource");
            };
            let (feed, session) = (feed.to_owned(), session.map(str::to_owned));
            whip::handle(state, request, &feed, session.as_deref(), local, peer).await
        }
        (&Method::GET, publish) if publish.ends_with("/publish") => {
            let feed = publish.trim_end_matches("/publish");
            if feed.is_empty() || feed.contains('/') {
                return text(StatusCode::NOT_FOUND, format!("nothing at /{path}"));
            }
            whip::page(state, feed, peer)
        }
        (&Method::GET | &Method::HEAD, snapshot) if snapshot.ends_with("/snapshot.jpg") => {
            let route = snapshot.trim_end_matches("/snapshot.jpg");
            if route.is_empty() || route.contains('/') {
                return text(StatusCode::NOT_FOUND, format!("nothing at /{path}"));
            }
            let route = route.to_owned();
            self::snapshot(state, &route, &request, peer).await
        }
        (&Method::GET, "") => status_page(state),
        (&Method::GET, "metrics") => metrics::metrics(state),
        (&Method::POST | &Method::PUT, feed) if !feed.is_empty() && !feed.contains('/') => {
            let authorization = request
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            push::push(
                state,
                feed,
                authorization.as_deref(),
                request.into_body(),
                peer,
            )
            .await
        }
        _ => text(StatusCode::NOT_FOUND, format!("nothing at /{path}")),
    }
}

/// `GET /ROUTE/snapshot.jpg`: the route's latest keyframe as a JPEG picture, for whoever may read
/// the route.
async fn snapshot(
    state: &State,
    route: &str,
    request: &Request<Incoming>,
    peer: SocketAddr,
) -> Reply {
    let Some(stream) = state.router.stream(route) else {
        return text(StatusCode::NOT_FOUND, format!("no route `{route}`"));
    };
    if let Some(forbidden) = forbidden_by_route(state, route, peer) {
        return forbidden;
    }
    if let Some(denied) = whep::authorize(state, route, request, peer) {
        return denied;
    }
    match state.snapshots.jpeg(&stream).await {
        Ok(jpeg) => {
            let mut reply = respond(StatusCode::OK, "image/jpeg", jpeg);
            // A new picture comes with the next keyframe, every second or two.
            reply.headers_mut().insert(
                hyper::header::CACHE_CONTROL,
                hyper::header::HeaderValue::from_static("max-age=1"),
            );
            reply
        }
        Err(err) => {
            let status = match &err {
                SnapshotError::NoPicture(_) | SnapshotError::Busy => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                SnapshotError::Codec { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                SnapshotError::Decode { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            };
            text(status, err.to_string())
        }
    }
}

/// The refusal of a client the access list of `route` (or the server's) keeps out, if it does.
fn forbidden_by_route(state: &State, route: &str, peer: SocketAddr) -> Option<Reply> {
    let policy = state.router.policy(route);
    (!state.auth.permits(peer.ip(), policy.as_deref())).then(|| {
        text(
            StatusCode::FORBIDDEN,
            "forbidden by the route's access list",
        )
    })
}

/// Guards what only operators may see or do (the API, `/metrics`): with `admins` named, their
/// credentials; without, only clients on this machine (as MediaMTX does by default), since the API
/// lists every client's address and can end any session. `Some` is the refusal.
fn refuse_operator(
    state: &State,
    request: &Request<Incoming>,
    peer: SocketAddr,
    path: &str,
) -> Option<Reply> {
    if !state.auth.has_admins() {
        if on_this_machine(peer.ip()) {
            return None;
        }
        tracing::info!(%peer, path, "operator request refused: not from this machine and no admins named");
        return Some(text(
            StatusCode::FORBIDDEN,
            "the API and /metrics answer only clients on this machine while [server] admins is empty; name admins (users with a password or token) to reach them from elsewhere",
        ));
    }
    let login = Login {
        peer: peer.ip(),
        header: request
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
        method: request.method().as_str(),
        digest: None,
        now: Instant::now(),
    };
    let err = state.auth.authorize_admin(&login).err()?;
    tracing::info!(%peer, path, "operator request refused: {err}");
    Some(refused(
        &err,
        "credentials of an admin needed for the API and /metrics",
    ))
}

/// Whether `ip` is a loopback address (an IPv4-mapped one too): a client on this machine.
fn on_this_machine(ip: std::net::IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// `ROUTE/whep` or `ROUTE/whep/ID`: the route and the session.
fn whep_resource(path: &str) -> Option<(&str, Option<&str>)> {
    resource(path, "whep")
}

/// `ROUTE/KIND` or `ROUTE/KIND/ID`: the route and the session.
fn resource<'a>(path: &'a str, kind: &str) -> Option<(&'a str, Option<&'a str>)> {
    let mut parts = path.split('/');
    let route = parts.next().filter(|r| !r.is_empty())?;
    if parts.next()? != kind {
        return None;
    }
    let session = parts.next();
    if parts.next().is_some() || session.is_some_and(str::is_empty) {
        return None;
    }
    Some((route, session))
}

#[cfg(test)]
mod tests {
    use super::on_this_machine;

    #[test]
    fn only_loopback_clients_are_on_this_machine() {
        for local in ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"] {
            assert!(on_this_machine(local.parse().unwrap()), "{local}");
        }
        for remote in [
            "10.0.0.1",
            "192.168.1.2",
            "2001:db8::1",
            "::ffff:10.0.0.1",
            "0.0.0.0",
        ] {
            assert!(!on_this_machine(remote.parse().unwrap()), "{remote}");
        }
    }
}
