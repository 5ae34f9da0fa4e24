//! WebRTC fan-out: N WHEP viewers of a ~2 Mbps 720p route with AAC sound, watching only or also
//! listening (the route's Opus rendition); server CPU per viewer, what the AAC-to-Opus rendition
//! costs per 20 ms frame, and the latency headless Chromium's player estimates from its own stats
//! (jitter buffer delay plus half the round trip). Run with `cargo bench --bench webrtc`; `WASMCAST_BENCH_VIEWERS` (default `100`) and
//! `WASMCAST_BENCH_SECONDS` (default 10).
//!
//! The viewers are webrtc-crate peers in this process (decrypting every packet costs this process
//! CPU, not the server's).

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

const TARGET_CPU_FOR_100: f64 = 1.0;
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
                 max_connections = {1}\nmax_connections_per_address = {1}",
                count + 10,
                2 * count + 16
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
            if count >= 100 && !audio {
                println!(
                    "  target: 100 viewers under one core: {}",
                    if cpu * 100.0 / count as f64 <= TARGET_CPU_FOR_100 {
                        "ok"
                    } else {
                        "MISSED"
                    }
                );
            }
            for viewer in &viewers {
                viewer.close().await;
            }
        });
    }

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
