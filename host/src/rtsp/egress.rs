//! The egress of one RTSP connection: a task that writes its responses in order, each write held
//! to a deadline. A reader whose tracks all go over UDP, or all over TCP, is served by its route's
//! fan-out ([`fanout`]), which holds the TCP connection's write half while the socket takes whole
//! units and hands it back here to write a response or to wait for a socket that is full; one
//! whose tracks go both ways gets its RTP and RTCP sender reports from this task.

use std::sync::Arc;
use std::sync::atomic::Ordering;

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

    /// Whether every track the reader set up goes over UDP.
    pub(super) fn all_udp(&self) -> bool {
        self.tracks
            .iter()
            .flatten()
            .all(|t| matches!(t, TrackTransport::Udp { .. }))
    }

    /// Whether every track the reader set up goes over TCP.
    pub(super) fn all_tcp(&self) -> bool {
        self.tracks
            .iter()
            .flatten()
            .all(|t| matches!(t, TrackTransport::Tcp { .. }))
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

async fn next_unit(playback: &mut Option<Playback>) -> Option<Arc<Unit>> {
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
    let mut egress = Connection {
        out: Some(BufWriter::with_capacity(EGRESS_BUFFER, write)),
        playback: None,
        membership: None,
        sent: Sent::default(),
        udp,
    };
    let mut reports = tokio::time::interval(SENDER_REPORT_INTERVAL);
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
            back = fanout::handed_back(&mut egress.membership, &mut egress.sent) => {
                match egress.take_back(back).await {
                    Ok(Some(playback)) => egress.play(playback).await,
                    Ok(None) => break,
                    Err(err) => Err(err),
                }
            }
            unit = next_unit(&mut egress.playback) => match unit {
                Some(unit) => with_deadline(egress.send_unit(&unit)).await,
                // The route was removed (or the server drains): the session ends, and players hear
                // so from a BYE on every track rather than from silence.
                None => {
                    let _ = with_deadline(egress.send_reports(None, true)).await;
                    break;
                }
            },
            _ = reports.tick(), if egress.playback.is_some() => {
                with_deadline(egress.send_reports(None, false)).await
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

/// The egress of one connection: its writer (unless the route's fan-out holds it), and its reader,
/// served here (`playback`) or by the fan-out (`membership`).
struct Connection {
    out: Option<BufWriter<OwnedWriteHalf>>,
    playback: Option<Playback>,
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
            Egress::Stop => self.playback = None,
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

    /// Starts serving `playback`: by the route's fan-out when all its tracks go over UDP or all
    /// over TCP (the fan-out then holds the writer), here otherwise.
    async fn play(&mut self, playback: Playback) -> std::io::Result<()> {
        self.playback = None;
        if playback.all_udp() {
            self.membership = Some(fanout::join(&self.udp, playback, None));
        } else if playback.all_tcp() {
            // Responses go first, in order.
            with_deadline(self.writer()?.flush()).await?;
            let Some(out) = self.out.take() else {
                return Err(std::io::ErrorKind::NotConnected.into());
            };
            self.membership = Some(fanout::join(&self.udp, playback, Some(out.into_inner())));
        } else {
            self.playback = Some(playback);
        }
        Ok(())
    }

    /// Sends `unit` to the reader served here (one whose tracks go over both UDP and TCP).
    async fn send_unit(&mut self, unit: &Unit) -> std::io::Result<()> {
        let Some(playback) = &mut self.playback else {
            return Ok(());
        };
        let track = unit.au.track;
        let Some(transport) = playback.transport(track) else {
            return Ok(());
        };
        let stats = playback.reader.stats();
        let sizes = Sizes::of(unit);
        stats
            .packets_out
            .fetch_add(unit.rtp.packets.len() as u64, Ordering::Relaxed);
        stats.bytes_out.fetch_add(sizes.bytes, Ordering::Relaxed);
        let first = playback.count(unit, sizes);
        match transport {
            TrackTransport::Tcp { rtp_channel, .. } => {
                let out = self.writer()?;
                for packet in &unit.rtp.packets {
                    write_interleaved(out, rtp_channel, packet).await?;
                }
            }
            TrackTransport::Udp { rtp, .. } => {
                for run in &unit.rtp.runs {
                    self.udp.send_run(&unit.rtp.wire, run, rtp).await;
                }
            }
        }
        self.sent.packets += unit.rtp.packets.len() as u64;
        self.sent.bytes += sizes.bytes;
        if first {
            self.send_reports(Some(track), false).await?;
        }
        self.writer()?.flush().await
    }

    /// Sends the reader served here a sender report for `only` one track, or for every track
    /// that has sent media; with `goodbye`, each followed by a BYE in the same compound packet.
    async fn send_reports(&mut self, only: Option<usize>, goodbye: bool) -> std::io::Result<()> {
        let Some(playback) = &mut self.playback else {
            return Ok(());
        };
        for (transport, report) in playback.reports(only, goodbye) {
            match transport {
                TrackTransport::Tcp { rtcp_channel, .. } => {
                    let Some(out) = self.out.as_mut() else {
                        return Err(std::io::ErrorKind::NotConnected.into());
                    };
                    write_interleaved(out, rtcp_channel, &report).await?
                }
                TrackTransport::Udp { rtcp, .. } => {
                    let _ = self.udp.rtcp.send_to(&report, rtcp).await;
                }
            }
        }
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

async fn write_interleaved(
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
