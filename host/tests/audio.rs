//! Sound in the browser from AAC routes: Chromium plays an AAC route's Opus rendition (from 48 kHz
//! and, resampled, from 44.1 kHz), made once per route however many viewers watch.

#[path = "common/browser.rs"]
#[allow(
    dead_code,
    reason = "the browser helpers are shared with the WebRTC tests, which use the rest"
)]
mod browser;
mod common;

use std::time::{Duration, Instant};

use browser::{Browser, Page};
use common::{Server, clip, file_route, http, sample_clip, wait_live};

/// The player's state with its audio receiver's codec, samples and energy.
const PLAYER_AUDIO: &str = r#"(async () => {
  // The player starts muted (browsers play muted pages only); what is heard is measured unmuted.
  document.getElementById('video').muted = false;
  const out = Object.assign({}, window.wasmcast || {});
  if (typeof pc !== 'undefined' && pc) {
    const stats = await pc.getStats();
    stats.forEach((r) => {
      if (r.type === 'inbound-rtp' && r.kind === 'audio') {
        out.audioSamples = r.totalSamplesReceived || 0;
        out.audioEnergy = r.totalAudioEnergy || 0;
        const codec = r.codecId && stats.get(r.codecId);
        out.audioCodec = codec && codec.mimeType;
      }
    });
  }
  return JSON.stringify(out);
})()"#;

async fn heard(browser: &mut Browser, page: &Page, server: &Server) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let state = browser.eval(page, PLAYER_AUDIO).await;
        let state: serde_json::Value =
            serde_json::from_str(state.as_str().unwrap_or("{}")).unwrap_or_default();
        // A sine and music are not silence: the energy of silence stays 0 (a -18 dBFS sine adds
        // some 0.016 a second once unmuted).
        if state["framesDecoded"].as_u64().unwrap_or(0) > 48
            && state["audioSamples"].as_u64().unwrap_or(0) > 96_000
            && state["audioEnergy"].as_f64().unwrap_or(0.0) > 0.01
        {
            return state;
        }
        assert!(
            Instant::now() < deadline,
            "the player did not play sound: {state}\n{}",
            server.log().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn metric(server: &Server, name: &str) -> f64 {
    let (_, metrics) = http(server, "GET", "/metrics").await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} in /metrics: {metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_hears_aac_routes_as_opus_one_rendition_per_route() {
    let tone = clip(
        "h264-aac-44100-tone.mp4",
        "-f lavfi -i testsrc2=size=320x240:rate=25:duration=8 \
         -f lavfi -i sine=frequency=440:sample_rate=44100:duration=8 \
         -c:v libx264 -profile:v baseline -bf 0 -g 25 -pix_fmt yuv420p \
         -c:a aac -ar 44100 -ac 2 -b:a 96k",
    );
    let server = Server::start(&format!(
        "{}{}",
        file_route("sample", &sample_clip()),
        file_route("tone", &tone)
    ));
    wait_live(&server, "sample").await;
    wait_live(&server, "tone").await;
    let mut browser = Browser::launch().await;
    let mut pages = Vec::new();
    for route in ["sample", "tone", "tone"] {
        let page = browser
            .open(&format!("http://{}/{route}/", server.http))
            .await;
        pages.push((route, page));
    }
    for (route, page) in &pages {
        let state = heard(&mut browser, page, &server).await;
        assert_eq!(state["audioCodec"], "audio/opus", "{route}: {state}");
    }
    assert_eq!(
        metric(&server, "wasmcast_opus_renditions").await,
        2.0,
        "one rendition per route, whatever the viewers"
    );
    let frames = metric(&server, "wasmcast_opus_frames_total").await;
    let seconds = metric(&server, "wasmcast_opus_transcode_seconds_total").await;
    assert!(frames > 100.0, "{frames} Opus frames");
    eprintln!(
        "AAC to Opus: {:.0} µs per 20 ms frame",
        seconds * 1e6 / frames
    );
}
