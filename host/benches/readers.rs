//! Fan-out benchmark: N readers of a 2 Mbit/s 720p route with AAC audio, all over UDP or all over
//! TCP, against wasmcast and, in the same run with the same readers, gst-rtsp-server (GStreamer's
//! RTSP server through python3-gi, shared media, the same file).
//!
//! Reports for each server the packets a reader gets a second, the server's CPU (all its threads,
//! from /proc) in all and per packet sent, its memory per reader, packet loss, and the time from
//! DESCRIBE to the end of a reader's first frame; then wasmcast's CPU per packet over gst's. Run
//! with `cargo bench --bench readers`; set `WASMCAST_BENCH_READERS` (default `100,300`; `1000`
//! too if the machine has the cores for the readers themselves), `WASMCAST_BENCH_TRANSPORTS`
//! (default `udp,tcp`), `WASMCAST_BENCH_SECONDS` (default 10), `WASMCAST_BENCH_ROUNDS` (default 1:
//! rounds of wasmcast then gst-rtsp-server, with the median ratio) and `WASMCAST_BENCH_PEER=none` to
//! skip gst-rtsp-server (`scripts/install-test-deps.sh` installs it: Debian's `python3-gi` and
//! `gir1.2-gst-rtsp-server-1.0`).
//!
//! The readers are minimal RTSP clients written here (they set up every track the SDP offers, by
//! its `a=control`, and count RTP sequence numbers), cheap enough that hundreds of them and the
//! server share this machine; the players the server is proven against live in the test suite.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::BenchServer;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};

const TARGET_LOSS: f64 = 0.001;
const TARGET_MEMORY_PER_READER: f64 = 64.0 * 1024.0;
const TARGET_FIRST_FRAME: Duration = Duration::from_millis(300);
/// wasmcast's CPU per packet over gst-rtsp-server's, at most.
const TARGET_RATIO: f64 = 0.5;

/// gst-rtsp-server with one shared media: the file, demuxed, its H.264 and AAC packetized once for
/// every client, as GStreamer's own examples serve a file.
const GST_SERVER: &str = r#"
import sys, gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstRtspServer, GLib
Gst.init(None)
port, path = sys.argv[1], sys.argv[2]
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(
    f'( filesrc location="{path}" ! qtdemux name=d '
    "d.video_0 ! queue ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=-1 "
    "d.audio_0 ! queue ! aacparse ! rtpmp4gpay name=pay1 pt=97 )")
factory.set_shared(True)
server.get_mount_points().add_factory("/bench", factory)
server.attach(None)
print("ready", flush=True)
GLib.MainLoop().run()
"#;

fn main() {
    let counts = common::counts("WASMCAST_BENCH_READERS", "10", "100,300");
    let transports: Vec<String> = std::env::var("WASMCAST_BENCH_TRANSPORTS")
        .unwrap_or_else(|_| "udp,tcp".into())
        .split(',')
        .map(|t| t.trim().to_owned())
        .filter(|t| t == "udp" || t == "tcp")
        .collect();
    let with_peer = std::env::var("WASMCAST_BENCH_PEER").map_or(!common::quick(), |p| p != "none");
    let seconds = common::seconds(2, 10);
    // The machine is shared and noisy: rounds alternate the two servers, and the median counts.
    let rounds: usize = std::env::var("WASMCAST_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1)
        .max(1);
    let clip = common::clip_2mbps_with_audio();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    println!(
        "server      readers  pkt/s/reader  server-cpu  µs/packet  in kernel  mem/reader  loss       first-frame p50/max"
    );
    for transport in &transports {
        for &count in &counts {
            let mut ratios = Vec::new();
            let mut per_reader = Vec::new();
            for _ in 0..rounds {
                if let Some((ratio, reader)) =
                    compare(&runtime, &clip, transport, count, seconds, with_peer)
                {
                    ratios.push(ratio);
                    per_reader.push(reader);
                }
            }
            if ratios.len() > 1 {
                println!(
                    "         {count} {transport}: median of {} rounds {:.2}x per packet (target <= {TARGET_RATIO}x: {}; each round {}), {:.2}x per reader",
                    ratios.len(),
                    median(&mut ratios),
                    verdict(median(&mut ratios)),
                    ratios
                        .iter()
                        .map(|r| format!("{r:.2}x"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    median(&mut per_reader)
                );
            }
        }
    }
}

/// Sorts `values` and returns their median.
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn verdict(ratio: f64) -> &'static str {
    if ratio <= TARGET_RATIO {
        "ok"
    } else {
        "MISSED"
    }
}

/// Measures `count` readers over `transport` against wasmcast, then (with the peer) against
/// gst-rtsp-server; returns wasmcast's CPU per packet over gst-rtsp-server's, and per reader.
fn compare(
    runtime: &tokio::runtime::Runtime,
    clip: &Path,
    transport: &str,
    count: usize,
    seconds: u64,
    with_peer: bool,
) -> Option<(f64, f64)> {
    let ours = {
        let server = start_wasmcast(clip, count + 10);
        let target = Target {
            rtsp: server.rtsp,
            pid: server.pid(),
        };
        runtime.block_on(measure(&target, transport, count, seconds))
    };
    ours.print("wasmcast", transport, count);
    ours.verdict(count);
    if !with_peer {
        return None;
    }
    match GstServer::start(clip) {
        Ok(gst) => {
            let target = Target {
                rtsp: gst.rtsp,
                pid: gst.child.id(),
            };
            let theirs = runtime.block_on(measure(&target, transport, count, seconds));
            theirs.print("gst-rtsp", transport, count);
            let ratio = ours.cpu_per_packet() / theirs.cpu_per_packet();
            // wasmcast puts AAC frames of the file up to three to a packet, gst-rtsp-server one:
            // the same media in fewer packets, so CPU per reader that got it is shown beside CPU
            // per packet.
            let per_reader = (ours.cpu_fraction() / ours.connected.max(1) as f64)
                / (theirs.cpu_fraction() / theirs.connected.max(1) as f64);
            println!(
                "         gst-rtsp-server played to {}/{count} readers; wasmcast / gst-rtsp-server CPU per packet: {ratio:.2}x (target <= {TARGET_RATIO}x: {}), per reader: {per_reader:.2}x",
                theirs.connected,
                verdict(ratio)
            );
            Some((ratio, per_reader))
        }
        Err(why) => {
            println!("         gst-rtsp-server skipped: {why}");
            None
        }
    }
}

fn start_wasmcast(clip: &Path, max_clients: usize) -> BenchServer {
    BenchServer::start(
        "readers",
        &format!(
            "rtp_ports = \"32000-32999\"\nmax_clients = {max_clients}\n\
             max_connections = {0}\nmax_connections_per_address = {0}\n\
             connection_rate_per_address = {0}",
            max_clients + 16
        ),
        &format!("[routes.bench]\nsource = \"file:{}\"\n", clip.display()),
    )
}

/// gst-rtsp-server in a python3 process, killed on drop.
struct GstServer {
    child: Child,
    rtsp: SocketAddr,
}

impl GstServer {
    fn start(clip: &Path) -> Result<GstServer, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|err| err.to_string())?
            .port();
        // Its warnings go to a file: a pipe nobody reads would stall it once full.
        let log = std::env::temp_dir().join(format!("wasmcast-bench-gst-{port}.log"));
        let stderr = std::fs::File::create(&log).map_err(|err| err.to_string())?;
        // Debian's python3-gi is for the system interpreter.
        let mut child = Command::new("/usr/bin/python3")
            .args(["-c", GST_SERVER, &port.to_string()])
            .arg(clip)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|err| format!("cannot run /usr/bin/python3: {err}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        if line.trim() != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            let errors = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!(
                "it did not start (scripts/install-test-deps.sh installs it): {}",
                errors.lines().last().unwrap_or("")
            ));
        }
        Ok(GstServer {
            child,
            rtsp: SocketAddr::from(([127, 0, 0, 1], port)),
        })
    }
}

impl Drop for GstServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server under measurement: where it listens, and its process.
struct Target {
    rtsp: SocketAddr,
    pid: u32,
}

#[derive(Default)]
struct ReaderStats {
    received: u64,
    expected: u64,
    first_frame: Option<Duration>,
}

/// Counts packets and sequence-number gaps of one RTP stream.
#[derive(Default)]
struct SeqCounter {
    first: Option<u64>,
    last: u64,
    received: u64,
}

impl SeqCounter {
    fn packet(&mut self, seq: u16) {
        let seq = u64::from(seq);
        match self.first {
            None => {
                self.first = Some(seq);
                self.last = seq;
            }
            Some(_) => {
                let delta = (seq.wrapping_sub(self.last & 0xffff)) & 0xffff;
                if delta < 0x8000 {
                    self.last += delta;
                }
            }
        }
        self.received += 1;
    }

    fn expected(&self) -> u64 {
        self.first.map_or(0, |first| self.last - first + 1)
    }
}

struct Measured {
    cpu: Duration,
    /// The part of `cpu` spent in the kernel (on loopback that includes delivering each datagram
    /// to the reader's socket).
    kernel: Duration,
    wall: Duration,
    memory_per_reader: f64,
    received: u64,
    expected: u64,
    first_frames: Vec<Duration>,
    connected: usize,
}

impl Measured {
    fn cpu_fraction(&self) -> f64 {
        self.cpu.as_secs_f64() / self.wall.as_secs_f64()
    }

    /// Server CPU seconds per packet sent to a reader (received or, by the sequence numbers,
    /// lost on the way).
    fn cpu_per_packet(&self) -> f64 {
        self.cpu.as_secs_f64() / self.expected.max(self.received).max(1) as f64
    }

    fn loss(&self) -> f64 {
        if self.expected == 0 {
            1.0
        } else {
            1.0 - self.received as f64 / self.expected as f64
        }
    }

    fn first_frame(&self) -> (Duration, Duration) {
        let p50 = self
            .first_frames
            .get(self.first_frames.len() / 2)
            .copied()
            .unwrap_or_default();
        (p50, self.first_frames.last().copied().unwrap_or_default())
    }

    fn print(&self, server: &str, transport: &str, count: usize) {
        let (p50, max) = self.first_frame();
        let rate = self.received as f64 / self.wall.as_secs_f64() / count.max(1) as f64;
        println!(
            "{server:<9} {count:>5} {transport}  {rate:>12.0}  {:>9.1}%  {:>9.2}  {:>8.0}%  {:>7.1} KB  {:>8.4}%  {:>6.0} ms / {:.0} ms",
            self.cpu_fraction() * 100.0,
            self.cpu_per_packet() * 1e6,
            self.kernel.as_secs_f64() / self.cpu.as_secs_f64().max(1e-9) * 100.0,
            self.memory_per_reader / 1024.0,
            self.loss() * 100.0,
            p50.as_secs_f64() * 1000.0,
            max.as_secs_f64() * 1000.0
        );
    }

    fn verdict(&self, count: usize) {
        let verdict = |ok: bool| if ok { "ok" } else { "MISSED" };
        let (_, max) = self.first_frame();
        println!(
            "         targets: connected {}/{count} {}, loss < 0.1% {}, under one core {}, <= 64 KB/reader {}, first frame <= 300 ms {}",
            self.connected,
            verdict(self.connected == count),
            verdict(self.loss() < TARGET_LOSS),
            verdict(self.cpu_fraction() < 1.0),
            verdict(self.memory_per_reader <= TARGET_MEMORY_PER_READER),
            verdict(max <= TARGET_FIRST_FRAME)
        );
    }
}

async fn measure(target: &Target, transport: &str, count: usize, seconds: u64) -> Measured {
    // Let the source start and memory settle before the baseline.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rss_before = common::rss_of(target.pid);
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::with_capacity(count);
    for i in 0..count {
        let stop = Arc::clone(&stop);
        let addr = target.rtsp;
        let udp = transport == "udp";
        readers.push(tokio::spawn(async move {
            let result = if udp {
                read_udp(addr, &stop).await
            } else {
                read_tcp(addr, &stop).await
            };
            result.unwrap_or_else(|err| {
                eprintln!("a reader failed: {err}");
                ReaderStats::default()
            })
        }));
        // Connecting hundreds of clients in one burst measures the accept queue, not the fan-out.
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = common::rss_of(target.pid);
    let (user_start, kernel_start) = common::cpu_times_of(target.pid);
    let wall_start = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (user_end, kernel_end) = common::cpu_times_of(target.pid);
    let kernel = kernel_end.saturating_sub(kernel_start);
    let cpu = user_end.saturating_sub(user_start) + kernel;
    let wall = wall_start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut measured = Measured {
        cpu,
        kernel,
        wall,
        memory_per_reader: rss_after.saturating_sub(rss_before) as f64 / count as f64,
        received: 0,
        expected: 0,
        first_frames: Vec::new(),
        connected: 0,
    };
    for reader in readers {
        let stats = reader.await.unwrap_or_default();
        measured.received += stats.received;
        measured.expected += stats.expected;
        if let Some(first) = stats.first_frame {
            measured.first_frames.push(first);
            measured.connected += 1;
        }
    }
    // The readers counted from their PLAY to the stop; scale to the measured window for the
    // per-packet figures (the readers' first second is outside it).
    let counted = wall + Duration::from_secs(1);
    measured.received =
        (measured.received as f64 * wall.as_secs_f64() / counted.as_secs_f64()) as u64;
    measured.expected =
        (measured.expected as f64 * wall.as_secs_f64() / counted.as_secs_f64()) as u64;
    measured.first_frames.sort();
    measured
}

/// Sends one request and reads its response; returns the headers and the body.
async fn request<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut BufReader<S>,
    text: String,
) -> std::io::Result<(String, Vec<u8>)> {
    stream.get_mut().write_all(text.as_bytes()).await?;
    let mut head = String::new();
    loop {
        // Interleaved media can come before the response: skip it.
        if stream.fill_buf().await?.first() == Some(&b'$') {
            let mut frame = [0u8; 4];
            stream.read_exact(&mut frame).await?;
            let mut skipped = vec![0u8; usize::from(u16::from_be_bytes([frame[2], frame[3]]))];
            stream.read_exact(&mut skipped).await?;
            continue;
        }
        let mut line = Vec::new();
        if stream.read_until(b'\n', &mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == b"\r\n" && !head.is_empty() {
            break;
        }
        head.push_str(&String::from_utf8_lossy(&line));
    }
    if !head.starts_with("RTSP/1.0 200") {
        return Err(std::io::Error::other(format!(
            "{} answered {}",
            text.lines().next().unwrap_or(""),
            head.lines().next().unwrap_or("")
        )));
    }
    let length: usize = header(&head, "Content-Length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await?;
    Ok((head, body))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// A session that does not start in this long counts as not connected.
const SESSION_START_TIMEOUT: Duration = Duration::from_secs(5);

async fn with_timeout<T>(
    start: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    tokio::time::timeout(SESSION_START_TIMEOUT, start)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// DESCRIBE, a SETUP per track (`transports` gives each its Transport header), PLAY.
async fn start_session<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut BufReader<S>,
    addr: SocketAddr,
    transports: &(dyn Fn(usize) -> String + Sync),
) -> std::io::Result<usize> {
    let url = format!("rtsp://{addr}/bench");
    let (head, sdp) = request(
        stream,
        format!("DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n\r\n"),
    )
    .await?;
    let base = header(&head, "Content-Base").unwrap_or(&url).to_owned();
    let sdp = String::from_utf8_lossy(&sdp).into_owned();
    let controls: Vec<String> = sdp
        .split("\nm=")
        .skip(1)
        .filter_map(|media| {
            media
                .lines()
                .find_map(|l| l.trim().strip_prefix("a=control:"))
                .map(|c| {
                    if c.starts_with("rtsp://") {
                        c.to_owned()
                    } else {
                        format!("{}/{c}", base.trim_end_matches('/'))
                    }
                })
        })
        .collect();
    let mut session = String::new();
    for (index, control) in controls.iter().enumerate() {
        let with_session = if session.is_empty() {
            String::new()
        } else {
            format!("Session: {session}\r\n")
        };
        let (head, _) = request(
            stream,
            format!(
                "SETUP {control} RTSP/1.0\r\nCSeq: {}\r\n{with_session}Transport: {}\r\n\r\n",
                index + 2,
                transports(index)
            ),
        )
        .await?;
        if let Some(id) = header(&head, "Session") {
            session = id.split(';').next().unwrap_or("").to_owned();
        }
    }
    // No `Range`: on gst-rtsp-server's shared media of a file, `Range: npt=0-` seeks the one
    // pipeline every reader shares back to the start, so readers joining in a burst would stall
    // it (and each other) in a storm of flushing seeks; a live route has no range to ask for.
    request(
        stream,
        format!(
            "PLAY {url} RTSP/1.0\r\nCSeq: {}\r\nSession: {session}\r\n\r\n",
            controls.len() + 2
        ),
    )
    .await?;
    Ok(controls.len())
}

async fn read_tcp(addr: SocketAddr, stop: &AtomicBool) -> std::io::Result<ReaderStats> {
    let started = Instant::now();
    let mut stream = BufReader::with_capacity(64 * 1024, TcpStream::connect(addr).await?);
    let tracks = with_timeout(start_session(&mut stream, addr, &|i| {
        format!("RTP/AVP/TCP;unicast;interleaved={}-{}", 2 * i, 2 * i + 1)
    }))
    .await?;
    let mut counters: Vec<SeqCounter> = (0..tracks).map(|_| SeqCounter::default()).collect();
    let mut first_frame = None;
    let mut packet = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let mut header = [0u8; 4];
        // A server that stops sending must not keep the reader from seeing `stop`.
        match tokio::time::timeout(Duration::from_millis(500), stream.read_exact(&mut header)).await
        {
            Ok(read) => read?,
            Err(_) => continue,
        };
        if header[0] != b'$' {
            // An RTSP message (a keep-alive answer): skip to its end.
            let mut line = Vec::new();
            while stream.read_until(b'\n', &mut line).await? > 0 && line != b"\r\n" {
                line.clear();
            }
            continue;
        }
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        stream.read_exact(&mut packet[..len]).await?;
        let channel = usize::from(header[1]);
        if channel % 2 != 0 || len < 12 {
            continue;
        }
        if let Some(counter) = counters.get_mut(channel / 2) {
            counter.packet(u16::from_be_bytes([packet[2], packet[3]]));
        }
        if first_frame.is_none() && channel == 0 && packet[1] & 0x80 != 0 {
            first_frame = Some(started.elapsed());
        }
    }
    Ok(ReaderStats {
        received: counters.iter().map(|c| c.received).sum(),
        expected: counters.iter().map(SeqCounter::expected).sum(),
        first_frame,
    })
}

async fn read_udp(addr: SocketAddr, stop: &AtomicBool) -> std::io::Result<ReaderStats> {
    let started = Instant::now();
    // An RTP and an RTCP socket for each of (at most) two tracks.
    let mut sockets = Vec::new();
    for _ in 0..4 {
        sockets.push(UdpSocket::bind("127.0.0.1:0").await?);
    }
    let ports: Vec<u16> = sockets
        .iter()
        .map(|s| s.local_addr().map(|a| a.port()))
        .collect::<std::io::Result<_>>()?;
    let mut control = BufReader::new(TcpStream::connect(addr).await?);
    let tracks = with_timeout(start_session(&mut control, addr, &|i| {
        format!(
            "RTP/AVP;unicast;client_port={}-{}",
            ports[2 * i],
            ports[2 * i + 1]
        )
    }))
    .await?
    .min(2);
    let mut counters: Vec<SeqCounter> = (0..tracks).map(|_| SeqCounter::default()).collect();
    let mut first_frame = None;
    let (mut video, mut audio) = (vec![0u8; 2048], vec![0u8; 2048]);
    while !stop.load(Ordering::Relaxed) {
        let received = tokio::time::timeout(Duration::from_millis(200), async {
            tokio::select! {
                len = sockets[0].recv(&mut video) => len.map(|len| (0, len)),
                len = sockets[2].recv(&mut audio), if tracks > 1 => len.map(|len| (1, len)),
            }
        })
        .await;
        let Ok(Ok((track, len))) = received else {
            continue;
        };
        let packet = if track == 0 { &video } else { &audio };
        if len < 12 {
            continue;
        }
        counters[track].packet(u16::from_be_bytes([packet[2], packet[3]]));
        if first_frame.is_none() && track == 0 && packet[1] & 0x80 != 0 {
            first_frame = Some(started.elapsed());
        }
    }
    drop(control);
    Ok(ReaderStats {
        received: counters.iter().map(|c| c.received).sum(),
        expected: counters.iter().map(SeqCounter::expected).sum(),
        first_frame,
    })
}
