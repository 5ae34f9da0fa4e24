//! One UDP port and one TCP port for every WebRTC viewer (`webrtc_udp`, `webrtc_tcp`).
//!
//! A firewall rule or a `docker run -p` then needs two lines, however many viewers there are.
//! Incoming traffic is told apart the way ICE allows: a STUN binding request names the viewer in
//! its USERNAME (`OUR_UFRAG:THEIR_UFRAG`, and every viewer's ufrag is ours to choose), which ties
//! the sender's address to that viewer; everything else (DTLS, SRTP, SRTCP) follows its address.
//! Over TCP (ICE-TCP, RFC 6544: each packet after a 2-byte length) a connection's first packet is
//! the browser's binding request, so the whole connection goes to the viewer it names.
//!
//! The webrtc crate binds and drives its own sockets; the extension point it offers is its
//! [`Runtime`], which wraps every socket it binds. Each viewer's connection gets a runtime
//! ([`ViewerRuntime`]) that hands it this mux's view of the shared ports instead: a UDP socket
//! that receives the viewer's datagrams and sends from the shared port, and a TCP listener that
//! accepts the connections that named the viewer. The crate still binds an ephemeral socket
//! whose address becomes the candidate it announces; that socket is closed at once, and the
//! answer's candidates are rewritten to name the shared ports (see `network`).
//!
//! Bounds: ICE-TCP connections count toward the server's connection limits (in all and per
//! address); a viewer's queue of datagrams not yet read (excess dropped, as UDP is), the addresses
//! one viewer may be reached at, its TCP connections, TCP connections still handshaking and the
//! time each may take, and the time a TCP write may stall (a viewer that stops reading is cut off
//! and then reaped by ICE like any dead one).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, mpsc};
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, RecvMeta, Runtime,
    TokioRuntime, Transmit,
};

use crate::listen::{ConnectionGate, ConnectionPermit};
use rtc::stun::attributes::ATTR_USERNAME;
use rtc::stun::message::{Message, is_stun_message};
use rtc::stun::textattrs::TextAttribute;

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
const TCP_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest packet taken: ICE, DTLS and SRTP packets fit an Ethernet MTU.
const MAX_PACKET: usize = 2048;

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
    udp: Arc<UdpSocket>,
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

struct Datagram {
    from: SocketAddr,
    data: Bytes,
}

/// A TCP connection that named a viewer, with what was read of it to find out which.
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    first: Vec<u8>,
    open: ConnectionCount,
    permit: ConnectionPermit,
}

impl IceMux {
    /// Binds `udp` and, if given, `tcp`, and serves them until the server stops.
    /// ICE-TCP connections count toward `gate`'s limits, as RTSP and HTTP ones do.
    pub async fn bind(
        udp: SocketAddr,
        tcp: Option<SocketAddr>,
        gate: Arc<ConnectionGate>,
    ) -> Result<IceMux, Error> {
        let udp_socket = UdpSocket::bind(udp)
            .await
            .map_err(|source| Error::BindUdp { addr: udp, source })?;
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
            udp: Arc::new(udp_socket),
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

    /// Registers a viewer under `ufrag` (the local ICE username fragment of its connection);
    /// the lease ends the registration when dropped.
    pub fn lease(&self, ufrag: String) -> (MuxLease, ViewerRuntime) {
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
        let runtime = ViewerRuntime {
            inner: Arc::new(TokioRuntime),
            shared: Arc::clone(&self.shared),
            datagrams: Mutex::new(Some(datagram_rx)),
            connections: Mutex::new(Some(connection_rx)),
        };
        let lease = MuxLease {
            shared: Arc::clone(&self.shared),
            ufrag,
        };
        (lease, runtime)
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
struct ConnectionCount(Arc<AtomicUsize>);

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

/// The runtime one viewer's connection runs on: tokio's, except that the sockets the connection
/// binds are replaced by its share of the mux.
#[derive(Debug)]
pub struct ViewerRuntime {
    inner: Arc<TokioRuntime>,
    shared: Arc<Shared>,
    datagrams: Mutex<Option<mpsc::Receiver<Datagram>>>,
    connections: Mutex<Option<mpsc::Receiver<Accepted>>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceMux")
            .field("udp", &self.udp_addr)
            .field("tcp", &self.tcp_addr)
            .finish()
    }
}

fn taken<T>(slot: &Mutex<Option<T>>) -> io::Result<T> {
    slot.lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .ok_or_else(|| io::Error::other("a viewer has one socket of each kind on the shared ports"))
}

impl Runtime for ViewerRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        self.inner.spawn(future)
    }

    fn spawn_reactor(
        &self,
        pool_size: usize,
        future: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Box<dyn JoinHandle> {
        self.inner.spawn_reactor(pool_size, future)
    }

    /// `socket` is the ephemeral one the connection bound; its address stays the connection's
    /// name for the viewer's path, and the port itself is closed.
    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let local = socket.local_addr()?;
        drop(socket);
        Ok(Arc::new(ViewerUdpSocket {
            local,
            shared: Arc::clone(&self.shared),
            datagrams: Mutex::new(taken(&self.datagrams)?),
        }))
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<Arc<dyn AsyncTcpListener>> {
        let local = listener.local_addr()?;
        drop(listener);
        Ok(Arc::new(ViewerTcpListener {
            local,
            connections: tokio::sync::Mutex::new(taken(&self.connections)?),
        }))
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        self.inner.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.inner.resolve_host(host)
    }

    fn now(&self) -> Instant {
        self.inner.now()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        self.inner.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.inner.block_on(future)
    }

    fn name(&self) -> &'static str {
        "wasmcast-ice-mux"
    }
}

/// A viewer's view of the shared UDP port.
#[derive(Debug)]
struct ViewerUdpSocket {
    local: SocketAddr,
    shared: Arc<Shared>,
    datagrams: Mutex<mpsc::Receiver<Datagram>>,
}

impl std::fmt::Debug for Datagram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes from {}", self.data.len(), self.from)
    }
}

impl AsyncUdpSocket for ViewerUdpSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    /// Sends at once or not at all: a full socket buffer drops the datagram, as the network
    /// would, rather than making every viewer on the port wait.
    fn poll_send(&self, _cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        match self
            .shared
            .udp
            .try_send_to(transmit.contents, transmit.destination)
        {
            Ok(sent) => Poll::Ready(Ok(sent)),
            Err(err) => {
                tracing::trace!(to = %transmit.destination, "WebRTC UDP send dropped: {err}");
                Poll::Ready(Ok(transmit.contents.len()))
            }
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut datagrams = self.datagrams.lock().unwrap_or_else(|p| p.into_inner());
        let mut filled = 0;
        while filled < bufs.len().min(meta.len()) {
            let datagram = if filled == 0 {
                match datagrams.poll_recv(cx) {
                    Poll::Ready(Some(datagram)) => datagram,
                    // The lease ended: the connection is being closed.
                    Poll::Ready(None) | Poll::Pending => return Poll::Pending,
                }
            } else {
                match datagrams.try_recv() {
                    Ok(datagram) => datagram,
                    Err(_) => break,
                }
            };
            let len = datagram.data.len().min(bufs[filled].len());
            bufs[filled][..len].copy_from_slice(&datagram.data[..len]);
            let mut received = RecvMeta::default();
            received.addr = datagram.from;
            received.len = len;
            received.stride = len;
            received.dst_ip = Some(self.local.ip());
            meta[filled] = received;
            filled += 1;
        }
        Poll::Ready(Ok(filled))
    }
}

/// The ICE-TCP connections that named one viewer.
#[derive(Debug)]
struct ViewerTcpListener {
    local: SocketAddr,
    connections: tokio::sync::Mutex<mpsc::Receiver<Accepted>>,
}

impl std::fmt::Debug for Accepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ICE-TCP connection from {}", self.peer)
    }
}

impl AsyncTcpListener for ViewerTcpListener {
    fn accept<'a>(
        &'a self,
    ) -> Pin<Box<dyn Future<Output = io::Result<(Arc<dyn AsyncTcpStream>, SocketAddr)>> + Send + 'a>>
    {
        Box::pin(async move {
            let mut connections = self.connections.lock().await;
            // None: the lease ended and the connection is closing; it accepts nothing more.
            let Some(accepted) = connections.recv().await else {
                return std::future::pending().await;
            };
            let peer = accepted.peer;
            let (read, write) = accepted.stream.into_split();
            let stream = ViewerTcpStream {
                local: self.local,
                peer,
                read: tokio::sync::Mutex::new((accepted.first, 0, read)),
                write: tokio::sync::Mutex::new(write),
                _open: accepted.open,
                _permit: accepted.permit,
            };
            Ok((Arc::new(stream) as Arc<dyn AsyncTcpStream>, peer))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// One ICE-TCP connection of a viewer, starting with the packet the mux read to route it.
struct ViewerTcpStream {
    local: SocketAddr,
    peer: SocketAddr,
    /// What was read ahead, how much of it was handed on, and the rest of the stream.
    read: tokio::sync::Mutex<(Vec<u8>, usize, tokio::net::tcp::OwnedReadHalf)>,
    write: tokio::sync::Mutex<tokio::net::tcp::OwnedWriteHalf>,
    _open: ConnectionCount,
    _permit: ConnectionPermit,
}

impl std::fmt::Debug for ViewerTcpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ICE-TCP {} -> {}", self.peer, self.local)
    }
}

impl AsyncTcpStream for ViewerTcpStream {
    fn read<'a, 'b>(
        &'a self,
        buf: &'b mut [u8],
    ) -> Pin<Box<dyn Future<Output = io::Result<usize>> + Send + 'b>>
    where
        'a: 'b,
    {
        Box::pin(async move {
            let mut read = self.read.lock().await;
            let (ahead, used, stream) = &mut *read;
            if *used < ahead.len() {
                let len = (ahead.len() - *used).min(buf.len());
                buf[..len].copy_from_slice(&ahead[*used..*used + len]);
                *used += len;
                if *used == ahead.len() {
                    *ahead = Vec::new();
                    *used = 0;
                }
                return Ok(len);
            }
            stream.read(buf).await
        })
    }

    fn write_all<'a, 'b>(
        &'a self,
        buf: &'b [u8],
    ) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send + 'b>>
    where
        'a: 'b,
    {
        Box::pin(async move {
            let mut write = self.write.lock().await;
            tokio::time::timeout(TCP_WRITE_TIMEOUT, write.write_all(buf))
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "the viewer stopped reading")
                })?
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.peer)
    }
}
