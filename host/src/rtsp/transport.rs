//! Transport choice: which of the transports a client offers in SETUP we take, for a reader and for
//! a publisher, and the header that confirms it.

use std::net::SocketAddr;

use rtsp_types::headers::{
    RtpLowerTransport, RtpProfile, Transport as TransportSpec, TransportMode,
};

/// How one track reaches the reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrackTransport {
    Udp { rtp: SocketAddr, rtcp: SocketAddr },
    Tcp { rtp_channel: u8, rtcp_channel: u8 },
}

impl TrackTransport {
    /// The Transport header that confirms this choice, ending with `extra` (e.g. `ssrc=…`).
    pub(super) fn header(&self, server_ports: (u16, u16), extra: &str) -> String {
        match self {
            TrackTransport::Udp { rtp, rtcp } => format!(
                "RTP/AVP;unicast;client_port={}-{};server_port={}-{};{extra}",
                rtp.port(),
                rtcp.port(),
                server_ports.0,
                server_ports.1
            ),
            TrackTransport::Tcp {
                rtp_channel,
                rtcp_channel,
            } => format!("RTP/AVP/TCP;unicast;interleaved={rtp_channel}-{rtcp_channel};{extra}"),
        }
    }
}

pub(super) fn choose_transport(
    spec: &TransportSpec,
    track: usize,
    peer: SocketAddr,
    session_is_tcp: Option<bool>,
) -> Option<TrackTransport> {
    let TransportSpec::Rtp(rtp) = spec else {
        return None;
    };
    if rtp.profile != RtpProfile::Avp
        || rtp.params.multicast
        || rtp.params.mode.iter().any(|m| *m != TransportMode::Play)
    {
        return None;
    }
    let tcp = match rtp.lower_transport {
        Some(RtpLowerTransport::Tcp) => true,
        None | Some(RtpLowerTransport::Udp) => false,
        Some(RtpLowerTransport::Other(_)) => return None,
    };
    // One session uses one kind of transport for all its tracks.
    if session_is_tcp.is_some_and(|session_tcp| session_tcp != tcp) {
        return None;
    }
    if tcp {
        let default = u8::try_from(track * 2).ok()?;
        let (rtp_channel, rtcp_channel) = match rtp.params.interleaved {
            Some((first, Some(second))) => (first, second),
            Some((first, None)) => (first, first.checked_add(1)?),
            None => (default, default.checked_add(1)?),
        };
        return Some(TrackTransport::Tcp {
            rtp_channel,
            rtcp_channel,
        });
    }
    let (rtp_port, rtcp_port) = rtp.params.client_port?;
    let rtcp_port = rtcp_port.or_else(|| rtp_port.checked_add(1))?;
    // Media goes to the address the control connection comes from, never to a third party.
    Some(TrackTransport::Udp {
        rtp: SocketAddr::new(peer.ip(), rtp_port),
        rtcp: SocketAddr::new(peer.ip(), rtcp_port),
    })
}

/// A publisher's transport: like a reader's, but in `mode=record`.
pub(super) fn choose_record_transport(
    spec: &TransportSpec,
    track: usize,
    peer: SocketAddr,
) -> Option<TrackTransport> {
    let TransportSpec::Rtp(rtp) = spec else {
        return None;
    };
    if !rtp.params.mode.contains(&TransportMode::Record) {
        return None;
    }
    let mut play_spec = rtp.clone();
    play_spec.params.mode = vec![TransportMode::Play];
    choose_transport(&TransportSpec::Rtp(play_spec), track, peer, None)
}
