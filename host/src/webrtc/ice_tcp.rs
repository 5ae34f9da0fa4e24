//! A WebRTC viewer's ICE-TCP connections (RFC 6544; RFC 4571 framing: each packet after a 2-byte
//! length): each has a task that reads the browser's packets for the viewer and writes the
//! viewer's to it, until either side closes it or the browser stops reading for
//! `TCP_WRITE_TIMEOUT`. The mux (`mux`) finds which viewer a connection is for.
//!
//! What the viewer sends in one flush (an access unit's packets, say) goes to a connection framed
//! in one buffer, and out in one write.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rtc::shared::tcp_framing::TcpFrameDecoder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::mux::{Accepted, MAX_PACKET, TCP_WRITE_TIMEOUT};
use crate::listen::{Allowance, Inbound, MeteredRead, flood_in};

/// Flushes waiting for one ICE-TCP connection's socket.
const TCP_QUEUE: usize = 256;
/// Bytes waiting for one ICE-TCP connection's socket; a flush past them is dropped, as UDP would
/// drop its packets.
const TCP_QUEUE_BYTES: usize = 1 << 20;
/// Packets read from all of a viewer's ICE-TCP connections not yet taken by the viewer.
const TCP_READ_QUEUE: usize = 64;
/// What a viewer may send on one ICE-TCP connection: its RTCP feedback and ICE checks, a few kB a
/// second (a browser's transport-wide feedback on a 50 Mb/s route is some 10 kB/s). A connection
/// only has to name a viewer to be handed to it, and what it sends is the viewer's to process:
/// past this it is closed, rather than keeping a core busy with packets nobody asked for.
const VIEWER_INBOUND: Inbound = Inbound {
    bytes: Allowance {
        per_second: 64 * 1024,
        burst: 256 * 1024,
    },
    sender: "a viewer sends RTCP feedback and ICE checks",
};

/// The viewer's ICE-TCP connections: a queue to each one's task, by the browser's address, and
/// what they read, for the viewer.
pub(super) struct TcpLinks {
    writers: HashMap<SocketAddr, Writer>,
    read_tx: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    pub(super) read_rx: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
}

/// The viewer's end of one connection: the packets of this flush, framed, and the queue to the
/// connection's task with the bytes in it.
struct Writer {
    framed: Vec<u8>,
    queue: mpsc::Sender<Vec<u8>>,
    queued: Arc<AtomicUsize>,
}

impl TcpLinks {
    pub(super) fn new() -> TcpLinks {
        let (read_tx, read_rx) = mpsc::channel(TCP_READ_QUEUE);
        TcpLinks {
            writers: HashMap::new(),
            read_tx,
            read_rx,
        }
    }

    /// Takes an ICE-TCP connection the mux gave the viewer: a task reads its packets for the
    /// viewer and writes the viewer's to it.
    pub(super) fn open(&mut self, accepted: Accepted) {
        // Connections that closed go, so a browser that keeps reconnecting leaves nothing behind
        // (the mux lets a viewer hold only a few open at once).
        self.writers.retain(|_, writer| !writer.queue.is_closed());
        let (queue, rx) = mpsc::channel(TCP_QUEUE);
        let queued = Arc::new(AtomicUsize::new(0));
        self.writers.insert(
            accepted.peer,
            Writer {
                framed: Vec::new(),
                queue,
                queued: Arc::clone(&queued),
            },
        );
        tokio::spawn(tcp_connection(accepted, rx, queued, self.read_tx.clone()));
    }

    /// Frames `packet` for the connection from `to`, to go at the next [`TcpLinks::flush`].
    pub(super) fn add(&mut self, to: SocketAddr, packet: &[u8]) {
        let (Some(writer), Ok(len)) = (self.writers.get_mut(&to), u16::try_from(packet.len()))
        else {
            return;
        };
        writer.framed.extend_from_slice(&len.to_be_bytes());
        writer.framed.extend_from_slice(packet);
    }

    /// Hands each connection what was added for it, in one buffer; dropped when the connection's
    /// queue is full (the browser reads too slowly), forgotten when it has closed.
    pub(super) fn flush(&mut self) {
        self.writers.retain(|_, writer| {
            if writer.framed.is_empty() {
                return true;
            }
            let framed = std::mem::take(&mut writer.framed);
            let len = framed.len();
            if writer.queued.load(Ordering::Relaxed) + len > TCP_QUEUE_BYTES {
                return !writer.queue.is_closed();
            }
            match writer.queue.try_send(framed) {
                Ok(()) => {
                    writer.queued.fetch_add(len, Ordering::Relaxed);
                    true
                }
                Err(mpsc::error::TrySendError::Full(_)) => true,
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }
}

/// One ICE-TCP connection of a viewer (RFC 4571 framing: each packet after a 2-byte length),
/// until either side closes it or the browser stops reading for `TCP_WRITE_TIMEOUT`.
async fn tcp_connection(
    accepted: Accepted,
    mut outgoing: mpsc::Receiver<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    incoming: mpsc::Sender<(SocketAddr, Vec<u8>)>,
) {
    let Accepted {
        stream,
        peer,
        first,
        open: _open,
        permit: _permit,
    } = accepted;
    let mut decoder = TcpFrameDecoder::new();
    decoder.extend_from_slice(&first);
    let mut buffer = vec![0; MAX_PACKET];
    let (read, mut write) = stream.into_split();
    let mut read = MeteredRead::new(read, VIEWER_INBOUND);
    loop {
        while let Some(packet) = decoder.next_packet() {
            if incoming.send((peer, packet)).await.is_err() {
                return;
            }
        }
        tokio::select! {
            read = read.read(&mut buffer) => match read {
                Ok(0) => return,
                Ok(len) => decoder.extend_from_slice(&buffer[..len]),
                Err(err) => {
                    if let Some(flood) = flood_in(&err) {
                        tracing::warn!(%peer, "ICE-TCP connection closed: {flood}");
                    }
                    return;
                }
            },
            framed = outgoing.recv() => {
                let Some(framed) = framed else { return };
                let written = tokio::time::timeout(TCP_WRITE_TIMEOUT, write.write_all(&framed)).await;
                queued.fetch_sub(framed.len(), Ordering::Relaxed);
                if !matches!(written, Ok(Ok(()))) {
                    tracing::debug!(%peer, "an ICE-TCP viewer stopped reading: closed");
                    return;
                }
            }
        }
    }
}
