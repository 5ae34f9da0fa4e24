//! WebRTC egress: WHEP sessions that play a route in a browser.
//!
//! In: a browser's SDP offer for a route (`POST /ROUTE/whep`). Out: an SDP answer, then the route's
//! H.264 video (and Opus audio) sent to the browser, reusing the RTP packets the route's hub made
//! once for every reader: only the SSRC and payload type are rewritten per viewer. A viewer counts
//! toward `max_clients`, appears in the session registry (so it can be listed and kicked), starts on
//! a keyframe, waits for the next keyframe when the browser asks for one (PLI/FIR), and is reaped by
//! ICE timeouts when its network dies or when its route goes away.

#[cfg(any(fuzzing, test))]
pub mod fuzz;
mod network;
mod offer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCIceCandidateInit, RTCIceGatheringState, RTCPeerConnectionState, RTCSessionDescription,
    Registry, SettingEngine, register_default_interceptors,
};
use webrtc::rtp_transceiver::RtpSender;

use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::shared::marshal::Unmarshal;

use crate::config::ServerConfig;
use crate::hub::{SourceState, Stream};
use crate::media::Codec;
use crate::router::RouterHandle;
use crate::sessions::{ClientLimit, ClientSlot, Registration, SessionKind, Sessions};

pub use network::NoFreePort;
use network::{IceNetwork, PortLease};
pub use offer::OfferedVideo;

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
    #[error("the server is full: {0}")]
    NoPort(#[from] NoFreePort),
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
    network: IceNetwork,
    peers: Peers,
}

/// The viewers' peer connections by session id.
type Peers = Arc<Mutex<HashMap<String, Peer>>>;

struct Peer {
    pc: Arc<dyn PeerConnection>,
    /// Remote candidates added by trickle ICE so far.
    trickled: usize,
}

/// Remote candidates a viewer may trickle in all: a browser sends a handful per network
/// interface; each one is held (and checked) by the ICE agent for the session's life.
const MAX_TRICKLED_CANDIDATES: usize = 64;

impl WebRtc {
    pub fn new(
        router: RouterHandle,
        sessions: Sessions,
        clients: Arc<ClientLimit>,
        server: &ServerConfig,
    ) -> WebRtc {
        WebRtc {
            router,
            sessions,
            clients,
            network: IceNetwork::new(server),
            peers: Arc::default(),
        }
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
        let stream = self
            .router
            .stream(route)
            .ok_or_else(|| WhepError::NoRoute(route.to_owned()))?;
        let plan = plan(&stream, &offered)?;
        let slot = self.clients.acquire()?;

        let ip = self.network.bind_ip(local);
        // A port found free can be taken by another program before the connection binds it;
        // then the next one is tried.
        let mut attempts = 0;
        let (pc, events, port) = loop {
            let port = self.network.lease(ip)?;
            match self.connect(&plan, SocketAddr::new(ip, port.port())).await {
                Ok((pc, events)) => break (pc, events, port),
                Err(err) if port.port() == 0 || attempts == 2 => return Err(err),
                Err(err) => tracing::debug!(route, port = port.port(), "retrying: {err}"),
            }
            attempts += 1;
        };
        let negotiated = Self::negotiate(&pc, &plan, offer, &events).await;
        let Negotiated {
            video,
            video_sender,
            audio,
            sdp,
        } = match negotiated {
            Ok(parts) => parts,
            Err(err) => {
                // The connection's driver holds the viewer's socket until it is closed.
                if let Err(close) = pc.close().await {
                    tracing::debug!(route, "closing a refused WebRTC connection: {close}");
                }
                return Err(err);
            }
        };
        let sdp = self.network.announce(&sdp);

        let registration = self
            .sessions
            .register(None, SessionKind::WebRtcViewer, route, peer);
        let id = registration.id().to_owned();
        self.lock().insert(
            id.clone(),
            Peer {
                pc: Arc::clone(&pc),
                trickled: 0,
            },
        );
        let viewer = Viewer {
            id: id.clone(),
            route: route.to_owned(),
            peer,
            stream,
            pc,
            events,
            video_track: plan.video_track,
            video,
            video_sender,
            audio,
            registration,
            _slot: slot,
            _port: port,
            peers: Arc::clone(&self.peers),
        };
        tokio::spawn(viewer.run());
        Ok(Answer { id, sdp })
    }

    /// A peer connection for `plan` with its socket bound to `bind`.
    async fn connect(
        &self,
        plan: &Plan,
        bind: SocketAddr,
    ) -> Result<(Arc<dyn PeerConnection>, Events), WhepError> {
        let (events, handler) = Events::new();
        let mut media_engine = MediaEngine::default();
        media_engine
            .register_codec(plan.video.clone(), RtpCodecKind::Video)
            .map_err(internal)?;
        if let Some((_, audio)) = &plan.audio {
            media_engine
                .register_codec(audio.clone(), RtpCodecKind::Audio)
                .map_err(internal)?;
        }
        let registry =
            register_default_interceptors(Registry::new(), &mut media_engine).map_err(internal)?;
        // ICE lite, as servers with known addresses are: the browser's checks find the path and
        // media goes back where they came from, which behind a NAT is the only way that works.
        let settings: SettingEngine = SettingEngineBuilder::new()
            .with_lite(true)
            .with_ice_timeouts(
                Some(ICE_DISCONNECTED),
                Some(ICE_FAILED),
                Some(ICE_KEEPALIVE),
            )
            .build();
        let pc = PeerConnectionBuilder::new()
            .with_media_engine(media_engine)
            .with_setting_engine(settings)
            .with_interceptor_registry(registry)
            .with_handler(handler)
            .with_udp_addrs(vec![bind])
            .build()
            .await
            .map_err(internal)?;
        Ok((Arc::new(pc), events))
    }

    /// Adds the viewer's tracks to `pc` and answers `offer`, waiting for our candidates.
    async fn negotiate(
        pc: &Arc<dyn PeerConnection>,
        plan: &Plan,
        offer: &str,
        events: &Events,
    ) -> Result<Negotiated, WhepError> {
        let video = Outgoing::new(&plan.video, RtpCodecKind::Video);
        let video_sender = pc
            .add_track(Arc::clone(&video.track) as Arc<dyn TrackLocal>)
            .await
            .map_err(internal)?;
        let audio = match &plan.audio {
            Some((track, codec)) => {
                let outgoing = Outgoing::new(codec, RtpCodecKind::Audio);
                pc.add_track(Arc::clone(&outgoing.track) as Arc<dyn TrackLocal>)
                    .await
                    .map_err(internal)?;
                Some((*track, outgoing))
            }
            None => None,
        };

        let description = RTCSessionDescription::offer(offer.to_owned())
            .map_err(|err| WhepError::BadOffer(err.to_string()))?;
        pc.set_remote_description(description)
            .await
            .map_err(|err| WhepError::BadOffer(err.to_string()))?;
        let answer = pc.create_answer(None).await.map_err(internal)?;
        pc.set_local_description(answer).await.map_err(internal)?;
        events.gathered(GATHERING_TIMEOUT).await;
        let sdp = pc
            .local_description()
            .await
            .map(|d| d.sdp)
            .ok_or_else(|| WhepError::Internal("no local description".into()))?;
        Ok(Negotiated {
            video,
            video_sender,
            audio,
            sdp,
        })
    }

    /// Ends session `id` of `route` (`DELETE` on its resource).
    pub fn end(&self, route: &str, id: &str) -> Result<(), WhepError> {
        let on_route = self
            .sessions
            .list()
            .iter()
            .any(|s| s.id == id && s.route == route && s.kind == SessionKind::WebRtcViewer);
        if on_route && self.sessions.kick(id) {
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
        let pc = {
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
            Arc::clone(&peer.pc)
        };
        let mut mid = None;
        for line in fragment.lines().map(str::trim) {
            if let Some(value) = line.strip_prefix("a=mid:") {
                mid = Some(value.to_owned());
            } else if let Some(candidate) = line.strip_prefix("a=") {
                if !candidate.starts_with("candidate:") {
                    continue;
                }
                pc.add_ice_candidate(RTCIceCandidateInit {
                    candidate: candidate.to_owned(),
                    sdp_mid: mid.clone(),
                    ..Default::default()
                })
                .await
                .map_err(|err| WhepError::BadOffer(format!("bad candidate: {err}")))?;
            }
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Peer>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn internal(err: impl std::fmt::Display) -> WhepError {
    WhepError::Internal(err.to_string())
}

/// What a viewer of a route gets, decided from the route's media and the browser's offer.
struct Plan {
    video_track: usize,
    video: RTCRtpCodecParameters,
    /// The Opus track and its codec, when the route has one and the browser takes it.
    audio: Option<(usize, RTCRtpCodecParameters)>,
}

fn plan(stream: &Stream, offered: &OfferedVideo) -> Result<Plan, WhepError> {
    let route = stream.name();
    let media = match (stream.state(), stream.media()) {
        (SourceState::Live, Some(media)) => media,
        (state, _) => {
            let why = match state {
                SourceState::Failed(why) => why,
                SourceState::Ended => "the source ended".into(),
                _ => "waiting for the source".into(),
            };
            return Err(WhepError::NotLive(route.to_owned(), why));
        }
    };
    let tracks = &media.description.tracks;
    let video_track = media
        .description
        .video_track()
        .ok_or_else(|| WhepError::Unplayable(format!("route `{route}` has no video")))?;
    let sps = match &tracks[video_track].codec {
        Codec::H264 { sps, .. } => sps,
        other => {
            return Err(WhepError::Unplayable(format!(
                "route `{route}` carries {} video, which browsers cannot play over WebRTC; give the \
                 route a [routes.{route}.transcode] table to re-encode it as H.264",
                other.name()
            )));
        }
    };
    if stream.stats.video_reordered.load(Ordering::Relaxed) {
        return Err(WhepError::Unplayable(format!(
            "route `{route}` has B-frames (pictures out of order), which browsers do not play over \
             WebRTC; encode without B-frames (x264: -bf 0) or give the route a transcode table"
        )));
    }
    let profile = sps.get(1..4).ok_or_else(|| {
        WhepError::Unplayable(format!("route `{route}` has an unreadable H.264 SPS"))
    })?;
    let payload_type = offered.h264_payload_type(profile[0]).ok_or_else(|| {
        WhepError::Unplayable(format!(
            "route `{route}` is H.264 {} (profile-level-id {:02x}{:02x}{:02x}), which this browser \
             does not offer; give the route a transcode table (constrained baseline)",
            offer::profile_name(profile[0]),
            profile[0],
            profile[1],
            profile[2]
        ))
    })?;
    let video = RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: "video/H264".into(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: format!(
                "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={:02x}{:02x}{:02x}",
                profile[0], profile[1], profile[2]
            ),
            rtcp_feedback: ["nack", "nack pli", "ccm fir"]
                .iter()
                .map(|fb| {
                    let (typ, parameter) = fb.split_once(' ').unwrap_or((fb, ""));
                    RTCPFeedback {
                        typ: typ.into(),
                        parameter: parameter.into(),
                    }
                })
                .collect(),
        },
        payload_type,
    };
    let audio = tracks
        .iter()
        .position(|t| matches!(t.codec, Codec::Opus { .. }))
        .zip(offered.opus_payload_type)
        .map(|(track, payload_type)| {
            (
                track,
                RTCRtpCodecParameters {
                    rtp_codec: RTCRtpCodec {
                        mime_type: "audio/opus".into(),
                        clock_rate: 48_000,
                        channels: 2,
                        sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
                        rtcp_feedback: Vec::new(),
                    },
                    payload_type,
                },
            )
        });
    Ok(Plan {
        video_track,
        video,
        audio,
    })
}

/// One track we send, with the SSRC every packet must carry.
struct Outgoing {
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    payload_type: u8,
}

impl Outgoing {
    fn new(codec: &RTCRtpCodecParameters, kind: RtpCodecKind) -> Outgoing {
        let ssrc = rand::random();
        let name = match kind {
            RtpCodecKind::Audio => "audio",
            _ => "video",
        };
        let track = TrackLocalStaticRTP::new(MediaStreamTrack::new(
            "wasmcast".into(),
            name.into(),
            name.into(),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: codec.rtp_codec.clone(),
                ..Default::default()
            }],
        ));
        Outgoing {
            track: Arc::new(track),
            ssrc,
            payload_type: codec.payload_type,
        }
    }

    /// Sends the hub's RTP packets with this viewer's SSRC and payload type; bytes sent.
    async fn send(&self, packets: &[Bytes]) -> Result<usize, webrtc::error::Error> {
        let mut bytes = 0;
        for packet in packets {
            let mut buffer = packet.clone();
            let Ok(mut rtp) = rtc::rtp::Packet::unmarshal(&mut buffer) else {
                continue;
            };
            rtp.header.ssrc = self.ssrc;
            rtp.header.payload_type = self.payload_type;
            bytes += packet.len();
            self.track.write_rtp(rtp).await?;
        }
        Ok(bytes)
    }
}

/// What the peer connection tells us, as watch channels.
struct Events {
    gathering: watch::Receiver<bool>,
    state: watch::Receiver<RTCPeerConnectionState>,
}

struct Handler {
    gathering: watch::Sender<bool>,
    state: watch::Sender<RTCPeerConnectionState>,
}

impl Events {
    fn new() -> (Events, Arc<Handler>) {
        let (gathering_tx, gathering) = watch::channel(false);
        let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
        (
            Events { gathering, state },
            Arc::new(Handler {
                gathering: gathering_tx,
                state: state_tx,
            }),
        )
    }

    async fn gathered(&self, limit: Duration) {
        let mut gathering = self.gathering.clone();
        let _ = tokio::time::timeout(limit, gathering.wait_for(|done| *done)).await;
    }
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathering.send(true);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.state.send(state);
    }
}

/// A viewer's tracks and the answer, once the offer is accepted.
struct Negotiated {
    video: Outgoing,
    video_sender: Arc<dyn RtpSender>,
    audio: Option<(usize, Outgoing)>,
    sdp: String,
}

/// One browser watching one route.
struct Viewer {
    id: String,
    route: String,
    peer: SocketAddr,
    stream: Arc<Stream>,
    pc: Arc<dyn PeerConnection>,
    events: Events,
    video_track: usize,
    video: Outgoing,
    video_sender: Arc<dyn RtpSender>,
    audio: Option<(usize, Outgoing)>,
    registration: Registration,
    _slot: ClientSlot,
    _port: PortLease,
    peers: Peers,
}

/// Why a viewer's session ended, for the access log.
#[derive(Debug)]
enum Ending {
    NeverConnected,
    Closed,
    RouteEnded,
    Kicked,
    SendFailed,
}

impl Viewer {
    async fn run(self) {
        let started = Instant::now();
        let (ending, packets, bytes) = self.serve().await;
        if let Err(err) = self.pc.close().await {
            tracing::debug!(session = %self.id, "closing a peer connection: {err}");
        }
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        tracing::info!(
            target: "wasmcast::access",
            peer = %self.peer,
            route = %self.route,
            session = %self.id,
            ended = ?ending,
            seconds = started.elapsed().as_secs_f32(),
            packets,
            bytes,
            "webrtc"
        );
    }

    async fn serve(&self) -> (Ending, u64, u64) {
        let mut state = self.events.state.clone();
        let connected = tokio::time::timeout(
            CONNECT_TIMEOUT,
            state.wait_for(|s| {
                matches!(
                    s,
                    RTCPeerConnectionState::Connected
                        | RTCPeerConnectionState::Failed
                        | RTCPeerConnectionState::Closed
                )
            }),
        );
        let connected = tokio::select! {
            result = connected => matches!(result, Ok(Ok(s)) if *s == RTCPeerConnectionState::Connected),
            () = self.registration.kicked() => return (Ending::Kicked, 0, 0),
        };
        if !connected {
            return (Ending::NeverConnected, 0, 0);
        }
        // The browser may have answered with another payload type number than it offered.
        let mut video = &self.video;
        let negotiated;
        if let Ok(parameters) = self.video_sender.get_parameters().await
            && let Some(codec) = parameters.rtp_parameters.codecs.first()
            && codec.payload_type != self.video.payload_type
        {
            negotiated = Outgoing {
                track: Arc::clone(&self.video.track),
                ssrc: self.video.ssrc,
                payload_type: codec.payload_type,
            };
            video = &negotiated;
        }
        let Some(mut reader) = self.stream.subscribe() else {
            return (Ending::RouteEnded, 0, 0);
        };
        self.stream.request_keyframe();
        let stats = &self.stream.stats;
        let (mut packets, mut bytes) = (0u64, 0u64);
        let mut waiting_for_keyframe = false;
        loop {
            tokio::select! {
                unit = reader.next() => {
                    let Some(unit) = unit else { return (Ending::RouteEnded, packets, bytes) };
                    let outgoing = if unit.au.track == self.video_track {
                        if waiting_for_keyframe && !unit.au.keyframe {
                            continue;
                        }
                        waiting_for_keyframe = false;
                        video
                    } else {
                        match &self.audio {
                            Some((track, audio)) if *track == unit.au.track => audio,
                            _ => continue,
                        }
                    };
                    match outgoing.send(&unit.rtp.packets).await {
                        Ok(sent) => {
                            let count = unit.rtp.packets.len() as u64;
                            packets += count;
                            bytes += sent as u64;
                            stats.packets_out.fetch_add(count, Ordering::Relaxed);
                            stats.bytes_out.fetch_add(sent as u64, Ordering::Relaxed);
                        }
                        Err(_) => return (Ending::SendFailed, packets, bytes),
                    }
                }
                event = self.video.track.poll() => {
                    if let Some(TrackLocalEvent::OnRtcpPacket(rtcp)) = event
                        && rtcp.iter().any(|p| is_keyframe_request(p.as_ref()))
                    {
                        // A re-encoding route makes one at once; passed-through video cannot,
                        // so the viewer skips to the next one rather than decode garbage.
                        self.stream.request_keyframe();
                        waiting_for_keyframe = true;
                    }
                }
                changed = state.changed() => {
                    let closed = changed.is_err() || matches!(
                        *state.borrow(),
                        RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
                    );
                    if closed {
                        return (Ending::Closed, packets, bytes);
                    }
                }
                () = self.registration.kicked() => return (Ending::Kicked, packets, bytes),
            }
        }
    }
}

fn is_keyframe_request(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication>()
        || any.is::<rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest>()
}
