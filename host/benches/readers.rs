//! Fan-out benchmark: N readers (half UDP, half TCP interleaved) on a ~2 Mbps route.
//!
//! Reports the server's CPU and memory per reader, packet loss, and the time from DESCRIBE to the
//! end of the first frame on a new reader. Run with `cargo bench --bench readers`; set
//! `WASMCAST_BENCH_READERS` (default `100,500`) and `WASMCAST_BENCH_SECONDS` (default 10).
//!
//! The readers are minimal RTSP clients written here, cheap enough that 500 of them and the server
//! share this machine; the players the server is proven against live in the test suite.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::BenchServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};

const TARGET_LOSS: f64 = 0.001;
const TARGET_MEMORY_PER_READER: f64 = 64.0 * 1024.0;
const TARGET_FIRST_FRAME: Duration = Duration::from_millis(300);

fn main() {
    let counts = common::counts("WASMCAST_BENCH_READERS", "10", "100,500");
    let seconds = common::seconds(2, 10);
    let clip = common::clip_2mbps();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    println!(
        "readers  transport-mix  server-cpu  cpu/reader  mem/reader  loss       first-frame p50/max"
    );
    for count in counts {
        let server = start_server(&clip, count + 10);
        let result = runtime.block_on(measure(&server, count, Duration::from_secs(seconds)));
        drop(server);
        result.print(count);
    }
}

fn start_server(clip: &Path, max_clients: usize) -> BenchServer {
    BenchServer::start(
        "readers",
        &format!(
            "rtp_ports = \"32000-32999\"\nmax_clients = {max_clients}\n\
             max_connections = {0}\nmax_connections_per_address = {0}",
            max_clients + 16
        ),
        &format!("[routes.bench]\nsource = \"file:{}\"\n", clip.display()),
    )
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
    cpu_fraction: f64,
    memory_per_reader: f64,
    loss: f64,
    first_frames: Vec<Duration>,
    connected: usize,
}

impl Measured {
    fn print(&self, count: usize) {
        let p50 = self
            .first_frames
            .get(self.first_frames.len() / 2)
            .copied()
            .unwrap_or_default();
        let max = self.first_frames.last().copied().unwrap_or_default();
        println!(
            "{count:>7}  {:>13}  {:>9.1}%  {:>9.3}%  {:>7.1} KB  {:>8.4}%  {:>6.0} ms / {:.0} ms",
            "50% udp/tcp",
            self.cpu_fraction * 100.0,
            self.cpu_fraction * 100.0 / count as f64,
            self.memory_per_reader / 1024.0,
            self.loss * 100.0,
            p50.as_secs_f64() * 1000.0,
            max.as_secs_f64() * 1000.0
        );
        let verdict = |ok: bool| if ok { "ok" } else { "MISSED" };
        println!(
            "         targets: connected {}/{count} {}, loss < 0.1% {}, under one core {}, <= 64 KB/reader {}, first frame <= 300 ms {}",
            self.connected,
            verdict(self.connected == count),
            verdict(self.loss < TARGET_LOSS),
            verdict(self.cpu_fraction < 1.0),
            verdict(self.memory_per_reader <= TARGET_MEMORY_PER_READER),
            verdict(max <= TARGET_FIRST_FRAME)
        );
    }
}

async fn measure(server: &BenchServer, count: usize, duration: Duration) -> Measured {
    // Let the source start and memory settle before the baseline.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rss_before = server.rss();
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::with_capacity(count);
    for i in 0..count {
        let stop = Arc::clone(&stop);
        let addr = server.rtsp;
        readers.push(tokio::spawn(async move {
            let result = if i % 2 == 0 {
                read_udp(addr, &stop).await
            } else {
                read_tcp(addr, &stop).await
            };
            result.unwrap_or_default()
        }));
        // Connecting 500 clients in one burst measures the accept queue, not the fan-out.
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = server.rss();
    let cpu_start = server.cpu_time();
    let wall_start = Instant::now();
    tokio::time::sleep(duration).await;
    let cpu = server.cpu_time().saturating_sub(cpu_start);
    let wall = wall_start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut received = 0;
    let mut expected = 0;
    let mut first_frames = Vec::new();
    let mut connected = 0;
    for reader in readers {
        let stats = reader.await.unwrap_or_default();
        received += stats.received;
        expected += stats.expected;
        if let Some(first) = stats.first_frame {
            first_frames.push(first);
            connected += 1;
        }
    }
    first_frames.sort();
    Measured {
        cpu_fraction: cpu.as_secs_f64() / wall.as_secs_f64(),
        memory_per_reader: rss_after.saturating_sub(rss_before) as f64 / count as f64,
        loss: if expected == 0 {
            1.0
        } else {
            1.0 - received as f64 / expected as f64
        },
        first_frames,
        connected,
    }
}

/// Sends one request and reads its response headers; returns the Session id if any.
async fn request<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut BufReader<S>,
    text: String,
) -> std::io::Result<Option<String>> {
    stream.get_mut().write_all(text.as_bytes()).await?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await?);
    }
    let head = String::from_utf8_lossy(&head);
    if !head.starts_with("RTSP/1.0 200") {
        return Err(std::io::Error::other(
            head.lines().next().unwrap_or("").to_owned(),
        ));
    }
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await?;
    Ok(head
        .lines()
        .find_map(|l| l.strip_prefix("Session: "))
        .map(|s| s.split(';').next().unwrap_or("").to_owned()))
}

async fn start_session<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut BufReader<S>,
    addr: SocketAddr,
    transport: &str,
) -> std::io::Result<()> {
    let url = format!("rtsp://{addr}/bench");
    request(
        stream,
        format!("DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\n\r\n"),
    )
    .await?;
    let session = request(
        stream,
        format!("SETUP {url}/trackID=0 RTSP/1.0\r\nCSeq: 2\r\nTransport: {transport}\r\n\r\n"),
    )
    .await?
    .unwrap_or_default();
    request(
        stream,
        format!("PLAY {url} RTSP/1.0\r\nCSeq: 3\r\nSession: {session}\r\n\r\n"),
    )
    .await?;
    Ok(())
}

async fn read_tcp(addr: SocketAddr, stop: &AtomicBool) -> std::io::Result<ReaderStats> {
    let started = Instant::now();
    let mut stream = BufReader::with_capacity(64 * 1024, TcpStream::connect(addr).await?);
    start_session(&mut stream, addr, "RTP/AVP/TCP;unicast;interleaved=0-1").await?;
    let mut counter = SeqCounter::default();
    let mut first_frame = None;
    let mut packet = vec![0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let mut header = [0u8; 4];
        stream.read_exact(&mut header).await?;
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        packet.resize(len, 0);
        stream.read_exact(&mut packet).await?;
        if header[0] != b'$' || header[1] != 0 || len < 12 {
            continue;
        }
        counter.packet(u16::from_be_bytes([packet[2], packet[3]]));
        if first_frame.is_none() && packet[1] & 0x80 != 0 {
            first_frame = Some(started.elapsed());
        }
    }
    Ok(ReaderStats {
        received: counter.received,
        expected: counter.expected(),
        first_frame,
    })
}

async fn read_udp(addr: SocketAddr, stop: &AtomicBool) -> std::io::Result<ReaderStats> {
    let started = Instant::now();
    let rtp = UdpSocket::bind("127.0.0.1:0").await?;
    let rtcp = UdpSocket::bind("127.0.0.1:0").await?;
    let ports = (rtp.local_addr()?.port(), rtcp.local_addr()?.port());
    let mut control = BufReader::new(TcpStream::connect(addr).await?);
    start_session(
        &mut control,
        addr,
        &format!("RTP/AVP;unicast;client_port={}-{}", ports.0, ports.1),
    )
    .await?;
    let mut counter = SeqCounter::default();
    let mut first_frame = None;
    let mut packet = vec![0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let Ok(Ok(len)) =
            tokio::time::timeout(Duration::from_millis(200), rtp.recv(&mut packet)).await
        else {
            continue;
        };
        if len < 12 {
            continue;
        }
        counter.packet(u16::from_be_bytes([packet[2], packet[3]]));
        if first_frame.is_none() && packet[1] & 0x80 != 0 {
            first_frame = Some(started.elapsed());
        }
    }
    drop(control);
    Ok(ReaderStats {
        received: counter.received,
        expected: counter.expected(),
        first_frame,
    })
}
