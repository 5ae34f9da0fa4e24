//! Negotiation: from a browser's offer to a connected peer — which of the route's tracks it can
//! take ([`plan`]), the peer connection and its answer, and the wait for ICE to connect.

use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::{NackResponderBuilder, ReceiverReportBuilder, Slot};
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_nack, configure_simulcast_extension_headers, configure_twcc_receiver_only,
};
use rtc::rtp_transceiver::rtp_sender::TYPE_RTCP_FB_NACK;
use tokio::sync::mpsc;
use webrtc::media_stream::track_remote::TrackRemote;

use super::*;

impl WebRtc {
    /// A peer connection for `codecs`, on the shared ports at `ip`, that sends media (a viewer)
    /// or takes it (a publisher).
    pub(super) async fn connect(
        &self,
        direction: Direction,
        codecs: &[(RTCRtpCodecParameters, RtpCodecKind)],
        ip: IpAddr,
        runtime: ViewerRuntime,
        credentials: IceCredentials,
    ) -> Result<(Arc<dyn PeerConnection>, Events), WhepError> {
        let (events, handler) = Events::new();
        let mut media_engine = MediaEngine::default();
        for (codec, kind) in codecs {
            media_engine
                .register_codec(codec.clone(), *kind)
                .map_err(internal)?;
        }
        let registry = match direction {
            Direction::Send => sending_interceptors(&mut media_engine),
            Direction::Receive => receiving_interceptors(&mut media_engine)?,
        };
        // ICE lite, as servers with known addresses are: the browser's checks find the path and
        // media goes back where they came from, which behind a NAT is the only way that works.
        let settings: SettingEngine = SettingEngineBuilder::new()
            .with_lite(true)
            .with_ice_credentials(credentials.ufrag, credentials.password)
            // A browser's `.local` candidates need no resolving: an ICE lite server learns where
            // the browser is from its checks. (The multicast socket would also take the viewer's
            // place on the mux.)
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .with_ice_timeouts(
                Some(ICE_DISCONNECTED),
                Some(ICE_FAILED),
                Some(ICE_KEEPALIVE),
            )
            .build();
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
            .with_setting_engine(settings)
            .with_interceptor_registry(registry)
            .with_handler(handler)
            .with_udp_addrs(vec![bind])
            .with_tcp_addrs(tcp)
            .build()
            .await
            .map_err(internal)?;
        Ok((Arc::new(pc), events))
    }

    /// Adds the viewer's tracks to `pc` and answers `offer`, waiting for our candidates.
    pub(super) async fn negotiate(
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

        let sdp = Self::answer(pc, offer, events).await?;
        Ok(Negotiated {
            video,
            video_sender,
            audio,
            sdp,
        })
    }
}

/// Which way media goes on a peer connection, which decides its interceptors.
#[derive(Clone, Copy, Debug)]
pub(super) enum Direction {
    /// A viewer: we send the route's media.
    Send,
    /// A publisher: we take its media.
    Receive,
}

/// A viewer's interceptors: the NACK responder and nothing else. Every interceptor in the
/// webrtc crate's chain takes each outgoing packet in and hands it on (two moves of the packet
/// apiece), and the receive-side ones (NACK generator, TWCC and receiver reports) have nothing
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

/// A viewer's tracks and the answer, once the offer is accepted.
pub(super) struct Negotiated {
    pub(super) video: Outgoing,
    pub(super) video_sender: Arc<dyn RtpSender>,
    pub(super) audio: Option<(usize, Outgoing)>,
    pub(super) sdp: String,
}
