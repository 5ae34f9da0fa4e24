//! One UDP port and one TCP port for every WebRTC viewer (`webrtc_udp`, `webrtc_tcp`).
//!
//! A firewall rule or a `docker run -p` then needs two lines, however many viewers there are.
//! Incoming traffic is told apart the way ICE allows: a STUN binding request names the viewer in
//! its USERNAME (`OUR_UFRAG:THEIR_UFRAG`, and every viewer's ufrag is ours to choose), which ties
//! the sender's address to that viewer; everything else (DTLS, SRTP, SRTCP) follows its address.
//! Over TCP (ICE-TCP, RFC 6544: each packet after a 2-byte length) a connection's first packet is
//! the browser's binding request, so the whole connection goes to the viewer it names.
//!
//! A viewer's connection is ours to drive (see `viewer`): it takes its datagrams and ICE-TCP
//! connections from [`ViewerPorts`] and sends from the shared UDP port, with GSO where the kernel
//! has it. A publisher's connection is the webrtc crate's, which binds and drives its own sockets;
//! the extension point it offers is its `Runtime`, which wraps every socket it binds. Each
//! publisher's connection gets a runtime ([`PublisherRuntime`]) that hands it this mux's view of the
//! shared ports instead: a UDP socket that receives its datagrams and sends from the shared port,
//! and a TCP listener that accepts the connections that named it. The crate still binds an
//! ephemeral socket whose address becomes the candidate it announces; that socket is closed at
//! once, and the answer's candidates are rewritten to name the shared ports (see `network`).
//!
//! Bounds: ICE-TCP connections count toward the server's connection limits (in all and per
//! address); a viewer's queue of datagrams not yet read (excess dropped, as UDP is), the addresses
//! one viewer may be reached at, its TCP connections, TCP connections still handshaking and the
//! time each may take, and the time a TCP write may stall (a viewer that stops reading is cut off
//! and then reaped by ICE like any dead one).

mod runtime;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};

use crate::listen::{ConnectionGate, ConnectionPermit};
use crate::udp_port::UdpPort;
use rtc::stun::attributes::ATTR_USERNAME;
use rtc::stun::message::{Message, is_stun_message};
use rtc::stun::textattrs::TextAttribute;

pub use runtime::PublisherRuntime;

/// Datagrams a viewer's connection has not read yet; more are dropped.
const VIEWER_QUEUE: usize = 128;
/// Remote addresses one viewer may be reached at (a browser checks a few candidate pairs); the
/// oldest is forgotten beyond this.
const ADDRESSES_PER_VIEWER: usize = 8;
/// ICE-TCP connections one viewer may hold.
const TCP_PER_VIEWER: usize = 4;
/// ICE-TCP connections that have not yet named their viewer, in all.
const TCP_HANDSHAKES: usize = 256;
/// How long a new ICE-TCP connection may take to send its first packet.
const TCP_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one packet may wait for an ICE-TCP viewer's socket to take it.
pub(super) const TCP_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest packet taken: ICE, DTLS and SRTP packets fit an Ethernet MTU.
pub(super) const MAX_PACKET: usize = 2048;

/// Why the shared ports could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot bind WebRTC UDP port {addr} (server.webrtc_udp): {source}")]
    BindUdp { addr: SocketAddr, source: io::Error },
    #[error("cannot bind WebRTC TCP port {addr} (server.webrtc_tcp): {source}")]
    BindTcp { addr: SocketAddr, source: io::Error },
}

/// The shared ports and the viewers they carry.
#[derive(Clone)]
pub struct IceMux {
    shared: Arc<Shared>,
}

struct Shared {
    udp: UdpPort,
    udp_addr: SocketAddr,
    tcp_addr: Option<SocketAddr>,
    viewers: Mutex<Viewers>,
}

#[derive(Default)]
struct Viewers {
    by_ufrag: HashMap<String, Entry>,
    by_addr: HashMap<SocketAddr, String>,
}

struct Entry {
    datagrams: mpsc::Sender<Datagram>,
    connections: mpsc::Sender<Accepted>,
    addrs: VecDeque<SocketAddr>,
    tcp_open: Arc<AtomicUsize>,
}

pub(super) struct Datagram {
    pub(super) from: SocketAddr,
    pub(super) data: Bytes,
}

/// A TCP connection that named a viewer, with what was read of it to find out which.
pub(super) struct Accepted {
    pub(super) stream: TcpStream,
    pub(super) peer: SocketAddr,
    /// The first packet, with its 2-byte length.
    pub(super) first: Vec<u8>,
    pub(super) open: ConnectionCount,
    pub(super) permit: ConnectionPermit,
}

/// A viewer's share of the ports, for a connection we drive ourselves: the datagrams and the
/// ICE-TCP connections that are the viewer's, and the shared UDP port to send from.
pub(super) struct ViewerPorts {
    shared: Arc<Shared>,
    pub(super) datagrams: mpsc::Receiver<Datagram>,
    pub(super) connections: mpsc::Receiver<Accepted>,
}

impl ViewerPorts {
    /// Sends `contents`, datagrams of `segment` bytes (the last may be shorter) for `to`, in as
    /// few calls as the kernel allows (GSO). Sends at once or not at all: a full socket buffer
    /// drops what did not fit, as the network would, rather than making every viewer wait.
    pub(super) fn send(&self, contents: &[u8], segment: usize, to: SocketAddr) {
        if let Err(err) = self.shared.udp.try_send(contents, segment, to) {
            tracing::trace!(%to, "WebRTC UDP send dropped: {err}");
        }
    }
}

impl IceMux {
    /// Binds `udp` and, if given, `tcp`, and serves them until the server stops.
    /// ICE-TCP connections count toward `gate`'s limits, as RTSP and HTTP ones do.
    pub async fn bind(
        udp: SocketAddr,
        tcp: Option<SocketAddr>,
        gate: Arc<ConnectionGate>,
    ) -> Result<IceMux, Error> {
        let udp_socket =
            UdpPort::bind(udp).map_err(|source| Error::BindUdp { addr: udp, source })?;
        let udp_addr = udp_socket
            .local_addr()
            .map_err(|source| Error::BindUdp { addr: udp, source })?;
        let listener = match tcp {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| Error::BindTcp { addr, source })?,
            ),
            None => None,
        };
        let tcp_addr = match &listener {
            Some(listener) => Some(listener.local_addr().map_err(|source| Error::BindTcp {
                addr: tcp.unwrap_or(udp),
                source,
            })?),
            None => None,
        };
        let shared = Arc::new(Shared {
            udp: udp_socket,
            udp_addr,
            tcp_addr,
            viewers: Mutex::default(),
        });
        tokio::spawn(receive_udp(Arc::clone(&shared)));
        if let Some(listener) = listener {
            tokio::spawn(accept_tcp(listener, Arc::clone(&shared), gate));
        }
        Ok(IceMux { shared })
    }

    pub fn udp_addr(&self) -> SocketAddr {
        self.shared.udp_addr
    }

    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.shared.tcp_addr
    }

    /// Registers a publisher under `ufrag` (the local ICE username fragment of its connection),
    /// for a connection the webrtc crate drives on the runtime returned; the lease ends the
    /// registration when dropped.
    pub fn lease(&self, ufrag: String) -> (MuxLease, PublisherRuntime) {
        let (lease, ports) = self.ports(ufrag);
        let runtime =
            PublisherRuntime::new(Arc::clone(&self.shared), ports.datagrams, ports.connections);
        (lease, runtime)
    }

    /// Registers a viewer under `ufrag`, for a connection we drive ourselves; the lease ends the
    /// registration when dropped.
    pub fn ports(&self, ufrag: String) -> (MuxLease, ViewerPorts) {
        let (datagrams, datagram_rx) = mpsc::channel(VIEWER_QUEUE);
        let (connections, connection_rx) = mpsc::channel(TCP_PER_VIEWER);
        self.shared.lock().by_ufrag.insert(
            ufrag.clone(),
            Entry {
                datagrams,
                connections,
                addrs: VecDeque::new(),
                tcp_open: Arc::default(),
            },
        );
        let ports = ViewerPorts {
            shared: Arc::clone(&self.shared),
            datagrams: datagram_rx,
            connections: connection_rx,
        };
        let lease = MuxLease {
            shared: Arc::clone(&self.shared),
            ufrag,
        };
        (lease, ports)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Viewers> {
        self.viewers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands a datagram to the viewer it is for, if any.
    fn deliver(&self, data: &[u8], from: SocketAddr) {
        let mut viewers = self.lock();
        let viewers = &mut *viewers;
        // A binding request names its viewer, and moves its address to that viewer (a browser
        // that left and came back from the same port is a new viewer).
        if let Some(ufrag) = stun_ufrag(data)
            && viewers.by_addr.get(&from) != Some(&ufrag)
            && let Some(entry) = viewers.by_ufrag.get_mut(&ufrag)
        {
            if entry.addrs.len() == ADDRESSES_PER_VIEWER
                && let Some(oldest) = entry.addrs.pop_front()
            {
                viewers.by_addr.remove(&oldest);
            }
            entry.addrs.push_back(from);
            if let Some(previous) = viewers.by_addr.insert(from, ufrag)
                && let Some(before) = viewers.by_ufrag.get_mut(&previous)
            {
                before.addrs.retain(|a| *a != from);
            }
        }
        let Some(entry) = viewers
            .by_addr
            .get(&from)
            .and_then(|ufrag| viewers.by_ufrag.get(ufrag))
        else {
            return;
        };
        let _ = entry.datagrams.try_send(Datagram {
            from,
            data: Bytes::copy_from_slice(data),
        });
    }
}

/// The local ufrag a STUN binding request names (`OURS:THEIRS` in its USERNAME).
fn stun_ufrag(data: &[u8]) -> Option<String> {
    if !is_stun_message(data) {
        return None;
    }
    let mut message = Message::new();
    message.unmarshal_binary(data).ok()?;
    let username = TextAttribute::get_from_as(&message, ATTR_USERNAME).ok()?;
    let (ours, _) = username.text.split_once(':')?;
    Some(ours.to_owned())
}

async fn receive_udp(shared: Arc<Shared>) {
    let mut buffer = vec![0; MAX_PACKET];
    loop {
        match shared.udp.recv_from(&mut buffer).await {
            Ok((len, from)) => shared.deliver(&buffer[..len], from),
            // An ICMP error for something sent earlier: not the port's.
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
                ) =>
            {
                tracing::trace!("WebRTC UDP receive: {err}");
            }
            Err(err) => {
                tracing::warn!("WebRTC UDP receive failed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn accept_tcp(listener: TcpListener, shared: Arc<Shared>, gate: Arc<ConnectionGate>) {
    let handshakes = Arc::new(Semaphore::new(TCP_HANDSHAKES));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors, most likely: wait for some to close.
                tracing::warn!("WebRTC TCP accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(handshaking) = Arc::clone(&handshakes).try_acquire_owned() else {
            continue;
        };
        let permit = match gate.admit(peer.ip()) {
            Ok(permit) => permit,
            Err(refusal) => {
                tracing::debug!(%peer, "ICE-TCP connection refused: {refusal}");
                continue;
            }
        };
        gate.bound_send_buffer(&stream);
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let _handshaking = handshaking;
            let handshake = handshake(stream, peer, permit, &shared);
            match tokio::time::timeout(TCP_HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Err(why)) => tracing::debug!(%peer, "ICE-TCP connection refused: {why}"),
                Err(_) => tracing::debug!(%peer, "ICE-TCP connection sent nothing in time"),
                Ok(Ok(())) => {}
            }
        });
    }
}

/// Reads a new connection's first packet and gives the connection to the viewer it names.
async fn handshake(
    mut stream: TcpStream,
    peer: SocketAddr,
    permit: ConnectionPermit,
    shared: &Shared,
) -> io::Result<()> {
    let mut length = [0; 2];
    stream.read_exact(&mut length).await?;
    let length = usize::from(u16::from_be_bytes(length));
    if length > MAX_PACKET {
        return Err(io::Error::other(format!("a {length}-byte first packet")));
    }
    let mut first = vec![0; 2 + length];
    stream.read_exact(&mut first[2..]).await?;
    first[..2].copy_from_slice(&(length as u16).to_be_bytes());
    let ufrag = stun_ufrag(&first[2..])
        .ok_or_else(|| io::Error::other("the first packet is not an ICE binding request"))?;
    let viewers = shared.lock();
    let entry = viewers
        .by_ufrag
        .get(&ufrag)
        .ok_or_else(|| io::Error::other("no viewer has that ufrag"))?;
    let open = ConnectionCount::take(&entry.tcp_open)
        .ok_or_else(|| io::Error::other("the viewer has enough TCP connections"))?;
    entry
        .connections
        .try_send(Accepted {
            stream,
            peer,
            first,
            open,
            permit,
        })
        .map_err(|_| io::Error::other("the viewer is not accepting"))
}

/// One of a viewer's ICE-TCP connections, counted while it is open.
pub(super) struct ConnectionCount(Arc<AtomicUsize>);

impl ConnectionCount {
    fn take(count: &Arc<AtomicUsize>) -> Option<ConnectionCount> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < TCP_PER_VIEWER).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnectionCount(Arc::clone(count)))
    }
}

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A viewer's place on the shared ports, given up when dropped.
pub struct MuxLease {
    shared: Arc<Shared>,
    ufrag: String,
}

impl Drop for MuxLease {
    fn drop(&mut self) {
        let mut viewers = self.shared.lock();
        if let Some(entry) = viewers.by_ufrag.remove(&self.ufrag) {
            for addr in entry.addrs {
                viewers.by_addr.remove(&addr);
            }
        }
    }
}
