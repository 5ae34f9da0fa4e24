//! The webrtc crate's side of the mux: the runtime a publisher's connection runs on, and the
//! sockets it hands the connection in place of the ones the crate binds.

use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, RecvMeta, Runtime,
    TokioRuntime, Transmit,
};

use super::{Accepted, ConnectionCount, Datagram, Shared, TCP_WRITE_TIMEOUT};
use crate::listen::{ConnectionPermit, MeteredRead, flood_in};
use crate::sources::PUBLISHER_INBOUND;

/// The runtime one publisher's connection runs on: tokio's, except that the sockets the connection
/// binds are replaced by its share of the mux.
#[derive(Debug)]
pub struct PublisherRuntime {
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

impl PublisherRuntime {
    pub(super) fn new(
        shared: Arc<Shared>,
        datagrams: mpsc::Receiver<Datagram>,
        connections: mpsc::Receiver<Accepted>,
    ) -> PublisherRuntime {
        PublisherRuntime {
            inner: Arc::new(TokioRuntime),
            shared,
            datagrams: Mutex::new(Some(datagrams)),
            connections: Mutex::new(Some(connections)),
        }
    }
}

fn taken<T>(slot: &Mutex<Option<T>>) -> io::Result<T> {
    slot.lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .ok_or_else(|| io::Error::other("a viewer has one socket of each kind on the shared ports"))
}

impl Runtime for PublisherRuntime {
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
            let read = MeteredRead::new(read, PUBLISHER_INBOUND);
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
    /// What was read ahead, how much of it was handed on, and the rest of the stream, held to
    /// every publisher's ceiling (past it the connection fails).
    read: tokio::sync::Mutex<(Vec<u8>, usize, MeteredRead<tokio::net::tcp::OwnedReadHalf>)>,
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
            let read = stream.read(buf).await;
            if let Err(err) = &read
                && let Some(flood) = flood_in(err)
            {
                tracing::warn!(peer = %self.peer, "ICE-TCP connection closed: {flood}");
            }
            read
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
