//! The egress of one RTSP connection: a task that writes its responses in order, each write held
//! to a deadline. Its reader's media goes out through its route's fan-out ([`fanout`]), which
//! holds the TCP connection's write half (when the reader has tracks over TCP) while the socket
//! takes whole units, and hands it back here to write a response or to wait for a socket that is
//! full.

use std::sync::Arc;

use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

use super::fanout::{self, Handback, Membership, Why};
use super::session::Play;
use super::transport::TrackTransport;
use super::udp::{RtcpRegistration, UdpSockets};
use crate::hub::{Reader, Unit};
use crate::rtp::rtcp::{self, GOODBYE_SIZE, SENDER_REPORT_SIZE, SenderReport};

/// How often each reader gets RTCP sender reports.
pub(super) const SENDER_REPORT_INTERVAL: Duration = Duration::from_secs(5);
/// A TCP reader that accepts no bytes for this long is taken as gone.
const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(10);
const EGRESS_BUFFER: usize = 16 * 1024;

/// What the control task hands the egress task, in order.
pub(super) enum Egress {
    Response(Vec<u8>),
    Play(Play, Option<RtcpRegistration>),
    Stop,
}

/// What one connection sent, for the access log.
#[derive(Debug, Default)]
pub(super) struct Sent {
    pub(super) packets: u64,
    pub(super) bytes: u64,
}

/// A reader being sent to, with the per-track counts its sender reports carry.
pub(super) struct Playback {
    reader: Reader,
    tracks: Vec<Option<TrackTransport>>,
    counts: Vec<TrackCount>,
    _rtcp: Option<RtcpRegistration>,
}

#[derive(Clone, Copy, Default)]
pub(super) struct TrackCount {
    packets: u32,
    octets: u32,
    reported: bool,
}

/// What a unit's packets hold, worked out once per unit however many readers it goes to.
#[derive(Clone, Copy)]
pub(super) struct Sizes {
    /// All its bytes, RTP headers included.
    pub(super) bytes: u64,
    /// Its payload, as sender reports count it (the 12-byte fixed headers left out).
    pub(super) payload: u64,
}

impl Sizes {
    pub(super) fn of(unit: &Unit) -> Sizes {
        let (bytes, headers) = unit.rtp.packets.iter().fold((0, 0), |(bytes, headers), p| {
            (bytes + p.len() as u64, headers + p.len().min(12) as u64)
        });
        Sizes {
            bytes,
            payload: bytes - headers,
        }
    }
}

/// One RTCP compound packet: a sender report, with a BYE after it when the stream ends.
pub(super) struct Report {
    bytes: [u8; SENDER_REPORT_SIZE + GOODBYE_SIZE],
    len: usize,
}

impl std::ops::Deref for Report {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl Playback {
    pub(super) fn new(play: Play, rtcp: Option<RtcpRegistration>) -> Playback {
        Playback {
            counts: vec![TrackCount::default(); play.tracks.len()],
            reader: play.reader,
            tracks: play.tracks,
            _rtcp: rtcp,
        }
    }

    pub(super) fn reader(&mut self) -> &mut Reader {
        &mut self.reader
    }

    /// Where `track`'s media goes, if the reader set it up.
    pub(super) fn transport(&self, track: usize) -> Option<TrackTransport> {
        self.tracks.get(track).copied().flatten()
    }

    /// Whether a track the reader set up goes over TCP (its connection's).
    pub(super) fn any_tcp(&self) -> bool {
        self.tracks
            .iter()
            .flatten()
            .any(|t| matches!(t, TrackTransport::Tcp { .. }))
    }

    /// Counts `unit` (its [`Sizes`]) as sent, for the sender reports; `true` when it is the
    /// track's first and a report should follow it at once (players sync from it).
    pub(super) fn count(&mut self, unit: &Unit, sizes: Sizes) -> bool {
        let Some(count) = self.counts.get_mut(unit.au.track) else {
            return false;
        };
        count.packets = count.packets.wrapping_add(unit.rtp.packets.len() as u32);
        count.octets = count.octets.wrapping_add(sizes.payload as u32);
        !count.reported
    }

    /// Sender reports for `only` one track, or for every track that has sent media; with
    /// `goodbye`, each followed by a BYE in the same compound packet.
    pub(super) fn reports(
        &mut self,
        only: Option<usize>,
        goodbye: bool,
    ) -> Vec<(TrackTransport, Report)> {
        let now = Instant::now();
        let ntp = rtcp::ntp_timestamp(SystemTime::now());
        let media = Arc::clone(self.reader.media());
        let mut reports = Vec::new();
        for (track, transport) in self.tracks.iter().enumerate() {
            let Some(transport) = transport else { continue };
            if only.is_some_and(|only| only != track) {
                continue;
            }
            let count = &mut self.counts[track];
            if count.packets == 0 {
                continue;
            }
            let (Some(rtp_timestamp), Some(info)) =
                (media.rtp_timestamp_at(track, now), media.tracks.get(track))
            else {
                continue;
            };
            count.reported = true;
            let mut bytes = [0u8; SENDER_REPORT_SIZE + GOODBYE_SIZE];
            bytes[..SENDER_REPORT_SIZE].copy_from_slice(
                &SenderReport {
                    ssrc: info.ssrc,
                    ntp,
                    rtp_timestamp,
                    packet_count: count.packets,
                    octet_count: count.octets,
                }
                .write(),
            );
            bytes[SENDER_REPORT_SIZE..].copy_from_slice(&rtcp::goodbye(info.ssrc));
            let len = if goodbye {
                bytes.len()
            } else {
                SENDER_REPORT_SIZE
            };
            reports.push((*transport, Report { bytes, len }));
        }
        reports
    }
}

/// Sends responses of one connection, in order, and starts its reader in its route's fan-out.
/// Ends when the control task lets go, the stream closes, or the peer stops accepting bytes.
pub(super) async fn run_egress(
    write: OwnedWriteHalf,
    mut commands: mpsc::Receiver<Egress>,
    udp: Arc<UdpSockets>,
) -> Sent {
    let mut egress = Connection {
        out: Some(BufWriter::with_capacity(EGRESS_BUFFER, write)),
        membership: None,
        sent: Sent::default(),
        udp,
    };
    let mut write_failed = false;
    loop {
        let result = tokio::select! {
            biased;
            command = commands.recv() => match command {
                None => break,
                Some(command) => match egress.command(command).await {
                    Ok(Flow::Go) => Ok(()),
                    Ok(Flow::End) => break,
                    Err(err) => Err(err),
                }
            },
            // The fan-out let the reader go: its stream ended (BYE sent: the route was removed or
            // the server drains), or its socket is full or failed.
            back = fanout::handed_back(&mut egress.membership, &mut egress.sent) => {
                match egress.take_back(back).await {
                    Ok(Some(playback)) => egress.play(playback).await,
                    Ok(None) => break,
                    Err(err) => Err(err),
                }
            }
        };
        if result.is_err() {
            write_failed = true;
            break;
        }
    }
    // A peer that took nothing for the deadline (or went away) is not waited for again.
    if !write_failed && let Some(out) = &mut egress.out {
        let _ = with_deadline(out.flush()).await;
    }
    if let Some(member) = &egress.membership {
        member.add_sent(&mut egress.sent);
    }
    egress.sent
}

/// The egress of one connection: its writer (unless the route's fan-out holds it), and its
/// reader's place in the fan-out.
struct Connection {
    out: Option<BufWriter<OwnedWriteHalf>>,
    membership: Option<Membership>,
    sent: Sent,
    udp: Arc<UdpSockets>,
}

/// Whether the egress goes on after a command.
enum Flow {
    Go,
    End,
}

impl Connection {
    fn writer(&mut self) -> std::io::Result<&mut BufWriter<OwnedWriteHalf>> {
        self.out
            .as_mut()
            .ok_or_else(|| std::io::ErrorKind::NotConnected.into())
    }

    async fn command(&mut self, command: Egress) -> std::io::Result<Flow> {
        // Responses need the writer, and a new play or a stop replaces the reader: the fan-out
        // gives both back first.
        let needs_reader_back = match &command {
            Egress::Response(_) => self.membership.as_ref().is_some_and(|m| m.holds_writer()),
            Egress::Play(..) | Egress::Stop => self.membership.is_some(),
        };
        let mut reader = None;
        let mut ended = false;
        if needs_reader_back && let Some(member) = self.membership.take() {
            let back = member.reclaim(&mut self.sent).await;
            match self.take_back(back).await? {
                Some(playback) => reader = Some(playback),
                None => ended = true,
            }
        }
        match command {
            Egress::Response(bytes) => {
                with_deadline(async {
                    let out = self.writer()?;
                    out.write_all(&bytes).await?;
                    out.flush().await
                })
                .await?;
                if let Some(playback) = reader {
                    self.play(playback).await?;
                }
            }
            Egress::Play(play, registration) => {
                self.play(Playback::new(play, registration)).await?;
                ended = false;
            }
            // The reader, taken back above, is let go.
            Egress::Stop => {}
        }
        Ok(if ended { Flow::End } else { Flow::Go })
    }

    /// Takes the writer back from what the fan-out handed back and writes what it left over;
    /// the reader, unless its stream ended.
    async fn take_back(&mut self, back: Option<Handback>) -> std::io::Result<Option<Playback>> {
        let Some(back) = back else {
            return Ok(None);
        };
        if let Some(writer) = back.writer {
            self.out = Some(BufWriter::with_capacity(EGRESS_BUFFER, writer));
        }
        if !back.pending.is_empty() {
            with_deadline(self.writer()?.write_all(&back.pending)).await?;
        }
        match back.why {
            Why::Ended => Ok(None),
            Why::Failed(err) => Err(err),
            Why::Blocked | Why::Reclaimed => Ok(Some(back.playback)),
        }
    }

    /// Starts serving `playback` in its route's fan-out, which holds the writer meanwhile if the
    /// reader has tracks over TCP.
    async fn play(&mut self, playback: Playback) -> std::io::Result<()> {
        let writer = if playback.any_tcp() {
            // Responses go first, in order.
            with_deadline(self.writer()?.flush()).await?;
            let Some(out) = self.out.take() else {
                return Err(std::io::ErrorKind::NotConnected.into());
            };
            Some(out.into_inner())
        } else {
            None
        };
        self.membership = Some(fanout::join(&self.udp, playback, writer));
        Ok(())
    }
}

async fn with_deadline(
    write: impl std::future::Future<Output = std::io::Result<()>>,
) -> std::io::Result<()> {
    tokio::time::timeout(WRITE_STALL_TIMEOUT, write)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}
