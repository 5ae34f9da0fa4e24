//! WHIP publishing (`POST /FEED/whip`, RFC 9725): a browser or OBS sends H.264 (and Opus) over
//! WebRTC into a route that takes publishers, under the same claim rules as RTSP and HTTP pushes
//! (one at a time, the route's readers kept across publishers).
//!
//! The publisher's RTP goes through the same depacketizers and live publisher as an RTSP
//! RECORD. A browser's encoder makes a keyframe only when asked, so the publisher is asked for
//! one (PLI) every [`KEYFRAME_REQUEST_EVERY`]: readers who join later start within that time.

use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::shared::marshal::Marshal;
use tokio::sync::mpsc;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};

use super::*;
use crate::hub::{Revocation, Revoked};
use crate::rtp::{DepacketizeError, Depacketizer, PayloadFormat};
use crate::sources::{LivePublisher, PublishRate, TooFast, TrackKind};

/// A publisher that sends nothing for this long is taken as gone.
const PUBLISH_STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the publisher is asked for a keyframe.
const KEYFRAME_REQUEST_EVERY: Duration = Duration::from_secs(2);
/// RTP packets received and not yet depacketized; more are dropped (and counted).
const PACKET_QUEUE: usize = 2048;

/// The video and audio a publisher's offer can send that wasmcast takes.
struct PublishPlan {
    video: RTCRtpCodecParameters,
    audio: Option<RTCRtpCodecParameters>,
}

fn publish_plan(offered: &OfferedVideo) -> Result<PublishPlan, WhepError> {
    let (payload_type, fmtp) = offered.h264_to_receive().ok_or_else(|| {
        WhepError::Unplayable(
            "the offer sends no H.264 (packetization-mode 1); wasmcast takes H.264 video".into(),
        )
    })?;
    let video = RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: "video/H264".into(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: fmtp.to_owned(),
            rtcp_feedback: vec![
                RTCPFeedback {
                    typ: "nack".into(),
                    parameter: String::new(),
                },
                RTCPFeedback {
                    typ: "nack".into(),
                    parameter: "pli".into(),
                },
            ],
        },
        payload_type,
    };
    let audio = offered.opus_payload_type.map(negotiate::opus_codec);
    Ok(PublishPlan { video, audio })
}

impl WebRtc {
    /// Answers a publisher's `offer` for the route that takes `feed`; `user` is who the
    /// credentials named, if anyone.
    pub async fn publish(
        &self,
        feed: &str,
        offer: &str,
        local: SocketAddr,
        peer: SocketAddr,
        user: Option<String>,
    ) -> Result<Answer, WhepError> {
        let offered = offer::parse_publishing(offer)?;
        let plan = publish_plan(&offered)?;
        let stream = self
            .router
            .feed(feed)
            .ok_or_else(|| WhepError::NoRoute(feed.to_owned()))?;
        let claim = stream
            .claim_as(user)
            .map_err(|busy| WhepError::Busy(busy.to_string()))?;

        let mut codecs = vec![(plan.video.clone(), RtpCodecKind::Video)];
        if let Some(audio) = &plan.audio {
            codecs.push((audio.clone(), RtpCodecKind::Audio));
        }
        let credentials = IceCredentials::random();
        let (lease, runtime) = self.network.lease(credentials.ufrag.clone());
        let ip = self.network.bind_ip(local);
        let (pc, events) = self.connect(&codecs, ip, runtime, credentials).await?;
        let sdp = match Self::answer(&pc, offer, &events).await {
            Ok(sdp) => self.network.announce(&sdp),
            Err(err) => {
                if let Err(close) = pc.close().await {
                    tracing::debug!(feed, "closing a refused WHIP connection: {close}");
                }
                return Err(err);
            }
        };
        let route = stream.name().to_owned();
        let registration = self
            .sessions
            .register(None, SessionKind::WebRtcPublisher, &route, peer);
        let id = registration.id().to_owned();
        self.lock().insert(
            id.clone(),
            Peer {
                control: Control::Publisher(Arc::clone(&pc)),
                trickled: 0,
            },
        );
        let max_unit = stream.budget().max_unit_bytes;
        let publisher = WhipPublisher {
            id: id.clone(),
            route,
            peer,
            revocation: claim.revocation(),
            live: LivePublisher::with_independent_clocks(stream, claim),
            video: Depacketizer::new(PayloadFormat::H264, max_unit),
            audio: Depacketizer::new(PayloadFormat::Opus, max_unit),
            pc,
            events,
            registration,
            peers: Arc::clone(&self.peers),
            _mux: lease,
        };
        tokio::spawn(publisher.run(plan.audio.is_some()));
        Ok(Answer { id, sdp })
    }
}

/// Why a WHIP publisher ended, for the access log.
#[derive(Debug, thiserror::Error)]
enum PublishEnding {
    #[error("never connected")]
    NeverConnected,
    #[error("connection closed")]
    Closed,
    #[error("no media for {} s", PUBLISH_STALL_TIMEOUT.as_secs())]
    Stalled,
    #[error("{0}")]
    Ended(EndedBy),
    #[error("publisher ended: {0}")]
    Revoked(Revoked),
    #[error("over the route's memory budget")]
    OverBudget,
    #[error("sends slower than real time")]
    TooSlow,
    #[error(transparent)]
    TooFast(#[from] TooFast),
}

/// One publisher's connection, from its answer until it goes.
struct WhipPublisher {
    id: String,
    route: String,
    peer: SocketAddr,
    live: LivePublisher,
    revocation: Revocation,
    video: Depacketizer,
    audio: Depacketizer,
    pc: Arc<dyn PeerConnection>,
    events: Events,
    registration: Registration,
    peers: Peers,
    _mux: MuxLease,
}

/// A packet from one of the publisher's tracks.
enum PublishedPacket {
    Video(Bytes),
    Audio(Bytes),
}

impl WhipPublisher {
    async fn run(mut self, with_audio: bool) {
        let started = Instant::now();
        let ending = self.serve(with_audio).await;
        forget(&self.peers, &self.id, &self.pc).await;
        tracing::info!(
            target: "wasmcast::access",
            peer = %self.peer,
            route = %self.route,
            session = %self.id,
            ended = %ending,
            seconds = started.elapsed().as_secs_f32(),
            units = self.live.units,
            tracks = %self.live.describe(),
            "whip"
        );
    }

    async fn serve(&mut self, with_audio: bool) -> PublishEnding {
        let mut state = self.events.state.clone();
        let connected = tokio::select! {
            connected = self.events.connected() => connected,
            by = self.registration.ended() => return PublishEnding::Ended(by),
        };
        if !connected {
            return PublishEnding::NeverConnected;
        }
        let video_track = self.live.add_track(TrackKind::H264, None);
        let audio_track = with_audio.then(|| {
            self.live
                .add_track(TrackKind::Audio, Some(Codec::Opus { channels: 2 }))
        });

        let (packets, mut incoming) = mpsc::channel(PACKET_QUEUE);
        let mut video_remote: Option<Arc<dyn TrackRemote>> = None;
        let mut tick = tokio::time::interval(KEYFRAME_REQUEST_EVERY.min(Duration::from_secs(1)));
        let mut last_packet = Instant::now();
        let mut last_keyframe_request = Instant::now();
        let mut rate = PublishRate::new(Instant::now());
        let mut dropped = 0u64;
        let mut tracks_open = true;
        loop {
            tokio::select! {
                track = self.events.tracks.recv(), if tracks_open => {
                    let Some(track) = track else {
                        tracks_open = false;
                        continue;
                    };
                    let video = track.kind().await == RtpCodecKind::Video;
                    if video {
                        video_remote = Some(Arc::clone(&track));
                        request_keyframe(&track).await;
                    }
                    tokio::spawn(forward(track, video, packets.clone()));
                }
                packet = incoming.recv() => {
                    let Some(packet) = packet else { continue };
                    let now = Instant::now();
                    last_packet = now;
                    let (bytes, track, depacketizer) = match &packet {
                        PublishedPacket::Video(bytes) => (bytes, video_track, &mut self.video),
                        PublishedPacket::Audio(bytes) => match audio_track {
                            Some(track) => (bytes, track, &mut self.audio),
                            None => continue,
                        },
                    };
                    if let Err(fast) = rate.add_packet(bytes.len(), now) {
                        return PublishEnding::TooFast(fast);
                    }
                    match depacketizer.push(bytes) {
                        Ok(units) => self.live.send_depacketized(track, units, now),
                        Err(err) => {
                            if matches!(err, DepacketizeError::TooLarge(_)) {
                                self.live.refused_over_budget();
                            }
                            dropped += 1;
                            if dropped.is_power_of_two() {
                                tracing::debug!(session = %self.id, dropped, "WHIP packet dropped: {err}");
                            }
                        }
                    }
                    if self.live.check_budget().is_err() {
                        return PublishEnding::OverBudget;
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    if now.duration_since(last_packet) > PUBLISH_STALL_TIMEOUT {
                        return PublishEnding::Stalled;
                    }
                    if rate.check(now).is_err() {
                        return PublishEnding::TooSlow;
                    }
                    if now.duration_since(last_keyframe_request) >= KEYFRAME_REQUEST_EVERY
                        && let Some(track) = &video_remote
                    {
                        last_keyframe_request = now;
                        request_keyframe(track).await;
                    }
                }
                changed = state.changed() => {
                    let closed = changed.is_err() || matches!(
                        *state.borrow(),
                        RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
                    );
                    if closed {
                        return PublishEnding::Closed;
                    }
                }
                by = self.registration.ended() => return PublishEnding::Ended(by),
                reason = self.revocation.revoked() => return PublishEnding::Revoked(reason),
            }
        }
    }
}

/// Passes a remote track's RTP packets on until it ends; a full queue drops them.
async fn forward(track: Arc<dyn TrackRemote>, video: bool, packets: mpsc::Sender<PublishedPacket>) {
    while let Some(event) = track.poll().await {
        match event {
            TrackRemoteEvent::OnRtpPacket(packet) => {
                let Ok(bytes) = packet.marshal() else {
                    continue;
                };
                let bytes = bytes.freeze();
                let incoming = if video {
                    PublishedPacket::Video(bytes)
                } else {
                    PublishedPacket::Audio(bytes)
                };
                if packets.try_send(incoming).is_err() && packets.is_closed() {
                    return;
                }
            }
            TrackRemoteEvent::OnEnded => return,
            _ => {}
        }
    }
}

/// Asks the publisher's encoder for a keyframe.
async fn request_keyframe(track: &Arc<dyn TrackRemote>) {
    let Some(media_ssrc) = track.ssrcs().await.first().copied() else {
        return;
    };
    let pli = PictureLossIndication {
        sender_ssrc: 0,
        media_ssrc,
    };
    if let Err(err) = track.write_rtcp(vec![Box::new(pli)]).await {
        tracing::debug!("WHIP keyframe request: {err}");
    }
}
