//! One browser watching one route: the route's RTP packets, with SSRC and payload type rewritten,
//! sent until the peer goes, the route ends or the session is kicked; a keyframe request (PLI/FIR)
//! makes the viewer wait for the next keyframe.

use tokio::sync::broadcast;

use super::opus::{OpusFrame, Rendition};
use super::*;

/// One track we send, with the SSRC every packet must carry.
pub(super) struct Outgoing {
    pub(super) track: Arc<TrackLocalStaticRTP>,
    pub(super) ssrc: u32,
    pub(super) payload_type: u8,
}

impl Outgoing {
    pub(super) fn new(codec: &RTCRtpCodecParameters, kind: RtpCodecKind) -> Outgoing {
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

    /// Sends one frame of the route's Opus rendition as the next RTP packet; bytes sent.
    pub(super) async fn send_opus(
        &self,
        frame: OpusFrame,
        sequence: &mut u16,
    ) -> Result<usize, webrtc::error::Error> {
        let bytes = frame.data.len() + 12;
        let packet = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                payload_type: self.payload_type,
                sequence_number: *sequence,
                timestamp: frame.timestamp,
                ssrc: self.ssrc,
                ..Default::default()
            },
            payload: frame.data,
        };
        *sequence = sequence.wrapping_add(1);
        self.track.write_rtp(packet).await?;
        Ok(bytes)
    }

    /// Sends the hub's RTP packets with this viewer's SSRC and payload type; bytes sent.
    pub(super) async fn send(&self, packets: &[Bytes]) -> Result<usize, webrtc::error::Error> {
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

/// One browser watching one route.
pub(super) struct Viewer {
    pub(super) id: String,
    pub(super) route: String,
    pub(super) peer: SocketAddr,
    pub(super) stream: Arc<Stream>,
    pub(super) pc: Arc<dyn PeerConnection>,
    pub(super) events: Events,
    pub(super) video_track: usize,
    pub(super) video: Outgoing,
    pub(super) video_sender: Arc<dyn RtpSender>,
    /// The route's audio track, when it is Opus, and how it goes out.
    pub(super) audio: Option<(usize, Outgoing)>,
    /// The route's AAC as Opus: the rendition, held while the viewer watches.
    pub(super) opus: Option<(Outgoing, Arc<Rendition>)>,
    pub(super) registration: Registration,
    pub(super) _slot: ClientSlot,
    pub(super) _mux: MuxLease,
    pub(super) peers: Peers,
}

/// Why a viewer's session ended, for the access log.
#[derive(Debug)]
pub(super) enum Ending {
    NeverConnected,
    Closed,
    RouteEnded,
    Kicked,
    SendFailed,
}

impl Viewer {
    pub(super) async fn run(self) {
        let started = Instant::now();
        let (ending, packets, bytes) = self.serve().await;
        forget(&self.peers, &self.id, &self.pc).await;
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

    pub(super) async fn serve(&self) -> (Ending, u64, u64) {
        let mut state = self.events.state.clone();
        let connected = tokio::select! {
            connected = self.events.connected() => connected,
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
        let mut opus_frames = self
            .opus
            .as_ref()
            .map(|(_, rendition)| rendition.subscribe());
        let mut opus_sequence: u16 = rand::random();
        let stats = &self.stream.stats;
        let (mut packets, mut bytes) = (0u64, 0u64);
        let (mut video_sent, mut audio_sent) = (Sent::default(), Sent::default());
        let mut reports = tokio::time::interval(SENDER_REPORT_EVERY);
        let mut waiting_for_keyframe = false;
        // Kept across units rather than made anew in every `select!`: each is a waiter
        // registered with the webrtc crate or the session table, and a viewer wakes for every
        // unit of its route.
        let rtcp = self.video.track.poll();
        tokio::pin!(rtcp);
        let mut rtcp_open = true;
        let kicked = self.registration.kicked();
        tokio::pin!(kicked);
        loop {
            tokio::select! {
                unit = reader.next() => {
                    let Some(unit) = unit else { return (Ending::RouteEnded, packets, bytes) };
                    let (outgoing, tally) = if unit.au.track == self.video_track {
                        if waiting_for_keyframe && !unit.au.keyframe {
                            continue;
                        }
                        waiting_for_keyframe = false;
                        (video, &mut video_sent)
                    } else {
                        match &self.audio {
                            Some((track, audio)) if *track == unit.au.track => (audio, &mut audio_sent),
                            _ => continue,
                        }
                    };
                    match outgoing.send(&unit.rtp.packets).await {
                        Ok(sent) => {
                            let count = unit.rtp.packets.len() as u64;
                            tally.add(count, sent);
                            packets += count;
                            bytes += sent as u64;
                            stats.packets_out.fetch_add(count, Ordering::Relaxed);
                            stats.bytes_out.fetch_add(sent as u64, Ordering::Relaxed);
                        }
                        Err(_) => return (Ending::SendFailed, packets, bytes),
                    }
                }
                frame = next_opus(&mut opus_frames) => {
                    let Some(((outgoing, _), frame)) = self.opus.as_ref().zip(frame) else {
                        continue;
                    };
                    match outgoing.send_opus(frame, &mut opus_sequence).await {
                        Ok(sent) => {
                            audio_sent.add(1, sent);
                            packets += 1;
                            bytes += sent as u64;
                            stats.packets_out.fetch_add(1, Ordering::Relaxed);
                            stats.bytes_out.fetch_add(sent as u64, Ordering::Relaxed);
                        }
                        Err(_) => return (Ending::SendFailed, packets, bytes),
                    }
                }
                _ = reports.tick() => {
                    self.report(video, &video_sent, &audio_sent).await;
                }
                event = &mut rtcp, if rtcp_open => {
                    rtcp.set(self.video.track.poll());
                    // The track was unbound: the connection is closing, which `state` tells.
                    rtcp_open = event.is_some();
                    if let Some(TrackLocalEvent::OnRtcpPacket(packets)) = event
                        && packets.iter().any(|p| is_keyframe_request(p.as_ref()))
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
                () = &mut kicked => return (Ending::Kicked, packets, bytes),
            }
        }
    }
}

/// The next frame of the Opus rendition: `None` after frames were missed (the viewer fell
/// behind) or when the rendition ended (then no more are waited for); pending without one.
async fn next_opus(frames: &mut Option<broadcast::Receiver<OpusFrame>>) -> Option<OpusFrame> {
    let Some(receiver) = frames else {
        return std::future::pending().await;
    };
    match receiver.recv().await {
        Ok(frame) => Some(frame),
        Err(broadcast::error::RecvError::Lagged(_)) => None,
        Err(broadcast::error::RecvError::Closed) => {
            *frames = None;
            None
        }
    }
}

/// How often a viewer gets sender reports.
const SENDER_REPORT_EVERY: Duration = Duration::from_secs(1);

/// What a viewer was sent on one track, for its sender reports.
#[derive(Default)]
struct Sent {
    packets: u64,
    /// Payload octets (RTP headers left out, as RFC 3550 counts them).
    octets: u64,
}

impl Sent {
    fn add(&mut self, packets: u64, bytes: usize) {
        self.packets += packets;
        self.octets += (bytes as u64).saturating_sub(12 * packets);
    }
}

impl Viewer {
    /// Sends a sender report for each track that has sent something, mapping the route's clock
    /// (not the moment of sending) to wall-clock time, so that the browser keeps the tracks in
    /// step however long each took to make.
    async fn report(&self, video: &Outgoing, video_sent: &Sent, audio_sent: &Sent) {
        let Some(media) = self.stream.media() else {
            return;
        };
        let now = Instant::now();
        let ntp = crate::rtp::rtcp::ntp_timestamp(std::time::SystemTime::now());
        let audio = match (&self.audio, &self.opus) {
            (Some((track, outgoing)), _) => Some((outgoing, media.rtp_timestamp_at(*track, now))),
            (None, Some((outgoing, rendition))) => {
                Some((outgoing, rendition.rtp_timestamp_at(&media, now)))
            }
            (None, None) => None,
        };
        let tracks = [
            Some((
                video,
                media.rtp_timestamp_at(self.video_track, now),
                video_sent,
            )),
            audio.map(|(outgoing, at)| (outgoing, at, audio_sent)),
        ];
        for (outgoing, rtp_time, sent) in tracks.into_iter().flatten() {
            let Some(rtp_time) = rtp_time.filter(|_| sent.packets > 0) else {
                continue;
            };
            let report = rtc::rtcp::sender_report::SenderReport {
                ssrc: outgoing.ssrc,
                ntp_time: ntp,
                rtp_time,
                // RFC 3550: the counts wrap.
                packet_count: sent.packets as u32,
                octet_count: sent.octets as u32,
                ..Default::default()
            };
            if let Err(err) = outgoing.track.write_rtcp(vec![Box::new(report)]).await {
                tracing::debug!(session = %self.id, "sender report: {err}");
            }
        }
    }
}

pub(super) fn is_keyframe_request(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication>()
        || any.is::<rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest>()
}
