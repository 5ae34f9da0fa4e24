//! The readers of a route, served together: one task per ring (and per share of the cores) wakes
//! once per unit for all its readers and sends it to each of them, by the transport of the unit's
//! track: over UDP a run of packets in one segmenting send (UDP GSO) where the kernel can, over TCP
//! the unit in one vectored write, made without waiting.
//!
//! One `sendmmsg` for all readers would save a system call per reader too, but no maintained
//! crate offers it soundly with a GSO control message here: nix's can only count what it sent
//! by reading address slots it never initialised, and rustix's has no UDP_SEGMENT.
//!
//! Each reader keeps its own [`Reader`](crate::hub::Reader): where it is in the ring, its catch-up
//! through the kept GOP and the skip to the next keyframe when it falls a ring behind are the
//! hub's, unchanged; the task only asks each one what is due ([`Reader::try_next`]) instead of
//! every reader's task waking for every unit.
//!
//! Over TCP, a reader's sound waits for its next picture and goes out in the same write (for
//! [`HOLD_AT_MOST`] at most): on loopback each write cost the server some microseconds besides its
//! bytes (the system call, the segment, waking the reader), and AAC's 47 units a second against
//! 25 pictures made two writes in three sound alone. Holding it halved what a TCP reader costs
//! (readers bench, 300 readers: 2.8–3.0 µs a packet before, 1.2–1.4 after).
//!
//! A TCP socket pushes back on its own. The fan-out holds a TCP reader's write half while its
//! socket takes whole units; the first write it does not take whole hands the reader back to its
//! connection (with the bytes left over), which waits for the socket under the stall deadline and
//! then brings the reader back. The connection also takes its reader back to write an RTSP
//! response between two units.

mod member;

use std::collections::HashMap;
use std::io::IoSlice;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::codec::interleaved_header;
use super::egress::{Playback, SENDER_REPORT_INTERVAL, Sent, Sizes};
use super::transport::TrackTransport;
use super::udp::UdpSockets;
use crate::hub::{Arrivals, Next, Unit};
use member::{Counters, HOLD_AT_MOST, Member};

/// The running fan-outs, by ring and share: what [`join`] adds readers to.
#[derive(Default)]
pub(super) struct Fanouts {
    running: Mutex<HashMap<(usize, usize), mpsc::UnboundedSender<Command>>>,
    next_member: AtomicU64,
}

impl Fanouts {
    fn lock(&self) -> MutexGuard<'_, HashMap<(usize, usize), mpsc::UnboundedSender<Command>>> {
        // Plain data: still consistent after a panic elsewhere.
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What connections tell a fan-out. Its channel is unbounded because a connection has at most one
/// membership at a time and sends at most three commands per membership (its join, a reclaim whose
/// answer it waits for, its leave), readers being bounded by `max_clients` and the connection
/// limits; the leave is sent from `Drop`, which cannot wait.
enum Command {
    Join(Box<Member>),
    /// The connection wants its reader back (see [`Membership::reclaim`]).
    Reclaim(u64),
    Leave(u64),
}

/// A reader in a fan-out, as the connection that played it holds it: dropping it takes the
/// reader out (and, over TCP, closes the connection's writing side).
pub(super) struct Membership {
    id: u64,
    commands: mpsc::UnboundedSender<Command>,
    counters: Arc<Counters>,
    holds_writer: bool,
    handback: oneshot::Receiver<Handback>,
}

/// A reader the fan-out let go of, with what its connection needs to go on.
pub(super) struct Handback {
    pub(super) playback: Playback,
    /// The TCP connection's write half, for a reader over TCP.
    pub(super) writer: Option<OwnedWriteHalf>,
    /// What the socket did not take of the last write: the connection writes it first.
    pub(super) pending: Vec<u8>,
    pub(super) why: Why,
}

/// Why the fan-out let a reader go.
pub(super) enum Why {
    /// Its stream ended; the BYE is sent (or in `pending`).
    Ended,
    /// Its TCP socket did not take a whole write at once.
    Blocked,
    /// Its TCP socket failed.
    Failed(std::io::Error),
    /// Its connection asked for it.
    Reclaimed,
}

impl Membership {
    /// Adds what was sent to this reader to `sent`.
    pub(super) fn add_sent(&self, sent: &mut Sent) {
        sent.packets += self.counters.packets.load(Ordering::Relaxed);
        sent.bytes += self.counters.bytes.load(Ordering::Relaxed);
    }

    /// Whether the fan-out holds the connection's write half (the reader plays over TCP).
    pub(super) fn holds_writer(&self) -> bool {
        self.holds_writer
    }

    /// Takes the reader out of the fan-out, with what was sent to it added to `sent`; `None` when
    /// the fan-out is gone (the server stops).
    pub(super) async fn reclaim(mut self, sent: &mut Sent) -> Option<Handback> {
        let _ = self.commands.send(Command::Reclaim(self.id));
        let back = (&mut self.handback).await.ok();
        self.add_sent(sent);
        back
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Leave(self.id));
    }
}

/// Resolves when the fan-out has let the reader go by itself (see [`Why`]), with what was sent to
/// it added to `sent`; `None` when the fan-out is gone. Never without a membership.
pub(super) async fn handed_back(
    membership: &mut Option<Membership>,
    sent: &mut Sent,
) -> Option<Handback> {
    let Some(member) = membership else {
        return std::future::pending().await;
    };
    let back = (&mut member.handback).await.ok();
    if let Some(member) = membership.take() {
        member.add_sent(sent);
    }
    back
}

/// Adds a reader to the fan-out of its ring (starting one if needed), with its connection's
/// `writer` when it has tracks over TCP.
pub(super) fn join(
    udp: &Arc<UdpSockets>,
    mut playback: Playback,
    writer: Option<OwnedWriteHalf>,
) -> Membership {
    let arrivals = playback.reader().arrivals().clone();
    let holds_writer = writer.is_some();
    let fanouts = &udp.fanouts;
    let id = fanouts.next_member.fetch_add(1, Ordering::Relaxed);
    let key = (arrivals.ring_id(), share(id));
    let counters = Arc::new(Counters::default());
    let (handback_tx, handback) = oneshot::channel();
    let member = Member {
        id,
        playback,
        writer,
        counters: Arc::clone(&counters),
        next_report: Instant::now() + SENDER_REPORT_INTERVAL,
        handback: Some(handback_tx),
        leaving: None,
        pending: Vec::new(),
        held: Vec::new(),
        held_since: None,
    };
    // Joining under the lock: a fan-out that finds itself empty removes itself under the same
    // lock, so a reader never joins one that is going away.
    let mut running = fanouts.lock();
    let commands = match running.get(&key) {
        Some(commands) if !commands.is_closed() => commands.clone(),
        _ => {
            let (commands, inbox) = mpsc::unbounded_channel();
            tokio::spawn(run(Arc::clone(udp), key, arrivals, inbox));
            running.insert(key, commands.clone());
            commands
        }
    };
    let _ = commands.send(Command::Join(Box::new(member)));
    drop(running);
    Membership {
        id,
        commands,
        counters,
        holds_writer,
        handback,
    }
}

/// Which of a ring's fan-outs reader `id` goes to: as many as the machine has cores (up to 8),
/// so the readers of one busy route spread over the runtime's workers.
fn share(id: u64) -> usize {
    static SHARES: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let shares = *SHARES
        .get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(8) as u64));
    (id % shares) as usize
}

/// Serves the readers of one ring's share until none is left.
async fn run(
    udp: Arc<UdpSockets>,
    key: (usize, usize),
    arrivals: Arrivals<Unit>,
    mut inbox: mpsc::UnboundedReceiver<Command>,
) {
    let mut members: Vec<Member> = Vec::new();
    // What each member takes in one round of serving, kept between wake-ups.
    let mut round = Vec::new();
    loop {
        let arrived = arrivals.notified();
        tokio::pin!(arrived);
        // Registered before serving, so a unit that arrives meanwhile wakes the task again.
        arrived.as_mut().enable();
        while let Ok(command) = inbox.try_recv() {
            apply(command, &mut members);
        }
        if members.is_empty() {
            let mut running = udp.fanouts.lock();
            if inbox.is_empty() {
                running.remove(&key);
                return;
            }
            continue;
        }
        let wake_at = serve(&udp, &mut members, &mut round).await;
        let_go(&mut members, |member| member.leaving.is_some());
        tokio::select! {
            () = &mut arrived => {}
            command = inbox.recv() => match command {
                Some(command) => apply(command, &mut members),
                None => return,
            },
            () = tokio::time::sleep_until(wake_at) => {}
        }
    }
}

fn apply(command: Command, members: &mut Vec<Member>) {
    match command {
        Command::Join(member) => members.push(*member),
        Command::Reclaim(id) => let_go(members, |member| {
            if member.id != id {
                return false;
            }
            member.leaving.get_or_insert(Why::Reclaimed);
            true
        }),
        Command::Leave(id) => members.retain(|member| member.id != id),
    }
}

/// Hands back the members `leaving` picks.
fn let_go(members: &mut Vec<Member>, mut leaving: impl FnMut(&mut Member) -> bool) {
    let mut index = 0;
    while index < members.len() {
        if leaving(&mut members[index]) {
            members.swap_remove(index).hand_back();
        } else {
            index += 1;
        }
    }
}

/// Sends every member what is due, round by round (a unit per member per round, so each reader
/// gets its units in order); returns when to look again for what is not due yet.
async fn serve(
    udp: &UdpSockets,
    members: &mut [Member],
    round: &mut Vec<(Arc<Unit>, usize)>,
) -> Instant {
    let now = Instant::now();
    let mut wake_at = now + SENDER_REPORT_INTERVAL;
    loop {
        round.clear();
        for (index, member) in members.iter_mut().enumerate() {
            if member.leaving.is_some() {
                continue;
            }
            match member.playback.reader().try_next(now) {
                Next::Unit(unit) => round.push((unit, index)),
                Next::NotBefore(due) => wake_at = wake_at.min(due),
                Next::Nothing => {}
                Next::Closed => {
                    // Players hear of the end from a BYE on every track rather than silence.
                    send_reports(udp, member, None, true);
                    member.leaving.get_or_insert(Why::Ended);
                }
            }
        }
        if round.is_empty() {
            break;
        }
        // Members at the live edge (nearly all of them) got the same unit: one send for them.
        round.sort_by_key(|(unit, _)| Arc::as_ptr(unit));
        for group in round.chunk_by(|a, b| Arc::ptr_eq(&a.0, &b.0)) {
            send_unit(
                udp,
                &group[0].0,
                group.iter().map(|(_, index)| *index),
                members,
                now,
            )
            .await;
        }
    }
    for member in members.iter_mut().filter(|member| member.leaving.is_none()) {
        if let Some(since) = member.held_since {
            if now >= since + HOLD_AT_MOST {
                member.write_held();
            } else {
                wake_at = wake_at.min(since + HOLD_AT_MOST);
            }
        }
        if member.next_report <= now {
            send_reports(udp, member, None, false);
            member.next_report = now + SENDER_REPORT_INTERVAL;
        }
        wake_at = wake_at.min(member.next_report);
    }
    wake_at
}

/// Sends `unit` to the members at `indices` that set its track up, and counts it.
async fn send_unit(
    udp: &UdpSockets,
    unit: &Unit,
    indices: impl Iterator<Item = usize> + Clone,
    members: &mut [Member],
    now: Instant,
) {
    // Its packets went out with a later unit's (see `Packetizer::packetize_together`).
    if unit.rtp.packets.is_empty() {
        return;
    }
    let track = unit.au.track;
    // The same for every member: they were all given this unit of one publisher.
    let video = indices
        .clone()
        .next()
        .is_some_and(|index| members[index].playback.reader().video_track() == Some(track));
    let mut readers = 0;
    for index in indices.clone() {
        let member = &mut members[index];
        match member.playback.transport(track) {
            Some(TrackTransport::Udp { rtp, .. }) => {
                for run in &unit.rtp.runs {
                    udp.send_run(&unit.rtp.wire, run, rtp).await;
                }
            }
            Some(TrackTransport::Tcp { rtp_channel, .. }) => {
                if video {
                    member.write_interleaved_unit(rtp_channel, &unit.rtp.packets);
                } else {
                    member.hold(rtp_channel, &unit.rtp.packets, now);
                }
            }
            None => continue,
        }
        readers += 1;
    }
    if readers == 0 {
        return;
    }
    let packets = unit.rtp.packets.len() as u64;
    let sizes = Sizes::of(unit);
    let stats = members[0].playback.reader().stats();
    stats
        .packets_out
        .fetch_add(packets * readers, Ordering::Relaxed);
    stats
        .bytes_out
        .fetch_add(sizes.bytes * readers, Ordering::Relaxed);
    for index in indices {
        let member = &mut members[index];
        if member.playback.transport(track).is_none() {
            continue;
        }
        member.counters.add(packets, sizes.bytes);
        if member.playback.count(unit, sizes) {
            send_reports(udp, member, Some(track), false);
        }
    }
}

/// Sends `member` its sender reports (see [`Playback::reports`]): over UDP, a report the socket
/// cannot take at once is lost, as RTCP over UDP may be; over TCP, it is written like media.
fn send_reports(udp: &UdpSockets, member: &mut Member, only: Option<usize>, goodbye: bool) {
    for (transport, report) in member.playback.reports(only, goodbye) {
        match transport {
            TrackTransport::Udp { rtcp, .. } => {
                let _ = udp.rtcp.try_send_to(&report, rtcp);
            }
            TrackTransport::Tcp { rtcp_channel, .. } => {
                // After the media it reports on.
                member.write_held();
                if let Some(header) = interleaved_header(rtcp_channel, report.len()) {
                    member.write_tcp(&[IoSlice::new(&header), IoSlice::new(&report)]);
                }
            }
        }
    }
}
