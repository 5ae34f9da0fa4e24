//! The RTSP protocol core of one control connection: requests in, responses and actions out.
//!
//! [`Connection::handle`] touches no socket and reads no clock (time is passed in); the server edge
//! carries out the [`Action`] it returns (start or stop sending, close).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtsp_types::headers::{self, Transports};
use rtsp_types::{Method, Request, Response, StatusCode, Url, Version};

use super::publish::{PublishError, Publishing};
use super::sdp;
use super::transport::{TrackTransport, choose_record_transport, choose_transport};
use crate::auth::{self, Auth, AuthError, Login};
use crate::hub::{MediaInfo, Reader, Revocation, SourceState, Stream};
use crate::router::RouterHandle;
use crate::sessions::{ClientLimit, ClientSlot, Full};

/// The session timeout we enforce on sessions without keep-alives or RTCP (TCP readers that are
/// playing show life by taking the bytes sent to them, which the egress holds to a deadline).
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(65);
/// A session must start playing (a publisher recording) within this long of its SETUP (ANNOUNCE):
/// every real client sends PLAY or RECORD right away, and until then the session holds a route
/// (a publisher's claim) or server state for nothing.
pub const SESSION_START_TIMEOUT: Duration = Duration::from_secs(10);
/// The timeout we announce: a few seconds less, so clients' keep-alives arrive in time.
const ANNOUNCED_TIMEOUT_SECS: u64 = 60;
const PUBLIC_METHODS: &str =
    "OPTIONS, DESCRIBE, SETUP, PLAY, PAUSE, TEARDOWN, GET_PARAMETER, ANNOUNCE, RECORD";
const SERVER: &str = concat!("wasmcast/", env!("CARGO_PKG_VERSION"));

/// What the server shares with every connection.
pub struct Context<'a> {
    pub router: &'a RouterHandle,
    pub auth: &'a Auth,
    pub clients: &'a Arc<ClientLimit>,
    /// The server's RTP and RTCP ports for UDP transport.
    pub udp_ports: (u16, u16),
    pub peer: SocketAddr,
    pub local: SocketAddr,
}

/// A reader to start sending to.
pub struct Play {
    pub reader: Reader,
    /// Indexed by track; `None` for tracks the client did not set up.
    pub tracks: Vec<Option<TrackTransport>>,
}

/// What the server edge does after sending the response.
pub enum Action {
    None,
    Play(Play),
    /// Stop sending (PAUSE or TEARDOWN); the connection stays.
    Stop,
    /// A publisher started recording; its UDP tracks send from these addresses (RTP, RTCP, track).
    Record(Vec<(SocketAddr, SocketAddr, usize)>),
}

pub struct Reply {
    pub response: Response<Vec<u8>>,
    pub action: Action,
}

struct SetupTrack {
    transport: TrackTransport,
    /// The control URL the client used, echoed in RTP-Info.
    url: String,
}

struct Session {
    id: String,
    stream: Arc<Stream>,
    media: Arc<MediaInfo>,
    tracks: Vec<Option<SetupTrack>>,
    playing: bool,
    last_activity: Instant,
    /// When the first SETUP came, until the first PLAY.
    setup_at: Option<Instant>,
    /// The session's place under `max_clients`, taken at its first PLAY.
    slot: Option<ClientSlot>,
}

impl Session {
    fn is_udp(&self) -> bool {
        self.tracks
            .iter()
            .flatten()
            .any(|t| matches!(t.transport, TrackTransport::Udp { .. }))
    }

    /// Why the session is over at `now`, if it is.
    fn expiry(&self, now: Instant) -> Option<&'static str> {
        if self
            .setup_at
            .is_some_and(|at| now.saturating_duration_since(at) > SESSION_START_TIMEOUT)
        {
            return Some("no PLAY in time after SETUP");
        }
        // A TCP reader that is playing shows life by taking its bytes (the egress deadline).
        let tcp_playing = self.playing && !self.is_udp();
        (!tcp_playing && now.saturating_duration_since(self.last_activity) > SESSION_TIMEOUT)
            .then_some("no request or RTCP for the session timeout")
    }
}

/// Protocol state of one control connection (and the session it holds, if any).
#[derive(Default)]
pub struct Connection {
    session: Option<Session>,
    publishing: Option<Publishing>,
    /// The nonce of this connection's Digest challenges.
    nonce: Option<Nonce>,
    /// The last refusal was an answer to an expired nonce: the next challenge says `stale=true`.
    stale: bool,
    /// Credentials refused so far on this connection.
    auth_failures: u32,
}

/// A Digest nonce: random, good for [`NONCE_LIFETIME`], with the highest nonce count seen.
struct Nonce {
    value: String,
    issued: Instant,
    last_nc: std::sync::atomic::AtomicU32,
}

impl Nonce {
    fn new(now: Instant) -> Nonce {
        Nonce {
            value: format!("{:032x}", rand::random::<u128>()),
            issued: now,
            last_nc: std::sync::atomic::AtomicU32::new(0),
        }
    }
}

/// How long a Digest nonce is good for: a client logs in within seconds of the challenge, and an
/// answer seen on the wire is worth nothing after this.
pub const NONCE_LIFETIME: Duration = Duration::from_secs(300);

/// Refused credentials a connection may send before it gets only 403.
const MAX_AUTH_FAILURES: u32 = 5;

/// An error response: status and a reason for people.
struct Refusal(StatusCode, String);

impl Refusal {
    fn new(status: StatusCode, reason: impl Into<String>) -> Refusal {
        Refusal(status, reason.into())
    }
}

impl Connection {
    /// The route this connection's session reads, if any.
    pub fn route(&self) -> Option<&str> {
        match (&self.session, &self.publishing) {
            (Some(session), _) => Some(session.stream.name()),
            (None, Some(publishing)) => Some(publishing.route()),
            (None, None) => None,
        }
    }

    /// What this connection publishes, if it is a publisher.
    pub fn publishing(&self) -> Option<String> {
        self.publishing.as_ref().map(Publishing::describe)
    }

    /// What tells this connection's publisher that it lost its route, if it publishes.
    pub fn revocation(&self) -> Option<Revocation> {
        self.publishing.as_ref().map(Publishing::revocation)
    }

    /// The session id, if any.
    pub fn session_id(&self) -> Option<&str> {
        match (&self.session, &self.publishing) {
            (Some(session), _) => Some(session.id.as_str()),
            (None, Some(publishing)) => Some(publishing.session_id.as_str()),
            (None, None) => None,
        }
    }

    /// Records liveness that did not come as a request (RTCP from the client).
    pub fn keep_alive(&mut self, now: Instant) {
        if let Some(session) = &mut self.session {
            session.last_activity = now;
        }
        if let Some(publishing) = &mut self.publishing {
            publishing.last_activity = now;
        }
    }

    /// Why this connection's session is over at `now`, if it is: it did not start in time, it
    /// showed no life for the session timeout, or (a publisher) it sends under the floor rate.
    pub fn expiry(&mut self, now: Instant) -> Option<String> {
        if let Some(session) = &self.session {
            return session.expiry(now).map(str::to_owned);
        }
        let publishing = self.publishing.as_mut()?;
        if !publishing.is_recording() {
            return (now.saturating_duration_since(publishing.announced_at)
                > SESSION_START_TIMEOUT)
                .then(|| "no RECORD in time after ANNOUNCE".to_owned());
        }
        if publishing.has_udp()
            && now.saturating_duration_since(publishing.last_activity) > SESSION_TIMEOUT
        {
            return Some("no RTP, RTCP or request for the session timeout".to_owned());
        }
        publishing
            .check_rate(now)
            .err()
            .map(|slow| slow.to_string())
    }

    /// Handles one request.
    pub fn handle(&mut self, request: &Request<Vec<u8>>, ctx: &Context<'_>, now: Instant) -> Reply {
        let Some(cseq) = cseq(request) else {
            return bad_request("missing or invalid CSeq").into_reply();
        };
        if let Err(refusal) = self.check_session_header(request) {
            return self.refuse(&cseq, refusal);
        }
        self.keep_alive(now);
        let result = match request.method() {
            Method::Options => Ok(self
                .ok(&cseq)
                .header(headers::PUBLIC, PUBLIC_METHODS)
                .build(Vec::new())
                .into_reply()),
            Method::Describe => self.describe(request, ctx, &cseq, now),
            Method::Setup if self.publishing.is_some() => self.setup_record(request, ctx, &cseq),
            Method::Setup => self.setup(request, ctx, &cseq, now),
            Method::Announce => self.announce(request, ctx, &cseq, now),
            Method::Record => self.record(&cseq, now),
            Method::Play => self.play(ctx, &cseq, now),
            Method::Pause => self.pause(&cseq),
            Method::Teardown => {
                let response = self.ok(&cseq).build(Vec::new());
                self.session = None;
                self.publishing = None;
                Ok(Reply {
                    response,
                    action: Action::Stop,
                })
            }
            Method::GetParameter | Method::SetParameter => {
                Ok(self.ok(&cseq).build(Vec::new()).into_reply())
            }
            _ => Err(Refusal::new(StatusCode::NotImplemented, "Not Implemented")),
        };
        result.unwrap_or_else(|refusal| self.refuse(&cseq, refusal))
    }

    fn check_session_header(&self, request: &Request<Vec<u8>>) -> Result<(), Refusal> {
        let Some(value) = request.header(&headers::SESSION) else {
            return Ok(());
        };
        let id = value.as_str().split(';').next().unwrap_or("").trim();
        if self.session_id() == Some(id) {
            Ok(())
        } else {
            Err(Refusal::new(
                StatusCode::SessionNotFound,
                "Session Not Found",
            ))
        }
    }

    fn ok(&self, cseq: &str) -> rtsp_types::ResponseBuilder {
        self.with_session(base_response(StatusCode::Ok, Some(cseq)).reason_phrase("OK"))
    }

    fn with_session(&self, builder: rtsp_types::ResponseBuilder) -> rtsp_types::ResponseBuilder {
        match self.session_id() {
            Some(id) => builder.header(
                headers::SESSION,
                format!("{id};timeout={ANNOUNCED_TIMEOUT_SECS}"),
            ),
            None => builder,
        }
    }

    fn refuse(&self, cseq: &str, Refusal(status, reason): Refusal) -> Reply {
        let mut builder =
            self.with_session(base_response(status, Some(cseq)).reason_phrase(reason));
        if status == StatusCode::MethodNotAllowed {
            builder = builder.header(headers::ALLOW, PUBLIC_METHODS);
        }
        if status == StatusCode::Unauthorized {
            let nonce = self.nonce.as_ref().map_or("", |n| n.value.as_str());
            builder = builder.header(
                headers::WWW_AUTHENTICATE,
                auth::challenge(nonce, self.stale),
            );
        }
        Reply {
            response: builder.build(Vec::new()),
            action: Action::None,
        }
    }
}

trait IntoReply {
    fn into_reply(self) -> Reply;
}

impl IntoReply for Response<Vec<u8>> {
    fn into_reply(self) -> Reply {
        Reply {
            response: self,
            action: Action::None,
        }
    }
}

fn base_response(status: StatusCode, cseq: Option<&str>) -> rtsp_types::ResponseBuilder {
    let builder = Response::builder(Version::V1_0, status).header(headers::SERVER, SERVER);
    match cseq {
        Some(cseq) => builder.header(headers::CSEQ, cseq),
        None => builder,
    }
}

/// `503` to a request the server will not serve now, and `why`: one past its connection's
/// allowance of requests (the connection is then closed), or one for a route it may not make.
pub fn service_unavailable(request: &Request<Vec<u8>>, why: &str) -> Response<Vec<u8>> {
    base_response(StatusCode::ServiceUnavailable, cseq(request).as_deref())
        .reason_phrase(format!("Service Unavailable ({why})"))
        .build(Vec::new())
}

/// The response to a request so broken that it cannot be answered in order (no CSeq is known).
pub fn bad_request(reason: &str) -> Response<Vec<u8>> {
    base_response(StatusCode::BadRequest, None)
        .reason_phrase(format!("Bad Request ({reason})"))
        .build(Vec::new())
}

fn cseq(request: &Request<Vec<u8>>) -> Option<String> {
    let value = request.header(&headers::CSEQ)?.as_str().trim();
    value.parse::<u32>().ok()?;
    Some(value.to_owned())
}

fn live_media(stream: &Stream) -> Result<Arc<MediaInfo>, Refusal> {
    match stream.state() {
        SourceState::Live => stream.media().ok_or_else(|| unavailable(stream)),
        _ => Err(unavailable(stream)),
    }
}

fn unavailable(stream: &Stream) -> Refusal {
    let why = match stream.state() {
        SourceState::Waiting | SourceState::Live => "its source has no media yet".to_owned(),
        SourceState::Ended => "its source has ended".to_owned(),
        SourceState::Failed(reason) => format!("its source failed: {reason}"),
    };
    Refusal::new(
        StatusCode::ServiceUnavailable,
        format!("Service Unavailable (route `{}`: {why})", stream.name()),
    )
}

fn request_url(request: &Request<Vec<u8>>) -> Result<&Url, Refusal> {
    request
        .request_uri()
        .ok_or_else(|| Refusal::new(StatusCode::BadRequest, "Bad Request (no URL)"))
}

fn named_route(url: &Url) -> Result<&str, Refusal> {
    route_name(url)
        .ok_or_else(|| Refusal::new(StatusCode::NotFound, "Not Found (no route in the URL)"))
}

/// The route a URL names: its first path segment.
fn route_name(url: &Url) -> Option<&str> {
    url.path_segments()?.find(|segment| !segment.is_empty())
}

/// The track a SETUP URL names with `trackID=N` as its last part, in the path (`/route/trackID=0`) or
/// after a query (`/route?x=y/trackID=0`, as ffmpeg joins them).
fn track_id(url: &Url) -> Option<usize> {
    let tail = url.as_str().rsplit('/').next()?;
    tail.strip_prefix("trackID=")?.parse().ok()
}

/// 16 hex digits from a random 64-bit number: unguessable, and without dashes (some clients choke).
fn session_id() -> String {
    format!("{:016X}", rand::random::<u64>())
}

mod access;
mod play;
mod record;
#[cfg(test)]
mod tests;
