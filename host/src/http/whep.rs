//! WHEP (`POST /ROUTE/whep`, then `DELETE`/`PATCH` on `/ROUTE/whep/ID`) and the browser player
//! (`GET /ROUTE/`). Every WHEP answer allows any origin (CORS), so a page elsewhere can play.

use std::net::SocketAddr;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};

use super::{Reply, State, respond, text};
use crate::auth::Login;
use crate::router::RouterError;
use crate::webrtc::{TooManyUnconnected, WhepError};

/// Largest request body taken on a WHEP resource.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// A WHEP body must arrive whole within this long: an offer is a few kB, sent at once.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Handles `ROUTE/whep` (`session` `None`) and `ROUTE/whep/ID`.
pub(super) async fn handle(
    state: &State,
    request: Request<Incoming>,
    route: &str,
    session: Option<&str>,
    local: SocketAddr,
    peer: SocketAddr,
) -> Reply {
    let method = request.method().clone();
    // A session's resource takes DELETE and PATCH; the route's endpoint takes offers.
    let allow = if session.is_some() {
        "DELETE, PATCH, OPTIONS"
    } else {
        "POST, OPTIONS"
    };
    let reply = if method == Method::OPTIONS {
        options(allow, "content-type, authorization, if-match")
    } else if !state.router.knows(route) {
        text(StatusCode::NOT_FOUND, format!("no route `{route}`"))
    } else if let Some(forbidden) = super::forbidden_by_route(state, route, peer) {
        forbidden
    } else if let Some(denied) = authorize(state, route, &request, peer) {
        denied
    } else {
        match (method, session) {
            (Method::POST, None) => offer(state, request, route, local, peer).await,
            (Method::DELETE, Some(id)) => match state.webrtc.end(route, id) {
                Ok(()) => text(StatusCode::OK, "session ended"),
                Err(err) => error_reply(&err),
            },
            (Method::PATCH, Some(id)) => patch(state, request, route, id).await,
            (method, _) => {
                let mut reply = text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("{method} is not used on a WHEP resource"),
                );
                reply
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
                reply
            }
        }
    };
    with_cors(reply)
}

/// The answer to `OPTIONS` (a CORS preflight, too): the methods and request headers taken.
pub(super) fn options(allow: &'static str, headers: &'static str) -> Reply {
    let mut reply = respond(StatusCode::NO_CONTENT, "text/plain", "");
    let map = reply.headers_mut();
    map.insert(header::ALLOW, HeaderValue::from_static(allow));
    map.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(allow),
    );
    map.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(headers),
    );
    reply
}

pub(super) fn with_cors(mut reply: Reply) -> Reply {
    let headers = reply.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location"),
    );
    reply
}

/// The read credentials of `route` (HTTP Basic or a bearer token); `Some` is the refusal.
pub(super) fn authorize(
    state: &State,
    route: &str,
    request: &Request<Incoming>,
    peer: SocketAddr,
) -> Option<Reply> {
    let login = Login {
        peer: peer.ip(),
        header: request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
        method: request.method().as_str(),
        digest: None,
        now: std::time::Instant::now(),
    };
    let policy = state.router.policy(route);
    let err = state
        .auth
        .authorize(policy.as_deref(), false, &login)
        .err()?;
    tracing::info!(%peer, route, "WHEP request refused: {err}");
    Some(super::refused(
        &err,
        &format!("credentials needed to watch `{route}`"),
    ))
}

/// The body as text, if the request says it is of type `wanted`; else a 415 naming the type.
pub(super) async fn body_text(request: Request<Incoming>, wanted: &str) -> Result<String, Reply> {
    if !content_type_is(&request, wanted) {
        return Err(text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "{} takes a body with Content-Type: {wanted}",
                request.method()
            ),
        ));
    }
    let collected = tokio::time::timeout(
        BODY_TIMEOUT,
        Limited::new(request.into_body(), MAX_BODY_BYTES).collect(),
    )
    .await
    .map_err(|_| {
        text(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the body did not arrive within {} s",
                BODY_TIMEOUT.as_secs()
            ),
        )
    })?;
    let body = collected
        .map_err(|err| {
            text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body cannot be read or is over {MAX_BODY_BYTES} bytes: {err}"),
            )
        })?
        .to_bytes();
    String::from_utf8(body.to_vec())
        .map_err(|_| text(StatusCode::BAD_REQUEST, "the body is not UTF-8 text"))
}

fn content_type_is(request: &Request<Incoming>, wanted: &str) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(wanted))
}

async fn offer(
    state: &State,
    request: Request<Incoming>,
    route: &str,
    local: SocketAddr,
    peer: SocketAddr,
) -> Reply {
    let sdp = match body_text(request, "application/sdp").await {
        Ok(sdp) => sdp,
        Err(reply) => return reply,
    };
    match state.webrtc.offer(route, &sdp, local, peer).await {
        Ok(answer) => {
            tracing::info!(%peer, route, session = %answer.id, "WHEP session started");
            created(answer.sdp, &format!("/{route}/whep/{}", answer.id))
        }
        Err(err) => {
            tracing::info!(%peer, route, "WHEP offer refused: {err}");
            error_reply(&err)
        }
    }
}

async fn patch(state: &State, request: Request<Incoming>, route: &str, id: &str) -> Reply {
    let fragment = match body_text(request, "application/trickle-ice-sdpfrag").await {
        Ok(fragment) => fragment,
        Err(reply) => return reply,
    };
    match state.webrtc.trickle(route, id, &fragment).await {
        Ok(()) => respond(StatusCode::NO_CONTENT, "text/plain", ""),
        Err(err) => error_reply(&err),
    }
}

/// `201 Created` with the SDP answer, and where the new session's resource is.
pub(super) fn created(sdp: String, location: &str) -> Reply {
    let mut reply = respond(StatusCode::CREATED, "application/sdp", sdp);
    if let Ok(location) = HeaderValue::from_str(location) {
        reply.headers_mut().insert(header::LOCATION, location);
    }
    reply
}

pub(super) fn error_reply(err: &WhepError) -> Reply {
    let status = match err {
        WhepError::NoRoute(_)
        | WhepError::NoSession(_)
        | WhepError::Route(RouterError::NoRoute(_)) => StatusCode::NOT_FOUND,
        WhepError::Route(RouterError::PatternRoutesInAll) => StatusCode::SERVICE_UNAVAILABLE,
        WhepError::Route(RouterError::PatternRoutesFromAddress) => StatusCode::TOO_MANY_REQUESTS,
        WhepError::NotLive(..)
        | WhepError::Full(_)
        | WhepError::Unconnected(TooManyUnconnected::InAll) => StatusCode::SERVICE_UNAVAILABLE,
        WhepError::Unconnected(TooManyUnconnected::FromAddress) => StatusCode::TOO_MANY_REQUESTS,
        WhepError::BadOffer(_) => StatusCode::BAD_REQUEST,
        WhepError::Busy(_) => StatusCode::CONFLICT,
        WhepError::Unplayable(_) => StatusCode::NOT_ACCEPTABLE,
        WhepError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    text(status, err.to_string())
}

/// `GET /ROUTE/`: the player page, for clients the route's access list lets in (the page itself
/// asks for credentials when the route wants them).
pub(super) fn player(state: &State, route: &str, peer: SocketAddr) -> Reply {
    if !state.router.knows(route) {
        return text(StatusCode::NOT_FOUND, format!("no route `{route}`"));
    }
    if let Some(forbidden) = super::forbidden_by_route(state, route, peer) {
        return forbidden;
    }
    // Route names are letters, digits, `-`, `_` and `.` (the config checks): safe in HTML and JS.
    let port = state.rtsp.local_addr().map_or(0, |a| a.port());
    let page = include_str!("player.html")
        .replace("ROUTE_NAME", route)
        .replace("RTSP_PORT", &port.to_string());
    respond(StatusCode::OK, "text/html; charset=utf-8", page)
}
