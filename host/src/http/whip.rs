//! WHIP (`POST /FEED/whip`, then `DELETE` on `/FEED/whip/ID`) and the browser publish page
//! (`GET /FEED/publish`), under the same access rules and credentials as pushes to the feed.

use std::net::SocketAddr;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};

use super::whep::{body_text, created, error_reply, options, with_cors};
use super::{Reply, State, refused, respond, text};
use crate::auth::Login;

/// Handles `FEED/whip` (`session` `None`) and `FEED/whip/ID`.
pub(super) async fn handle(
    state: &State,
    request: Request<Incoming>,
    feed: &str,
    session: Option<&str>,
    local: SocketAddr,
    peer: SocketAddr,
) -> Reply {
    let method = request.method().clone();
    let allow = if session.is_some() {
        "DELETE, OPTIONS"
    } else {
        "POST, OPTIONS"
    };
    if method == Method::OPTIONS {
        return with_cors(options(allow, "content-type, authorization"));
    }
    let user = match authorize(state, feed, &request, peer) {
        Ok(user) => user,
        Err(refusal) => return with_cors(*refusal),
    };
    let reply = match (method, session) {
        (Method::POST, None) => publish(state, request, feed, user, local, peer).await,
        (Method::DELETE, Some(id)) => match state.webrtc.end_publisher(feed, id) {
            Ok(()) => text(StatusCode::OK, "publishing ended"),
            Err(err) => error_reply(&err),
        },
        (method, _) => {
            let mut reply = text(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not used on a WHIP resource"),
            );
            reply
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
            reply
        }
    };
    with_cors(reply)
}

/// The feed's route, its access list and publish credentials: the user they name, or the
/// refusal.
fn authorize(
    state: &State,
    feed: &str,
    request: &Request<Incoming>,
    peer: SocketAddr,
) -> Result<Option<String>, Box<Reply>> {
    let Some(stream) = state.router.feed(feed) else {
        return Err(Box::new(text(
            StatusCode::NOT_FOUND,
            format!("no push route takes the feed `{feed}`"),
        )));
    };
    if let Some(forbidden) = super::forbidden_by_route(state, stream.name(), peer) {
        return Err(Box::new(forbidden));
    }
    let login = Login {
        peer: peer.ip(),
        header: request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
        method: request.method().as_str(),
        digest: None,
        now: Instant::now(),
    };
    let policy = state.router.policy(stream.name());
    state
        .auth
        .authorize(policy.as_deref(), true, &login)
        .map_err(|err| {
            tracing::info!(%peer, feed, "WHIP request refused: {err}");
            Box::new(refused(
                &err,
                &format!("credentials needed to publish to `{feed}`"),
            ))
        })
}

async fn publish(
    state: &State,
    request: Request<Incoming>,
    feed: &str,
    user: Option<String>,
    local: SocketAddr,
    peer: SocketAddr,
) -> Reply {
    if state.clients.draining() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down; publish to another instance",
        );
    }
    let sdp = match body_text(request, "application/sdp").await {
        Ok(sdp) => sdp,
        Err(reply) => return reply,
    };
    match state.webrtc.publish(feed, &sdp, local, peer, user).await {
        Ok(answer) => {
            tracing::info!(%peer, feed, session = %answer.id, "WHIP publisher connecting");
            created(answer.sdp, &format!("/{feed}/whip/{}", answer.id))
        }
        Err(err) => {
            tracing::info!(%peer, feed, "WHIP offer refused: {err}");
            error_reply(&err)
        }
    }
}

/// `GET /FEED/publish`: the page that publishes a camera, microphone or screen to `feed`.
pub(super) fn page(state: &State, feed: &str, peer: SocketAddr) -> Reply {
    let Some(stream) = state.router.feed(feed) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("no push route takes the feed `{feed}`"),
        );
    };
    if let Some(forbidden) = super::forbidden_by_route(state, stream.name(), peer) {
        return forbidden;
    }
    // Feed names are letters, digits, `-`, `_` and `.` (the config checks): safe in HTML and JS.
    let port = state.rtsp.local_addr().map_or(0, |a| a.port());
    let page = include_str!("publish.html")
        .replace("ROUTE_NAME", feed)
        .replace("RTSP_PORT", &port.to_string());
    respond(StatusCode::OK, "text/html; charset=utf-8", page)
}
