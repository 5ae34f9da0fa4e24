//! Shared by the end-to-end tests: test clips made with ffmpeg, and the wasmcast binary started on
//! a config of the test's own, listening on loopback ports the OS picks.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of this module"
)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A clip made once per test run under cargo's temporary directory.
pub fn clip(name: &str, ffmpeg_args: &str) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("clips");
    std::fs::create_dir_all(&dir).expect("create clip directory");
    let path = dir.join(name);
    if path.exists() {
        return path;
    }
    let partial = dir.join(format!("partial-{}-{name}", std::process::id()));
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(ffmpeg_args.split_whitespace())
        .arg(&partial)
        .status()
        .expect("ffmpeg is installed (see scripts/install-test-deps)");
    assert!(status.success(), "ffmpeg could not make {name}");
    std::fs::rename(&partial, &path).expect("move clip into place");
    path
}

/// Two seconds of H.264 constrained baseline 320x240 at 25 fps with stereo AAC at 48 kHz: short, so
/// readers cross loop points quickly.
pub fn short_clip() -> PathBuf {
    clip(
        "short-h264-aac.mp4",
        "-f lavfi -i testsrc2=size=320x240:rate=25:duration=2 \
         -f lavfi -i sine=frequency=440:sample_rate=48000:duration=2 \
         -c:v libx264 -profile:v baseline -g 25 -pix_fmt yuv420p -c:a aac -ac 2 -b:a 64k",
    )
}

/// Ten seconds of black with a white frame and a 1 kHz beep at the start of every second, AAC at
/// `sample_rate`: where each beep lands against its flash tells whether sound and picture play in
/// step.
pub fn flash_and_beep_clip(sample_rate: u32) -> PathBuf {
    clip(
        &format!("flash-and-beep-{sample_rate}.mp4"),
        &format!(
            "-f lavfi -i color=c=black:size=320x240:rate=25:duration=10 \
             -f lavfi -i aevalsrc=if(lt(mod(t\\,1)\\,0.08)\\,0.8*sin(2*PI*1000*t)\\,0):s={sample_rate}:d=10 \
             -vf drawbox=x=0:y=0:w=iw:h=ih:color=white:t=fill:enable=lt(mod(t\\,1)\\,0.04) \
             -c:v libx264 -profile:v baseline -bf 0 -g 25 -pix_fmt yuv420p -c:a aac -ac 2 -b:a 128k"
        ),
    )
}

/// H.264 High with two B-frames between references: decode order differs from presentation order.
pub fn b_frame_clip() -> PathBuf {
    clip(
        "bframes-h264.mp4",
        "-f lavfi -i testsrc2=size=320x240:rate=25:duration=2 \
         -c:v libx264 -profile:v high -bf 2 -g 25 -pix_fmt yuv420p",
    )
}

/// H.265 video only, without B-frames.
pub fn h265_clip() -> PathBuf {
    clip(
        "h265-no-bframes.mp4",
        "-f lavfi -i testsrc2=size=320x240:rate=25:duration=2 \
         -c:v libx265 -x265-params log-level=error:bframes=0:keyint=25 -tag:v hvc1 -pix_fmt yuv420p",
    )
}

/// A plugin component the build made from `plugins/`.
pub fn plugin_wasm(crate_name: &str) -> PathBuf {
    Path::new(env!("WASMCAST_PLUGIN_DIR")).join(format!("{}.wasm", crate_name.replace('-', "_")))
}

/// The sample clip the project ships.
pub fn sample_clip() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../media/sample.mp4")
}

/// A running `wasmcast serve`, killed on drop.
pub struct Server {
    child: Child,
    pub rtsp: std::net::SocketAddr,
    pub http: std::net::SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    config: PathBuf,
    server_keys: String,
    _dir: TempDir,
}

/// `server` keys with WebRTC's shared ports on loopback ports the OS picks, where not named: the
/// defaults (8189) would collide between servers run at once.
pub fn with_loopback_webrtc(server: &str) -> String {
    let mut keys = server.to_owned();
    for key in ["webrtc_udp", "webrtc_tcp"] {
        if !server.contains(&format!("{key} =")) {
            keys.push_str(&format!("\n{key} = \"127.0.0.1:0\"\n"));
        }
    }
    keys
}

impl Server {
    /// Starts the binary with `[server]` on loopback and the given `[routes...]` tables.
    pub fn start(routes: &str) -> Server {
        Server::start_adding("", routes)
    }

    /// Like [`Server::start`], with more `[server]` keys (`max_clients = 20\n`).
    pub fn start_adding(server_keys: &str, routes: &str) -> Server {
        Server::start_with(
            &format!(
                "rtsp = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\nrtp_ports = \"31000-31999\"\n{server_keys}"
            ),
            routes,
        )
    }

    /// Starts the binary with the given `[server]` keys and `[routes...]` tables; WebRTC's shared
    /// ports are loopback ones the OS picks unless `server` names them.
    pub fn start_with(server: &str, routes: &str) -> Server {
        let server = &with_loopback_webrtc(server);
        let dir = TempDir::new();
        let config = dir.path().join("wasmcast.toml");
        std::fs::write(&config, format!("[server]\n{server}\n{routes}")).expect("write config");
        Server::start_at(&config, server, dir)
    }

    /// Starts the binary with the config file at `config` (in `dir`, removed with the server),
    /// whose `[server]` table holds `server`.
    pub fn start_at(config: &Path, server: &str, dir: TempDir) -> Server {
        // The directory canonical, so that notify's paths match; the file itself may be a link.
        let config = config
            .parent()
            .expect("a directory")
            .canonicalize()
            .expect("config directory")
            .join(config.file_name().expect("a file name"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_wasmcast"))
            .args(["--log-level", "info", "serve", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start wasmcast");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel::<(bool, String)>();
        let thread_log = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                for (rtsp, marker) in [
                    (true, "RTSP server listening on rtsp://"),
                    (false, "HTTP server listening on http://"),
                ] {
                    if let Some(rest) = line.split(marker).nth(1) {
                        let addr = rest.split('/').next().unwrap_or_default().to_owned();
                        let _ = addr_tx.send((rtsp, addr));
                    }
                }
                thread_log.lock().unwrap().push(line);
            }
        });
        let (mut rtsp, mut http) = (None, None);
        while rtsp.is_none() || http.is_none() {
            match addr_rx.recv_timeout(Duration::from_secs(20)) {
                Ok((true, addr)) => rtsp = addr.parse().ok(),
                Ok((false, addr)) => http = addr.parse().ok(),
                Err(_) => {
                    let _ = child.kill();
                    panic!("wasmcast did not start: {:#?}", log.lock().unwrap());
                }
            }
        }
        Server {
            child,
            rtsp: rtsp.expect("RTSP address"),
            http: http.expect("HTTP address"),
            log,
            config,
            server_keys: server.to_owned(),
            _dir: dir,
        }
    }

    /// Replaces the routes of the config file: by writing a new file and renaming it over the old
    /// one (as editors save), or by rewriting the file in place.
    pub fn write_routes(&self, routes: &str, by_rename: bool) {
        let text = format!("[server]\n{}\n{routes}", self.server_keys);
        if by_rename {
            let temporary = self.config.with_extension("toml.new");
            std::fs::write(&temporary, text).expect("write new config");
            std::fs::rename(&temporary, &self.config).expect("rename config");
        } else {
            std::fs::write(&self.config, text).expect("rewrite config");
        }
    }

    /// Writes `text` as the whole config file, in place.
    pub fn write_raw_config(&self, text: &str) {
        std::fs::write(&self.config, text).expect("write config");
    }

    /// The directory the config file is in.
    pub fn config_dir(&self) -> &Path {
        self.config.parent().expect("a directory")
    }

    pub fn url(&self, route: &str) -> String {
        format!("rtsp://{}/{route}", self.rtsp)
    }

    /// Every log line so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().iter().any(|l| l.contains(needle)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends the process `signal` (`"TERM"`, `"HUP"`, …).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {signal} failed");
    }

    /// Waits up to `timeout` for the process to exit; its status if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("run-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A route table playing `path`.
pub fn file_route(name: &str, path: &Path) -> String {
    format!("[routes.{name}]\nsource = \"file:{}\"\n", path.display())
}

/// Runs a command with a time limit; returns its exit success and its stdout and stderr.
pub fn run(command: &mut Command, limit: Duration) -> (bool, String, String) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start command");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let err = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let deadline = Instant::now() + limit;
    let success = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status.success(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break false;
            }
        }
    };
    (
        success,
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    )
}

/// A route table that takes pushes on `feed`.
pub fn push_route(name: &str, feed: &str) -> String {
    format!("[routes.{name}]\nsource = \"push:{feed}\"\n")
}

/// ffmpeg pushing `clip` in a loop in real time as MPEG-TS to `url`; killed on drop.
pub struct Pusher(Child);

impl Pusher {
    /// ffmpeg pushing MPEG-TS over HTTP.
    pub fn start(clip: &Path, url: &str, codec_args: &str) -> Pusher {
        Pusher::with_format(clip, url, &format!("{codec_args} -f mpegts"))
    }

    /// ffmpeg publishing over RTSP (ANNOUNCE/RECORD) with `transport` (`tcp` or `udp`).
    pub fn rtsp(clip: &Path, url: &str, transport: &str) -> Pusher {
        Pusher::with_format(
            clip,
            url,
            &format!("-c copy -f rtsp -rtsp_transport {transport}"),
        )
    }

    fn with_format(clip: &Path, url: &str, output_args: &str) -> Pusher {
        let child = Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-re",
                "-stream_loop",
                "-1",
                "-i",
            ])
            .arg(clip)
            .args(output_args.split_whitespace())
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ffmpeg");
        Pusher(child)
    }
}

impl Pusher {
    /// Whether ffmpeg has stopped (the server ended its push) within `limit`.
    pub fn exits_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Pusher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A retina session playing `url` over `transport`: every stream, or only the first.
pub async fn play(
    url: &str,
    transport: retina::client::Transport,
    all_streams: bool,
) -> retina::client::Demuxed {
    play_as(url, transport, all_streams, None).await
}

/// Like [`play`], logging in with `credentials`.
pub async fn play_as(
    url: &str,
    transport: retina::client::Transport,
    all_streams: bool,
    credentials: Option<retina::client::Credentials>,
) -> retina::client::Demuxed {
    use retina::client::{PlayOptions, SessionOptions, SetupOptions};
    let url = url::Url::parse(url).expect("url");
    let options = SessionOptions::default().creds(credentials);
    let mut session = retina::client::Session::describe(url, options)
        .await
        .expect("DESCRIBE");
    let streams = if all_streams {
        session.streams().len()
    } else {
        1
    };
    for i in 0..streams {
        session
            .setup(i, SetupOptions::default().transport(transport.clone()))
            .await
            .expect("SETUP");
    }
    session
        .play(PlayOptions::default())
        .await
        .expect("PLAY")
        .demuxed()
        .expect("demuxed")
}

/// Sends `bytes` on a fresh connection to `addr`; returns what came back before the peer closed
/// or went quiet for `quiet`.
pub async fn exchange(addr: std::net::SocketAddr, bytes: &[u8], quiet: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = socket.write_all(bytes).await;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(quiet, socket.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&reply).into_owned()
}

/// Waits until a DESCRIBE of `route` succeeds.
pub async fn wait_live(server: &Server, route: &str) {
    let describe = format!("DESCRIBE {} RTSP/1.0\r\nCSeq: 1\r\n\r\n", server.url(route));
    for _ in 0..100 {
        let reply = exchange(server.rtsp, describe.as_bytes(), Duration::from_millis(300)).await;
        if reply.starts_with("RTSP/1.0 200") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("route {route} never went live: {:#?}", server.log());
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// ffmpeg publishes one second of the short clip over RTSP to `url`; returns its success and errors.
pub fn publish_once(url: &str) -> (bool, String) {
    let (ok, _, err) = run(
        Command::new("ffmpeg")
            .args(["-hide_banner", "-v", "error", "-re", "-i"])
            .arg(short_clip())
            .args(["-t", "1", "-c", "copy", "-f", "rtsp", url]),
        Duration::from_secs(20),
    );
    (ok, err)
}

/// ffprobe's view of a stream's codecs, sizes and sample rates (`-of compact`).
pub fn ffprobe_streams(url: &str) -> String {
    let (ok, out, err) = run(
        Command::new("ffprobe")
            .args(["-v", "error", "-show_entries"])
            .args([
                "stream=codec_name,width,height,sample_rate",
                "-of",
                "compact",
                url,
            ]),
        Duration::from_secs(30),
    );
    assert!(ok, "ffprobe: {err}");
    out
}

/// A bearer token for `user` made by `wasmcast new-token`: the token, and the `[users.USER]`
/// table that stores it hashed.
pub fn new_token(user: &str) -> (String, String) {
    let (ok, made, stderr) = run(
        Command::new(env!("CARGO_BIN_EXE_wasmcast")).args(["new-token", user]),
        Duration::from_secs(10),
    );
    assert!(ok, "{stderr}");
    let token = made
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .expect("the token")
        .to_owned();
    let stored = made
        .lines()
        .skip_while(|l| !l.starts_with(&format!("[users.{user}]")))
        .take(2)
        .collect::<Vec<_>>()
        .join("\n");
    (token, stored)
}

/// One HTTP/1.1 request to `server` without a body: the status and the body.
pub async fn http(server: &Server, method: &str, path: &str) -> (u16, String) {
    let request = format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let reply = exchange(server.http, request.as_bytes(), Duration::from_secs(5)).await;
    let status = reply.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = reply
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// Whether the server still has a socket open (not merely the kernel finishing it) for a
/// connection from loopback port `peer` to its port `port`: `/proc/net/tcp` gives a socket no
/// process holds inode 0.
pub fn server_holds(port: u16, peer: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let port_of = |field: &str| {
            field
                .rsplit(':')
                .next()
                .and_then(|hex| u16::from_str_radix(hex, 16).ok())
        };
        fields.len() > 9
            && port_of(fields[1]) == Some(port)
            && port_of(fields[2]) == Some(peer)
            && fields[9] != "0"
    })
}

/// The resident memory of process `pid`, in KiB.
pub fn resident_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Waits until the server holds none of the connections from loopback ports `peers` to its port
/// `port` (see [`server_holds`]); returns how long that took. Fails past `limit`.
pub async fn until_server_lets_go(port: u16, peers: &[u16], limit: Duration) -> Duration {
    let started = Instant::now();
    while peers.iter().any(|&peer| server_holds(port, peer)) {
        assert!(
            started.elapsed() < limit,
            "the server still holds a connection that reads nothing, {limit:?} on: {peers:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}
