//! Push-path latency: from the moment the last TS packet of a video access unit is written to
//! wasmcast's HTTP push, to the moment an RTSP reader (TCP interleaved) receives the first RTP packet
//! of that unit. Both ends run here, on loopback, against the `wasmcast` binary.
//!
//! Run with `cargo bench --bench ingest`; `WASMCAST_BENCH_SECONDS` sets the length (default 10).

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};

use common::BenchServer;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const TS_PACKET: usize = 188;
/// ffmpeg's MPEG-TS muxer puts the first video stream on this PID.
const VIDEO_PID: u16 = 0x100;
const TARGET_P99: Duration = Duration::from_millis(2);

fn main() {
    let seconds = common::seconds(3, 10);
    let ts = std::fs::read(clip()).expect("bench clip");
    let server = BenchServer::start(
        "ingest",
        "rtp_ports = \"35000-35999\"",
        "[routes.feed]\nsource = \"push\"\n",
    );

    let mut push = TcpStream::connect(server.http).expect("connect HTTP");
    push.set_nodelay(true).expect("nodelay");
    push.write_all(b"POST /feed HTTP/1.1\r\nHost: bench\r\nTransfer-Encoding: chunked\r\n\r\n")
        .expect("push headers");

    let units = video_units(&ts);
    let started = Instant::now();
    let end = started + Duration::from_secs(seconds);
    let reader_start = started + Duration::from_millis(1500);
    let (received_tx, received_rx) = std::sync::mpsc::channel();
    let rtsp = server.rtsp;
    std::thread::spawn(move || {
        let wait = reader_start.saturating_duration_since(Instant::now());
        std::thread::sleep(wait);
        read_rtsp(rtsp, end + Duration::from_millis(200), &received_tx);
    });

    // Write the TS in real time: each packet when its PES is due; note when each video unit's last
    // packet went out.
    let mut sent: HashMap<u64, Instant> = HashMap::new();
    let first_pts = units.first().map_or(0, |u| u.pts);
    let mut unit_index = 0;
    let mut offset = 0;
    while offset + TS_PACKET <= ts.len() && Instant::now() < end {
        let next_end = units
            .get(unit_index)
            .map_or(ts.len(), |u| u.last_packet_end);
        let due = units.get(unit_index).map_or(Duration::ZERO, |u| {
            Duration::from_micros((u.pts - first_pts) * 100 / 9)
        });
        std::thread::sleep((started + due).saturating_duration_since(Instant::now()));
        let chunk = &ts[offset..next_end];
        let mut message = format!("{:x}\r\n", chunk.len()).into_bytes();
        message.extend_from_slice(chunk);
        message.extend_from_slice(b"\r\n");
        // The unit's last packet leaves in this write: the clock starts now.
        let written = Instant::now();
        push.write_all(&message).expect("chunk");
        if let Some(unit) = units.get(unit_index) {
            sent.insert(unit.pts, written);
        }
        offset = next_end;
        unit_index += 1;
    }
    let _ = push.write_all(b"0\r\n\r\n");
    let received: Vec<(u32, Instant)> = received_rx.iter().collect();

    // The RTP timestamp is the PTS plus a constant. Of the constants that would match the first live
    // unit to some written unit, the right one never has a unit arrive before it was written; take the
    // one with the smallest total latency.
    let live: Vec<(u32, Instant)> = received
        .into_iter()
        .filter(|(_, at)| *at > reader_start + Duration::from_secs(1))
        .collect();
    let by_pts: HashMap<u32, Instant> = sent.iter().map(|(pts, at)| (*pts as u32, *at)).collect();
    let latencies_for = |offset: u32| -> Option<Vec<Duration>> {
        live.iter()
            .map(|(timestamp, at)| {
                let written = by_pts.get(&timestamp.wrapping_sub(offset))?;
                at.checked_duration_since(*written)
            })
            .collect()
    };
    let Some((first_timestamp, _)) = live.first() else {
        panic!("the reader received nothing live");
    };
    let mut latencies = by_pts
        .keys()
        .filter_map(|pts| latencies_for(first_timestamp.wrapping_sub(*pts)))
        .min_by_key(|l| l.iter().sum::<Duration>())
        .expect("a consistent match between written and received units");
    latencies.sort();
    let percentile = |p: usize| {
        latencies
            .get(latencies.len() * p / 100)
            .copied()
            .unwrap_or_default()
    };
    let (p50, p99) = (percentile(50), percentile(99));
    println!(
        "push -> RTSP (TCP) latency over {} video units: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; target p99 < 2 ms: {}",
        latencies.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        if p99 < TARGET_P99 && !latencies.is_empty() {
            "ok"
        } else {
            "MISSED"
        }
    );
}

struct VideoUnit {
    pts: u64,
    /// Offset just past the unit's last TS packet.
    last_packet_end: usize,
}

/// The video PES packets of a TS file: their PTS and where their last packet ends.
fn video_units(ts: &[u8]) -> Vec<VideoUnit> {
    let mut units: Vec<VideoUnit> = Vec::new();
    for (index, packet) in ts.chunks_exact(TS_PACKET).enumerate() {
        let pid = u16::from_be_bytes([packet[1] & 0x1f, packet[2]]);
        if pid != VIDEO_PID {
            continue;
        }
        let end = (index + 1) * TS_PACKET;
        if packet[1] & 0x40 != 0 {
            let payload = if packet[3] & 0x20 != 0 {
                5 + usize::from(packet[4])
            } else {
                4
            };
            let pes = &packet[payload..];
            let b = &pes[9..14];
            let pts = (u64::from(b[0] & 0x0e) << 29)
                | (u64::from(b[1]) << 22)
                | (u64::from(b[2] & 0xfe) << 14)
                | (u64::from(b[3]) << 7)
                | (u64::from(b[4]) >> 1);
            units.push(VideoUnit {
                pts,
                last_packet_end: end,
            });
        } else if let Some(unit) = units.last_mut() {
            unit.last_packet_end = end;
        }
    }
    units
}

/// Reads the route over RTSP/TCP until `until`, reporting the arrival of each new video timestamp.
fn read_rtsp(addr: SocketAddr, until: Instant, out: &std::sync::mpsc::Sender<(u32, Instant)>) {
    let mut stream = TcpStream::connect(addr).expect("connect RTSP");
    stream.set_nodelay(true).expect("nodelay");
    // A silent server must not hang the bench.
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let url = format!("rtsp://{addr}/feed");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut request = |text: String| -> String {
        stream.write_all(text.as_bytes()).expect("request");
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        let _ = reader.read_exact(&mut body);
        head
    };
    request(format!("DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\n\r\n"));
    let head = request(format!(
        "SETUP {url}/trackID=0 RTSP/1.0\r\nCSeq: 2\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n"
    ));
    let session = head
        .lines()
        .find_map(|l| l.strip_prefix("Session: "))
        .and_then(|s| s.split(';').next())
        .unwrap_or("")
        .to_owned();
    request(format!(
        "PLAY {url} RTSP/1.0\r\nCSeq: 3\r\nSession: {session}\r\n\r\n"
    ));
    let mut last = None;
    let mut packet = vec![0u8; 2048];
    while Instant::now() < until {
        let mut header = [0u8; 4];
        if reader.read_exact(&mut header).is_err() {
            break;
        }
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        packet.resize(len, 0);
        if reader.read_exact(&mut packet).is_err() {
            break;
        }
        if header[1] != 0 || len < 12 {
            continue;
        }
        let at = Instant::now();
        let timestamp = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        if last != Some(timestamp) {
            last = Some(timestamp);
            let _ = out.send((timestamp, at));
        }
    }
}

/// Twenty seconds of 640x360 H.264 with AAC, as MPEG-TS.
fn clip() -> PathBuf {
    common::clip(
        "ingest-640x360.ts",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=640x360:rate=25:duration=20",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000:duration=20",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-profile:v",
            "baseline",
            "-g",
            "25",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-f",
            "mpegts",
        ],
    )
}
