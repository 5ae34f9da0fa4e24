//! A WHEP viewer made with the webrtc crate: offers to receive video, counts the RTP packets that
//! arrive.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCIceGatheringState, RTCSessionDescription, Registry, register_default_interceptors,
};

pub struct Viewer {
    pc: Arc<dyn PeerConnection>,
    /// The session's resource, from the answer's `Location`.
    pub location: String,
    /// The server's SDP answer.
    pub answer: String,
    pub packets: Arc<AtomicU64>,
}

struct Handler {
    packets: Arc<AtomicU64>,
    gathered: watch::Sender<bool>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.send(true);
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let packets = Arc::clone(&self.packets);
        tokio::spawn(async move {
            while let Some(event) = track.poll().await {
                match event {
                    TrackRemoteEvent::OnRtpPacket(_) => {
                        packets.fetch_add(1, Ordering::Relaxed);
                    }
                    TrackRemoteEvent::OnEnded => break,
                    _ => {}
                }
            }
        });
    }
}

impl Viewer {
    /// Starts watching `route` of the server whose HTTP side is at `http`.
    pub async fn connect(http: SocketAddr, route: &str) -> Result<Viewer, String> {
        Viewer::connect_offering(http, route, &[]).await
    }

    /// Like [`Viewer::connect`], offering `codecs` too (as a browser that decodes H.265 would).
    pub async fn connect_offering(
        http: SocketAddr,
        route: &str,
        codecs: &[RTCRtpCodecParameters],
    ) -> Result<Viewer, String> {
        Viewer::connect_with(http, route, codecs, false).await
    }

    /// Like [`Viewer::connect`], taking the route's sound too (Opus; its packets are counted).
    pub async fn connect_listening(http: SocketAddr, route: &str) -> Result<Viewer, String> {
        Viewer::connect_with(http, route, &[], true).await
    }

    async fn connect_with(
        http: SocketAddr,
        route: &str,
        codecs: &[RTCRtpCodecParameters],
        audio: bool,
    ) -> Result<Viewer, String> {
        let mut media_engine = MediaEngine::default();
        for codec in codecs {
            media_engine
                .register_codec(codec.clone(), RtpCodecKind::Video)
                .map_err(|e| e.to_string())?;
        }
        media_engine
            .register_default_codecs()
            .map_err(|e| e.to_string())?;
        // The crate's defaults have no H.264 Main; browsers offer it (Chromium: 4d001f).
        media_engine
            .register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: RTCRtpCodec {
                        mime_type: "video/H264".into(),
                        clock_rate: 90_000,
                        channels: 0,
                        sdp_fmtp_line:
                            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f"
                                .into(),
                        rtcp_feedback: Vec::new(),
                    },
                    payload_type: 104,
                },
                RtpCodecKind::Video,
            )
            .map_err(|e| e.to_string())?;
        let registry = register_default_interceptors(Registry::new(), &mut media_engine)
            .map_err(|e| e.to_string())?;
        let packets = Arc::new(AtomicU64::new(0));
        let (gathered_tx, mut gathered) = watch::channel(false);
        let pc = PeerConnectionBuilder::new()
            .with_media_engine(media_engine)
            .with_interceptor_registry(registry)
            .with_handler(Arc::new(Handler {
                packets: Arc::clone(&packets),
                gathered: gathered_tx,
            }))
            .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
            .build()
            .await
            .map_err(|e| e.to_string())?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        pc.add_transceiver_from_kind(
            RtpCodecKind::Video,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                streams: Vec::new(),
                send_encodings: Vec::new(),
            }),
        )
        .await
        .map_err(|e| e.to_string())?;
        if audio {
            pc.add_transceiver_from_kind(
                RtpCodecKind::Audio,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    streams: Vec::new(),
                    send_encodings: Vec::new(),
                }),
            )
            .await
            .map_err(|e| e.to_string())?;
        }
        let offer = pc.create_offer(None).await.map_err(|e| e.to_string())?;
        pc.set_local_description(offer)
            .await
            .map_err(|e| e.to_string())?;
        let _ = tokio::time::timeout(Duration::from_secs(3), gathered.wait_for(|g| *g)).await;
        let offer = pc
            .local_description()
            .await
            .ok_or("no local description")?
            .sdp;
        let (status, location, answer) = post(http, &format!("/{route}/whep"), &offer).await?;
        if status != 201 {
            return Err(format!(
                "WHEP answered {status}: {answer}\nto the offer {offer}"
            ));
        }
        let description =
            RTCSessionDescription::answer(answer.clone()).map_err(|e| e.to_string())?;
        pc.set_remote_description(description)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Viewer {
            pc,
            location: location.ok_or("no Location")?,
            answer,
            packets,
        })
    }

    pub async fn close(&self) {
        let _ = self.pc.close().await;
    }
}

/// POSTs an SDP offer; the status, the `Location` and the body.
async fn post(
    http: SocketAddr,
    path: &str,
    offer: &str,
) -> Result<(u16, Option<String>, String), String> {
    let mut socket = tokio::net::TcpStream::connect(http)
        .await
        .map_err(|e| e.to_string())?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{offer}",
        offer.len()
    );
    socket
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut reply = String::new();
    socket
        .read_to_string(&mut reply)
        .await
        .map_err(|e| e.to_string())?;
    let (head, body) = reply.split_once("\r\n\r\n").ok_or("no HTTP reply")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    let location = head.lines().find_map(|l| {
        l.split_once(':')
            .filter(|(name, _)| name.eq_ignore_ascii_case("location"))
            .map(|(_, value)| value.trim().to_owned())
    });
    Ok((status, location, body.to_owned()))
}
