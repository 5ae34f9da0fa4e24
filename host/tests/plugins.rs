//! WASI plugins on live routes: the built-in examples read by retina and ffmpeg, hostile plugins
//! stopped by their limits, and plugins replaced under a connected reader.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use common::{
    Server, TempDir, exchange, file_route, play, plugin_wasm, run, sample_clip, wait_live,
};
use futures::StreamExt;
use retina::client::{TcpTransportOptions, Transport};
use retina::codec::CodecItem;

fn plugin_route(name: &str, clip: &Path, plugins: &[&str]) -> String {
    let list: Vec<String> = plugins.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        "{}plugins = [{}]\n",
        file_route(name, clip),
        list.join(", ")
    )
}

#[derive(Debug)]
struct Frame {
    at: Instant,
    keyframe: bool,
    /// Packets lost right before this frame.
    lost: u64,
}

/// Video frames a TCP reader of `url` gets in `seconds`; panics if its session ends early.
async fn video_frames(url: String, seconds: u64) -> Vec<Frame> {
    let mut playing = play(&url, Transport::Tcp(TcpTransportOptions::default()), false).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let mut frames = Vec::new();
    loop {
        let item = match tokio::time::timeout_at(deadline, playing.next()).await {
            Err(_) => return frames,
            Ok(None) => panic!("the session of {url} ended after {} frames", frames.len()),
            Ok(Some(item)) => item,
        };
        match item {
            Ok(CodecItem::VideoFrame(frame)) => {
                frames.push(Frame {
                    at: Instant::now(),
                    keyframe: frame.is_random_access_point(),
                    lost: frame.loss() as u64,
                });
            }
            Ok(_) => {}
            Err(err) => panic!("reader of {url} failed: {err}"),
        }
    }
}

async fn routes_json(server: &Server) -> serde_json::Value {
    let request = "GET /api/v1/routes HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let reply = exchange(server.http, request.as_bytes(), Duration::from_secs(5)).await;
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|err| panic!("routes JSON ({err}): {reply}"))
}

fn plugin_stats(routes: &serde_json::Value, route: &str, plugin: &str) -> serde_json::Value {
    routes
        .as_array()
        .and_then(|routes| routes.iter().find(|r| r["name"] == route))
        .and_then(|r| r["plugins"].as_array())
        .and_then(|plugins| plugins.iter().find(|p| p["name"] == plugin))
        .cloned()
        .unwrap_or_else(|| panic!("no plugin {plugin} on {route}: {routes}"))
}

/// The longest wait between two frames (none: forever).
fn longest_gap(frames: &[Frame]) -> Duration {
    frames
        .windows(2)
        .map(|pair| pair[1].at.duration_since(pair[0].at))
        .max()
        .unwrap_or(Duration::MAX)
}

/// Waits for `routes` to go live, reads them together for 5 s and checks that each kept playing
/// (the units its failing plugin did not take were bypassed).
async fn keep_flowing(server: &Server, routes: [&str; 3]) {
    for route in routes {
        wait_live(server, route).await;
    }
    let [a, b, c] = routes.map(|route| video_frames(server.url(route), 5));
    let (a, b, c) = tokio::join!(a, b, c);
    // Flowing means no stall: a hung plugin would leave a gap of its whole time limit or more.
    // The count bound is loose because a loaded machine (CI builds beside the test) slows every
    // route a little; the gap bound is what a stopped route fails.
    for (route, frames) in routes.iter().zip([a, b, c]) {
        let longest_gap = longest_gap(&frames);
        assert!(
            frames.len() >= 75 && longest_gap < Duration::from_millis(1500),
            "{route}: the route keeps flowing: {} frames in 5 s, longest gap {longest_gap:?}",
            frames.len()
        );
    }
}

/// Checks that the plugin of each route (named after it) failed at least once for the reason.
async fn faulted_for(server: &Server, faults: &[(&str, &str)]) {
    let routes = routes_json(server).await;
    for (route, reason) in faults {
        let stats = plugin_stats(&routes, route, route);
        assert!(stats["errors"].as_u64().unwrap_or(0) >= 1, "{stats}");
        assert!(
            stats["last_error"].as_str().unwrap_or("").contains(reason),
            "{route}: {stats}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyframes_plugin_passes_only_keyframes() {
    let clip = sample_clip();
    let server = Server::start(&format!(
        "{}{}[plugins.kf]\nwasm = \"builtin:keyframes\"\n",
        plugin_route("preview", &clip, &["kf"]),
        file_route("full", &clip)
    ));
    wait_live(&server, "preview").await;
    wait_live(&server, "full").await;
    let (preview, full) = tokio::join!(
        video_frames(server.url("preview"), 5),
        video_frames(server.url("full"), 5)
    );
    assert!(preview.len() >= 3, "keyframes in 5 s: {preview:?}");
    assert!(
        preview.iter().all(|f| f.keyframe),
        "only keyframes: {preview:?}"
    );
    assert!(
        preview.iter().all(|f| f.lost == 0),
        "dropping happens before packetization: no sequence gaps"
    );
    assert!(
        full.len() > 10 * preview.len() / 2,
        "the route without the plugin has every picture: {} vs {}",
        full.len(),
        preview.len()
    );
    assert!(full.iter().any(|f| !f.keyframe));
    let stats = plugin_stats(&routes_json(&server).await, "preview", "kf");
    assert!(stats["calls"].as_u64().unwrap_or(0) > 0, "{stats}");
    assert!(stats["dropped"].as_u64().unwrap_or(0) > 0, "{stats}");
    assert_eq!(stats["errors"], 0, "{stats}");
}

/// Finds our SEI messages in an H.264 byte stream: the wall-clock microseconds each carries.
fn sei_timestamps(stream: &[u8]) -> Vec<u64> {
    let uuid = b"wasmcast:latency";
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(offset) = stream[at..].windows(uuid.len()).position(|w| w == uuid) {
        let start = at + offset + uuid.len();
        // Undo emulation prevention in the 8 payload bytes (00 00 03 → 00 00).
        let mut payload = Vec::with_capacity(8);
        let mut zeros = 0;
        for &byte in &stream[start..] {
            if payload.len() == 8 {
                break;
            }
            if zeros >= 2 && byte == 3 {
                zeros = 0;
                continue;
            }
            zeros = if byte == 0 { zeros + 1 } else { 0 };
            payload.push(byte);
        }
        if let Ok(bytes) = <[u8; 8]>::try_from(payload.as_slice()) {
            found.push(u64::from_be_bytes(bytes));
        }
        at = start;
    }
    found
}

/// Three seconds of `route`'s video as ffmpeg records it over RTSP/TCP, unchanged, in a file in
/// `dir`.
fn record_video(server: &Server, route: &str, dir: &TempDir) -> std::path::PathBuf {
    let out = dir.path().join(format!("{route}.h264"));
    let (ok, _, stderr) = run(
        Command::new("ffmpeg")
            .args(["-v", "error", "-rtsp_transport", "tcp", "-i"])
            .arg(server.url(route))
            .args(["-t", "3", "-map", "0:v", "-c", "copy", "-f", "h264", "-y"])
            .arg(&out),
        Duration::from_secs(30),
    );
    assert!(ok, "ffmpeg on {route}: {stderr}");
    out
}

/// A chain keeps its listed order across kinds: a packet plugin listed after a frame plugin runs
/// on the re-encoded units, so its SEI stamps reach the reader; listed before, it runs on the
/// source's units, which are decoded and encoded again without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packet_plugins_run_where_the_chain_lists_them_beside_frame_plugins() {
    let server = Server::start(&format!(
        "{}{}[plugins.stamp]\nwasm = \"builtin:sei-timestamp\"\n\
         [plugins.gray]\nwasm = \"builtin:grayscale\"\n",
        plugin_route("after", &sample_clip(), &["gray", "stamp"]),
        plugin_route("before", &sample_clip(), &["stamp", "gray"]),
    ));
    let dir = TempDir::new();
    let mut stamped = Vec::new();
    for route in ["after", "before"] {
        wait_live(&server, route).await;
        let out = record_video(&server, route, &dir);
        stamped.push(sei_timestamps(&std::fs::read(&out).expect("recorded stream")).len());
    }
    assert!(
        stamped[0] >= 60,
        "stamped after the re-encode: {} of 75 pictures",
        stamped[0]
    );
    assert_eq!(stamped[1], 0, "stamps made before the re-encode are gone");
    let calls = plugin_stats(&routes_json(&server).await, "before", "stamp")["calls"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        calls > 50,
        "the stamper ran on the source's units: {calls} calls"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sei_timestamp_plugin_stamps_pictures_that_still_decode() {
    let server = Server::start(&format!(
        "{}[plugins.stamp]\nwasm = \"builtin:sei-timestamp\"\n\
         [plugins.pass]\nwasm = \"builtin:passthrough\"\n",
        plugin_route("stamped", &sample_clip(), &["stamp", "pass"])
    ));
    wait_live(&server, "stamped").await;
    let dir = TempDir::new();
    let out = record_video(&server, "stamped", &dir);
    let stamps = sei_timestamps(&std::fs::read(&out).expect("recorded stream"));
    assert!(
        stamps.len() >= 60,
        "a stamp per picture (25 fps, 3 s): {}",
        stamps.len()
    );
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_micros() as u64;
    for stamp in &stamps {
        assert!(
            now.abs_diff(*stamp) < 60_000_000,
            "stamps are wall-clock microseconds: {stamp} vs {now}"
        );
    }
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "in time order");
    let (ok, _, stderr) = run(
        Command::new("ffmpeg")
            .args(["-v", "error", "-i"])
            .arg(&out)
            .args(["-f", "null", "-"]),
        Duration::from_secs(30),
    );
    assert!(
        ok && stderr.trim().is_empty(),
        "stamped pictures decode cleanly: {stderr}"
    );

    // The stamper names the video codecs it wants: the sample's AAC (some 47 units a second
    // against 25 pictures) goes past it uncalled, and reaches the passthrough after it.
    let routes = routes_json(&server).await;
    let stamp = plugin_stats(&routes, "stamped", "stamp")["calls"]
        .as_u64()
        .unwrap_or(0);
    let pass = plugin_stats(&routes, "stamped", "pass")["calls"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        stamp > 50 && pass > 2 * stamp,
        "calls: stamp {stamp}, passthrough {pass}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_are_stopped_by_their_limits_and_routes_keep_flowing() {
    let clip = sample_clip();
    let plugin = |name: &str, crate_name: &str, extra: &str| {
        format!(
            "[plugins.{name}]\nwasm = \"{}\"\n{extra}",
            plugin_wasm(crate_name).display()
        )
    };
    let server = Server::start(&format!(
        "{}{}{}{}{}{}",
        plugin_route("spin", &clip, &["spin"]),
        plugin_route("bomb", &clip, &["bomb"]),
        plugin_route("trap", &clip, &["trap"]),
        plugin("spin", "spin", "time_limit_ms = 20\n"),
        // Time enough that only the memory limit can stop it, on a loaded machine too (a call
        // fills 16 MiB).
        plugin(
            "bomb",
            "memory-bomb",
            "memory_limit_mb = 40\ntime_limit_ms = 1000\n",
        ),
        plugin("trap", "trap-tenth", ""),
    ));
    keep_flowing(&server, ["spin", "bomb", "trap"]).await;
    let faults = [
        ("spin", "time limit"),
        ("bomb", "memory limit"),
        ("trap", "trapped"),
    ];
    faulted_for(&server, &faults).await;
    for (route, reason) in faults {
        assert!(
            server
                .log()
                .iter()
                .any(|l| l.contains("plugin failed") && l.contains(route) && l.contains(reason)),
            "{route}'s fault is logged with the reason: {:#?}",
            server.log()
        );
    }
    assert!(
        server
            .log()
            .iter()
            .any(|l| l.contains("this is the 10th unit")),
        "the plugin's panic message (its stderr) reaches the log"
    );
    let request = "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let metrics = exchange(server.http, request.as_bytes(), Duration::from_secs(5)).await;
    assert!(
        metrics.contains("wasmcast_plugin_errors_total{route=\"trap\",plugin=\"trap\"}"),
        "{metrics}"
    );
}

#[test]
fn check_refuses_a_component_of_another_world_and_a_bad_plugin_config() {
    let dir = TempDir::new();
    let config = dir.path().join("wasmcast.toml");
    std::fs::write(
        &config,
        format!(
            "[routes.a]\nsource = \"file:{}\"\nplugins = [\"greeter\", \"stamp\"]\n\
             [plugins.greeter]\nwasm = \"{}\"\n\
             [plugins.stamp]\nwasm = \"builtin:sei-timestamp\"\nconfig = {{ every = 0 }}\n\
             [plugins.missing]\nwasm = \"nowhere.wasm\"\n",
            sample_clip().display(),
            plugin_wasm("wrong-world").display()
        ),
    )
    .expect("write config");
    let output = Command::new(env!("CARGO_BIN_EXE_wasmcast"))
        .arg("check")
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run check");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("plugins.greeter")
            && stderr.contains("exports neither `wasmcast:plugin/packet-filter@0.1.x`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("plugins.stamp") && stderr.contains("config.every: must be at least 1"),
        "{stderr}"
    );
    assert!(
        stderr.contains("plugins.missing") && stderr.contains("cannot read"),
        "{stderr}"
    );
}

/// A reader that stays connected while `change` edits the server's plugins after two seconds;
/// returns the frames it got and when the change was made.
async fn frames_around(
    server: &Server,
    route: &str,
    change: impl FnOnce(),
) -> (Vec<Frame>, Instant) {
    let reader = tokio::spawn(video_frames(server.url(route), 8));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let changed_at = Instant::now();
    change();
    assert!(
        server.wait_for_log("config reloaded", Duration::from_secs(2)),
        "the change was applied: {:#?}",
        server.log()
    );
    (reader.await.expect("reader"), changed_at)
}

fn assert_keyframes_only_after(frames: &[Frame], changed_at: Instant) {
    let before: Vec<&Frame> = frames.iter().filter(|f| f.at < changed_at).collect();
    // The stage swaps between two units; allow for the units already on their way to the reader.
    let after: Vec<&Frame> = frames
        .iter()
        .filter(|f| f.at > changed_at + Duration::from_millis(600))
        .collect();
    assert!(
        before.iter().any(|f| !f.keyframe),
        "every picture before the change"
    );
    assert!(after.len() >= 3, "keyframes after the change: {after:?}");
    assert!(
        after.iter().all(|f| f.keyframe),
        "only keyframes after the change: {after:?}"
    );
    assert!(
        frames.iter().all(|f| f.lost == 0),
        "no packet lost across the swap: {frames:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_a_plugin_file_swaps_it_under_a_connected_reader() {
    let dir = TempDir::new();
    let wasm = dir.path().join("filter.wasm");
    std::fs::copy(plugin_wasm("passthrough"), &wasm).expect("copy plugin");
    let server = Server::start(&format!(
        "{}[plugins.filter]\nwasm = \"{}\"\n",
        plugin_route("live", &sample_clip(), &["filter"]),
        wasm.display()
    ));
    wait_live(&server, "live").await;
    let replace = |from: &Path| {
        let new = dir.path().join("filter.wasm.new");
        std::fs::copy(from, &new).expect("copy plugin");
        std::fs::rename(&new, &wasm).expect("rename plugin");
    };
    let (frames, changed_at) =
        frames_around(&server, "live", || replace(&plugin_wasm("keyframes"))).await;
    assert_keyframes_only_after(&frames, changed_at);
    assert!(
        server
            .log()
            .iter()
            .any(|l| l.contains("config reloaded") && l.contains("filter")),
        "the reload line names the replaced plugin: {:#?}",
        server.log()
    );

    // A broken build of the file keeps the running version and says why.
    std::fs::write(dir.path().join("filter.wasm.new"), b"\0asm garbage").expect("write");
    std::fs::rename(dir.path().join("filter.wasm.new"), &wasm).expect("rename");
    assert!(
        server.wait_for_log("config reload refused", Duration::from_secs(2)),
        "{:#?}",
        server.log()
    );
    let still = video_frames(server.url("live"), 3).await;
    assert!(
        still.len() >= 2 && still.iter().all(|f| f.keyframe),
        "the keyframes plugin still runs: {still:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_gains_a_plugin_chain_under_a_connected_reader() {
    let clip = sample_clip();
    let server = Server::start(&file_route("a", &clip));
    wait_live(&server, "a").await;
    let edited = format!(
        "{}[plugins.kf]\nwasm = \"builtin:keyframes\"\n",
        plugin_route("a", &clip, &["kf"])
    );
    let (frames, changed_at) =
        frames_around(&server, "a", || server.write_routes(&edited, true)).await;
    assert_keyframes_only_after(&frames, changed_at);
}

/// `wasmcast plugin new NAME` (with `args`) in `dir`, built: its directory and its component.
fn new_built_project(dir: &TempDir, name: &str, args: &[&str]) -> (PathBuf, PathBuf) {
    let (ok, stdout, stderr) = run(
        Command::new(env!("CARGO_BIN_EXE_wasmcast"))
            .args(["plugin", "new", name])
            .args(args)
            .arg("--dir")
            .arg(dir.path()),
        Duration::from_secs(10),
    );
    assert!(ok, "plugin new {name} {args:?}: {stdout}{stderr}");
    let project = dir.path().join(name);
    // The crates it needs are the ones the example plugins were built with: no network needed.
    let (ok, _, stderr) = run(
        Command::new("cargo")
            .args(["build", "--release", "--offline"])
            // The project's own target directory, where the test looks for the component.
            .env_remove("CARGO_TARGET_DIR")
            .current_dir(&project),
        Duration::from_secs(300),
    );
    assert!(ok, "cargo build of the new plugin {name}: {stderr}");
    let wasm = project.join(format!(
        "target/wasm32-wasip2/release/{}.wasm",
        name.replace('-', "_")
    ));
    (project, wasm)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_plugin_project_builds_runs_on_a_file_and_on_a_route() {
    let dir = TempDir::new();
    let wasmcast = env!("CARGO_BIN_EXE_wasmcast");
    let (_, wasm) = new_built_project(&dir, "frame-counter", &[]);

    let (ok, report, stderr) = run(
        Command::new(wasmcast)
            .args(["plugin", "run"])
            .arg(&wasm)
            .arg("--input")
            .arg(sample_clip())
            .args(["--plugin-config", "report_every = 2"]),
        Duration::from_secs(60),
    );
    assert!(ok, "plugin run: {report}{stderr}");
    assert!(
        report.contains("track 0 (H264): 250 units in, 250 out") && report.contains("errors: 0"),
        "{report}"
    );
    assert!(stderr.contains("keyframes, "), "the plugin's log: {stderr}");

    let (ok, _, stderr) = run(
        Command::new(wasmcast)
            .args(["plugin", "run"])
            .arg(&wasm)
            .arg("--input")
            .arg(sample_clip())
            .args(["--plugin-config", "report_every = 0"]),
        Duration::from_secs(60),
    );
    assert!(
        !ok && stderr.contains("config.report_every: must be at least 1"),
        "a bad config is refused with the plugin's reason: {stderr}"
    );

    let server = Server::start(&format!(
        "{}[plugins.counter]\nwasm = \"{}\"\nconfig = {{ report_every = 1 }}\n",
        plugin_route("counted", &sample_clip(), &["counter"]),
        wasm.display()
    ));
    wait_live(&server, "counted").await;
    let frames = video_frames(server.url("counted"), 2).await;
    assert!(frames.len() >= 30, "{} frames", frames.len());
    assert!(
        server.wait_for_log("keyframes, ", Duration::from_secs(3)),
        "the plugin logs under its name: {:#?}",
        server.log()
    );
    assert!(
        server
            .log()
            .iter()
            .any(|l| l.contains("keyframes, ") && l.contains("counter")),
        "{:#?}",
        server.log()
    );
}

/// A frame plugin project (`--frame`, pictures copied in, or `--picture`, pictures lent), built
/// and run on the sample: its own test, its events and metrics, and its video.
fn a_new_frame_plugin_project_builds_and_runs(template: &str) {
    let dir = TempDir::new();
    let wasmcast = env!("CARGO_BIN_EXE_wasmcast");
    let (project, wasm) = new_built_project(&dir, "brightness", &[template]);
    // Its own test runs natively against the SDK's mock host.
    // The project builds for wasm32-wasip2 by default (.cargo/config.toml): tests name this
    // machine's target.
    let (_, rustc, _) = run(Command::new("rustc").arg("-vV"), Duration::from_secs(10));
    let native = rustc
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .expect("rustc names its host")
        .to_owned();
    let (ok, out, stderr) = run(
        Command::new("cargo")
            .args(["test", "--offline", "--target", &native])
            .env_remove("CARGO_TARGET_DIR")
            .current_dir(&project),
        Duration::from_secs(300),
    );
    assert!(
        ok && out.contains("crossing_the_threshold_emits_an_event ... ok"),
        "the {template} template's own test: {out}{stderr}"
    );
    let video = dir.path().join("out.h264");
    // The sample's pictures are mostly brighter than 40 and darker than 250: with the threshold
    // at 250 every picture is "dark", so exactly one event.
    let (ok, report, stderr) = run(
        Command::new(wasmcast)
            .args(["plugin", "run"])
            .arg(&wasm)
            .arg("--input")
            .arg(sample_clip())
            .args(["--plugin-config", "threshold = 250"])
            .arg("--video-out")
            .arg(&video),
        Duration::from_secs(120),
    );
    assert!(ok, "plugin run: {report}{stderr}");
    for expected in [
        "frame plugin",
        "pictures: 250 decoded, 0 left out by the plugin",
        "calls: 250, time per call: mean",
        "events: 1\n",
        "\"name\":\"dark\"",
        "metrics: brightness = ",
        "errors: 0",
    ] {
        assert!(report.contains(expected), "`{expected}` in: {report}");
    }
    let (ok, frames, stderr) = run(
        Command::new("ffprobe")
            .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
            .args([
                "-show_entries",
                "stream=codec_name,nb_read_frames",
                "-of",
                "csv=p=0",
            ])
            .arg(&video),
        Duration::from_secs(30),
    );
    assert!(ok, "ffprobe reads the re-encoded video: {stderr}");
    assert!(
        frames.trim().starts_with("h264,")
            && frames
                .trim()
                .trim_start_matches("h264,")
                .parse::<u32>()
                .is_ok_and(|n| n >= 240),
        "{frames}"
    );
}

#[test]
fn a_new_frame_plugin_project_builds_and_runs_on_a_file_with_its_events_and_video() {
    a_new_frame_plugin_project_builds_and_runs("--frame");
}

#[test]
fn a_new_picture_plugin_project_builds_and_runs_on_a_file_with_its_events_and_video() {
    a_new_frame_plugin_project_builds_and_runs("--picture");
}

#[test]
fn the_example_plugins_own_tests_pass_natively_against_the_sdks_mock_host() {
    let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    // Frame, picture and packet plugins build apart (the SDK compiles one world per build); the
    // SDK's own tests (NAL units, SEI, drawing) run with two of them.
    let runs: [(&[&str], &[&str]); 3] = [
        (
            &["motion", "clock", "wasmcast-plugin-sdk"],
            &[
                "a_moving_square_starts_and_ends_a_motion_with_its_box ... ok",
                "text_draws_the_glyphs_dots_at_scale ... ok",
            ],
        ),
        (
            &["luma-meter", "grayscale-in-place"],
            &[
                "measures_the_middle_square_and_counts_keyframes ... ok",
                "chroma_goes_neutral_and_luma_stays ... ok",
            ],
        ),
        (
            &["sei-timestamp", "wasmcast-plugin-sdk"],
            &[
                "a_stamp_goes_before_the_first_slice_with_our_uuid ... ok",
                "sei_payload_sizes_past_255_take_ff_bytes ... ok",
            ],
        ),
    ];
    for (packages, expected) in runs {
        let mut command = Command::new("cargo");
        command.args(["test", "--offline"]);
        for package in packages {
            command.args(["-p", package]);
        }
        let (ok, out, stderr) = run(
            command.env_remove("CARGO_TARGET_DIR").current_dir(&plugins),
            Duration::from_secs(300),
        );
        assert!(
            ok && expected.iter().all(|line| out.contains(line)),
            "{packages:?}: {out}{stderr}"
        );
    }
}

/// A `[plugins.NAME]` table running the `hostile` test plugin with `attack`.
fn hostile_plugin(name: &str, attack: &str, extra: &str) -> String {
    format!(
        "[plugins.{name}]\nwasm = \"{}\"\nconfig = {{ attack = \"{attack}\" }}\n{extra}",
        plugin_wasm("hostile").display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_that_sleep_flood_units_or_flood_the_log_are_stopped_and_routes_keep_flowing() {
    let clip = sample_clip();
    let server = Server::start(&format!(
        "{}{}{}{}{}{}",
        plugin_route("sleep", &clip, &["sleep"]),
        plugin_route("replace", &clip, &["replace"]),
        plugin_route("logs", &clip, &["logs"]),
        hostile_plugin("sleep", "sleep-process", "time_limit_ms = 20\n"),
        hostile_plugin("replace", "replace-flood", "memory_limit_mb = 256\n"),
        hostile_plugin("logs", "log-flood", "time_limit_ms = 500\n"),
    ));
    let started = Instant::now();
    keep_flowing(&server, ["sleep", "replace", "logs"]).await;
    faulted_for(
        &server,
        &[
            // An hour's sleep in a host call ends at the 20 ms limit like a spin in wasm code.
            ("sleep", "time limit"),
            ("replace", "at most 64 units"),
        ],
    )
    .await;
    // 1,000 log lines and 1 MiB of stdout per unit, ~75 units a second: the log takes 50 lines
    // (16 KiB) a second from the plugin and says how much it left out.
    let seconds = started.elapsed().as_secs() + 3;
    let flood_lines = server
        .log()
        .iter()
        .filter(|l| l.contains("flood line") || l.contains("xxxxxxxx"))
        .count() as u64;
    assert!(
        flood_lines <= 50 * seconds,
        "{flood_lines} plugin lines logged in about {seconds} s"
    );
    assert!(
        server
            .log()
            .iter()
            .any(|l| l.contains("plugin log lines suppressed")),
        "the log says how much it left out"
    );
}

/// A plugin allowed the network that opens a thousand sockets a unit and never closes them is held
/// to a few hundred host resources at a time: it cannot take the server's file descriptors, so
/// its route flows and the server goes on accepting readers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_opens_sockets_without_end_cannot_take_the_servers_files() {
    let clip = sample_clip();
    let server = Server::start(&format!(
        "{}{}",
        plugin_route("sockets", &clip, &["sockets"]),
        hostile_plugin("sockets", "socket-flood", "network = true\n"),
    ));
    wait_live(&server, "sockets").await;
    let open_files =
        || std::fs::read_dir(format!("/proc/{}/fd", server.pid())).map_or(0, |d| d.count());
    let mut most = open_files();
    let frames = {
        let reading = video_frames(server.url("sockets"), 5);
        tokio::pin!(reading);
        loop {
            tokio::select! {
                frames = &mut reading => break frames,
                () = tokio::time::sleep(Duration::from_millis(100)) => most = most.max(open_files()),
            }
        }
    };
    assert!(most < 1000, "the server had {most} files open");
    // The grant works, and the limit is what stopped it.
    faulted_for(&server, &[("sockets", "host resources")]).await;
    assert!(
        frames.len() >= 75,
        "the route flows: {} frames in 5 s",
        frames.len()
    );
    let streams = tokio::task::spawn_blocking({
        let url = server.url("sockets");
        move || common::ffprobe_streams(&url)
    })
    .await
    .expect("ffprobe");
    assert!(
        streams.contains("h264"),
        "a new reader is served: {streams}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_whose_init_sleeps_or_wants_list_is_huge_are_refused_and_reloads_go_on() {
    let clip = sample_clip();
    let server = Server::start(&file_route("plain", &clip));
    wait_live(&server, "plain").await;
    let sleepy = format!(
        "{}{}{}",
        file_route("plain", &clip),
        plugin_route("sleepy", &clip, &["sleepy"]),
        hostile_plugin("sleepy", "sleep-init", "time_limit_ms = 100\n"),
    );
    let asked = Instant::now();
    server.write_routes(&sleepy, true);
    assert!(
        server.wait_for_log("config reload refused", Duration::from_secs(10)),
        "{:#?}",
        server.log()
    );
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "the hour-long init was cut short"
    );
    assert!(
        server
            .log()
            .iter()
            .any(|l| l.contains("sleepy") && l.contains("time limit")),
        "the refusal names the plugin and the limit: {:#?}",
        server.log()
    );
    // A plugin that names 200 million codecs it wants: the host copies at most 128 MiB out of a
    // plugin in one call (wasmtime's hostcall fuel), so the plugin is refused before the host
    // allocates anything for the list.
    let greedy = format!(
        "{}{}{}",
        file_route("plain", &clip),
        plugin_route("greedy", &clip, &["greedy"]),
        hostile_plugin(
            "greedy",
            "wants-flood",
            "memory_limit_mb = 512\ntime_limit_ms = 10000\n",
        ),
    );
    server.write_routes(&greedy, true);
    assert!(
        server.wait_for_log("too much data", Duration::from_secs(20)),
        "{:#?}",
        server.log()
    );
    assert!(
        server
            .log()
            .iter()
            .any(|l| l.contains("greedy") && l.contains("too much data")),
        "the refusal names the plugin and why: {:#?}",
        server.log()
    );
    // The next reload is not stuck behind it.
    server.write_routes(
        &format!(
            "{}{}",
            file_route("plain", &clip),
            file_route("after", &clip)
        ),
        true,
    );
    assert!(
        server.wait_for_log("config reloaded", Duration::from_secs(10)),
        "{:#?}",
        server.log()
    );
    wait_live(&server, "after").await;
}

/// CPU time of process `pid` so far (user and system, all threads).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of proc_pid_stat(5), in clock ticks of 1/100 s.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// A plugin that spends its time where no call is timed, in the snapshots of its state (300 ms
/// each, asked for every second, within the time limit), takes it from its share of real time as
/// much as in its calls: held to 10 % of a core, it rests until the share has paid for each
/// snapshot. Uncharged, it took 30 % of a core and never rested.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_spends_its_time_saving_its_state_is_held_to_its_share() {
    let server = Server::start(&format!(
        "{}[plugins.snapper]\nwasm = \"{}\"\n\
         config = {{ attack = \"snapshot-hog\", spin_ms = 300 }}\n\
         snapshot_every_s = 1\ntime_limit_ms = 1000\ncpu_percent = 10\n",
        plugin_route("snapper", &sample_clip(), &["snapper"]),
        plugin_wasm("hostile").display()
    ));
    wait_live(&server, "snapper").await;
    let snapshots = async || {
        plugin_stats(&routes_json(&server).await, "snapper", "snapper")["snapshots"]
            .as_u64()
            .unwrap_or(0)
    };
    let (snapshots_before, cpu_before, started) =
        (snapshots().await, cpu_time(server.pid()), Instant::now());
    let frames = video_frames(server.url("snapper"), 9).await;
    let elapsed = started.elapsed();
    let (saved, cpu) = (
        snapshots().await - snapshots_before,
        cpu_time(server.pid()) - cpu_before,
    );
    assert!(
        frames.len() >= 180,
        "the route keeps flowing: {} frames in 9 s",
        frames.len()
    );
    // A tenth of the time, and the first snapshot's 300 ms, with the route's own work beside.
    assert!(
        saved <= 5,
        "{saved} snapshots of 300 ms in {elapsed:?} at 10 % of a core"
    );
    assert!(
        cpu < elapsed.mul_f64(0.2) + Duration::from_millis(300),
        "the server used {cpu:?} of CPU in {elapsed:?}"
    );
    rested_keeping_its_instance(&server, "snapper", "snapper").await;
}

/// Checks that `plugin` on `route` rested for taking more than its share of real time, and that
/// resting was no fault: its instance (and whatever it keeps) stayed.
async fn rested_keeping_its_instance(server: &Server, route: &str, plugin: &str) {
    let stats = plugin_stats(&routes_json(server).await, route, plugin);
    assert!(
        stats["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("more than its share of real time")),
        "{stats}"
    );
    assert_eq!(stats["restarts"], 0, "{stats}");
}

/// A plugin that spins 30 ms in every call (within its time limit, so it never faults) on a route
/// of ~70 units a second would take a core for good and leave the route ever further behind. Held
/// to its share of real time (`cpu_percent`, 50 by default), it rests while its units are
/// bypassed: the route keeps flowing, and the plugin takes about half a core.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_slower_than_its_route_is_held_to_its_share_of_real_time() {
    let server = Server::start(&format!(
        "{}{}",
        plugin_route("hog", &sample_clip(), &["hog"]),
        hostile_plugin("hog", "hog", "time_limit_ms = 500\n"),
    ));
    wait_live(&server, "hog").await;
    let in_calls = async || {
        let routes = routes_json(&server).await;
        Duration::from_secs_f64(
            plugin_stats(&routes, "hog", "hog")["call_seconds"]
                .as_f64()
                .unwrap_or(0.0),
        )
    };
    let (calls_before, cpu_before, started) =
        (in_calls().await, cpu_time(server.pid()), Instant::now());
    let frames = video_frames(server.url("hog"), 8).await;
    let elapsed = started.elapsed();
    let (calls, cpu) = (
        in_calls().await - calls_before,
        cpu_time(server.pid()) - cpu_before,
    );
    let longest_gap = longest_gap(&frames);
    assert!(
        frames.len() >= 160 && longest_gap < Duration::from_millis(1500),
        "the route keeps flowing: {} frames in 8 s (25 a second), longest gap {longest_gap:?}",
        frames.len()
    );
    // Half of the time, and a second's share that may come at once.
    assert!(
        calls < elapsed.mul_f64(0.5) + Duration::from_millis(800),
        "{calls:?} in the plugin's calls in {elapsed:?}"
    );
    assert!(
        cpu < elapsed.mul_f64(0.8),
        "the server used {cpu:?} of CPU in {elapsed:?}"
    );
    rested_keeping_its_instance(&server, "hog", "hog").await;
    assert!(
        server
            .log()
            .iter()
            .any(|l| l.contains("took more than its share of real time") && l.contains("bypassed")),
        "the log says why the plugin rests: {:#?}",
        server.log()
    );
}
