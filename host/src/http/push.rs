//! `POST|PUT /FEED`: an MPEG-TS push from ffmpeg into the route that takes the feed, under the
//! route's access rules and publish claim, with one access-log line when it ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::StatusCode;
use hyper::body::Incoming;

use super::{Reply, State, refused, text};
use crate::auth::Login;
use crate::hub::Revoked;
use crate::sessions::{EndedBy, SessionKind};
use crate::sources::{IngestError, PublishRate, TooFast, TooSlow, TsIngest};

/// A publisher that sends nothing for this long is taken as gone.
const PUSH_STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Takes one MPEG-TS push into the route that takes `feed`.
pub(super) async fn push(
    state: &State,
    feed: &str,
    authorization: Option<&str>,
    mut body: Incoming,
    peer: SocketAddr,
) -> Reply {
    if state.clients.draining() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down; push to another instance",
        );
    }
    let Some(stream) = state.router.feed(feed) else {
        tracing::info!(%peer, feed, "push refused: no such feed");
        return text(
            StatusCode::NOT_FOUND,
            format!("no push route takes the feed `{feed}`"),
        );
    };
    let policy = state.router.policy(stream.name());
    if !state.auth.permits(peer.ip(), policy.as_deref()) {
        tracing::info!(%peer, feed, "push refused by the route's access list");
        return text(
            StatusCode::FORBIDDEN,
            "forbidden by the route's access list",
        );
    }
    let login = Login {
        peer: peer.ip(),
        header: authorization,
        method: "POST",
        digest: None,
        now: Instant::now(),
    };
    let user = match state.auth.authorize(policy.as_deref(), true, &login) {
        Ok(user) => user,
        Err(err) => {
            tracing::info!(%peer, feed, "push refused: {err}");
            return refused(&err, &format!("credentials needed to push to `{feed}`"));
        }
    };
    let claim = match stream.claim_as(user) {
        Ok(claim) => claim,
        Err(busy) => {
            tracing::info!(%peer, feed, "push refused: {busy}");
            return text(
                StatusCode::CONFLICT,
                format!("{busy}; one publisher per feed"),
            );
        }
    };
    let started = Instant::now();
    let registration = state
        .sessions
        .register(None, SessionKind::HttpPush, stream.name(), peer);
    let revocation = claim.revocation();
    let mut ingest = TsIngest::new(Arc::clone(&stream), claim);
    let mut bytes = 0u64;
    let mut rate = PublishRate::new(Instant::now());
    let outcome = loop {
        let frame = tokio::select! {
            frame = tokio::time::timeout(PUSH_STALL_TIMEOUT, body.frame()) => frame,
            by = registration.ended() => break Outcome::Stopped(by),
            reason = revocation.revoked() => break Outcome::Revoked(reason),
        };
        match frame {
            Err(_) => break Outcome::Stalled,
            Ok(None) => break Outcome::Ended,
            // ffmpeg often closes the socket right after the last chunk: that is the end.
            Ok(Some(Err(_))) => break Outcome::Ended,
            Ok(Some(Ok(frame))) => {
                let Some(data) = frame.data_ref() else {
                    continue;
                };
                bytes += data.len() as u64;
                let now = Instant::now();
                if let Err(fast) = rate.add(data.len(), now) {
                    break Outcome::TooFast(fast);
                }
                if let Err(err) = ingest.push(data, now) {
                    break Outcome::Refused(err);
                }
                if let Err(slow) = rate.check(now) {
                    break Outcome::TooSlow(slow);
                }
            }
        }
    };
    let outcome = match (outcome, ingest.finish(Instant::now())) {
        (Outcome::Ended, Err(err)) if bytes > 0 => Outcome::Refused(err),
        (outcome, _) => outcome,
    };
    let (status, message) = match &outcome {
        Outcome::Ended => (StatusCode::OK, "push ended".to_owned()),
        Outcome::Stopped(by) => (StatusCode::GONE, by.to_string()),
        Outcome::Stalled => (
            StatusCode::REQUEST_TIMEOUT,
            format!("no data for {} s", PUSH_STALL_TIMEOUT.as_secs()),
        ),
        Outcome::Refused(err @ IngestError::NotTs(_)) => (StatusCode::BAD_REQUEST, err.to_string()),
        Outcome::Refused(err @ IngestError::NoSupportedStream(_)) => {
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, err.to_string())
        }
        Outcome::Refused(err @ IngestError::OverBudget(_)) => {
            (StatusCode::PAYLOAD_TOO_LARGE, err.to_string())
        }
        Outcome::TooSlow(slow) => (StatusCode::REQUEST_TIMEOUT, slow.to_string()),
        Outcome::TooFast(fast) => (StatusCode::TOO_MANY_REQUESTS, fast.to_string()),
        Outcome::Revoked(reason) => (
            match reason {
                Revoked::NotOnPublishList => StatusCode::FORBIDDEN,
                Revoked::RouteRemoved | Revoked::SourceChanged => StatusCode::GONE,
            },
            format!("push ended by a config change: {reason}"),
        ),
    };
    tracing::info!(
        target: "wasmcast::access",
        %peer,
        feed,
        route = stream.name(),
        tracks = ingest.describe(),
        status = status.as_u16(),
        bytes,
        units = ingest.units(),
        seconds = started.elapsed().as_secs_f32(),
        "push: {message}"
    );
    text(status, message)
}

enum Outcome {
    Ended,
    Stopped(EndedBy),
    Stalled,
    TooSlow(TooSlow),
    TooFast(TooFast),
    Revoked(Revoked),
    Refused(IngestError),
}
