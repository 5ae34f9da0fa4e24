//! Negotiation: from a browser's offer to a connected peer — which of the route's tracks it can
//! take ([`plan`]), the peer connection and its answer, and the wait for ICE to connect.

use rtc::ice::mdns::MulticastDnsMode;
use rtc::ice::tcp_type::TcpType;
use rtc::interceptor::{NackResponderBuilder, ReceiverReportBuilder, Slot};
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_nack, configure_simulcast_extension_headers, configure_twcc_receiver_only,
};
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{RTCRtpEncodingParameters, TYPE_RTCP_FB_NACK};
use tokio::sync::mpsc;
use webrtc::media_stream::track_remote::TrackRemote;

use super::*;

impl WebRtc {
    /// A publisher's peer connection for `codecs`, driven by the webrtc crate on the shared
    /// ports at `ip`.
    pub(super) async fn connect(
        &self,
        codecs: &[(RTCRtpCodecParameters, RtpCodecKind)],
        ip: IpAddr,
        runtime: PublisherRuntime,
        credentials: IceCredentials,
    ) -> Result<(Arc<dyn PeerConnection>, Events), WhepError> {
        let (events, handler) = Events::new();
        let mut media_engine = media_engine(codecs)?;
        let registry = receiving_interceptors(&mut media_engine)?;
        // The crate binds these ephemeral addresses, and the runtime swaps them for the mux.
        let bind = SocketAddr::new(ip, 0);
        let tcp = if self.network.tcp() {
            vec![bind]
        } else {
            Vec::new()
        };
        let pc = PeerConnectionBuilder::new()
            .with_runtime(Arc::new(runtime))
            .with_media_engine(media_engine)
            .with_setting_engine(settings(credentials))
            .with_interceptor_registry(registry)
            .with_handler(handler)
            .with_udp_addrs(vec![bind])
            .with_tcp_addrs(tcp)
            .build()
            .await
            .map_err(internal)?;
        Ok((Arc::new(pc), events))
    }
}

/// A viewer's peer connection, answering `offer` with `plan`'s tracks and candidates on the
/// shared ports (`udp`, and `tcp` when ICE-TCP is on): the connection, its video and audio
/// senders, and the answer.
pub(super) fn viewer_connection(
    plan: &Plan,
    offer: &str,
    credentials: IceCredentials,
    udp: SocketAddr,
    tcp: Option<SocketAddr>,
) -> Result<ViewerConnection, WhepError> {
    let now = Instant::now();
    let mut codecs = vec![(plan.video.clone(), RtpCodecKind::Video)];
    if let Some((_, audio)) = &plan.audio {
        codecs.push((audio.clone(), RtpCodecKind::Audio));
    }
    let mut media_engine = media_engine(&codecs)?;
    let registry = sending_interceptors(&mut media_engine);
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_media_engine(media_engine)
        .with_setting_engine(settings(credentials))
        .with_interceptor_registry(registry)
        .build(now)
        .map_err(internal)?;
    let description = RTCSessionDescription::offer(offer.to_owned())
        .map_err(|err| WhepError::BadOffer(err.to_string()))?;
    pc.set_remote_description(now, description)
        .map_err(|err| WhepError::BadOffer(err.to_string()))?;
    let video = add_track(&mut pc, &plan.video, RtpCodecKind::Video)?;
    let audio = match &plan.audio {
        Some((track, codec)) => Some((*track, add_track(&mut pc, codec, RtpCodecKind::Audio)?)),
        None => None,
    };
    let candidates = [(udp, TcpType::Unspecified)]
        .into_iter()
        .chain(tcp.map(|tcp| (tcp, TcpType::Passive)));
    for (addr, tcp_type) in candidates {
        let network = if tcp_type == TcpType::Unspecified {
            "udp"
        } else {
            "tcp"
        };
        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: network.to_owned(),
                address: addr.ip().to_string(),
                port: addr.port(),
                component: 1,
                ..Default::default()
            },
            tcp_type,
        }
        .new_candidate_host()
        .map_err(internal)?;
        let init = RTCIceCandidate::from(&candidate)
            .to_json()
            .map_err(internal)?;
        pc.add_local_candidate(init).map_err(internal)?;
    }
    // No more candidates: ours are known before the answer.
    pc.add_local_candidate(RTCIceCandidateInit::default())
        .map_err(internal)?;
    let answer = pc.create_answer(None).map_err(internal)?;
    pc.set_local_description(now, answer).map_err(internal)?;
    let sdp = pc
        .local_description()
        .map(|d| d.sdp)
        .ok_or_else(|| WhepError::Internal("no local description".into()))?;
    // The browser may have answered with another payload type number than it offered.
    let negotiated = |pc: &mut RTCPeerConnection, outgoing: &mut Outgoing| {
        if let Some(mut sender) = pc.rtp_sender(outgoing.sender)
            && let Some(codec) = sender.get_parameters().rtp_parameters.codecs.first()
        {
            outgoing.payload_type = codec.payload_type;
        }
    };
    let mut video = video;
    negotiated(&mut pc, &mut video);
    let mut audio = audio;
    if let Some((_, outgoing)) = &mut audio {
        negotiated(&mut pc, outgoing);
    }
    Ok(ViewerConnection {
        pc,
        video,
        audio,
        sdp,
    })
}

/// A viewer's peer connection, answered.
pub(super) struct ViewerConnection {
    pub(super) pc: RTCPeerConnection,
    pub(super) video: Outgoing,
    /// The route's audio track and how it goes out.
    pub(super) audio: Option<(usize, Outgoing)>,
    pub(super) sdp: String,
}

/// Adds a track we send in `codec`, with an SSRC of its own.
fn add_track(
    pc: &mut RTCPeerConnection,
    codec: &RTCRtpCodecParameters,
    kind: RtpCodecKind,
) -> Result<Outgoing, WhepError> {
    let ssrc = rand::random();
    let name = match kind {
        RtpCodecKind::Audio => "audio",
        _ => "video",
    };
    let track = MediaStreamTrack::new(
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
    );
    let sender = pc.add_track(track).map_err(internal)?;
    Ok(Outgoing {
        sender,
        ssrc,
        payload_type: codec.payload_type,
    })
}

fn media_engine(
    codecs: &[(RTCRtpCodecParameters, RtpCodecKind)],
) -> Result<MediaEngine, WhepError> {
    let mut media_engine = MediaEngine::default();
    for (codec, kind) in codecs {
        media_engine
            .register_codec(codec.clone(), *kind)
            .map_err(internal)?;
    }
    Ok(media_engine)
}

/// ICE lite, as servers with known addresses are: the browser's checks find the path and media
/// goes back where they came from, which behind a NAT is the only way that works.
fn settings(credentials: IceCredentials) -> SettingEngine {
    SettingEngineBuilder::new()
        .with_lite(true)
        .with_ice_credentials(credentials.ufrag, credentials.password)
        // A browser's `.local` candidates need no resolving: an ICE lite server learns where the
        // browser is from its checks. (The multicast socket would also take the viewer's place
        // on the mux.)
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .with_ice_timeouts(
            Some(ICE_DISCONNECTED),
            Some(ICE_FAILED),
            Some(ICE_KEEPALIVE),
        )
        .build()
}

/// A viewer's interceptors: the NACK responder and nothing else. Every interceptor in the
/// chain takes each outgoing packet in and hands it on (two moves of the packet apiece), and the receive-side ones (NACK generator, TWCC and receiver reports) have nothing
/// to do on a connection that takes no media, so at 500 viewers they cost ~3 % of a core for
/// nothing. Sender reports are the viewer's own, from the route's clock (see `viewer`): the
/// crate's derive the RTP-to-wall-clock mapping from when each packet was sent, so a track that
/// takes longer to make (AAC turned into Opus) would seem captured later than its picture.
fn sending_interceptors(media_engine: &mut MediaEngine) -> Registry {
    for parameter in ["", "pli"] {
        media_engine.register_feedback(
            RTCPFeedback {
                typ: TYPE_RTCP_FB_NACK.to_owned(),
                parameter: parameter.to_owned(),
            },
            RtpCodecKind::Video,
        );
    }
    Registry::new().with(Slot::NackResponder, NackResponderBuilder::new().build())
}

/// A publisher's interceptors: the webrtc crate's defaults for a receiver (NACKs for what was
/// lost, TWCC feedback, receiver reports).
fn receiving_interceptors(media_engine: &mut MediaEngine) -> Result<Registry, WhepError> {
    let registry = configure_nack(Registry::new(), media_engine);
    configure_simulcast_extension_headers(media_engine).map_err(internal)?;
    let registry = configure_twcc_receiver_only(registry, media_engine).map_err(internal)?;
    Ok(registry.with(Slot::ReceiverReport, ReceiverReportBuilder::new().build()))
}

impl WebRtc {
    /// Takes `offer` and answers it, waiting for our candidates.
    pub(super) async fn answer(
        pc: &Arc<dyn PeerConnection>,
        offer: &str,
        events: &Events,
    ) -> Result<String, WhepError> {
        let description = RTCSessionDescription::offer(offer.to_owned())
            .map_err(|err| WhepError::BadOffer(err.to_string()))?;
        pc.set_remote_description(description)
            .await
            .map_err(|err| WhepError::BadOffer(err.to_string()))?;
        let answer = pc.create_answer(None).await.map_err(internal)?;
        pc.set_local_description(answer).await.map_err(internal)?;
        events.gathered(GATHERING_TIMEOUT).await;
        pc.local_description()
            .await
            .map(|d| d.sdp)
            .ok_or_else(|| WhepError::Internal("no local description".into()))
    }
}

/// What a viewer of a route gets, decided from the route's media and the browser's offer.
pub(super) struct Plan {
    pub(super) video_track: usize,
    pub(super) video: RTCRtpCodecParameters,
    /// The audio track and the Opus codec it goes out as, when the route has audio and the
    /// browser takes Opus.
    pub(super) audio: Option<(usize, RTCRtpCodecParameters)>,
    /// Whether that track is AAC, sent through the route's Opus rendition.
    pub(super) audio_from_aac: bool,
}

pub(super) fn plan(stream: &Stream, offered: &OfferedVideo) -> Result<Plan, WhepError> {
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
    let no_b_frames = || {
        if stream.stats.video_reordered.load(Ordering::Relaxed) {
            return Err(WhepError::Unplayable(format!(
                "route `{route}` has B-frames (pictures out of order), which browsers do not play \
                 over WebRTC; encode without B-frames (x264: -bf 0) or give the route a transcode \
                 table"
            )));
        }
        Ok(())
    };
    let video = match &tracks[video_track].codec {
        Codec::H264 { sps, .. } => {
            no_b_frames()?;
            h264_codec(route, sps, offered)?
        }
        Codec::H265 { .. } => {
            let (payload_type, fmtp) = offered.h265.as_ref().ok_or_else(|| {
                WhepError::Unplayable(format!(
                    "route `{route}` carries H265 video, which this browser does not offer over \
                     WebRTC (Safari and Chrome with H.265 hardware decoding do); give the route a \
                     [routes.{route}.transcode] table to re-encode it as H.264"
                ))
            })?;
            no_b_frames()?;
            video_codec("video/H265", fmtp.clone(), *payload_type)
        }
        other => {
            return Err(WhepError::Unplayable(format!(
                "route `{route}` carries {} video, which browsers cannot play over WebRTC; give the \
                 route a [routes.{route}.transcode] table to re-encode it as H.264",
                other.name()
            )));
        }
    };
    // Opus as it is; else AAC, which browsers cannot play, through the route's Opus rendition.
    let opus = tracks
        .iter()
        .position(|t| matches!(t.codec, Codec::Opus { .. }));
    let aac = tracks
        .iter()
        .position(|t| matches!(t.codec, Codec::Aac { .. }));
    let audio_from_aac = opus.is_none() && aac.is_some();
    let audio = opus
        .or(aac)
        .zip(offered.opus_payload_type)
        .map(|(track, payload_type)| (track, opus_codec(payload_type)));
    Ok(Plan {
        video_track,
        video,
        audio,
        audio_from_aac,
    })
}

/// Opus as browsers take it: 48 kHz stereo, in-band FEC.
pub(super) fn opus_codec(payload_type: u8) -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: "audio/opus".into(),
            clock_rate: 48_000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
            rtcp_feedback: Vec::new(),
        },
        payload_type,
    }
}

/// The H.264 codec for a route whose SPS is `sps`, in the profile the browser offers for it.
fn h264_codec(
    route: &str,
    sps: &[u8],
    offered: &OfferedVideo,
) -> Result<RTCRtpCodecParameters, WhepError> {
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
    let fmtp = format!(
        "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={:02x}{:02x}{:02x}",
        profile[0], profile[1], profile[2]
    );
    Ok(video_codec("video/H264", fmtp, payload_type))
}

/// A video codec with the feedback a browser needs: retransmissions and keyframe requests.
fn video_codec(mime_type: &str, fmtp: String, payload_type: u8) -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: mime_type.into(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: fmtp,
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
    }
}

/// What the peer connection tells us, as watch channels.
pub(super) struct Events {
    pub(super) gathering: watch::Receiver<bool>,
    pub(super) state: watch::Receiver<RTCPeerConnectionState>,
    /// The tracks the peer sends (a publisher's).
    pub(super) tracks: mpsc::Receiver<Arc<dyn TrackRemote>>,
}

pub(super) struct Handler {
    pub(super) gathering: watch::Sender<bool>,
    pub(super) state: watch::Sender<RTCPeerConnectionState>,
    pub(super) tracks: mpsc::Sender<Arc<dyn TrackRemote>>,
}

/// Tracks one peer may send: a video and an audio one, and a few more that are ignored.
const MAX_REMOTE_TRACKS: usize = 4;

impl Events {
    pub(super) fn new() -> (Events, Arc<Handler>) {
        let (gathering_tx, gathering) = watch::channel(false);
        let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
        let (tracks_tx, tracks) = mpsc::channel(MAX_REMOTE_TRACKS);
        (
            Events {
                gathering,
                state,
                tracks,
            },
            Arc::new(Handler {
                gathering: gathering_tx,
                state: state_tx,
                tracks: tracks_tx,
            }),
        )
    }

    /// Whether the connection connects within [`CONNECT_TIMEOUT`] (not: it failed, closed or
    /// took too long).
    pub(super) async fn connected(&self) -> bool {
        let mut state = self.state.clone();
        let settled = state.wait_for(|s| {
            matches!(
                s,
                RTCPeerConnectionState::Connected
                    | RTCPeerConnectionState::Failed
                    | RTCPeerConnectionState::Closed
            )
        });
        matches!(
            tokio::time::timeout(CONNECT_TIMEOUT, settled).await,
            Ok(Ok(s)) if *s == RTCPeerConnectionState::Connected
        )
    }

    pub(super) async fn gathered(&self, limit: Duration) {
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

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let _ = self.tracks.try_send(track);
    }
}
