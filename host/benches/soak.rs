//! Soak: RTSP readers (TCP and UDP), WHEP viewers and RTSP publishers join and leave at random for
//! minutes, with hostile clients mixed in (sessions that never play, connection floods, endless
//! fragments, ANNOUNCE without RECORD, WHEP bodies that never come, garbage). One honest reader
//! plays all the way through. The server's memory, open files and threads after the run, once
//! everything left, must be within 10 % of where they were after a warm-up of the same churn.
//!
//! `cargo bench --bench soak` runs 10 minutes (`WASMCAST_BENCH_SECONDS` to change it);
//! `cargo test --benches` a few seconds.

#![allow(
    dead_code,
    reason = "the WHEP helper is shared with the tests, which use all of it"
)]

mod common;
#[path = "../tests/common/whep.rs"]
mod whep;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::BenchServer;
use futures::StreamExt;
use rand::Rng;
use retina::client::{
    PlayOptions, Session, SessionOptions, SetupOptions, TcpTransportOptions, Transport,
    UdpTransportOptions,
};
use retina::codec::CodecItem;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// Where the attacks come from; the honest clients use 127.0.0.1.
const ATTACKER: [u8; 4] = [127, 0, 0, 2];
/// How far memory, files and threads may drift between warm-up and the end.
const TOLERANCE: f64 = 0.10;
/// Quiet time before a measurement: every client of the churn has ended by then (each waits for
/// its own end), and idle threads of the server's blocking pool (kept 10 s) have gone.
const SETTLE: Duration = Duration::from_secs(15);

/// What the churn did, by kind: started, and finished as expected.
#[derive(Default)]
struct Tally {
    kinds: [(AtomicU64, AtomicU64); 15],
}

const KINDS: [&str; 15] = [
    "rtsp reader (tcp)",
    "rtsp reader (udp)",
    "whep viewer",
    "rtsp publisher",
    "attack: setup, never play",
    "attack: connection flood",
    "attack: endless fragments",
    "attack: announce, never record",
    "attack: whep body never sent",
    "attack: garbage request",
    "attack: slow push",
    "attack: bytes poured into rtsp",
    "attack: http requests pipelined",
    "attack: rtsp requests pipelined",
    "attack: tiny pictures published",
];

impl Tally {
    fn started(&self, kind: usize) {
        self.kinds[kind].0.fetch_add(1, Ordering::Relaxed);
    }

    fn succeeded(&self, kind: usize, ok: bool) {
        if ok {
            self.kinds[kind].1.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn print(&self) {
        for (name, (started, ok)) in KINDS.iter().zip(&self.kinds) {
            println!(
                "  {name:<32} {:>6} started {:>6} as expected",
                started.load(Ordering::Relaxed),
                ok.load(Ordering::Relaxed)
            );
        }
    }
}

struct Target {
    rtsp: SocketAddr,
    http: SocketAddr,
    clip: std::path::PathBuf,
}

impl Target {
    fn url(&self, route: &str) -> String {
        format!("rtsp://{}/{route}", self.rtsp)
    }
}

fn main() {
    let seconds = common::seconds(6, 600);
    // Long enough for the allocator's arenas and the routes' rings to reach their working size.
    let warm_up = Duration::from_secs(if common::quick() { 3 } else { 120 });
    let clip = common::clip_2mbps();
    let short = common::clip(
        "soak-publish.mp4",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=25:duration=4",
            "-c:v",
            "libx264",
            "-profile:v",
            "baseline",
            "-g",
            "25",
            "-pix_fmt",
            "yuv420p",
        ],
    );
    let server = BenchServer::start(
        "soak",
        "rtp_ports = \"38000-38999\"\nmax_clients = 300\n\
         max_connections = 1000\nmax_connections_per_address = 64\n\
         connection_rate_per_address = 1000\nmax_unit_mb = 2",
        &format!(
            "[routes.soak]\nsource = \"file:{}\"\n[routes.cam]\nsource = \"push\"\n\
             [routes.target]\nsource = \"push\"\n[routes.feed]\nsource = \"push:feed.ffm\"\n",
            clip.display()
        ),
    );
    let target = Arc::new(Target {
        rtsp: server.rtsp,
        http: server.http,
        clip: short,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let honest_frames = Arc::new(AtomicU64::new(0));
        let honest = tokio::spawn(honest_reader(
            target.url("soak"),
            Arc::clone(&honest_frames),
        ));
        let tally = Arc::new(Tally::default());
        churn(&target, &tally, warm_up).await;
        tokio::time::sleep(SETTLE).await;
        let before = (server.rss(), server.fds(), server.threads());
        let frames_before = honest_frames.load(Ordering::Relaxed);
        let started = Instant::now();
        let sampling = {
            let pid = server.pid();
            tokio::spawn(async move {
                let mut samples = Vec::new();
                loop {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    samples.push(common::rss_of(pid) as f64 / 1048576.0);
                    println!(
                        "  memory during the churn, a minute apart (MiB): {}",
                        samples
                            .iter()
                            .map(|m| format!("{m:.1}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    );
                }
            })
        };
        churn(&target, &tally, Duration::from_secs(seconds)).await;
        sampling.abort();
        let churned = started.elapsed();
        tokio::time::sleep(SETTLE).await;
        let after = (server.rss(), server.fds(), server.threads());
        let honest_fps = (honest_frames.load(Ordering::Relaxed) - frames_before) as f64
            / started.elapsed().as_secs_f64();
        honest.abort();
        println!(
            "soak: {:.0} s of churn after {} s of warm-up; CPU of the server {:.1} s",
            churned.as_secs_f64(),
            warm_up.as_secs(),
            server.cpu_time().as_secs_f64()
        );
        tally.print();
        println!("  honest reader: {honest_fps:.1} frames/s (the route has 25)");
        let mut held = true;
        for (what, was, is) in [
            (
                "memory (MiB)",
                before.0 as f64 / 1048576.0,
                after.0 as f64 / 1048576.0,
            ),
            ("open files", before.1 as f64, after.1 as f64),
            ("threads", before.2 as f64, after.2 as f64),
        ] {
            let drift = (is - was) / was.max(1.0);
            let ok = drift <= TOLERANCE;
            held &= ok;
            println!(
                "  {what:<14} after warm-up {was:>8.1}  at the end {is:>8.1}  drift {:>+6.1} %  {}",
                drift * 100.0,
                if ok { "ok" } else { "OVER 10 %" }
            );
        }
        println!(
            "  target: everything within 10 % and the honest reader at 25 fps: {}",
            if held && honest_fps > 24.0 {
                "ok"
            } else {
                "MISSED"
            }
        );
    });
}

/// Plays `url` until aborted, counting video frames.
async fn honest_reader(url: String, frames: Arc<AtomicU64>) {
    let Some(mut playing) = play(&url, Transport::Tcp(TcpTransportOptions::default())).await else {
        eprintln!("soak: the honest reader could not start");
        return;
    };
    while let Some(item) = playing.next().await {
        match item {
            Ok(CodecItem::VideoFrame(_)) => {
                frames.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(err) => {
                eprintln!("soak: the honest reader failed: {err}");
                return;
            }
        }
    }
    eprintln!("soak: the honest reader's session ended");
}

/// Starts a random client every 100 ms for `length`, then waits for all of them.
async fn churn(target: &Arc<Target>, tally: &Arc<Tally>, length: Duration) {
    let deadline = Instant::now() + length;
    let mut running: Vec<JoinHandle<()>> = Vec::new();
    while Instant::now() < deadline {
        let (kind, stay) = {
            let mut rng = rand::rng();
            (rng.random_range(0..KINDS.len()), rng.random_range(2..12u64))
        };
        let (target, tally) = (Arc::clone(target), Arc::clone(tally));
        tally.started(kind);
        running.push(tokio::spawn(async move {
            let ok = act(&target, kind, Duration::from_secs(stay)).await;
            tally.succeeded(kind, ok);
        }));
        running.retain(|task| !task.is_finished());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for task in running {
        let _ = task.await;
    }
}

/// One client of `kind` for about `stay`; whether it went as it should.
async fn act(target: &Target, kind: usize, stay: Duration) -> bool {
    match kind {
        0 | 1 => {
            let transport = if kind == 0 {
                Transport::Tcp(TcpTransportOptions::default())
            } else {
                Transport::Udp(UdpTransportOptions::default())
            };
            read_for(&target.url("soak"), transport, stay).await
        }
        2 => match whep::Viewer::connect(target.http, "soak").await {
            Ok(viewer) => {
                tokio::time::sleep(stay).await;
                let got = viewer.packets.load(Ordering::Relaxed) > 0;
                viewer.close().await;
                got
            }
            Err(_) => false,
        },
        3 => {
            let (clip, url) = (target.clip.clone(), target.url("cam"));
            // A publisher that finds the route busy is refused: that is as it should be too.
            tokio::task::spawn_blocking(move || {
                std::process::Command::new("ffmpeg")
                    .args(["-hide_banner", "-v", "quiet", "-re", "-i"])
                    .arg(clip)
                    .args(["-t", "3", "-c", "copy", "-f", "rtsp", &url])
                    .status()
                    .is_ok()
            })
            .await
            .unwrap_or(false)
        }
        4 => setup_without_play(target).await,
        5 => flood(target.rtsp).await,
        6 => endless_fragments(target).await,
        7 => announce_without_record(target).await,
        8 => whep_body_never_sent(target).await,
        9 => garbage(target.rtsp).await,
        10 => slow_push(target.http).await,
        11 => {
            let mut frame = vec![b'$', 1, 0xff, 0xff];
            frame.resize(4 + 0xffff, 0x80);
            pour(target.rtsp, frame, Duration::ZERO).await
        }
        12 => {
            let requests = "GET /healthz HTTP/1.1\r\nHost: soak\r\n\r\n".repeat(1000);
            pour(target.http, requests.into_bytes(), Duration::ZERO).await
        }
        13 => {
            // A hundred keep-alives every 0.1 s: within the allowance of bytes, not of requests.
            let url = target.url("soak");
            let requests = format!("GET_PARAMETER {url} RTSP/1.0\r\nCSeq: 1\r\n\r\n").repeat(100);
            pour(
                target.rtsp,
                requests.into_bytes(),
                Duration::from_millis(100),
            )
            .await
        }
        _ => tiny_pictures(target).await,
    }
}

async fn play(url: &str, transport: Transport) -> Option<retina::client::Demuxed> {
    let url = url::Url::parse(url).ok()?;
    let mut session = Session::describe(url, SessionOptions::default())
        .await
        .ok()?;
    session
        .setup(0, SetupOptions::default().transport(transport))
        .await
        .ok()?;
    session
        .play(PlayOptions::default())
        .await
        .ok()?
        .demuxed()
        .ok()
}

async fn read_for(url: &str, transport: Transport, stay: Duration) -> bool {
    let Some(mut playing) = play(url, transport).await else {
        return false;
    };
    let deadline = tokio::time::Instant::now() + stay;
    let mut frames = 0;
    while let Ok(Some(Ok(item))) = tokio::time::timeout_at(deadline, playing.next()).await {
        if matches!(item, CodecItem::VideoFrame(_)) {
            frames += 1;
        }
    }
    frames > 0
}

async fn attacker(addr: SocketAddr) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket
        .bind(SocketAddr::new(IpAddr::from(ATTACKER), 0))
        .ok()?;
    socket.connect(addr).await.ok()
}

/// Sends `text` and reads what comes back within a second.
async fn say(stream: &mut TcpStream, text: &[u8]) -> String {
    if stream.write_all(text).await.is_err() {
        return String::new();
    }
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        _ => String::new(),
    }
}

/// Waits up to `limit` for the server to close `stream`.
async fn closed_by_server(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

async fn setup_without_play(target: &Target) -> bool {
    let Some(mut stream) = attacker(target.rtsp).await else {
        return false;
    };
    let setup = format!(
        "SETUP {}/trackID=0 RTSP/1.0\r\nCSeq: 1\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n",
        target.url("soak")
    );
    say(&mut stream, setup.as_bytes()).await;
    closed_by_server(&mut stream, Duration::from_secs(20)).await
}

async fn flood(addr: SocketAddr) -> bool {
    let mut held = Vec::new();
    for _ in 0..100 {
        if let Some(stream) = attacker(addr).await {
            held.push(stream);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Some were refused at accept: the cap held.
    let mut refused = 0;
    for stream in &mut held {
        if closed_by_server(stream, Duration::from_millis(20)).await {
            refused += 1;
        }
    }
    refused > 0
}

/// Writes `chunk` over and over (reading whatever comes back) until the server closes the
/// connection, which it must within 10 s.
/// Writes `chunk` again and again, `pause` apart, for 10 s: whether the server closed the
/// connection meanwhile.
async fn pour(addr: SocketAddr, chunk: Vec<u8>, pause: Duration) -> bool {
    let Some(stream) = attacker(addr).await else {
        return true;
    };
    let (mut answers, mut write) = stream.into_split();
    let drain = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while matches!(answers.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let closed = loop {
        match tokio::time::timeout_at(deadline, write.write_all(&chunk)).await {
            Err(_) => break false,
            Ok(Err(_)) => break true,
            Ok(Ok(())) => tokio::time::sleep(pause).await,
        }
    };
    drain.abort();
    closed
}

const H264_SDP: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=soak\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n\
a=fmtp:96 packetization-mode=1; sprop-parameter-sets=Z0LAHtkDxWhAAAADAEAAAAwDxYuS,aMuMsg==\r\n\
a=control:streamid=0\r\n";

async fn announce(stream: &mut TcpStream, url: &str) -> Option<String> {
    let request = format!(
        "ANNOUNCE {url} RTSP/1.0\r\nCSeq: 1\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{H264_SDP}",
        H264_SDP.len()
    );
    let reply = say(stream, request.as_bytes()).await;
    reply
        .lines()
        .find_map(|l| l.strip_prefix("Session: "))
        .map(|s| s.split(';').next().unwrap_or(s).to_owned())
}

/// What an attacker gets when it asks to publish to route `target`.
enum Recording {
    /// No connection: the server refused it at accept.
    Refused,
    /// Another attacker holds the route, as it should be.
    Busy,
    Granted(TcpStream),
}

/// ANNOUNCE, SETUP over TCP and RECORD on route `target`.
async fn record(target: &Target) -> Recording {
    let url = target.url("target");
    let Some(mut stream) = attacker(target.rtsp).await else {
        return Recording::Refused;
    };
    let Some(session) = announce(&mut stream, &url).await else {
        return Recording::Busy;
    };
    let setup = format!(
        "SETUP {url}/streamid=0 RTSP/1.0\r\nCSeq: 2\r\nSession: {session}\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1;mode=record\r\n\r\n"
    );
    say(&mut stream, setup.as_bytes()).await;
    let record = format!("RECORD {url} RTSP/1.0\r\nCSeq: 3\r\nSession: {session}\r\n\r\n");
    say(&mut stream, record.as_bytes()).await;
    Recording::Granted(stream)
}

async fn endless_fragments(target: &Target) -> bool {
    let mut stream = match record(target).await {
        Recording::Refused => return false,
        Recording::Busy => return true,
        Recording::Granted(stream) => stream,
    };
    let piece = vec![0x55u8; 1400];
    for round in 0..10u16 {
        let mut burst = Vec::with_capacity(2100 * 1450);
        for i in 0..2100u16 {
            let mut rtp = vec![0x80, 96];
            rtp.extend_from_slice(&round.wrapping_mul(2100).wrapping_add(i).to_be_bytes());
            rtp.extend_from_slice(&[0, 0, 0x10, 0, 0, 0, 0, 1, 28 | 0x60]);
            rtp.push(if i == 0 { 0x85 } else { 0x05 });
            rtp.extend_from_slice(&piece);
            burst.extend_from_slice(&[b'$', 0]);
            burst.extend_from_slice(&(rtp.len() as u16).to_be_bytes());
            burst.extend_from_slice(&rtp);
        }
        if stream.write_all(&burst).await.is_err() {
            return true;
        }
    }
    closed_by_server(&mut stream, Duration::from_secs(5)).await
}

/// Every packet a whole picture of two bytes, as fast as the server takes them: ended at the
/// packet ceiling.
async fn tiny_pictures(target: &Target) -> bool {
    let mut stream = match record(target).await {
        Recording::Refused => return false,
        Recording::Busy => return true,
        Recording::Granted(stream) => stream,
    };
    let mut pictures = Vec::with_capacity(20_000 * 24);
    for seq in 0..20_000u32 {
        let mut rtp = vec![0x80, 0x80 | 96];
        rtp.extend_from_slice(&(seq as u16).to_be_bytes());
        rtp.extend_from_slice(&(seq * 3600).to_be_bytes());
        rtp.extend_from_slice(&[0, 0, 0x10, 0, 0x41, 0x9a]);
        pictures.extend_from_slice(&[b'$', 0]);
        pictures.extend_from_slice(&(rtp.len() as u16).to_be_bytes());
        pictures.extend_from_slice(&rtp);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if stream.write_all(&pictures).await.is_err() {
            return true;
        }
    }
    closed_by_server(&mut stream, Duration::from_secs(5)).await
}

async fn announce_without_record(target: &Target) -> bool {
    let Some(mut stream) = attacker(target.rtsp).await else {
        return false;
    };
    if announce(&mut stream, &target.url("target")).await.is_none() {
        return true;
    }
    closed_by_server(&mut stream, Duration::from_secs(20)).await
}

async fn whep_body_never_sent(target: &Target) -> bool {
    let Some(mut stream) = attacker(target.http).await else {
        return false;
    };
    let request = b"POST /soak/whep HTTP/1.1\r\nHost: t\r\nContent-Type: application/sdp\r\nContent-Length: 5000\r\n\r\nv=0\r\n";
    if stream.write_all(request).await.is_err() {
        return false;
    }
    let mut buf = vec![0u8; 1024];
    // 408 at the deadline, or closed (reset) at accept while the attacker's other connections
    // fill the per-address cap.
    match tokio::time::timeout(Duration::from_secs(15), stream.read(&mut buf)).await {
        Ok(Ok(n)) => n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
        Ok(Err(_)) => true,
        Err(_) => false,
    }
}

async fn garbage(addr: SocketAddr) -> bool {
    let Some(mut stream) = attacker(addr).await else {
        return false;
    };
    let noise: Vec<u8> = {
        let mut rng = rand::rng();
        (0..2000).map(|_| rng.random::<u8>()).collect()
    };
    let _ = stream.write_all(&noise).await;
    // Bytes that never make a whole request are closed by the 10 s request deadline (checked
    // every 5 s).
    closed_by_server(&mut stream, Duration::from_secs(20)).await
}

async fn slow_push(http: SocketAddr) -> bool {
    let Some(mut stream) = attacker(http).await else {
        return false;
    };
    let headers = b"POST /feed.ffm HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";
    if stream.write_all(headers).await.is_err() {
        return false;
    }
    for _ in 0..30 {
        if stream.write_all(b"1\r\nG\r\n").await.is_err() {
            return true;
        }
        let mut buf = [0u8; 1024];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await
        {
            // 408 for the trickle, or 409 while another holds the feed.
            return n == 0 || buf.starts_with(b"HTTP/1.1 4");
        }
    }
    false
}
