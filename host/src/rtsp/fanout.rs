//! The UDP readers of a route, served together: one task per ring (and per share of the cores)
//! wakes once per unit for all its readers and sends it to each of them, a run of packets in one
//! segmenting send (UDP GSO) where the kernel can.
//!
//! One `sendmmsg` for all readers would save a system call per reader too, but no maintained
//! crate offers it soundly with a GSO control message here: nix's can only count what it sent
//! by reading address slots it never initialised, and rustix's has no UDP_SEGMENT.
//!
//! Each reader keeps its own [`Reader`](crate::hub::Reader): where it is in the ring, its catch-up
//! through the kept GOP and the skip to the next keyframe when it falls a ring behind are the
//! hub's, unchanged; the task only asks each one what is due ([`Reader::try_next`]) instead of
//! every reader's task waking for every unit. Readers over TCP keep a task each, since each TCP
//! socket pushes back on its own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::egress::{Playback, SENDER_REPORT_INTERVAL, Sent, Sizes};
use super::transport::TrackTransport;
use super::udp::UdpSockets;
use crate::hub::{Arrivals, Next, Unit};

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

/// What connections tell a fan-out. Its channel is unbounded because a reader sends at most two
/// (its join and its leave, readers being bounded by `max_clients` and the connection limits) and
/// the leave is sent from `Drop`, which cannot wait.
enum Command {
    Join(Box<Member>),
    Leave(u64),
}

/// A reader in a fan-out, as the connection that played it holds it: dropping it takes the
/// reader out.
pub(super) struct Membership {
    id: u64,
    commands: mpsc::UnboundedSender<Command>,
    counters: Arc<Counters>,
    ended: oneshot::Receiver<()>,
}

impl Membership {
    /// Adds what was sent to this reader to `sent`.
    pub(super) fn add_sent(&self, sent: &mut Sent) {
        sent.packets += self.counters.packets.load(Ordering::Relaxed);
        sent.bytes += self.counters.bytes.load(Ordering::Relaxed);
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Leave(self.id));
    }
}

/// Resolves when the fan-out has let the reader go (its stream ended, after a BYE); never without
/// a membership.
pub(super) async fn ended(membership: &mut Option<Membership>) {
    match membership {
        Some(membership) => {
            let _ = (&mut membership.ended).await;
        }
        None => std::future::pending().await,
    }
}

#[derive(Default)]
struct Counters {
    packets: AtomicU64,
    bytes: AtomicU64,
}

struct Member {
    id: u64,
    playback: Playback,
    /// Each track's RTP destination, if the reader set the track up.
    destinations: Vec<Option<SocketAddr>>,
    counters: Arc<Counters>,
    next_report: Instant,
    /// Dropped with the member: tells its connection it was let go.
    _ended: oneshot::Sender<()>,
    done: bool,
}

/// Adds a UDP reader to the fan-out of its ring (starting one if needed).
pub(super) fn join(udp: &Arc<UdpSockets>, mut playback: Playback) -> Membership {
    let arrivals = playback.reader().arrivals().clone();
    let destinations = (0..playback.reader().media().tracks.len())
        .map(|track| match playback.transport(track) {
            Some(TrackTransport::Udp { rtp, .. }) => Some(rtp),
            _ => None,
        })
        .collect();
    let fanouts = &udp.fanouts;
    let id = fanouts.next_member.fetch_add(1, Ordering::Relaxed);
    let key = (arrivals.ring_id(), share(id));
    let counters = Arc::new(Counters::default());
    let (ended_tx, ended) = oneshot::channel();
    let member = Member {
        id,
        playback,
        destinations,
        counters: Arc::clone(&counters),
        next_report: Instant::now() + SENDER_REPORT_INTERVAL,
        _ended: ended_tx,
        done: false,
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
        ended,
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
        members.retain(|member| !member.done);
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
        Command::Leave(id) => members.retain(|member| member.id != id),
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
            if member.done {
                continue;
            }
            match member.playback.reader().try_next(now) {
                Next::Unit(unit) => round.push((unit, index)),
                Next::NotBefore(due) => wake_at = wake_at.min(due),
                Next::Nothing => {}
                Next::Closed => {
                    // Players hear of the end from a BYE on every track rather than silence.
                    send_reports(udp, member, None, true);
                    member.done = true;
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
            )
            .await;
        }
    }
    for member in members.iter_mut().filter(|member| !member.done) {
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
) {
    let track = unit.au.track;
    let mut readers = 0;
    for index in indices.clone() {
        let Some(to) = members[index].destinations.get(track).copied().flatten() else {
            continue;
        };
        readers += 1;
        for run in &unit.rtp.runs {
            udp.send_run(&unit.rtp.wire, run, to).await;
        }
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
        if member.destinations.get(track).copied().flatten().is_none() {
            continue;
        }
        member
            .counters
            .packets
            .fetch_add(packets, Ordering::Relaxed);
        member
            .counters
            .bytes
            .fetch_add(sizes.bytes, Ordering::Relaxed);
        if member.playback.count(unit, sizes) {
            send_reports(udp, member, Some(track), false);
        }
    }
}

/// Sends `member` its sender reports (see [`Playback::reports`]); a report the socket cannot
/// take at once is lost, as RTCP over UDP may be.
fn send_reports(udp: &UdpSockets, member: &mut Member, only: Option<usize>, goodbye: bool) {
    for (transport, report) in member.playback.reports(only, goodbye) {
        if let TrackTransport::Udp { rtcp, .. } = transport {
            let _ = udp.rtcp.try_send_to(&report, rtcp);
        }
    }
}
