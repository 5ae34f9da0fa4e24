//! One reader in a fan-out, and how it is written to over TCP: without waiting, its sound held
//! for its next picture.

use std::io::IoSlice;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Handback, Why};
use crate::rtsp::codec::interleaved_header;
use crate::rtsp::egress::Playback;

/// How long a TCP reader's units of tracks other than the video one wait for its next video
/// unit, at most: a picture comes every 40 ms at 25 pictures a second, and players buffer far
/// longer.
pub(super) const HOLD_AT_MOST: std::time::Duration = std::time::Duration::from_millis(50);
/// The bytes a TCP reader's held units may come to before they are written anyway.
const HOLD_BYTES: usize = 16 * 1024;

/// Packets written to a TCP reader in one vectored write at most: each takes two slices (its
/// `$`-framing and itself), and a kernel takes 1024 slices at most.
const PACKETS_PER_WRITE: usize = 64;

#[derive(Default)]
pub(super) struct Counters {
    pub(super) packets: AtomicU64,
    pub(super) bytes: AtomicU64,
}

impl Counters {
    pub(super) fn add(&self, packets: u64, bytes: u64) {
        self.packets.fetch_add(packets, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

pub(super) struct Member {
    pub(super) id: u64,
    pub(super) playback: Playback,
    /// The connection's write half, for a reader with tracks over TCP.
    pub(super) writer: Option<OwnedWriteHalf>,
    pub(super) counters: Arc<Counters>,
    pub(super) next_report: Instant,
    pub(super) handback: Option<oneshot::Sender<Handback>>,
    /// Set once the member is to be let go, at the end of the round.
    pub(super) leaving: Option<Why>,
    pub(super) pending: Vec<u8>,
    /// Over TCP: units of tracks other than the video one, framed, to go out with the next
    /// video unit.
    pub(super) held: Vec<u8>,
    /// When the oldest of `held` was held.
    pub(super) held_since: Option<Instant>,
}

impl Member {
    /// Lets the member go: its connection gets it back (if it still listens), with what it held
    /// after what its socket did not take.
    pub(super) fn hand_back(self) {
        let (Some(handback), Some(why)) = (self.handback, self.leaving) else {
            return;
        };
        let mut pending = self.pending;
        pending.extend_from_slice(&self.held);
        let _ = handback.send(Handback {
            playback: self.playback,
            writer: self.writer,
            pending,
            why,
        });
    }

    /// Holds `packets` (a unit of a track other than the video one) interleaved on `channel` for the
    /// next write, unless they have waited long enough or come to enough bytes.
    pub(super) fn hold(&mut self, channel: u8, packets: &[Bytes], now: Instant) {
        for packet in packets {
            let Some(header) = interleaved_header(channel, packet.len()) else {
                self.leaving = Some(Why::Failed(std::io::ErrorKind::InvalidData.into()));
                return;
            };
            self.held.extend_from_slice(&header);
            self.held.extend_from_slice(packet);
        }
        let since = *self.held_since.get_or_insert(now);
        if self.held.len() >= HOLD_BYTES || now >= since + HOLD_AT_MOST {
            self.write_held();
        }
    }

    /// Writes what the member holds, if anything.
    pub(super) fn write_held(&mut self) {
        self.held_since = None;
        if self.held.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.held);
        self.write_tcp(&[IoSlice::new(&held)]);
        // The buffer is kept for the next units.
        self.held = held;
        self.held.clear();
    }

    /// Writes `packets` interleaved on `channel`, after what the member holds: a vectored write
    /// per [`PACKETS_PER_WRITE`] packets, taken from the shared buffer as they are.
    pub(super) fn write_interleaved_unit(&mut self, channel: u8, packets: &[Bytes]) {
        let held = std::mem::take(&mut self.held);
        self.held_since = None;
        let mut framing = [[0u8; 4]; PACKETS_PER_WRITE];
        for (number, chunk) in packets.chunks(PACKETS_PER_WRITE).enumerate() {
            for (frame, packet) in framing.iter_mut().zip(chunk) {
                let Some(header) = interleaved_header(channel, packet.len()) else {
                    self.leaving = Some(Why::Failed(std::io::ErrorKind::InvalidData.into()));
                    return;
                };
                *frame = header;
            }
            let mut slices = [IoSlice::new(&[]); 1 + 2 * PACKETS_PER_WRITE];
            if number == 0 {
                slices[0] = IoSlice::new(&held);
            }
            for (i, (frame, packet)) in framing.iter().zip(chunk).enumerate() {
                slices[1 + 2 * i] = IoSlice::new(frame);
                slices[2 + 2 * i] = IoSlice::new(packet);
            }
            self.write_tcp(&slices[..1 + 2 * chunk.len()]);
        }
        self.held = held;
        self.held.clear();
    }

    /// Writes `slices` to the member's TCP socket without waiting: what the socket does not take
    /// is kept in `pending` and the member leaves, for its connection to finish the write.
    pub(super) fn write_tcp(&mut self, slices: &[IoSlice<'_>]) {
        let Some(writer) = &self.writer else {
            self.leaving
                .get_or_insert(Why::Failed(std::io::ErrorKind::NotConnected.into()));
            return;
        };
        match self.leaving {
            None => {}
            // Already behind: the rest of what it is due queues after the bytes left over.
            Some(Why::Blocked) => {
                for slice in slices {
                    self.pending.extend_from_slice(slice);
                }
                return;
            }
            Some(_) => return,
        }
        let total: usize = slices.iter().map(|s| s.len()).sum();
        if total == 0 {
            return;
        }
        let written = match writer.try_write_vectored(slices) {
            Ok(written) => written,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(err) => {
                self.leaving = Some(Why::Failed(err));
                return;
            }
        };
        if written >= total {
            return;
        }
        let mut skip = written;
        for slice in slices {
            let taken = skip.min(slice.len());
            skip -= taken;
            self.pending.extend_from_slice(&slice[taken..]);
        }
        self.leaving = Some(Why::Blocked);
    }
}
