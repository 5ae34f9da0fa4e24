//! WebRTC: WHEP sessions that play a route in a browser, and WHIP publishers (`publish`).
//!
//! In: a browser's SDP offer for a route (`POST /ROUTE/whep`). Out: an SDP answer, then the route's
//! H.264 video and its audio sent to the browser, reusing the RTP packets the route's hub made
//! once for every reader: only the SSRC and payload type are rewritten per viewer. Opus goes as
//! it is; AAC goes through the route's Opus rendition (`opus`). A viewer counts
//! toward `max_clients`, appears in the session registry (so it can be listed and kicked), starts on
//! a keyframe, waits for the next keyframe when the browser asks for one (PLI/FIR), and is reaped by
//! ICE timeouts when its network dies or when its route goes away.
//!
//! Here: the registry of sessions ([`WebRtc`]: offer, trickle, end); `negotiate` turns an offer
//! into a peer connection, `viewer` drives a viewer's (the `rtc` crate's sans-IO core, one task
//! per viewer woken once per access unit) while the webrtc crate drives a publisher's, `offer`
//! reads what the browser can take, `mux` carries every session on one UDP and one TCP port, and
//! `network` announces those ports.

#[cfg(any(fuzzing, test))]
pub mod fuzz;
mod ice_tcp;
mod mux;
mod negotiate;
mod network;
mod offer;
mod opus;
mod publish;
mod unconnected;
mod viewer;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCIceCandidateInit, RTCIceGatheringState, RTCPeerConnectionState, RTCSessionDescription,
    Registry, SettingEngine,
};

use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RtpCodecKind,
};
use rtc::shared::marshal::Unmarshal;

use crate::config::ServerConfig;
use crate::hub::{SourceState, Stream};
use crate::listen::{Allowance, Budget, ConnectionGate};
use crate::media::Codec;
use crate::router::RouterHandle;
use crate::sessions::{
    ClientLimit, ClientSlot, EndedBy, Full, Registration, SessionKind, Sessions,
};

pub use mux::Error as BindError;
use mux::{MuxLease, PublisherRuntime};
use negotiate::{Events, ViewerConnection, plan, viewer_connection};
use network::IceNetwork;
pub use offer::OfferedVideo;
pub use unconnected::TooManyUnconnected;
use viewer::{Outgoing, Viewer};

/// How long an offer waits for an on-demand route whose source has not produced media yet.
const SOURCE_START_TIMEOUT: Duration = Duration::from_secs(5);
/// How long gathering our (host) candidates may take before the answer goes out as it is.
const GATHERING_TIMEOUT: Duration = Duration::from_secs(3);
/// A viewer that does not connect within this time after its answer is dropped.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// ICE: no traffic for this long makes a viewer disconnected, then failed (and reaped).
const ICE_DISCONNECTED: Duration = Duration::from_secs(4);
const ICE_FAILED: Duration = Duration::from_secs(8);
const ICE_KEEPALIVE: Duration = Duration::from_secs(1);

/// Why a WHEP request was refused; each maps to an HTTP status with the reason as its body.
#[derive(Debug, thiserror::Error)]
pub enum WhepError {
    #[error("no route `{0}`")]
    NoRoute(String),
    #[error("route `{0}` has no media now: {1}")]
    NotLive(String, String),
    #[error("the offer is not usable SDP: {0}")]
    BadOffer(String),
    #[error("{0}")]
    Unplayable(String),
    #[error("the server is full: {0}")]
    Full(#[from] crate::sessions::Full),
    #[error("too many viewers waiting to connect: {0}")]
    Unconnected(#[from] TooManyUnconnected),
    #[error("{0}")]
    Route(#[from] crate::router::RouterError),
    #[error("the route has a publisher: {0}")]
    Busy(String),
    #[error("no WHEP session `{0}` on this route")]
    NoSession(String),
    #[error("WebRTC failed: {0}")]
    Internal(String),
}

/// What a successful offer gets back.
#[derive(Debug)]
pub struct Answer {
    /// The session's id: its resource is `/ROUTE/whep/ID`.
    pub id: String,
    pub sdp: String,
}

/// The WebRTC side of the server.
#[derive(Clone)]
pub struct WebRtc {
    router: RouterHandle,
    sessions: Sessions,
    clients: Arc<ClientLimit>,
    /// Viewers that have their answer and have not connected (and taken a place) yet.
    unconnected: Arc<unconnected::Unconnected>,
    network: IceNetwork,
    peers: Peers,
    /// The Opus renditions of AAC routes that WebRTC viewers watch.
    renditions: Arc<opus::Renditions>,
}

/// The viewers' peer connections by session id.
type Peers = Arc<Mutex<HashMap<String, Peer>>>;

struct Peer {
    control: Control,
    /// Remote candidates added by trickle ICE so far.
    trickled: usize,
}

/// How a session's connection takes trickled candidates.
enum Control {
    /// A viewer's task, which drives its connection.
    Viewer(mpsc::Sender<RTCIceCandidateInit>),
    /// A publisher's connection, which the webrtc crate drives.
    Publisher(Arc<dyn PeerConnection>),
}

/// Remote candidates a viewer may trickle in all: a browser sends a handful per network
/// interface; each one is held (and checked) by the ICE agent for the session's life.
const MAX_TRICKLED_CANDIDATES: usize = 64;

impl WebRtc {
    /// Opens the ports viewers share (`webrtc_udp`, `webrtc_tcp`).
    pub async fn bind(
        router: RouterHandle,
        sessions: Sessions,
        clients: Arc<ClientLimit>,
        server: &ServerConfig,
        gate: Arc<ConnectionGate>,
    ) -> Result<WebRtc, BindError> {
        Ok(WebRtc {
            router,
            sessions,
            clients,
            unconnected: Arc::default(),
            network: IceNetwork::bind(server, gate).await?,
            peers: Arc::default(),
            renditions: Arc::default(),
        })
    }

    /// Answers `offer` for `route`: `local` is the HTTP connection's local address (where the
    /// browser reached us), `peer` the browser's.
    pub async fn offer(
        &self,
        route: &str,
        offer: &str,
        local: SocketAddr,
        peer: SocketAddr,
    ) -> Result<Answer, WhepError> {
        let offered = offer::parse(offer)?;
        // Judged first: a viewer the server is too full for starts no on-demand source and makes
        // no route from a pattern. Its place is taken when it connects (`unconnected`).
        self.clients.admits()?;
        let waiting = self.unconnected.admit(peer.ip())?;
        // An on-demand route's source starts for the viewer, who gets the stream once it runs.
        let stream = self.router.open(route, peer.ip()).await?;
        if self.router.demand(route).is_some() {
            stream.wait_while_waiting(SOURCE_START_TIMEOUT).await;
        }
        let mut plan = plan(&stream, &offered)?;
        let rendition = match plan.audio {
            Some((track, _)) if plan.audio_from_aac => match self.renditions.get(&stream, track) {
                Ok(rendition) => Some(rendition),
                Err(err) => {
                    tracing::info!(route, "the viewer gets no sound: {err}");
                    plan.audio = None;
                    None
                }
            },
            _ => None,
        };

        let credentials = IceCredentials::random();
        let (lease, ports) = self.network.ports(credentials.ufrag.clone());
        let (udp_local, tcp_local) = self.network.viewer_addrs(local);
        let ViewerConnection {
            pc,
            video,
            audio,
            sdp,
        } = viewer_connection(&plan, offer, credentials, udp_local, tcp_local)?;
        let sdp = self.network.announce(&sdp);
        let (audio, opus) = match rendition {
            Some(rendition) => (None, audio.map(|(_, outgoing)| (outgoing, rendition))),
            None => (audio, None),
        };

        let registration = self
            .sessions
            .register(None, SessionKind::WebRtcViewer, route, peer);
        let id = registration.id().to_owned();
        let (trickle, candidates) = mpsc::channel(MAX_TRICKLED_CANDIDATES);
        self.lock().insert(
            id.clone(),
            Peer {
                control: Control::Viewer(trickle),
                trickled: 0,
            },
        );
        let viewer = Viewer {
            id: id.clone(),
            route: route.to_owned(),
            peer,
            stream,
            pc,
            ports,
            udp_local,
            tcp_local,
            video_track: plan.video_track,
            video,
            audio,
            opus,
            candidates,
            run: Vec::new(),
            inbound: Budget::new(viewer::INBOUND_PACKETS, Instant::now()),
            clients: Arc::clone(&self.clients),
            place: viewer::Place::Waiting { _counted: waiting },
            _mux: lease,
            peers: Arc::clone(&self.peers),
        };
        tokio::spawn(viewer.run(registration));
        Ok(Answer { id, sdp })
    }

    /// Ends session `id` of `route` (`DELETE` on its resource).
    pub fn end(&self, route: &str, id: &str) -> Result<(), WhepError> {
        let on_route = self
            .sessions
            .list()
            .iter()
            .any(|s| s.id == id && s.route == route && s.kind == SessionKind::WebRtcViewer);
        if on_route && self.sessions.end(id, EndedBy::Client) {
            Ok(())
        } else {
            Err(WhepError::NoSession(id.to_owned()))
        }
    }

    /// What the Opus renditions of AAC routes cost.
    pub fn opus_stats(&self) -> opus::OpusStats {
        self.renditions.stats()
    }

    /// Ends publisher `id` of the route that takes `feed` (`DELETE` on its WHIP resource).
    pub fn end_publisher(&self, feed: &str, id: &str) -> Result<(), WhepError> {
        let route = self.router.feed(feed).map(|s| s.name().to_owned());
        let on_route = self.sessions.list().iter().any(|s| {
            s.id == id && Some(&s.route) == route.as_ref() && s.kind == SessionKind::WebRtcPublisher
        });
        if on_route && self.sessions.end(id, EndedBy::Client) {
            Ok(())
        } else {
            Err(WhepError::NoSession(id.to_owned()))
        }
    }

    /// Adds the candidates of a trickle-ICE fragment (`PATCH` on a session's resource).
    pub async fn trickle(&self, route: &str, id: &str, fragment: &str) -> Result<(), WhepError> {
        let on_route = self
            .sessions
            .list()
            .iter()
            .any(|s| s.id == id && s.route == route);
        let candidates = fragment
            .lines()
            .filter(|line| line.trim().starts_with("a=candidate:"))
            .count();
        let control = {
            let mut peers = self.lock();
            let peer = peers
                .get_mut(id)
                .filter(|_| on_route)
                .ok_or_else(|| WhepError::NoSession(id.to_owned()))?;
            if peer.trickled + candidates > MAX_TRICKLED_CANDIDATES {
                return Err(WhepError::BadOffer(format!(
                    "more than {MAX_TRICKLED_CANDIDATES} trickled candidates for one session"
                )));
            }
            peer.trickled += candidates;
            match &peer.control {
                Control::Viewer(trickle) => Control::Viewer(trickle.clone()),
                Control::Publisher(pc) => Control::Publisher(Arc::clone(pc)),
            }
        };
        let mut mid = None;
        for line in fragment.lines().map(str::trim) {
            if let Some(value) = line.strip_prefix("a=mid:") {
                mid = Some(value.to_owned());
            } else if let Some(candidate) = line.strip_prefix("a=") {
                if !candidate.starts_with("candidate:") {
                    continue;
                }
                let init = RTCIceCandidateInit {
                    candidate: candidate.to_owned(),
                    sdp_mid: mid.clone(),
                    ..Default::default()
                };
                let bad = |err: String| WhepError::BadOffer(format!("bad candidate: {err}"));
                match &control {
                    Control::Viewer(trickle) => {
                        let value = candidate.trim_start_matches("candidate:");
                        rtc::ice::candidate::unmarshal_candidate(value)
                            .map_err(|err| bad(err.to_string()))?;
                        // Room for every candidate the session may trickle: the count is
                        // checked above.
                        let _ = trickle.try_send(init);
                    }
                    Control::Publisher(pc) => pc
                        .add_ice_candidate(init)
                        .await
                        .map_err(|err| bad(err.to_string()))?,
                }
            }
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Peer>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A viewer connection's ICE username fragment and password: ours to choose, so that the mux
/// can tell which viewer a binding request is for. Random, of the lengths browsers use.
pub(super) struct IceCredentials {
    pub(super) ufrag: String,
    pub(super) password: String,
}

impl IceCredentials {
    fn random() -> IceCredentials {
        let text = |len: usize| {
            use rand::Rng;
            use rand::distr::Alphanumeric;
            rand::rng()
                .sample_iter(Alphanumeric)
                .take(len)
                .map(char::from)
                .collect::<String>()
        };
        IceCredentials {
            ufrag: text(16),
            password: text(32),
        }
    }
}

/// Closes publisher `id`'s peer connection and forgets it.
async fn forget(peers: &Peers, id: &str, pc: &Arc<dyn PeerConnection>) {
    if let Err(err) = pc.close().await {
        tracing::debug!(session = %id, "closing a peer connection: {err}");
    }
    peers.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
}

fn internal(err: impl std::fmt::Display) -> WhepError {
    WhepError::Internal(err.to_string())
}
