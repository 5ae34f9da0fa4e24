//! WHIP ingest: headless Chromium publishes its (fake) camera and microphone from the publish
//! page; ffprobe reads the route over RTSP, a second tab plays it over WHEP with sound, and the
//! claim rules hold (one publisher at a time, 409 for the next, readers kept across publishers).

#[path = "common/browser.rs"]
#[allow(
    dead_code,
    reason = "the browser helpers are shared with the WebRTC tests, which use the rest"
)]
mod browser;
mod common;

use std::time::{Duration, Instant};

use browser::{Browser, Page};
use common::{Server, http, wait_live};

/// Evaluates `expression` (JSON text) in `page` until `done` holds for its value.
async fn wait_for(
    browser: &mut Browser,
    page: &Page,
    expression: &str,
    what: &str,
    server: &Server,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let value = browser.eval(page, expression).await;
        let value: serde_json::Value =
            serde_json::from_str(value.as_str().unwrap_or("{}")).unwrap_or_default();
        if done(&value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {value}\n{}",
            server.log().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

const PUBLISHER_STATE: &str = "JSON.stringify(window.wasmcast || {})";

/// The player tab's decoded video frames and received audio samples.
const PLAYER_STATE: &str = r#"(async () => {
  const out = Object.assign({}, window.wasmcast || {});
  if (typeof pc !== 'undefined' && pc) {
    (await pc.getStats()).forEach((r) => {
      if (r.type === 'inbound-rtp' && r.kind === 'audio') out.audioSamples = r.totalSamplesReceived || 0;
    });
  }
  return JSON.stringify(out);
})()"#;

/// Makes an offer that sends the fake camera, and posts it to `/cam/whip`: the HTTP status.
const SECOND_PUBLISHER: &str = r#"(async () => {
  const media = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
  const pc = new RTCPeerConnection();
  media.getTracks().forEach((t) => pc.addTransceiver(t, { direction: 'sendonly' }));
  await pc.setLocalDescription(await pc.createOffer());
  const res = await fetch('/cam/whip', { method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: pc.localDescription.sdp });
  pc.close();
  media.getTracks().forEach((t) => t.stop());
  return JSON.stringify({ status: res.status, body: await res.text() });
})()"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_publishes_from_the_publish_page_and_everyone_plays_it() {
    let server = Server::start("[routes.cam]\nsource = \"push\"\n");
    let mut browser = Browser::launch_with_fake_devices().await;
    let publisher = browser
        .open(&format!("http://{}/cam/publish", server.http))
        .await;
    wait_for(
        &mut browser,
        &publisher,
        PUBLISHER_STATE,
        "the publish page did not load",
        &server,
        |v| v["state"] == "idle",
    )
    .await;
    browser
        .eval(&publisher, "window.wasmcast.start().then(() => 'started')")
        .await;
    let sent = wait_for(
        &mut browser,
        &publisher,
        PUBLISHER_STATE,
        "the publish page did not send",
        &server,
        |v| v["state"] == "connected" && v["framesSent"].as_u64().unwrap_or(0) > 30,
    )
    .await;
    assert!(sent["error"].is_null(), "{sent}");
    wait_live(&server, "cam").await;

    // RTSP: the route is H.264 and Opus, as the browser sent them.
    let streams = tokio::task::spawn_blocking({
        let url = server.url("cam");
        move || common::ffprobe_streams(&url)
    })
    .await
    .expect("ffprobe");
    assert!(
        streams.contains("codec_name=h264") && streams.contains("codec_name=opus"),
        "the published route over RTSP: {streams}"
    );
    let (_, sessions) = http(&server, "GET", "/api/v1/sessions").await;
    assert_eq!(
        sessions.matches("webrtc-publisher").count(),
        1,
        "{sessions}"
    );

    // WHEP: another tab plays it, pictures and sound.
    let player = browser.open(&format!("http://{}/cam/", server.http)).await;
    let played = wait_for(
        &mut browser,
        &player,
        PLAYER_STATE,
        "the player did not play the published route with sound",
        &server,
        |v| {
            v["framesDecoded"].as_u64().unwrap_or(0) > 48
                && v["audioSamples"].as_u64().unwrap_or(0) > 48_000
        },
    )
    .await;
    assert_eq!(played["state"], "connected", "{played}");

    // One publisher at a time.
    let second = browser.eval(&publisher, SECOND_PUBLISHER).await;
    let second: serde_json::Value =
        serde_json::from_str(second.as_str().unwrap_or("{}")).unwrap_or_default();
    assert_eq!(second["status"], 409, "a second publisher: {second}");

    // The publisher leaves (DELETE on its resource) and comes back; the player plays on.
    browser
        .eval(&publisher, "window.wasmcast.stop().then(() => 'stopped')")
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, sessions) = http(&server, "GET", "/api/v1/sessions").await;
        if !sessions.contains("webrtc-publisher") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the publisher stayed: {sessions}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    browser
        .eval(&publisher, "window.wasmcast.start().then(() => 'started')")
        .await;
    let before = played["framesDecoded"].as_u64().unwrap_or(0);
    let later = wait_for(
        &mut browser,
        &player,
        PLAYER_STATE,
        "the player did not play on across publishers",
        &server,
        |v| v["framesDecoded"].as_u64().unwrap_or(0) > before + 60,
    )
    .await;
    assert_eq!(later["state"], "connected", "{later}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_refuses_what_it_cannot_take_with_a_reason() {
    let (token, stored) = common::new_token("alice");
    let server = Server::start(&format!(
        "[routes.cam]\nsource = \"push\"\npublish = [\"alice\"]\n\
         [routes.file]\nsource = \"file:/nonexistent.mp4\"\n{stored}\n"
    ));
    let token = token.as_str();
    let offer = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:96 VP8/90000\r\n\
        a=sendonly\r\n";
    let post = |path: &str, token: Option<&str>, body: &str| {
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/sdp\r\n{auth}\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    for (request, status, says) in [
        (post("/nothing/whip", None, offer), "404", "no push route"),
        (post("/file/whip", None, offer), "404", "no push route"),
        (post("/cam/whip", None, offer), "401", "credentials"),
        (post("/cam/whip", Some(token), offer), "406", "H.264"),
        (post("/cam/whip", Some(token), "not sdp"), "400", ""),
    ] {
        let reply = common::exchange(server.http, request.as_bytes(), Duration::from_secs(5)).await;
        assert!(
            reply.starts_with(&format!("HTTP/1.1 {status}")) && reply.contains(says),
            "expected {status} naming `{says}`: {reply}"
        );
    }
    let (status, page) = http(&server, "GET", "/cam/publish").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("/cam/whip") || page.contains("\"cam\""),
        "{page}"
    );
    let (status, _) = http(&server, "GET", "/file/publish").await;
    assert_eq!(status, 404);
}

/// Posts an offer that sends the fake camera and walks away without ever connecting: the status.
const PUBLISHER_WHO_WALKS_AWAY: &str = r#"(async () => {
  const media = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
  const pc = new RTCPeerConnection();
  media.getTracks().forEach((t) => pc.addTransceiver(t, { direction: 'sendonly' }));
  await pc.setLocalDescription(await pc.createOffer());
  const res = await fetch('/cam/whip', { method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: pc.localDescription.sdp });
  pc.close();
  media.getTracks().forEach((t) => t.stop());
  return res.status;
})()"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_that_never_connects_frees_the_route() {
    let server = Server::start("[routes.cam]\nsource = \"push\"\n");
    let mut browser = Browser::launch_with_fake_devices().await;
    let page = browser
        .open(&format!("http://{}/cam/publish", server.http))
        .await;
    wait_for(
        &mut browser,
        &page,
        PUBLISHER_STATE,
        "the publish page did not load",
        &server,
        |v| v["state"] == "idle",
    )
    .await;
    let status = browser.eval(&page, PUBLISHER_WHO_WALKS_AWAY).await;
    assert_eq!(status, 201, "the offer was answered");
    let (_, sessions) = http(&server, "GET", "/api/v1/sessions").await;
    assert!(sessions.contains("webrtc-publisher"), "{sessions}");
    let status = browser.eval(&page, PUBLISHER_WHO_WALKS_AWAY).await;
    assert_eq!(status, 409, "the route is held meanwhile");
    // It holds the route until ICE gives up on it (the connect timeout is 20 s), then no longer.
    let started = Instant::now();
    loop {
        let (_, sessions) = http(&server, "GET", "/api/v1/sessions").await;
        if !sessions.contains("webrtc-publisher") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(25),
            "a publisher that never connected held the route: {sessions}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let status = browser.eval(&page, PUBLISHER_WHO_WALKS_AWAY).await;
    assert_eq!(status, 201, "the route is free again");
    assert!(
        server.wait_for_log("never connected", Duration::from_secs(1)),
        "the access log says why"
    );
}
