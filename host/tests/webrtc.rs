//! WebRTC egress: headless Chromium plays routes from the player page over WHEP; bad WHEP requests
//! get a clear refusal and disturb nothing.

#[path = "common/browser.rs"]
#[allow(
    dead_code,
    reason = "the browser helpers are shared; the fake camera is for the WHIP tests"
)]
mod browser;
mod common;
#[path = "common/whep.rs"]
mod whep_client;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

use browser::{Browser, mean_brightness, mean_saturation};
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

    // The status page lists each route with a player link and its viewers per protocol.
    let status = browser.open(&format!("http://{}/", server.http)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rows = browser
        .eval(
            &status,
            "JSON.stringify([...document.querySelectorAll('#routes tr')].map(tr =>              [tr.querySelector('a') && tr.querySelector('a').getAttribute('href'),               ...[...tr.children].map(td => td.textContent)]))",
        )
        .await;
    let rows: Vec<Vec<String>> = serde_json::from_str(rows.as_str().unwrap_or("[]")).expect("rows");
    let unicast = rows
        .iter()
        .find(|r| r[0] == "/unicast/")
        .unwrap_or_else(|| panic!("a player link per route: {rows:?}"));
    assert_eq!(unicast[2], "live", "{unicast:?}");
    assert_eq!(unicast[5], "1", "one WebRTC viewer on unicast: {unicast:?}");

    // Each live H.264 route shows its latest picture, and graphs fill as the page refreshes.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let seen = browser
        .eval(
            &status,
            "(() => { const row = [...document.querySelectorAll('#routes tr')]                .find(tr => tr.querySelector('a').getAttribute('href') === '/unicast/');              const img = row.querySelector('img.thumbnail');              const r = img.getBoundingClientRect();              const points = row.querySelector('svg.graph polyline.out').getAttribute('points');              const drops = row.querySelector('svg.graph polyline.drops').getAttribute('points');              return [img.naturalWidth, points.split(' ').length, drops.split(' ').length,                      ...[r.x, r.y, r.width, r.height].map(Math.round)]; })()",
        )
        .await;
    let seen: Vec<u32> = seen
        .as_array()
        .map(|a| a.iter().map(|n| n.as_u64().unwrap_or(0) as u32).collect())
        .unwrap_or_default();
    assert!(
        seen.len() == 7 && seen[0] > 0,
        "the thumbnail loaded: {seen:?}"
    );
    assert!(seen[1] >= 3, "the graph has a point per refresh: {seen:?}");
    assert_eq!(
        seen[1], seen[2],
        "drops are graphed beside the rates: {seen:?}"
    );
    let screenshot = browser.screenshot(&status).await;
    let thumbnail = (seen[3], seen[4], seen[5], seen[6]);
    let saturation = mean_saturation(&screenshot, thumbnail);
    assert!(
        saturation > 20.0,
        "the thumbnail shows the colour bars (saturation {saturation:.1} in {thumbnail:?})"
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
    assert!(reply.contains("Content-Type: application/sdp"), "{reply}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_whep_viewers_receive_media_and_delete_frees_them() {
    let server = Server::start_adding("max_clients = 20\n", &file_route("unicast", &sample_clip()));
    wait_live(&server, "unicast").await;
    let mut viewers = Vec::new();
    for _ in 0..20 {
        viewers.push(
            whep_client::Viewer::connect(server.http, "unicast")
                .await
                .expect("a viewer"),
        );
    }
    // A viewer takes its place when it connects: once all twenty play, the 21st is refused.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for (i, viewer) in viewers.iter().enumerate() {
        let packets = viewer.packets.load(std::sync::atomic::Ordering::Relaxed);
        assert!(packets > 50, "viewer {i} received {packets} RTP packets");
    }
    let refused = whep(&server, "/unicast/whep", "application/sdp", VIDEO_OFFER).await;
    assert!(
        refused.starts_with("HTTP/1.1 503") && refused.contains("max_clients"),
        "the 21st viewer over max_clients = 20: {refused}"
    );
    let sessions = http_get(&server, "/api/v1/sessions").await;
    assert_eq!(sessions.matches("webrtc-viewer").count(), 20, "{sessions}");

    for viewer in &viewers {
        let request = format!(
            "DELETE {} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            viewer.location
        );
        let reply = exchange(server.http, request.as_bytes(), Duration::from_secs(5)).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }
    wait_no_webrtc_viewer(&server, "DELETE ends sessions").await;
    // Their places under max_clients are free again.
    let again = whep_client::Viewer::connect(server.http, "unicast").await;
    assert!(again.is_ok(), "{:?}", again.err());
    for viewer in &viewers {
        viewer.close().await;
    }
}

/// The address and port of each host candidate in `sdp`.
fn candidates(sdp: &str) -> Vec<(String, u16)> {
    sdp.lines()
        .filter_map(|line| line.trim().strip_prefix("a=candidate:"))
        .filter_map(|candidate| {
            let fields: Vec<&str> = candidate.split_whitespace().collect();
            Some((fields.get(4)?.to_string(), fields.get(5)?.parse().ok()?))
        })
        .collect()
}

/// The first of `count` consecutive UDP ports that are free on loopback now.
fn free_udp_run(count: u16) -> u16 {
    (40000..60000)
        .step_by(usize::from(count) + 11)
        .find(|&first| {
            (first..first + count)
                .all(|port| std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok())
        })
        .expect("free UDP ports on loopback")
}

async fn wait_no_webrtc_viewer(server: &Server, why: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let sessions = http_get(server, "/api/v1/sessions").await;
        if !sessions.contains("webrtc-viewer") {
            return;
        }
        assert!(Instant::now() < deadline, "{why}: {sessions}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h265_goes_to_a_viewer_that_offers_it() {
    use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RTCRtpCodecParameters};
    let server = Server::start(&file_route("hevc", &h265_clip()));
    wait_live(&server, "hevc").await;
    // H.265 as Safari offers it.
    let h265 = RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: "video/H265".into(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: "level-id=93;profile-id=1;tier-flag=0;tx-mode=SRST".into(),
            rtcp_feedback: Vec::new(),
        },
        payload_type: 49,
    };
    let viewer = whep_client::Viewer::connect_offering(server.http, "hevc", &[h265])
        .await
        .expect("a viewer that offers H.265");
    assert!(
        viewer.answer.contains("a=rtpmap:49 H265/90000"),
        "the answer passes H.265 through: {}",
        viewer.answer
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let packets = viewer.packets.load(Ordering::Relaxed);
    assert!(packets > 30, "{packets} H.265 RTP packets in 3 s");
    viewer.close().await;
}

/// A STUN binding request as a browser sends it, naming `username` (`SERVER:BROWSER` ufrags).
fn binding_request(username: &str) -> Vec<u8> {
    let mut attribute = 0x0006u16.to_be_bytes().to_vec();
    attribute.extend((username.len() as u16).to_be_bytes());
    attribute.extend(username.as_bytes());
    attribute.resize(attribute.len().div_ceil(4) * 4, 0);
    let mut message = 0x0001u16.to_be_bytes().to_vec();
    message.extend((attribute.len() as u16).to_be_bytes());
    message.extend(0x2112_A442u32.to_be_bytes());
    message.extend(rand::random::<[u8; 12]>());
    message.extend(attribute);
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_viewers_share_the_one_configured_udp_port() {
    let port = free_udp_run(1);
    let server = Server::start_adding(
        &format!("webrtc_udp = \"127.0.0.1:{port}\"\nwebrtc_tcp = \"off\"\n"),
        &file_route("unicast", &sample_clip()),
    );
    wait_live(&server, "unicast").await;
    let mut viewers = Vec::new();
    for _ in 0..20 {
        // Listening too: the sample's AAC comes as the route's one Opus rendition.
        let viewer = whep_client::Viewer::connect_listening(server.http, "unicast")
            .await
            .expect("a viewer");
        let found = candidates(&viewer.answer);
        assert!(
            !found.is_empty() && found.iter().all(|(_, p)| *p == port),
            "every candidate names the one port {port}: {found:?}"
        );
        viewers.push(viewer);
    }

    // Somebody else on the port: garbage, and binding requests naming nobody or guessing.
    let stranger = UdpSocket::bind("127.0.0.1:0").await.expect("a socket");
    let target = SocketAddr::from(([127, 0, 0, 1], port));
    for i in 0..2000u32 {
        let datagram = match i % 3 {
            0 => vec![0x80; 200],
            1 => binding_request(&format!("guess{i}:x")),
            _ => binding_request("nobody-at-all"),
        };
        let _ = stranger.send_to(&datagram, target).await;
    }
    let before: Vec<u64> = viewers
        .iter()
        .map(|v| v.packets.load(Ordering::Relaxed))
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (i, viewer) in viewers.iter().enumerate() {
        let gained = viewer.packets.load(Ordering::Relaxed) - before[i];
        assert!(
            gained > 30,
            "viewer {i} on the shared port received {gained} RTP packets in 3 s"
        );
    }
    let metrics = http_get(&server, "/metrics").await;
    assert!(
        metrics.contains("\nwasmcast_opus_renditions 1\n"),
        "twenty listeners, one Opus rendition: {metrics}"
    );
    let mut reply = [0; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stranger.recv_from(&mut reply))
            .await
            .is_err(),
        "the stranger got an answer"
    );

    // One leaves; the others play on.
    let leaving = viewers.remove(0);
    leaving.close().await;
    let request = format!(
        "DELETE {} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        leaving.location
    );
    exchange(server.http, request.as_bytes(), Duration::from_secs(5)).await;
    let before: Vec<u64> = viewers
        .iter()
        .map(|v| v.packets.load(Ordering::Relaxed))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (i, viewer) in viewers.iter().enumerate() {
        assert!(viewer.packets.load(Ordering::Relaxed) > before[i] + 20);
    }
    let sessions = http_get(&server, "/api/v1/sessions").await;
    assert_eq!(sessions.matches("webrtc-viewer").count(), 19, "{sessions}");
    for viewer in &viewers {
        viewer.close().await;
    }
}

/// Plays `route` in `page` over WHEP with the answer's UDP candidates taken out, so that only
/// ICE-TCP is left; resolves to the HTTP status of the offer.
const TCP_ONLY_VIEWER: &str = r#"(async () => { try {
  const pc = new RTCPeerConnection();
  pc.addTransceiver('video', { direction: 'recvonly' });
  pc.ontrack = (e) => {
    const v = document.createElement('video');
    v.muted = true; v.autoplay = true; v.playsInline = true;
    v.srcObject = new MediaStream([e.track]);
    document.body.appendChild(v);
    v.play().catch(() => {});
  };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((done) => {
    if (pc.iceGatheringState === 'complete') return done();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && done();
    setTimeout(done, 3000);
  });
  const res = await fetch('/unicast/whep', { method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: pc.localDescription.sdp });
  const answer = await res.text();
  const tcpOnly = answer.split('\r\n').filter((l) => !(l.startsWith('a=candidate:') && / udp /i.test(l))).join('\r\n');
  window.tcpViewer = { pc, answer: tcpOnly };
  await pc.setRemoteDescription({ type: 'answer', sdp: tcpOnly });
  return res.status;
} catch (e) { return String(e); } })()"#;

/// The TCP-only viewer's decoded frames and the transport of its selected candidate pair.
const TCP_ONLY_STATS: &str = r#"(async () => {
  const stats = await window.tcpViewer.pc.getStats();
  const out = { frames: 0, state: window.tcpViewer.pc.connectionState };
  let pair = null;
  stats.forEach((r) => {
    if (r.type === 'inbound-rtp' && r.kind === 'video') out.frames = r.framesDecoded || 0;
    if (r.type === 'transport' && r.selectedCandidatePairId) pair = stats.get(r.selectedCandidatePairId);
  });
  if (pair) {
    const remote = stats.get(pair.remoteCandidateId);
    out.protocol = remote && remote.protocol;
    out.port = remote && remote.port;
  }
  return JSON.stringify(out);
})()"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_plays_over_ice_tcp_when_udp_is_not_offered() {
    let tcp_port = free_tcp_port();
    let server = Server::start_adding(
        &format!("webrtc_tcp = \"127.0.0.1:{tcp_port}\"\n"),
        &file_route("unicast", &sample_clip()),
    );
    wait_live(&server, "unicast").await;
    let mut browser = Browser::launch().await;
    let page = browser
        .open(&format!("http://{}/unicast/", server.http))
        .await;
    // The player page plays too; its own viewer stays on UDP.
    played(&mut browser, &page, 5).await;
    let status = browser.eval(&page, TCP_ONLY_VIEWER).await;
    assert_eq!(status, 201, "the TCP-only offer was answered: {status}");
    let answer = browser.eval(&page, "window.tcpViewer.answer").await;
    let answer = answer.as_str().unwrap_or_default();
    assert!(
        answer.contains(" tcp ")
            && answer.contains(&format!(" {tcp_port} typ host tcptype passive")),
        "the answer offers ICE-TCP on {tcp_port}: {answer}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let stats = loop {
        let stats = browser.eval(&page, TCP_ONLY_STATS).await;
        let stats: serde_json::Value =
            serde_json::from_str(stats.as_str().unwrap_or("{}")).unwrap_or_default();
        if stats["frames"].as_u64().unwrap_or(0) > 48 {
            break stats;
        }
        assert!(
            Instant::now() < deadline,
            "Chromium decoded too little over ICE-TCP: {stats}\n{}",
            server.log().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(stats["protocol"], "tcp", "{stats}");
    assert_eq!(stats["port"], tcp_port, "{stats}");

    // Strangers on the TCP port: garbage and a binding request naming nobody are closed at once,
    // a connection that says nothing within the handshake time (5 s).
    let port = SocketAddr::from(([127, 0, 0, 1], tcp_port));
    let mut garbage = tokio::net::TcpStream::connect(port).await.expect("connect");
    garbage
        .write_all(&[0, 8, 1, 2, 3, 4, 5, 6, 7, 8])
        .await
        .expect("send");
    let mut nobody = tokio::net::TcpStream::connect(port).await.expect("connect");
    let request = binding_request("nobody:x");
    nobody
        .write_all(&(request.len() as u16).to_be_bytes())
        .await
        .expect("send");
    nobody.write_all(&request).await.expect("send");
    let silent = tokio::net::TcpStream::connect(port).await.expect("connect");
    for (name, mut stream, within) in [
        ("garbage", garbage, Duration::from_secs(1)),
        ("an unknown ufrag", nobody, Duration::from_secs(1)),
        ("silence", silent, Duration::from_secs(7)),
    ] {
        let mut byte = [0; 1];
        let read = tokio::time::timeout(within, stream.read(&mut byte)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "a connection sending {name} was not closed within {within:?}: {read:?}"
        );
    }
    let frames = stats["frames"].as_u64().unwrap_or(0);
    let later = browser.eval(&page, TCP_ONLY_STATS).await;
    let later: serde_json::Value =
        serde_json::from_str(later.as_str().unwrap_or("{}")).unwrap_or_default();
    assert!(
        later["frames"].as_u64().unwrap_or(0) > frames + 100,
        "the ICE-TCP viewer played on meanwhile: {stats} then {later}"
    );
    let sessions = http_get(&server, "/api/v1/sessions").await;
    assert_eq!(sessions.matches("webrtc-viewer").count(), 2, "{sessions}");
}

/// A TCP port free on loopback now.
fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free TCP port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_ip_is_announced_instead_of_the_bound_address() {
    let server = Server::start_adding(
        "webrtc_udp = \"127.0.0.1:0\"\nwebrtc_public_ip = \"192.0.2.10\"\n",
        &file_route("unicast", &sample_clip()),
    );
    wait_live(&server, "unicast").await;
    let reply = whep(&server, "/unicast/whep", "application/sdp", VIDEO_OFFER).await;
    assert!(reply.starts_with("HTTP/1.1 201"), "{reply}");
    let found = candidates(&reply);
    assert!(
        !found.is_empty() && found.iter().all(|(ip, _)| ip == "192.0.2.10"),
        "candidates {found:?} announce the public address only"
    );
}

/// A one-to-one NAT in front of one UDP port: datagrams to `public` go to `private` from another
/// socket, replies go back to whoever last sent to `public`. Counts the datagrams it carries
/// towards the browser.
async fn one_to_one_nat(public: SocketAddr, private: SocketAddr) -> Arc<AtomicU64> {
    let front = UdpSocket::bind(public).await.expect("bind the public side");
    let back = UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind the private side");
    back.connect(private)
        .await
        .expect("connect the private side");
    let to_browser = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&to_browser);
    tokio::spawn(async move {
        let (mut inbound, mut outbound) = (vec![0u8; 2048], vec![0u8; 2048]);
        let mut browser = None;
        loop {
            tokio::select! {
                Ok((n, from)) = front.recv_from(&mut inbound) => {
                    browser = Some(from);
                    let _ = back.send(&inbound[..n]).await;
                }
                Ok(n) = back.recv(&mut outbound) => {
                    if let Some(to) = browser {
                        counted.fetch_add(1, Ordering::Relaxed);
                        let _ = front.send_to(&outbound[..n], to).await;
                    }
                }
            }
        }
    });
    to_browser
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_plays_through_a_one_to_one_nat_at_the_public_address() {
    let port = free_udp_run(1);
    let server = Server::start_adding(
        &format!("webrtc_udp = \"127.0.0.1:{port}\"\nwebrtc_public_ip = \"127.0.0.2\"\n"),
        &file_route("unicast", &sample_clip()),
    );
    let carried = one_to_one_nat(
        SocketAddr::from(([127, 0, 0, 2], port)),
        SocketAddr::from(([127, 0, 0, 1], port)),
    )
    .await;
    wait_live(&server, "unicast").await;
    // Chromium as it ships (its own addresses behind mDNS names): the server learns where the
    // browser is only from the checks that come through the NAT.
    let mut browser = Browser::launch_hiding_local_ips().await;
    let page = browser
        .open(&format!("http://{}/unicast/", server.http))
        .await;
    let state = played(&mut browser, &page, 48).await;
    assert_eq!(state["state"], "connected", "{state}");
    // Each of the 48 decoded frames needed at least one datagram.
    let through_nat = carried.load(Ordering::Relaxed);
    assert!(
        through_nat > 48,
        "the media went through the public address: {through_nat} datagrams did"
    );
    // The server sends no checks of its own (ICE lite): the viewer stays on the browser's consent
    // checks and RTCP through the NAT, past the server's ICE timeouts (4 s, 8 s).
    let before = state["framesDecoded"].as_u64().unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(12)).await;
    let later = played(&mut browser, &page, before + 200).await;
    assert_eq!(later["state"], "connected", "{later}");
    let sessions = http_get(&server, "/api/v1/sessions").await;
    assert_eq!(sessions.matches("webrtc-viewer").count(), 1, "{sessions}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_route_closes_its_webrtc_viewers() {
    let server = Server::start(&format!(
        "{}{}",
        file_route("stays", &sample_clip()),
        file_route("goes", &sample_clip())
    ));
    wait_live(&server, "goes").await;
    let viewer = whep_client::Viewer::connect(server.http, "goes")
        .await
        .expect("a viewer");
    // ICE and DTLS first: on a loaded machine that takes a few seconds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while viewer.packets.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no packet reached the viewer"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.write_routes(&file_route("stays", &sample_clip()), true);
    wait_no_webrtc_viewer(&server, "the viewer of the removed route is closed").await;
    assert!(
        server
            .log()
            .iter()
            .any(|l| l.contains("webrtc") && l.contains("the route ended")),
        "{:#?}",
        server.log()
    );
    viewer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_plays_re_encoded_routes_a_gray_one_and_a_b_frame_source() {
    let server = Server::start(&format!(
        "{}plugins = [\"gray\"]\n[plugins.gray]\nwasm = \"builtin:grayscale\"\n{}[routes.bframes.transcode]\nbitrate_kbps = 800\n",
        file_route("gray", &sample_clip()),
        file_route("bframes", &b_frame_clip()),
    ));
    wait_live(&server, "gray").await;
    wait_live(&server, "bframes").await;
    let mut browser = Browser::launch().await;
    let page = browser.open(&format!("http://{}/gray/", server.http)).await;
    let state = played(&mut browser, &page, 48).await;
    assert_eq!(state["state"], "connected", "{state}");
    let region = video_box(&mut browser, &page).await;
    let shot = browser.screenshot(&page).await;
    let (brightness, saturation) = (
        mean_brightness(&shot, region),
        mean_saturation(&shot, region),
    );
    assert!(brightness > 40.0, "not black: {brightness:.1}");
    assert!(
        saturation < 8.0,
        "the picture is gray: saturation {saturation:.1}"
    );

    // B-frames cannot go to a browser as they are; re-encoded, they play.
    let page = browser
        .open(&format!("http://{}/bframes/", server.http))
        .await;
    let state = played(&mut browser, &page, 48).await;
    assert_eq!(
        (state["width"].as_u64(), state["height"].as_u64()),
        (Some(320), Some(240)),
        "{state}"
    );
}

/// A TCP relay at `public` in front of the ICE-TCP port at `private`, that carries both ways until
/// `stall` is set and then reads nothing more of what the server sends, and holds its connections
/// to the server open even after the browser closes its own: a client that stops reading without
/// going away. Its side towards the server has a tiny receive buffer, so the server's writes block
/// soon. Returns the local ports of its connections to the server.
async fn stalling_tcp_relay(
    public: SocketAddr,
    private: SocketAddr,
    stall: Arc<AtomicBool>,
) -> Arc<std::sync::Mutex<Vec<u16>>> {
    let listener = tokio::net::TcpListener::bind(public)
        .await
        .expect("bind the relay");
    let ports = Arc::new(std::sync::Mutex::new(Vec::new()));
    let relayed = Arc::clone(&ports);
    tokio::spawn(async move {
        while let Ok((browser, _)) = listener.accept().await {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket.set_recv_buffer_size(4096).expect("a small buffer");
            let Ok(server) = socket.connect(private).await else {
                continue;
            };
            if let Ok(local) = server.local_addr() {
                relayed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(local.port());
            }
            let (mut from_browser, mut to_browser) = browser.into_split();
            let (mut from_server, mut to_server) = server.into_split();
            let stalled = Arc::clone(&stall);
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 4096];
                while !stalled.load(Ordering::Relaxed) {
                    let read = tokio::time::timeout(
                        Duration::from_millis(50),
                        from_server.read(&mut buffer),
                    )
                    .await;
                    match read {
                        Ok(Ok(0) | Err(_)) => return,
                        Ok(Ok(n)) => {
                            if to_browser.write_all(&buffer[..n]).await.is_err() {
                                break;
                            }
                        }
                        Err(_) => {}
                    }
                }
                let _held = from_server;
                std::future::pending::<()>().await;
            });
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 4096];
                while let Ok(n @ 1..) = from_browser.read(&mut buffer).await {
                    if to_server.write_all(&buffer[..n]).await.is_err() {
                        return;
                    }
                }
                let _held = to_server;
                std::future::pending::<()>().await;
            });
        }
    });
    ports
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ice_tcp_viewer_that_stops_reading_is_let_go() {
    let tcp_port = free_tcp_port();
    let server = Server::start_adding(
        &format!("webrtc_tcp = \"127.0.0.1:{tcp_port}\"\nwebrtc_public_ip = \"127.0.0.2\"\n"),
        &file_route("unicast", &sample_clip()),
    );
    let stall = Arc::new(AtomicBool::new(false));
    let relayed = stalling_tcp_relay(
        SocketAddr::from(([127, 0, 0, 2], tcp_port)),
        SocketAddr::from(([127, 0, 0, 1], tcp_port)),
        Arc::clone(&stall),
    )
    .await;
    wait_live(&server, "unicast").await;
    let mut browser = Browser::launch().await;
    // The status page plays nothing itself: the one viewer is the TCP-only one.
    let page = browser.open(&format!("http://{}/", server.http)).await;
    let status = browser.eval(&page, TCP_ONLY_VIEWER).await;
    assert_eq!(status, 201, "the TCP-only offer was answered: {status}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = browser.eval(&page, TCP_ONLY_STATS).await;
        let stats: serde_json::Value =
            serde_json::from_str(stats.as_str().unwrap_or("{}")).unwrap_or_default();
        if stats["frames"].as_u64().unwrap_or(0) > 48 {
            assert_eq!(stats["protocol"], "tcp", "{stats}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Chromium decoded too little through the relay: {stats}\n{}",
            server.log().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let ports = relayed.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(
        ports
            .iter()
            .any(|&peer| common::server_holds(tcp_port, peer)),
        "the server's sockets of the relayed connections {ports:?} are found"
    );

    // The client stops reading and never closes. The server's writes block once the buffers
    // between are full; it gives up on the connection 5 s later (`TCP_WRITE_TIMEOUT`).
    stall.store(true, Ordering::Relaxed);
    let after = common::until_server_lets_go(tcp_port, &ports, Duration::from_secs(30)).await;
    println!("the server let go of the stalled ICE-TCP connection after {after:?}");
    // Without its connection the viewer's session ends too (ICE's timeouts, 8 s at most).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let sessions = http_get(&server, "/api/v1/sessions").await;
        if !sessions.contains("webrtc-viewer") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stalled viewer's session outlived its connection: {sessions}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // And the route plays on for everyone else.
    let url = server.url("unicast");
    let streams = tokio::task::spawn_blocking(move || common::ffprobe_streams(&url))
        .await
        .expect("ffprobe");
    assert!(streams.contains("codec_name=h264"), "{streams}");
}
