//! A WebRTC viewer's ICE-TCP connections (RFC 6544; RFC 4571 framing: each packet after a 2-byte
//! length): each has a task that reads the browser's packets for the viewer and writes the
//! viewer's to it, until either side closes it or the browser stops reading for
//! `TCP_WRITE_TIMEOUT`. The mux (`mux`) finds which viewer a connection is for.

use std::collections::HashMap;
use std::net::SocketAddr;

use rtc::shared::tcp_framing::{TcpFrameDecoder, frame_packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::mux::{Accepted, MAX_PACKET, TCP_WRITE_TIMEOUT};

/// Packets waiting for one ICE-TCP connection's socket; more are dropped, as UDP would.
const TCP_QUEUE: usize = 256;
/// Packets read from all of a viewer's ICE-TCP connections not yet taken by the viewer.
const TCP_READ_QUEUE: usize = 64;

/// The viewer's ICE-TCP connections: a queue to each one's task, by the browser's address, and
/// what they read, for the viewer.
pub(super) struct TcpLinks {
    writers: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
    read_tx: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    pub(super) read_rx: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
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
        self.writers.retain(|_, writer| !writer.is_closed());
        let (tx, rx) = mpsc::channel(TCP_QUEUE);
        self.writers.insert(accepted.peer, tx);
        tokio::spawn(tcp_connection(accepted, rx, self.read_tx.clone()));
    }

    /// Queues `packet` for the connection from `to`; dropped when its queue is full (the viewer
    /// reads too slowly) or it has closed.
    pub(super) fn send(&mut self, to: SocketAddr, packet: &[u8]) {
        let Some(writer) = self.writers.get(&to) else {
            return;
        };
        if let Err(mpsc::error::TrySendError::Closed(_)) = writer.try_send(frame_packet(packet)) {
            self.writers.remove(&to);
        }
    }
}

/// One ICE-TCP connection of a viewer (RFC 4571 framing: each packet after a 2-byte length),
/// until either side closes it or the browser stops reading for `TCP_WRITE_TIMEOUT`.
async fn tcp_connection(
    accepted: Accepted,
    mut outgoing: mpsc::Receiver<Vec<u8>>,
    incoming: mpsc::Sender<(SocketAddr, Vec<u8>)>,
) {
    let Accepted {
        mut stream,
        peer,
        first,
        open: _open,
        permit: _permit,
    } = accepted;
    let mut decoder = TcpFrameDecoder::new();
    decoder.extend_from_slice(&first);
    let mut buffer = vec![0; MAX_PACKET];
    loop {
        while let Some(packet) = decoder.next_packet() {
            if incoming.send((peer, packet)).await.is_err() {
                return;
            }
        }
        tokio::select! {
            read = stream.read(&mut buffer) => match read {
                Ok(0) | Err(_) => return,
                Ok(len) => decoder.extend_from_slice(&buffer[..len]),
            },
            packet = outgoing.recv() => {
                let Some(packet) = packet else { return };
                let written = tokio::time::timeout(TCP_WRITE_TIMEOUT, stream.write_all(&packet)).await;
                if !matches!(written, Ok(Ok(()))) {
                    tracing::debug!(%peer, "an ICE-TCP viewer stopped reading: closed");
                    return;
                }
            }
        }
    }
}
