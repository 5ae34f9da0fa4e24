//! The egress of one RTSP connection: a task that writes its responses in order and, once it
//! plays, the route's RTP (interleaved in the TCP connection, or to the client's UDP ports) and
//! RTCP sender reports, each write held to a deadline.

use std::io::IoSlice;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

use super::fanout::{self, Membership};
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

    /// Whether every track the reader set up goes over UDP.
    pub(super) fn all_udp(&self) -> bool {
        self.tracks
            .iter()
            .flatten()
            .all(|t| matches!(t, TrackTransport::Udp { .. }))
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

pub(super) async fn next_unit(playback: &mut Option<Playback>) -> Option<Arc<Unit>> {
    match playback {
        Some(playback) => playback.reader.next().await,
        None => std::future::pending().await,
    }
}

/// Sends responses and media of one connection, in order. Ends when the control task lets go, the
/// stream closes, or the peer stops accepting bytes.
pub(super) async fn run_egress(
    write: OwnedWriteHalf,
    mut commands: mpsc::Receiver<Egress>,
    udp: Arc<UdpSockets>,
) -> Sent {
    let mut out = BufWriter::with_capacity(EGRESS_BUFFER, write);
    let mut playback: Option<Playback> = None;
    let mut membership: Option<Membership> = None;
    let mut sent = Sent::default();
    let mut reports = tokio::time::interval(SENDER_REPORT_INTERVAL);
    let mut write_failed = false;
    loop {
        let result = tokio::select! {
            biased;
            command = commands.recv() => match command {
                None => break,
                Some(Egress::Response(bytes)) => {
                    with_deadline(async {
                        out.write_all(&bytes).await?;
                        out.flush().await
                    })
                    .await
                }
                Some(Egress::Play(play, registration)) => {
                    let started = Playback::new(play, registration);
                    // UDP readers are served by their route's fan-out, all in one go per unit.
                    if started.all_udp() {
                        membership = Some(fanout::join(&udp, started));
                    } else {
                        playback = Some(started);
                    }
                    Ok(())
                }
                Some(Egress::Stop) => {
                    playback = None;
                    if let Some(member) = membership.take() {
                        member.add_sent(&mut sent);
                    }
                    Ok(())
                }
            },
            // The fan-out let the reader go: its stream ended (BYE sent) or the server drains.
            () = fanout::ended(&mut membership) => break,
            unit = next_unit(&mut playback) => match (unit, &mut playback) {
                (Some(unit), Some(playback)) => {
                    with_deadline(send_unit(&unit, playback, &mut out, &udp, &mut sent)).await
                }
                // The route was removed (or the server drains): the session ends, and players hear
                // so from a BYE on every track rather than from silence.
                (None, Some(playback)) => {
                    let _ = with_deadline(send_reports(playback, &mut out, &udp, None, true)).await;
                    break;
                }
                _ => break,
            },
            _ = reports.tick(), if playback.is_some() => match &mut playback {
                Some(playback) => {
                    with_deadline(send_reports(playback, &mut out, &udp, None, false)).await
                }
                None => Ok(()),
            },
        };
        if result.is_err() {
            write_failed = true;
            break;
        }
    }
    // A peer that took nothing for the deadline (or went away) is not waited for again.
    if !write_failed {
        let _ = with_deadline(out.flush()).await;
    }
    if let Some(member) = membership {
        member.add_sent(&mut sent);
    }
    sent
}

pub(super) async fn with_deadline(
    write: impl std::future::Future<Output = std::io::Result<()>>,
) -> std::io::Result<()> {
    tokio::time::timeout(WRITE_STALL_TIMEOUT, write)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

pub(super) async fn send_unit(
    unit: &Unit,
    playback: &mut Playback,
    out: &mut BufWriter<OwnedWriteHalf>,
    udp: &UdpSockets,
    sent: &mut Sent,
) -> std::io::Result<()> {
    let track = unit.au.track;
    let Some(Some(transport)) = playback.tracks.get(track).copied() else {
        return Ok(());
    };
    let stats = playback.reader.stats();
    let sizes = Sizes::of(unit);
    stats
        .packets_out
        .fetch_add(unit.rtp.packets.len() as u64, Ordering::Relaxed);
    stats.bytes_out.fetch_add(sizes.bytes, Ordering::Relaxed);
    match transport {
        TrackTransport::Tcp { rtp_channel, .. } => {
            // Responses go first, in order; then the unit straight from the shared packets.
            out.flush().await?;
            write_interleaved_unit(out.get_mut(), rtp_channel, &unit.rtp.packets).await?;
        }
        TrackTransport::Udp { rtp, .. } => {
            for run in &unit.rtp.runs {
                udp.send_run(&unit.rtp.wire, run, rtp).await;
            }
        }
    }
    sent.packets += unit.rtp.packets.len() as u64;
    sent.bytes += sizes.bytes;
    if playback.count(unit, sizes) {
        send_reports(playback, out, udp, Some(track), false).await?;
    }
    if matches!(transport, TrackTransport::Tcp { .. }) {
        out.flush().await?;
    }
    Ok(())
}

/// Sends a sender report for `only` one track, or for every track that has sent media; with
/// `goodbye`, each followed by a BYE in the same compound packet.
pub(super) async fn send_reports(
    playback: &mut Playback,
    out: &mut BufWriter<OwnedWriteHalf>,
    udp: &UdpSockets,
    only: Option<usize>,
    goodbye: bool,
) -> std::io::Result<()> {
    for (transport, report) in playback.reports(only, goodbye) {
        match transport {
            TrackTransport::Tcp { rtcp_channel, .. } => {
                write_interleaved(out, rtcp_channel, &report).await?
            }
            TrackTransport::Udp { rtcp, .. } => {
                let _ = udp.rtcp.send_to(&report, rtcp).await;
            }
        }
    }
    Ok(())
}

/// Packets written to a TCP reader in one vectored write at most: each takes two slices (its
/// `$`-framing and itself), and a kernel takes 1024 slices at most.
const PACKETS_PER_WRITE: usize = 64;

/// Writes `packets` interleaved on `channel`: a vectored write per [`PACKETS_PER_WRITE`] packets,
/// the packets taken from the shared buffer as they are.
async fn write_interleaved_unit(
    out: &mut OwnedWriteHalf,
    channel: u8,
    packets: &[Bytes],
) -> std::io::Result<()> {
    let mut framing = [[0u8; 4]; PACKETS_PER_WRITE];
    for chunk in packets.chunks(PACKETS_PER_WRITE) {
        for (frame, packet) in framing.iter_mut().zip(chunk) {
            let Ok(len) = u16::try_from(packet.len()) else {
                return Err(std::io::ErrorKind::InvalidData.into());
            };
            let [hi, lo] = len.to_be_bytes();
            *frame = [b'$', channel, hi, lo];
        }
        let mut slices = [IoSlice::new(&[]); 2 * PACKETS_PER_WRITE];
        for (i, (frame, packet)) in framing.iter().zip(chunk).enumerate() {
            slices[2 * i] = IoSlice::new(frame);
            slices[2 * i + 1] = IoSlice::new(packet);
        }
        let mut remaining = &mut slices[..2 * chunk.len()];
        while !remaining.is_empty() {
            let written = out.write_vectored(remaining).await?;
            if written == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut remaining, written);
        }
    }
    Ok(())
}

pub(super) async fn write_interleaved(
    out: &mut BufWriter<OwnedWriteHalf>,
    channel: u8,
    packet: &[u8],
) -> std::io::Result<()> {
    let Ok(len) = u16::try_from(packet.len()) else {
        return Ok(());
    };
    let [hi, lo] = len.to_be_bytes();
    out.write_all(&[b'$', channel, hi, lo]).await?;
    out.write_all(packet).await
}
