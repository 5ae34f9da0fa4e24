//! WebRTC egress: headless Chromium plays routes from the player page over WHEP; bad WHEP requests
//! get a clear refusal and disturb nothing.

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::time::{Duration, Instant};

use browser::{Browser, mean_brightness};
use common::{
    Pusher, Server, b_frame_clip, exchange, file_route, h265_clip, push_route, sample_clip,
    wait_live,
};

/// Waits until the player on `page` has decoded more than `frames` frames; returns its state.
async fn played(browser: &mut Browser, page: &browser::Page, frames: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let state = browser
            .eval(page, "JSON.stringify(Object.assign({ width: document.getElementById('video').videoWidth, height: document.getElementById('video').videoHeight }, window.wasmcast || {}))")
            .await;
        let state: serde_json::Value =
            serde_json::from_str(state.as_str().unwrap_or("{}")).unwrap_or_default();
        if state["framesDecoded"].as_u64().unwrap_or(0) > frames {
            return state;
        }
        assert!(
            Instant::now() < deadline,
            "the player did not decode {frames} frames: {state}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Where the video element is on the page, in screenshot pixels.
async fn video_box(browser: &mut Browser, page: &browser::Page) -> (u32, u32, u32, u32) {
    let rect = browser
        .eval(
            page,
            "(() => { const r = document.getElementById('video').getBoundingClientRect(); \
             return [r.x, r.y, r.width, r.height].map(Math.round); })()",
        )
        .await;
    let v: Vec<u32> = rect
        .as_array()
        .map(|a| a.iter().map(|n| n.as_u64().unwrap_or(0) as u32).collect())
        .unwrap_or_default();
    (v[0], v[1], v[2], v[3])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_plays_a_file_route_and_a_pushed_route_from_the_player_page() {
    let server = Server::start(&format!(
        "{}{}",
        file_route("unicast", &sample_clip()),
        push_route("live", "feed.ffm")
    ));
    let _pusher = Pusher::start(
        &sample_clip(),
        &format!("http://{}/feed.ffm", server.http),
        "-c copy",
    );
    wait_live(&server, "unicast").await;
    wait_live(&server, "live").await;
    let mut browser = Browser::launch().await;
    for route in ["unicast", "live"] {
        let page = browser
            .open(&format!("http://{}/{route}/", server.http))
            .await;
        let state = played(&mut browser, &page, 48).await;
        assert_eq!(state["state"], "connected", "{route}: {state}");
        assert_eq!(
            (state["width"].as_u64(), state["height"].as_u64()),
            (Some(640), Some(360)),
            "{route}: the picture has the source's size: {state}"
        );
        let region = video_box(&mut browser, &page).await;
        let shot = browser.screenshot(&page).await;
        let brightness = mean_brightness(&shot, region);
        assert!(
            brightness > 40.0,
            "{route}: the video is not black (mean {brightness:.1} in {region:?})"
        );
    }
    let sessions = http_get(&server, "/api/v1/sessions").await;
    assert_eq!(
        sessions.matches("webrtc-viewer").count(),
        2,
        "both viewers are sessions: {sessions}"
    );
}

async fn http_get(server: &Server, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    exchange(server.http, request.as_bytes(), Duration::from_secs(5)).await
}

async fn whep(server: &Server, path: &str, content_type: &str, body: &str) -> String {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    exchange(server.http, request.as_bytes(), Duration::from_secs(10)).await
}

/// A browser-like offer (no real ICE behind it), good enough to be checked and refused.
const VIDEO_OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
    m=video 9 UDP/TLS/RTP/SAVPF 102\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=recvonly\r\n\
    a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
    a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
    a=setup:actpass\r\na=rtcp-mux\r\na=rtpmap:102 H264/90000\r\n\
    a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_whep_requests_are_refused_with_a_reason() {
    let server = Server::start(&format!(
        "{}{}{}",
        file_route("good", &sample_clip()),
        file_route("hevc", &h265_clip()),
        file_route("bframes", &b_frame_clip()),
    ));
    for route in ["good", "hevc", "bframes"] {
        wait_live(&server, route).await;
    }
    let reader = tokio::spawn(common_reader(server.url("good")));

    let status = |reply: &str| reply.lines().next().unwrap_or_default().to_owned();
    let reply = whep(&server, "/good/whep", "application/sdp", "hello").await;
    assert!(status(&reply).contains("400"), "{reply}");
    assert!(reply.contains("not usable SDP"), "{reply}");
    let reply = whep(&server, "/good/whep", "text/plain", VIDEO_OFFER).await;
    assert!(status(&reply).contains("415"), "{reply}");
    let audio_only = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n";
    let reply = whep(&server, "/good/whep", "application/sdp", audio_only).await;
    assert!(
        status(&reply).contains("400") && reply.contains("no video"),
        "{reply}"
    );
    let reply = whep(&server, "/nowhere/whep", "application/sdp", VIDEO_OFFER).await;
    assert!(status(&reply).contains("404"), "{reply}");
    let reply = whep(&server, "/hevc/whep", "application/sdp", VIDEO_OFFER).await;
    assert!(
        status(&reply).contains("406") && reply.contains("H265") && reply.contains("transcode"),
        "{reply}"
    );
    // The B-frame clip has its reordering noticed once a few pictures went through.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let reply = whep(&server, "/bframes/whep", "application/sdp", VIDEO_OFFER).await;
    assert!(
        status(&reply).contains("406") && reply.contains("B-frames"),
        "{reply}"
    );
    let reply = exchange(
        server.http,
        b"OPTIONS /good/whep HTTP/1.1\r\nHost: t\r\nOrigin: http://elsewhere\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        status(&reply).contains("204")
            && reply.contains("access-control-allow-origin: *")
            && reply.contains("POST"),
        "{reply}"
    );
    let reply = exchange(
        server.http,
        b"DELETE /good/whep/whep-999 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(status(&reply).contains("404"), "{reply}");

    let frames = reader.await.expect("reader");
    assert!(frames >= 100, "an RTSP reader played on: {frames} frames");
}

/// Video frames a retina reader of `url` gets in 6 s.
async fn common_reader(url: String) -> usize {
    use futures::StreamExt;
    use retina::client::{TcpTransportOptions, Transport};
    let mut playing =
        common::play(&url, Transport::Tcp(TcpTransportOptions::default()), false).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    let mut frames = 0;
    while let Ok(Some(Ok(item))) = tokio::time::timeout_at(deadline, playing.next()).await {
        if matches!(item, retina::codec::CodecItem::VideoFrame(_)) {
            frames += 1;
        }
    }
    frames
}
