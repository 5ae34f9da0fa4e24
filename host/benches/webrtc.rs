//! WebRTC fan-out: N WHEP viewers of a ~2 Mbps 720p route with AAC sound, watching only or also
//! listening (the route's Opus rendition); server CPU per viewer, what the AAC-to-Opus rendition
//! costs per 20 ms frame, and the latency headless Chromium's player estimates from its own stats
//! (jitter buffer delay plus half the round trip). Run with `cargo bench --bench webrtc`; `WASMCAST_BENCH_VIEWERS` (default `100`) and
//! `WASMCAST_BENCH_SECONDS` (default 10).
//!
//! The viewers are webrtc-crate peers in this process (decrypting every packet costs this process
//! CPU, not the server's). Then, in the same run on one server, `WASMCAST_BENCH_BROWSERS` (default
//! 5; 0 leaves this part out) such viewers and as many headless Chromium tabs playing the route's
//! page, which answer as browsers do (receiver reports, NACK, PLI; decoding every frame): server
//! CPU per viewer above the idle route for each, side by side.

#![allow(
    dead_code,
    reason = "the browser and WHEP helpers are shared with the tests, which use all of them"
)]

#[path = "../tests/common/browser.rs"]
mod browser;
mod common;
#[path = "../tests/common/whep.rs"]
mod whep;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::BenchServer;

/// Issue #20: 500 viewers of a 2 Mbit/s route under one core of server CPU.
const TARGET_VIEWERS_A_CORE: usize = 500;
const TARGET_LATENCY_MS: f64 = 300.0;

fn main() {
    let counts = common::counts("WASMCAST_BENCH_VIEWERS", "5", "100");
    let seconds = common::seconds(2, 10);
    let clip = common::clip_2mbps_with_audio();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("viewers  sound  receiving  server-cpu  cpu/viewer   packets/viewer/s");
    for (count, audio) in counts
        .iter()
        .flat_map(|&count| [(count, false), (count, true)])
    {
        let server = BenchServer::start(
            "webrtc",
            &format!(
                "rtp_ports = \"37000-37999\"\nmax_clients = {0}\n\
                 max_connections = {1}\nmax_connections_per_address = {1}\n\
                 connection_rate_per_address = {1}\n\
                 max_bandwidth_kbps = {2}",
                count + 10,
                2 * count + 16,
                // ~2.3 Mbit/s a viewer with sound, and room to spare.
                4_000 * (count + 10)
            ),
            &format!("[routes.hd]\nsource = \"file:{}\"\n", clip.display()),
        );
        runtime.block_on(async {
            std::thread::sleep(Duration::from_millis(500));
            let mut viewers = Vec::new();
            for _ in 0..count {
                let viewer = if audio {
                    whep::Viewer::connect_listening(server.http, "hd").await
                } else {
                    whep::Viewer::connect(server.http, "hd").await
                };
                viewers.push(viewer.expect("a viewer"));
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            let before: Vec<u64> = viewers
                .iter()
                .map(|v| v.packets.load(Ordering::Relaxed))
                .collect();
            let cpu_before = server.cpu_time();
            let started = Instant::now();
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            let elapsed = started.elapsed().as_secs_f64();
            let cpu = (server.cpu_time() - cpu_before).as_secs_f64() / elapsed;
            let rates: Vec<f64> = viewers
                .iter()
                .zip(&before)
                .map(|(v, b)| (v.packets.load(Ordering::Relaxed) - b) as f64 / elapsed)
                .collect();
            let receiving = rates.iter().filter(|r| **r > 1.0).count();
            let mean_rate = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
            println!(
                "{count:>7}  {:>5}  {receiving:>9}  {:>9.1}%  {:>9.3}%  {mean_rate:>16.0}",
                if audio { "opus" } else { "-" },
                cpu * 100.0,
                cpu * 100.0 / count as f64
            );
            if audio {
                let metrics = server.get("/metrics");
                let value = |name: &str| {
                    metrics
                        .lines()
                        .find_map(|l| l.strip_prefix(&format!("{name} ")))
                        .and_then(|v| v.parse::<f64>().ok())
                        .unwrap_or(0.0)
                };
                let frames = value("wasmcast_opus_frames_total");
                let seconds = value("wasmcast_opus_transcode_seconds_total");
                println!(
                    "  AAC to Opus, once for the route: {:.0} µs per 20 ms frame ({:.1} % of a core), {} rendition(s)",
                    seconds * 1e6 / frames.max(1.0),
                    seconds * 1e6 / frames.max(1.0) / 200.0,
                    value("wasmcast_opus_renditions")
                );
            }
            if count == TARGET_VIEWERS_A_CORE {
                println!(
                    "  target: {TARGET_VIEWERS_A_CORE} viewers under one core: {}",
                    if cpu < 1.0 { "ok" } else { "MISSED" }
                );
            }
            for viewer in &viewers {
                viewer.close().await;
            }
        });
    }

    browser_viewers(&runtime, &clip);

    let server = BenchServer::start(
        "webrtc-latency",
        "rtp_ports = \"37000-37999\"",
        &format!("[routes.hd]\nsource = \"file:{}\"\n", clip.display()),
    );
    runtime.block_on(async {
        let mut chromium = browser::Browser::launch().await;
        let page = chromium
            .open(&format!("http://{}/hd/", server.http))
            .await;
        tokio::time::sleep(Duration::from_secs(if common::quick() { 4 } else { 10 })).await;
        let latency = chromium
            .eval(&page, "window.wasmcast && window.wasmcast.latencyMs")
            .await;
        match latency.as_f64() {
            Some(ms) => println!(
                "Chromium player's latency estimate on loopback: {ms:.0} ms; target < {TARGET_LATENCY_MS} ms: {}",
                if ms < TARGET_LATENCY_MS { "ok" } else { "MISSED" }
            ),
            None => println!("the player reported no latency estimate ({latency})"),
        }
    });
}

/// Server CPU per viewer above the idle route: webrtc-crate viewers, then as many Chromium tabs
/// playing the route's page, on one server in the same run.
fn browser_viewers(runtime: &tokio::runtime::Runtime, clip: &std::path::Path) {
    let count = common::counts("WASMCAST_BENCH_BROWSERS", "2", "5")
        .first()
        .copied()
        .unwrap_or(5);
    if count == 0 {
        return;
    }
    let seconds = common::seconds(3, 10);
    let server = BenchServer::start(
        "webrtc-browsers",
        "",
        &format!("[routes.hd]\nsource = \"file:{}\"\n", clip.display()),
    );
    let per_second =
        |cpu: Duration, started: Instant| cpu.as_secs_f64() / started.elapsed().as_secs_f64();
    runtime.block_on(async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (cpu, started) = (server.cpu_time(), Instant::now());
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let idle = per_second(server.cpu_time() - cpu, started);
        println!(
            "{count} viewers of one route, one server (idle route: {:.1}% of a core):",
            idle * 100.0
        );

        let mut viewers = Vec::new();
        for _ in 0..count {
            viewers.push(
                whep::Viewer::connect(server.http, "hd")
                    .await
                    .expect("a viewer"),
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (cpu, started) = (server.cpu_time(), Instant::now());
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let crate_viewers = per_second(server.cpu_time() - cpu, started);
        for viewer in &viewers {
            viewer.close().await;
        }
        println!(
            "  webrtc-crate viewers (video and Opus): {:.1}% of a core, {:.3}% per viewer above idle",
            crate_viewers * 100.0,
            (crate_viewers - idle) * 100.0 / count as f64
        );

        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut chromium = browser::Browser::launch().await;
        let mut pages = Vec::new();
        for _ in 0..count {
            pages.push(chromium.open(&format!("http://{}/hd/", server.http)).await);
        }
        tokio::time::sleep(Duration::from_secs(6)).await;
        let frames = |values: Vec<serde_json::Value>| -> Vec<f64> {
            values.iter().map(|v| v.as_f64().unwrap_or(0.0)).collect()
        };
        let mut before = Vec::new();
        for page in &pages {
            before.push(chromium.eval(page, "window.wasmcast.framesDecoded").await);
        }
        let (cpu, started) = (server.cpu_time(), Instant::now());
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let browsers = per_second(server.cpu_time() - cpu, started);
        let elapsed = started.elapsed().as_secs_f64();
        let mut after = Vec::new();
        let mut feedback = (0.0, 0.0);
        for page in &pages {
            after.push(chromium.eval(page, "window.wasmcast.framesDecoded").await);
            let asked = chromium.eval(page, "window.wasmcast.feedback").await;
            feedback.0 += asked["nack"].as_f64().unwrap_or(0.0);
            feedback.1 +=
                asked["pli"].as_f64().unwrap_or(0.0) + asked["fir"].as_f64().unwrap_or(0.0);
        }
        let cipher = chromium
            .eval(
                &pages[0],
                "pc.getStats().then((r) => { let c = null; \
                 r.forEach((s) => { if (s.type === 'transport') c = s.srtpCipher; }); return c; })",
            )
            .await;
        let playing = frames(after)
            .iter()
            .zip(frames(before))
            .filter(|(after, before)| (**after - before) / elapsed > 20.0)
            .count();
        println!(
            "  Chromium tabs (video and Opus): {:.1}% of a core, {:.3}% per viewer above idle; {playing} of {count} \
             decoding > 20 frames/s; they sent {} NACKs and {} keyframe requests in all; SRTP {}",
            browsers * 100.0,
            (browsers - idle) * 100.0 / count as f64,
            feedback.0,
            feedback.1,
            cipher.as_str().unwrap_or("unknown")
        );
    });
}
