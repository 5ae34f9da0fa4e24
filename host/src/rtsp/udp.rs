//! The server's shared UDP sockets: one RTP and one RTCP port for every UDP session, readers and
//! publishers told apart by address; the tasks that receive on them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::Error;
use super::fanout::Fanouts;
use super::session::Play;
use super::transport::TrackTransport;
use crate::rtp::{Run, rtcp};
use crate::udp_port::UdpPort;

/// Where a publisher's UDP packets go: its connection's inbox, and the track they belong to.
pub(super) type RtpSource = (mpsc::Sender<(usize, Bytes)>, usize);

/// The server's UDP sockets, shared by every UDP session: readers are told apart by address.
pub(super) struct UdpSockets {
    rtp: UdpPort,
    pub(super) rtcp: UdpPort,
    pub(super) ports: (u16, u16),
    /// Liveness flags of playing sessions, by the address their RTCP comes from.
    rtcp_peers: Mutex<HashMap<SocketAddr, Arc<AtomicBool>>>,
    /// Publishers' RTP over UDP, by the address it comes from: to their connection, with the track.
    rtp_sources: Mutex<HashMap<SocketAddr, RtpSource>>,
    /// The tasks that send to UDP readers, a few per route.
    pub(super) fanouts: Fanouts,
}

impl UdpSockets {
    pub(super) async fn bind(
        ip: IpAddr,
        (first, last): (u16, u16),
    ) -> Result<Arc<UdpSockets>, Error> {
        let mut port = first;
        while port < last {
            if let (Ok(rtp), Ok(rtcp)) = (
                UdpPort::bind((ip, port).into()),
                UdpPort::bind((ip, port + 1).into()),
            ) {
                return Ok(Arc::new(UdpSockets {
                    rtp,
                    rtcp,
                    ports: (port, port + 1),
                    rtcp_peers: Mutex::default(),
                    rtp_sources: Mutex::default(),
                    fanouts: Fanouts::default(),
                }));
            }
            port = port.saturating_add(2);
        }
        Err(Error::NoUdpPorts { first, last })
    }

    /// Sends the packets of `run` (in `wire`) to `to`: one segmenting send (GSO) for as many as
    /// the kernel takes at once, or one datagram a call where it has no GSO. A reader whose socket
    /// buffer is full is waited for, as a send per packet would; a datagram that cannot go is
    /// lost, as RTP over UDP allows.
    pub(super) async fn send_run(&self, wire: &[u8], run: &Run, to: SocketAddr) {
        if let Some(packets) = wire.get(run.bytes.clone()) {
            self.rtp.send(packets, run.segment, to).await;
        }
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<AtomicBool>>> {
        self.rtcp_peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sources(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, RtpSource>> {
        self.rtp_sources.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Removes a session's addresses from the shared maps when the session stops playing or
/// publishing.
pub(super) struct RtcpRegistration {
    udp: Arc<UdpSockets>,
    addrs: Vec<SocketAddr>,
    rtp_sources: Vec<SocketAddr>,
}

impl Drop for RtcpRegistration {
    fn drop(&mut self) {
        let mut peers = self.udp.peers();
        for addr in &self.addrs {
            peers.remove(addr);
        }
        drop(peers);
        let mut sources = self.udp.sources();
        for addr in &self.rtp_sources {
            sources.remove(addr);
        }
    }
}

pub(super) async fn receive_rtcp(udp: Arc<UdpSockets>) {
    let mut buf = vec![0u8; 2048];
    loop {
        let Ok((len, from)) = udp.rtcp.recv_from(&mut buf).await else {
            continue;
        };
        let flag = udp.peers().get(&from).cloned();
        let Some(flag) = flag else { continue };
        match rtcp::parse_reception_reports(&buf[..len]) {
            Ok(reports) => {
                flag.store(true, Ordering::Relaxed);
                for report in reports {
                    tracing::trace!(%from, ?report, "RTCP receiver report");
                }
            }
            Err(err) => tracing::debug!(%from, "ignoring RTCP packet: {err}"),
        }
    }
}

/// Publishers' RTP goes to their connection; anything else (readers punching NAT holes) is dropped.
pub(super) async fn receive_rtp(udp: Arc<UdpSockets>) {
    let mut buf = vec![0u8; 2048];
    loop {
        let Ok((len, from)) = udp.rtp.recv_from(&mut buf).await else {
            continue;
        };
        let target = udp.sources().get(&from).cloned();
        if let Some((connection, track)) = target {
            // A connection that cannot keep up loses packets, as a network would.
            let _ = connection.try_send((track, Bytes::copy_from_slice(&buf[..len])));
        }
    }
}

pub(super) fn register_publisher(
    udp: &Arc<UdpSockets>,
    sources: &[(SocketAddr, SocketAddr, usize)],
    media: &mpsc::Sender<(usize, Bytes)>,
    flag: &Arc<AtomicBool>,
) -> RtcpRegistration {
    let mut registered = udp.sources();
    for (rtp, _, track) in sources {
        registered.insert(*rtp, (media.clone(), *track));
    }
    drop(registered);
    let mut peers = udp.peers();
    for (_, rtcp, _) in sources {
        peers.insert(*rtcp, Arc::clone(flag));
    }
    drop(peers);
    RtcpRegistration {
        udp: Arc::clone(udp),
        addrs: sources.iter().map(|(_, rtcp, _)| *rtcp).collect(),
        rtp_sources: sources.iter().map(|(rtp, _, _)| *rtp).collect(),
    }
}

pub(super) fn register_rtcp(
    udp: &Arc<UdpSockets>,
    play: &Play,
    flag: &Arc<AtomicBool>,
) -> Option<RtcpRegistration> {
    let addrs: Vec<SocketAddr> = play
        .tracks
        .iter()
        .flatten()
        .filter_map(|t| match t {
            TrackTransport::Udp { rtcp, .. } => Some(*rtcp),
            TrackTransport::Tcp { .. } => None,
        })
        .collect();
    if addrs.is_empty() {
        return None;
    }
    let mut peers = udp.peers();
    for addr in &addrs {
        peers.insert(*addr, Arc::clone(flag));
    }
    drop(peers);
    Some(RtcpRegistration {
        udp: Arc::clone(udp),
        addrs,
        rtp_sources: Vec::new(),
    })
}
