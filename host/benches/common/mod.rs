//! Shared by the benches: clips made once with ffmpeg, and the `wasmcast` binary started on a
//! loopback config, with its CPU time and memory read from /proc.

#![allow(dead_code, reason = "each bench uses a different part of this module")]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Whether this is a quick pass: `cargo bench` passes `--bench`; `cargo test --benches` passes
/// nothing and wants a quick run.
pub fn quick() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

/// How long to measure: `WASMCAST_BENCH_SECONDS`, else `quick` or `full` seconds.
pub fn seconds(quick: u64, full: u64) -> u64 {
    std::env::var("WASMCAST_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if self::quick() { quick } else { full })
}

/// The client counts to measure: `variable` as `100,500`, else `quick` or `full` in that form.
pub fn counts(variable: &str, quick: &str, full: &str) -> Vec<usize> {
    std::env::var(variable)
        .unwrap_or_else(|_| if self::quick() { quick } else { full }.to_owned())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// A clip made once under `target/bench-clips` with the given ffmpeg arguments.
pub fn clip(name: &str, ffmpeg_args: &[&str]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-clips");
    std::fs::create_dir_all(&dir).expect("clip dir");
    let path = dir.join(name);
    if !path.exists() {
        let status = Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-y"])
            .args(ffmpeg_args)
            .arg(&path)
            .status()
            .expect("ffmpeg");
        assert!(status.success(), "ffmpeg could not make {name}");
    }
    path
}

/// A running `wasmcast`, killed on drop.
pub struct BenchServer {
    child: Child,
    pub rtsp: SocketAddr,
    pub http: SocketAddr,
    config: PathBuf,
}

impl BenchServer {
    /// Starts the binary listening on loopback ports the OS picks (WebRTC's too, unless `server`
    /// names them), with `server` keys added to the `[server]` table and the given `routes`.
    pub fn start(name: &str, server: &str, routes: &str) -> BenchServer {
        let config =
            std::env::temp_dir().join(format!("wasmcast-{name}-{}.toml", std::process::id()));
        std::fs::write(
            &config,
            format!(
                "[server]\nrtsp = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n{}{server}\n{routes}",
                if server.contains("webrtc_udp") {
                    ""
                } else {
                    "webrtc_udp = \"127.0.0.1:0\"\nwebrtc_tcp = \"127.0.0.1:0\"\n"
                }
            ),
        )
        .expect("config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_wasmcast"))
            .args(["--log-level", "warn,wasmcast=info", "--config"])
            .arg(&config)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start wasmcast");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                for (rtsp, marker) in [
                    (true, "RTSP server listening on rtsp://"),
                    (false, "HTTP server listening on http://"),
                ] {
                    if let Some(rest) = line.split(marker).nth(1) {
                        let _ =
                            tx.send((rtsp, rest.split('/').next().unwrap_or_default().to_owned()));
                    }
                }
            }
        });
        let (mut rtsp, mut http) = (None, None);
        while rtsp.is_none() || http.is_none() {
            let (is_rtsp, addr) = rx
                .recv_timeout(Duration::from_secs(20))
                .expect("wasmcast started");
            if is_rtsp {
                rtsp = addr.parse().ok();
            } else {
                http = addr.parse().ok();
            }
        }
        BenchServer {
            child,
            rtsp: rtsp.expect("RTSP address"),
            http: http.expect("HTTP address"),
            config,
        }
    }

    /// The body of `GET path` on the server's HTTP side.
    pub fn get(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(self.http).expect("connect to HTTP");
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
        )
        .expect("send the request");
        let mut reply = String::new();
        stream.read_to_string(&mut reply).expect("read the reply");
        reply
            .split_once("\r\n\r\n")
            .map_or(String::new(), |(_, body)| body.to_owned())
    }

    /// The config file the server runs on.
    pub fn config_path(&self) -> &std::path::Path {
        &self.config
    }

    /// User plus system CPU time of the server so far.
    pub fn cpu_time(&self) -> Duration {
        cpu_time_of(self.child.id())
    }

    /// Open file descriptors of the server.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).map_or(0, |d| d.count())
    }

    /// Threads of the server.
    pub fn threads(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.child.id())).map_or(0, |d| d.count())
    }

    /// Resident memory of the server, in bytes.
    pub fn rss(&self) -> u64 {
        rss_of(self.child.id())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

/// User and system CPU time process `pid` has used, all its threads together.
pub fn cpu_time_of(pid: u32) -> Duration {
    let (user, system) = cpu_times_of(pid);
    user + system
}

/// User and system (kernel) CPU time process `pid` has used, apart.
pub fn cpu_times_of(pid: u32) -> (Duration, Duration) {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid)).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // Linux reports CPU time in clock ticks of 1/100 s.
    let field = |index: usize| {
        let ticks = fields.get(index).and_then(|v| v.parse::<u64>().ok());
        Duration::from_millis(ticks.unwrap_or(0) * 10)
    };
    (field(11), field(12))
}

/// Resident memory of process `pid`, in bytes.
pub fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// libx264 at 2 Mbit/s, 720p main profile without B-frames, a keyframe a second: a camera's stream.
const X264_2MBPS: [&str; 16] = [
    "-c:v",
    "libx264",
    "-preset",
    "veryfast",
    "-profile:v",
    "main",
    "-bf",
    "0",
    "-b:v",
    "2M",
    "-maxrate",
    "2M",
    "-bufsize",
    "1M",
    "-g",
    "25",
];

/// Ten seconds of 1280x720 at 25 fps, constant 2 Mbps.
pub fn clip_2mbps() -> PathBuf {
    let source = [
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=1280x720:rate=25:duration=10",
    ];
    let args: Vec<&str> = source
        .into_iter()
        .chain(X264_2MBPS)
        .chain(["-pix_fmt", "yuv420p"])
        .collect();
    clip("720p-2mbps.mp4", &args)
}

/// A minute of 1280x720 at 25 fps that really takes 2 Mbit/s (moving noise over the test pattern
/// defeats the encoder, as a camera's picture does), with AAC stereo at 48 kHz: what a reader of
/// a real camera gets, ~240 RTP packets a second.
pub fn clip_2mbps_with_audio() -> PathBuf {
    let source = [
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=1280x720:rate=25:duration=60",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000:duration=60",
        "-vf",
        "noise=alls=20:allf=t",
    ];
    let args: Vec<&str> = source
        .into_iter()
        .chain(X264_2MBPS)
        .chain([
            "-pix_fmt", "yuv420p", "-c:a", "aac", "-ac", "2", "-b:a", "128k",
        ])
        .collect();
    clip("720p-2mbps-aac-60s.mp4", &args)
}
