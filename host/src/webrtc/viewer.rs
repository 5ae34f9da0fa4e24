//! One browser watching one route, on a peer connection we drive ourselves: the `rtc` crate's
//! sans-IO core, fed by the viewer's share of the mux and driven by the viewer's task.
//!
//! The webrtc crate's own driver takes one RTP packet per message through a channel and runs its
//! whole loop (writes, events, reads, timers, a `select!` over its sockets) per packet, then one
//! `sendto` per datagram; at 500 viewers that was most of a core. Here the task wakes once per
//! access unit: it writes the unit's packets (SSRC and payload type rewritten) into the core,
//! which runs them through the NACK responder and SRTP, and sends what comes out in as few calls
//! as the kernel allows (UDP GSO for the run of equal-size datagrams to one address). ICE-TCP
//! connections each have a task of their own (`ice_tcp`).
//!
//! A keyframe request (PLI/FIR) makes the viewer wait for the next keyframe; the viewer sends its
//! own sender reports, from the route's clock (see `send`).

use bytes::BytesMut;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::RTCMessage;
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::sync::{broadcast, mpsc};

use super::ice_tcp::TcpLinks;
use super::mux::ViewerPorts;
use super::opus::{OpusFrame, Rendition};
use super::unconnected::Waiting;
use super::*;

mod send;

use send::{SENDER_REPORT_EVERY, Sent};

/// How long the core may go without a timer: it names its next deadline whenever it has one.
const IDLE_TICK: Duration = Duration::from_secs(1);
/// The shortest sleep between timer checks, so that a deadline the core keeps naming as past
/// cannot make the task spin.
const MIN_SLEEP: Duration = Duration::from_millis(1);

/// The packets a viewer's browser may send, over UDP and ICE-TCP together: RTCP feedback
/// (receiver reports, transport-wide feedback every 50 to 250 ms, NACKs, keyframe requests) and
/// ICE checks come to some tens a second, a few hundred on a lossy link. Each is handed to the
/// WebRTC stack at a couple of microseconds; a viewer sending tiny packets under its byte
/// allowance sent 17,000 a second, past this it is ended.
pub(super) const INBOUND_PACKETS: Allowance = Allowance {
    per_second: 1_000,
    burst: 5_000,
};

/// One track we send: its sender in the peer connection, and the SSRC and payload type every
/// packet must carry.
#[derive(Clone, Copy)]
pub(super) struct Outgoing {
    pub(super) sender: RTCRtpSenderId,
    pub(super) ssrc: u32,
    pub(super) payload_type: u8,
}

/// One browser watching one route.
pub(super) struct Viewer {
    pub(super) id: String,
    pub(super) route: String,
    pub(super) peer: SocketAddr,
    pub(super) stream: Arc<Stream>,
    pub(super) pc: RTCPeerConnection,
    pub(super) ports: ViewerPorts,
    /// Where the viewer's candidates are (the shared ports), as the core knows them.
    pub(super) udp_local: SocketAddr,
    pub(super) tcp_local: Option<SocketAddr>,
    pub(super) video_track: usize,
    pub(super) video: Outgoing,
    /// The route's audio track, when it is Opus, and how it goes out.
    pub(super) audio: Option<(usize, Outgoing)>,
    /// The route's AAC as Opus: the rendition, held while the viewer watches.
    pub(super) opus: Option<(Outgoing, Arc<Rendition>)>,
    /// Remote candidates trickled in (`PATCH`).
    pub(super) candidates: mpsc::Receiver<RTCIceCandidateInit>,
    /// Where the datagrams of one send are gathered (see `flush`).
    pub(super) run: Vec<u8>,
    /// What it has sent against [`INBOUND_PACKETS`].
    pub(super) inbound: Budget,
    pub(super) clients: Arc<ClientLimit>,
    pub(super) place: Place,
    pub(super) _mux: MuxLease,
    pub(super) peers: Peers,
}

/// Where a viewer stands: counted as waiting to connect, then holding its place under
/// `max_clients` once it has (each held for what its drop gives back).
pub(super) enum Place {
    Waiting { _counted: Waiting },
    Taken { _slot: ClientSlot },
}

/// Why a viewer's session ended, for the access log.
#[derive(Debug, thiserror::Error)]
pub(super) enum Ending {
    #[error("never connected")]
    NeverConnected,
    #[error("connection closed")]
    Closed,
    #[error("the route ended")]
    RouteEnded,
    #[error("{0}")]
    Ended(EndedBy),
    #[error("connected when the server was full: {0}")]
    Full(Full),
    #[error(
        "sent more than {} (a browser sends RTCP feedback and ICE checks)",
        INBOUND_PACKETS.counted("packets")
    )]
    TooManyPackets,
}

/// What the viewer has sent, for the access log and its sender reports.
#[derive(Default)]
struct Tally {
    packets: u64,
    bytes: u64,
    video: Sent,
    audio: Sent,
}

impl Viewer {
    /// Serves the viewer until it goes, its route ends or `registration` is kicked.
    pub(super) async fn run(mut self, registration: Registration) {
        let started = Instant::now();
        let mut tally = Tally::default();
        let ending = self.serve(&registration, &mut tally).await;
        if matches!(ending, Ending::TooManyPackets) {
            tracing::warn!(session = %self.id, peer = %self.peer, route = %self.route, "WebRTC viewer ended: {ending}");
        }
        if let Err(err) = self.pc.close() {
            tracing::debug!(session = %self.id, "closing a peer connection: {err}");
        }
        // The close's own packets (DTLS close_notify) go out before the lease ends.
        self.flush_udp_only();
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        tracing::info!(
            target: "wasmcast::access",
            peer = %self.peer,
            route = %self.route,
            session = %self.id,
            ended = %ending,
            seconds = started.elapsed().as_secs_f32(),
            packets = tally.packets,
            bytes = tally.bytes,
            "webrtc"
        );
    }

    async fn serve(&mut self, registration: &Registration, tally: &mut Tally) -> Ending {
        let mut tcp = TcpLinks::new();
        let connect_by = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        let mut reader = None;
        let mut opus_frames = None;
        let mut opus_sequence: u16 = rand::random();
        let mut reports = tokio::time::interval(SENDER_REPORT_EVERY);
        let mut waiting_for_keyframe = false;
        let ended = registration.ended();
        tokio::pin!(ended);
        loop {
            // Timers are handled here, whatever woke the task, so that a busy viewer (a flood
            // of packets from its browser) cannot starve its ICE and DTLS timers.
            let now = Instant::now();
            if reader.is_none() && tokio::time::Instant::now() >= connect_by {
                return Ending::NeverConnected;
            }
            if self.pc.poll_timeout().is_some_and(|due| due <= now)
                && let Err(err) = self.pc.handle_timeout(now)
            {
                tracing::debug!(session = %self.id, "peer connection timer: {err}");
            }
            self.flush(&mut tcp);
            while let Some(event) = self.pc.poll_event() {
                let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) = event else {
                    continue;
                };
                match state {
                    RTCPeerConnectionState::Connected if reader.is_none() => {
                        match self.clients.acquire() {
                            Ok(slot) => self.place = Place::Taken { _slot: slot },
                            Err(full) => return Ending::Full(full),
                        }
                        let Some(subscribed) = self.stream.subscribe() else {
                            return Ending::RouteEnded;
                        };
                        reader = Some(subscribed);
                        self.stream.request_keyframe();
                        opus_frames = self
                            .opus
                            .as_ref()
                            .map(|(_, rendition)| rendition.subscribe());
                    }
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                        return if reader.is_some() {
                            Ending::Closed
                        } else {
                            Ending::NeverConnected
                        };
                    }
                    _ => {}
                }
            }
            while let Some(message) = self.pc.poll_read() {
                if let RTCMessage::RtcpPacket(_, packets) = message.message
                    && packets.iter().any(|p| is_keyframe_request(p.as_ref()))
                {
                    // A re-encoding route makes one at once; passed-through video cannot, so
                    // the viewer skips to the next one rather than decode garbage.
                    self.stream.request_keyframe();
                    waiting_for_keyframe = true;
                }
            }
            // The core names its next deadline; the task sleeps at least a millisecond, as a
            // deadline already past is handled at the top of the loop.
            let now = Instant::now();
            let deadline = self
                .pc
                .poll_timeout()
                .unwrap_or(now + IDLE_TICK)
                .clamp(now + MIN_SLEEP, now + IDLE_TICK);
            let timer = tokio::time::sleep_until(deadline.into());
            tokio::select! {
                by = &mut ended => return Ending::Ended(by),
                datagram = self.ports.datagrams.recv() => {
                    // None: the lease ended, which only the viewer itself does.
                    let Some(datagram) = datagram else { return Ending::Closed };
                    if !self.receive(datagram.from, self.udp_local, TransportProtocol::UDP, &datagram.data) {
                        return Ending::TooManyPackets;
                    }
                    // What else came meanwhile, before the next flush.
                    while let Ok(datagram) = self.ports.datagrams.try_recv() {
                        if !self.receive(datagram.from, self.udp_local, TransportProtocol::UDP, &datagram.data) {
                            return Ending::TooManyPackets;
                        }
                    }
                }
                Some(accepted) = self.ports.connections.recv() => tcp.open(accepted),
                Some((from, packet)) = tcp.read_rx.recv() => {
                    if let Some(local) = self.tcp_local
                        && !self.receive(from, local, TransportProtocol::TCP, &packet)
                    {
                        return Ending::TooManyPackets;
                    }
                }
                Some(candidate) = self.candidates.recv() => {
                    if let Err(err) = self.pc.add_remote_candidate(candidate) {
                        tracing::debug!(session = %self.id, "a trickled candidate: {err}");
                    }
                }
                unit = next_unit(&mut reader) => {
                    let Some(unit) = unit else { return Ending::RouteEnded };
                    let outgoing = if unit.au.track == self.video_track {
                        if waiting_for_keyframe && !unit.au.keyframe {
                            continue;
                        }
                        waiting_for_keyframe = false;
                        self.video
                    } else {
                        match self.audio {
                            Some((track, audio)) if track == unit.au.track => audio,
                            _ => continue,
                        }
                    };
                    self.send_unit(&unit.rtp.packets, outgoing, tally);
                }
                frame = next_opus(&mut opus_frames) => {
                    let Some(((outgoing, _), frame)) = self.opus.as_ref().zip(frame) else {
                        continue;
                    };
                    let outgoing = *outgoing;
                    self.send_opus(frame, outgoing, &mut opus_sequence, tally);
                }
                _ = reports.tick(), if reader.is_some() => self.report(tally),
                // Handled at the top of the loop.
                () = timer => {}
            }
        }
    }

    /// Hands one packet the browser sent to the core; false when it is past [`INBOUND_PACKETS`]
    /// (and not handed over).
    fn receive(
        &mut self,
        from: SocketAddr,
        local: SocketAddr,
        protocol: TransportProtocol,
        data: &[u8],
    ) -> bool {
        let now = Instant::now();
        if !self.inbound.charge(1, now) {
            return false;
        }
        let message = TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: local,
                peer_addr: from,
                ecn: None,
                transport_protocol: protocol,
            },
            message: BytesMut::from(data),
        };
        if let Err(err) = self.pc.handle_read(message) {
            tracing::trace!(session = %self.id, "a packet from the browser: {err}");
        }
        true
    }

    /// Sends what the core has to send: UDP datagrams to one address in runs of equal size, each
    /// run in one segmenting send; ICE-TCP packets framed, all of a connection's in one buffer to
    /// its queue.
    fn flush(&mut self, tcp: &mut TcpLinks) {
        // The buffer the runs are gathered in is the viewer's, kept from one flush to the next.
        let mut run = std::mem::take(&mut self.run);
        run.clear();
        let mut run_to: Option<(SocketAddr, usize)> = None;
        while let Some(message) = self.pc.poll_write() {
            let to = message.transport.peer_addr;
            if message.transport.transport_protocol == TransportProtocol::TCP {
                tcp.add(to, &message.message);
                continue;
            }
            let len = message.message.len();
            if len == 0 {
                continue;
            }
            // A run goes on while datagrams are for the same address and of its size; a
            // shorter one can only end it.
            let extends = matches!(run_to, Some((addr, segment)) if addr == to && len <= segment
                && run.len().is_multiple_of(segment));
            if !extends && let Some((addr, segment)) = run_to.take() {
                self.ports.send(&run, segment, addr);
                run.clear();
            }
            if run_to.is_none() {
                run_to = Some((to, len));
            }
            run.extend_from_slice(&message.message);
        }
        if let Some((addr, segment)) = run_to {
            self.ports.send(&run, segment, addr);
        }
        tcp.flush();
        self.run = run;
    }

    /// The last UDP packets of a closing connection (its TCP connections close with it).
    fn flush_udp_only(&mut self) {
        while let Some(message) = self.pc.poll_write() {
            if message.transport.transport_protocol == TransportProtocol::UDP {
                let len = message.message.len();
                self.ports
                    .send(&message.message, len, message.transport.peer_addr);
            }
        }
    }
}

/// The next unit for a viewer that reads the route; pending before it connects.
async fn next_unit(reader: &mut Option<crate::hub::Reader>) -> Option<Arc<crate::hub::Unit>> {
    match reader {
        Some(reader) => reader.next().await,
        None => std::future::pending().await,
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

pub(super) fn is_keyframe_request(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication>()
        || any.is::<rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest>()
}
