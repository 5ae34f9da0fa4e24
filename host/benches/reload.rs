//! Reload latency (debounce included): from renaming a new config over the old one to the added
//! route answering DESCRIBE with 200, and from renaming a new build of a plugin over the old one
//! to a connected reader receiving what the new build makes. Run with `cargo bench --bench reload`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::BenchServer;

const TARGET: Duration = Duration::from_millis(250);

fn main() {
    let quick = common::quick();
    let rounds = if quick { 3 } else { 20 };
    let clip = common::clip(
        "reload-2s.mp4",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=25:duration=2",
            "-c:v",
            "libx264",
            "-g",
            "25",
            "-pix_fmt",
            "yuv420p",
        ],
    );
    let route = |name: &str| format!("[routes.{name}]\nsource = \"file:{}\"\n", clip.display());
    let server = BenchServer::start("reload", "rtp_ports = \"36000-36999\"", &route("base"));
    let mut times = Vec::new();
    for round in 0..rounds {
        let name = format!("added{round}");
        let text = format!(
            "[server]\nrtsp = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\nrtp_ports = \"36000-36999\"\n{}{}",
            route("base"),
            route(&name)
        );
        let temporary = server.config_path().with_extension("toml.new");
        std::fs::write(&temporary, text).expect("write config");
        let renamed = Instant::now();
        std::fs::rename(&temporary, server.config_path()).expect("rename");
        while !describe_ok(&server, &name) {
            assert!(
                renamed.elapsed() < Duration::from_secs(5),
                "{name} never appeared"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        times.push(renamed.elapsed());
    }
    times.sort();
    let p50 = times[times.len() / 2];
    let max = times[times.len() - 1];
    println!(
        "config rename -> new route playable over {rounds} reloads: p50 {:.0} ms, max {:.0} ms; target <= 250 ms: {}",
        p50.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        if max <= TARGET { "ok" } else { "MISSED" }
    );
    drop(server);
    plugin_swaps(&clip, rounds);
}

/// Swaps a route's plugin file from passthrough to sei-timestamp under a connected reader and
/// times the first stamped picture the reader receives.
fn plugin_swaps(clip: &std::path::Path, rounds: usize) {
    let plugins = std::path::Path::new(env!("WASMCAST_PLUGIN_DIR"));
    let dir = std::env::temp_dir().join(format!("wasmcast-bench-swap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let wasm = dir.join("filter.wasm");
    let install = |name: &str| {
        let new = dir.join("filter.wasm.new");
        std::fs::copy(plugins.join(name), &new).expect("copy plugin");
        std::fs::rename(&new, &wasm).expect("rename plugin");
    };
    install("passthrough.wasm");
    let routes = format!(
        "[routes.live]\nsource = \"file:{}\"\nplugins = [\"filter\"]\n[plugins.filter]\nwasm = \"{}\"\n",
        clip.display(),
        wasm.display()
    );
    let server = BenchServer::start("swap", "rtp_ports = \"36000-36999\"", &routes);
    let mut times = Vec::new();
    for _ in 0..rounds {
        install("passthrough.wasm");
        // Past the one-second GOP the hub keeps for new readers: no stamped picture is left in it.
        std::thread::sleep(Duration::from_millis(1500));
        let mut reader = Reader::connect(&server, "live");
        assert!(
            !reader.saw_stamp_within(Duration::from_millis(300)),
            "passthrough does not stamp"
        );
        let renamed = Instant::now();
        install("sei_timestamp.wasm");
        assert!(
            reader.saw_stamp_within(Duration::from_secs(5)),
            "the swap took effect"
        );
        times.push(renamed.elapsed());
    }
    times.sort();
    println!(
        "plugin file rename -> stamped picture at a connected reader over {rounds} swaps: p50 {:.0} ms, max {:.0} ms; target <= 250 ms: {}",
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
        if times[times.len() - 1] <= TARGET {
            "ok"
        } else {
            "MISSED"
        }
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// An RTSP reader over TCP that only looks for the sei-timestamp plugin's UUID in what it gets.
struct Reader {
    stream: TcpStream,
    tail: Vec<u8>,
}

impl Reader {
    fn connect(server: &BenchServer, route: &str) -> Reader {
        let mut stream = TcpStream::connect(server.rtsp).expect("connect");
        let url = format!("rtsp://{}/{route}", server.rtsp);
        let mut session = String::new();
        for (cseq, request) in [
            format!("DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\n\r\n"),
            format!(
                "SETUP {url}/trackID=0 RTSP/1.0\r\nCSeq: 2\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n"
            ),
            String::new(),
        ]
        .into_iter()
        .enumerate()
        {
            let request = if cseq == 2 {
                format!("PLAY {url} RTSP/1.0\r\nCSeq: 3\r\nSession: {session}\r\n\r\n")
            } else {
                request
            };
            stream.write_all(request.as_bytes()).expect("send");
            let reply = read_reply(&mut stream);
            assert!(reply.starts_with("RTSP/1.0 200"), "{reply}");
            if let Some(line) = reply.lines().find(|l| l.starts_with("Session:")) {
                session = line["Session:".len()..]
                    .trim()
                    .split(';')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
            }
        }
        Reader {
            stream,
            tail: Vec::new(),
        }
    }

    fn saw_stamp_within(&mut self, limit: Duration) -> bool {
        const UUID: &[u8] = b"wasmcast:latency";
        let deadline = Instant::now() + limit;
        let mut buffer = vec![0u8; 64 * 1024];
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = self
                .stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))));
            let Ok(read) = self.stream.read(&mut buffer) else {
                continue;
            };
            self.tail.extend_from_slice(&buffer[..read]);
            if self.tail.windows(UUID.len()).any(|w| w == UUID) {
                self.tail.clear();
                return true;
            }
            let keep = self.tail.len().saturating_sub(UUID.len());
            self.tail.drain(..keep);
        }
        false
    }
}

/// One RTSP reply, headers and body (none is expected before PLAY's media).
fn read_reply(stream: &mut TcpStream) -> String {
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("reply");
        reply.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&reply).into_owned();
    let body = text
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length:"))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut rest = vec![0u8; body];
    stream.read_exact(&mut rest).expect("body");
    text
}

fn describe_ok(server: &BenchServer, route: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(server.rtsp) else {
        return false;
    };
    let request = format!(
        "DESCRIBE rtsp://{}/{route} RTSP/1.0\r\nCSeq: 1\r\n\r\n",
        server.rtsp
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut reply = [0u8; 12];
    stream.read_exact(&mut reply).is_ok() && reply.starts_with(b"RTSP/1.0 200")
}
