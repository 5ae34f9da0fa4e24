//! On-demand edges: edges serve any route their origin has through a route pattern, pulling each
//! only while someone reads it.

mod common;
#[path = "common/whep.rs"]
#[allow(
    dead_code,
    reason = "the WHEP viewer helpers are shared with the WebRTC tests"
)]
mod whep_client;

use std::time::Duration;

use common::{Server, file_route, free_port, http, play, short_clip};
use futures::StreamExt;
use retina::client::{TcpTransportOptions, Transport};
use retina::codec::CodecItem;

const CLOSE_AFTER_S: u64 = 2;

fn edge(origin: &Server) -> Server {
    Server::start(&format!(
        "[routes.\"*\"]\nsource = \"rtsp://{}/{{name}}\"\non_demand_close_after_s = {CLOSE_AFTER_S}\n",
        origin.rtsp
    ))
}

/// An origin serving `routes`, its RTP from `rtp_ports` (each test's own, as they run at once).
fn origin(rtp_ports: &str, routes: &str) -> Server {
    Server::start_with(
        &format!(
            "rtsp = \"127.0.0.1:{}\"\nhttp = \"127.0.0.1:0\"\nrtp_ports = \"{rtp_ports}\"\n",
            free_port()
        ),
        routes,
    )
}

/// The origin's RTSP sessions reading `route`, from its API.
async fn origin_sessions(origin: &Server, route: &str) -> usize {
    let (status, body) = http(origin, "GET", "/api/v1/sessions").await;
    assert_eq!(status, 200, "{body}");
    let sessions: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    sessions
        .as_array()
        .expect("a list")
        .iter()
        .filter(|s| s["route"] == route && s["kind"] == "rtsp-reader")
        .count()
}

/// Video frames a reader of `url` gets in `seconds`, and how many of them in the last second.
async fn watch(url: String, seconds: u64) -> (usize, usize) {
    let mut playing = play(&url, Transport::Tcp(TcpTransportOptions::default()), true).await;
    let start = tokio::time::Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let (mut video, mut last_second) = (0, 0);
    while let Ok(Some(item)) = tokio::time::timeout_at(deadline, playing.next()).await {
        if let CodecItem::VideoFrame(_) = item.expect("media") {
            video += 1;
            if start.elapsed() > Duration::from_secs(seconds - 1) {
                last_second += 1;
            }
        }
    }
    (video, last_second)
}

async fn wait_until(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{what} did not happen within {timeout:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_pull_a_route_nobody_lists_once_each_while_it_is_read() {
    let origin = origin(
        "33000-33999",
        &format!(
            "{}{}",
            file_route("cam1", &short_clip()),
            file_route("cam2", &short_clip())
        ),
    );
    let mut edges = [edge(&origin), edge(&origin), edge(&origin)];
    assert_eq!(
        origin_sessions(&origin, "cam1").await,
        0,
        "nothing pulled yet"
    );
    let (_, routes) = http(&edges[0], "GET", "/api/v1/routes").await;
    assert_eq!(routes.trim(), "[]", "no route exists before a reader asks");

    // Three readers on each edge; the first of each starts the edge's one pull.
    const READERS: usize = 3;
    let mut readers = Vec::new();
    for edge in &edges {
        for _ in 0..READERS {
            readers.push(tokio::spawn(watch(edge.url("cam1"), 8)));
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        origin_sessions(&origin, "cam1").await,
        edges.len(),
        "one pull per edge, whatever its readers"
    );
    let (_, routes) = http(&edges[1], "GET", "/api/v1/routes").await;
    let routes: serde_json::Value = serde_json::from_str(&routes).expect("JSON");
    assert_eq!(routes[0]["name"], "cam1");
    assert_eq!(routes[0]["on_demand"]["pattern"], "*");
    assert_eq!(routes[0]["on_demand"]["running"], true);
    assert_eq!(routes[0]["readers"], READERS);

    // One edge dies; the others' readers play on.
    drop(std::mem::replace(&mut edges[0], edge(&origin)));
    for (index, reader) in readers.into_iter().enumerate() {
        let outcome = reader.await;
        if index < READERS {
            continue;
        }
        let (video, last_second) = outcome.expect("a reader of a live edge");
        assert!(video >= 150, "reader {index}: {video} frames in 8 s");
        assert!(
            last_second >= 15,
            "reader {index}: {last_second} frames in the last second"
        );
    }

    // With no reader left, each edge stops its pull after the close-after time and forgets the
    // route it made.
    wait_until(
        "the pulls to stop",
        Duration::from_secs(CLOSE_AFTER_S + 8),
        async || origin_sessions(&origin, "cam1").await == 0,
    )
    .await;
    for edge in &edges[1..] {
        assert!(
            edge.log()
                .iter()
                .any(|l| l.contains("on-demand source stopped")),
            "{:#?}",
            edge.log()
        );
        let (_, routes) = http(edge, "GET", "/api/v1/routes").await;
        assert_eq!(routes.trim(), "[]");
    }

    // A browser starts a pull too, and ffprobe reads what the edge relays.
    let viewer = whep_client::Viewer::connect(edges[1].http, "cam2")
        .await
        .expect("a WHEP viewer of an on-demand route");
    assert!(
        viewer.location.starts_with("/cam2/whep/"),
        "{}",
        viewer.location
    );
    assert!(viewer.answer.contains("H264"), "{}", viewer.answer);
    wait_until("WebRTC packets", Duration::from_secs(10), async || {
        viewer.packets.load(std::sync::atomic::Ordering::Relaxed) > 100
    })
    .await;
    assert_eq!(origin_sessions(&origin, "cam2").await, 1);
    let streams = common::ffprobe_streams(&edges[2].url("cam2"));
    assert!(streams.contains("h264"), "{streams}");
    viewer.close().await;

    // A name the origin does not have is refused, and what the edge made for it goes away.
    let (ok, _) = common::publish_once(&edges[2].url("nope"));
    assert!(!ok, "a push to a pulled route is refused");
    let describe = format!(
        "DESCRIBE {} RTSP/1.0\r\nCSeq: 1\r\n\r\n",
        edges[2].url("nope")
    );
    let reply = common::exchange(edges[2].rtsp, describe.as_bytes(), Duration::from_secs(8)).await;
    assert!(!reply.starts_with("RTSP/1.0 200"), "{reply}");
    wait_until(
        "the failed route to go",
        Duration::from_secs(CLOSE_AFTER_S + 8),
        async || {
            !http(&edges[2], "GET", "/api/v1/routes")
                .await
                .1
                .contains("nope")
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_asked_for_at_random_do_not_hold_routes() {
    let origin = origin("35000-35999", &file_route("cam1", &short_clip()));
    // Routes that stay ten minutes after their last reader, unless they never play.
    let edge = Server::start(&format!(
        "[routes.\"*\"]\nsource = \"rtsp://{}/{{name}}\"\non_demand_close_after_s = 600\n",
        origin.rtsp
    ));
    let honest = tokio::spawn(watch(edge.url("cam1"), 12));
    let mut asked = Vec::new();
    for i in 0..30 {
        let describe = format!(
            "DESCRIBE {} RTSP/1.0\r\nCSeq: 1\r\n\r\n",
            edge.url(&format!("random-{i}"))
        );
        let rtsp = edge.rtsp;
        asked.push(tokio::spawn(async move {
            common::exchange(rtsp, describe.as_bytes(), Duration::from_secs(8)).await
        }));
    }
    for reply in asked {
        let reply = reply.await.expect("a DESCRIBE");
        assert!(!reply.starts_with("RTSP/1.0 200"), "{reply}");
    }
    // Each made a route that pulls nothing; they go once their askers have given up, long before
    // the close-after time, while the route with a reader stays.
    wait_until(
        "the routes of unknown names to go",
        Duration::from_secs(10),
        async || {
            let (_, routes) = http(&edge, "GET", "/api/v1/routes").await;
            !routes.contains("random-") && routes.contains("cam1")
        },
    )
    .await;
    let (video, last_second) = honest.await.expect("the honest reader");
    assert!(video >= 250, "{video} frames in 12 s");
    assert!(last_second >= 15, "{last_second} frames in the last second");
}

/// The head of the first reply to `request` on a fresh connection to `addr`, and how long it took.
async fn first_reply(addr: std::net::SocketAddr, request: &str) -> (String, Duration) {
    first_reply_from([127, 0, 0, 1], addr, request).await
}

/// [`first_reply`] on a connection from loopback address `from`.
async fn first_reply_from(
    from: [u8; 4],
    addr: std::net::SocketAddr,
    request: &str,
) -> (String, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = tokio::time::Instant::now();
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind(std::net::SocketAddr::from((from, 0)))
        .expect("bind");
    let mut socket = socket.connect(addr).await.expect("connect");
    socket.write_all(request.as_bytes()).await.expect("send");
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while !reply.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => reply.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    (
        String::from_utf8_lossy(&reply).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_that_names_its_readers_pulls_for_them_only() {
    let origin = origin("34000-34999", &file_route("cam1", &short_clip()));
    // alice's password is `secret` (the hash is what `wasmcast hash-password` prints).
    let edge = Server::start(&format!(
        "[users.alice]\npassword = \"md5:c206c90659c395ee90e28f0a59a5095b\"\n\
         [routes.\"*\"]\nsource = \"rtsp://{}/{{name}}\"\nread = [\"alice\"]\n",
        origin.rtsp
    ));
    // Asking without credentials, with wrong ones, or for a name the origin does not have: each is
    // refused at once, and no route is made, so nothing is pulled from the origin.
    let wrong = "Authorization: Basic YWxpY2U6bm9wZQ==\r\n";
    for (route, method, credentials) in [
        ("cam1", "DESCRIBE", ""),
        ("cam1", "DESCRIBE", wrong),
        ("cam1", "SETUP", ""),
        ("ghost", "DESCRIBE", ""),
    ] {
        let url = edge.url(route);
        let transport = if method == "SETUP" {
            "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n"
        } else {
            ""
        };
        let request = format!("{method} {url} RTSP/1.0\r\nCSeq: 1\r\n{credentials}{transport}\r\n");
        let (reply, took) = first_reply(edge.rtsp, &request).await;
        assert!(
            reply.starts_with("RTSP/1.0 401"),
            "{method} {route}: {reply}"
        );
        assert!(
            took < Duration::from_secs(2),
            "{method} {route} refused after {took:?}, not at once"
        );
    }
    let (ok, _, err) = common::run(
        std::process::Command::new("ffprobe")
            .args(["-v", "error", "-show_entries", "stream=codec_name"])
            .arg(edge.url("cam1").replace("rtsp://", "rtsp://alice:wrong@")),
        Duration::from_secs(20),
    );
    assert!(
        !ok && err.contains("401"),
        "ffprobe with a wrong password: {err}"
    );
    let (_, routes) = http(&edge, "GET", "/api/v1/routes").await;
    assert!(
        !routes.contains("cam1") && !routes.contains("ghost"),
        "routes made for clients that may not read them: {routes}"
    );
    assert_eq!(
        origin_sessions(&origin, "cam1").await,
        0,
        "pulled for nobody"
    );
    // alice, through ffprobe's Digest login, gets the route pulled from the origin.
    let (ok, out, err) = common::run(
        std::process::Command::new("ffprobe")
            .args(["-v", "error", "-show_entries", "stream=codec_name"])
            .arg(edge.url("cam1").replace("rtsp://", "rtsp://alice:secret@")),
        Duration::from_secs(20),
    );
    assert!(ok && out.contains("h264"), "alice plays: {out}{err}");
}

/// An edge with no place for one more reader refuses it before a pattern makes its route: over
/// RTSP at DESCRIBE (not at PLAY, after the pull had started), over WHEP before the offer opens
/// the route. Nothing is pulled for a reader who would be refused; once the place is free again,
/// the same name plays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_edge_pulls_nothing_for_the_readers_it_refuses() {
    let origin = origin(
        "36000-36999",
        &format!(
            "{}{}",
            file_route("cam1", &short_clip()),
            file_route("cam2", &short_clip())
        ),
    );
    let edge = Server::start_adding(
        "max_clients = 1\n",
        &format!(
            "[routes.\"*\"]\nsource = \"rtsp://{}/{{name}}\"\non_demand_close_after_s = {CLOSE_AFTER_S}\n",
            origin.rtsp
        ),
    );
    let holder = tokio::spawn(watch(edge.url("cam1"), 6));
    wait_until("the holder to play", Duration::from_secs(10), async || {
        let (_, sessions) = http(&edge, "GET", "/api/v1/sessions").await;
        sessions.contains("rtsp-reader")
    })
    .await;
    for method in ["DESCRIBE", "SETUP"] {
        let transport = if method == "SETUP" {
            "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n"
        } else {
            ""
        };
        let request = format!(
            "{method} {} RTSP/1.0\r\nCSeq: 1\r\n{transport}\r\n",
            edge.url("cam2")
        );
        let (reply, took) = first_reply(edge.rtsp, &request).await;
        assert!(
            reply.starts_with("RTSP/1.0 453") && reply.contains("max_clients (1) reached"),
            "{method} on a full edge: {reply}"
        );
        assert!(
            took < Duration::from_secs(2),
            "{method} refused after {took:?}"
        );
    }
    let refused = whep_client::Viewer::connect(edge.http, "cam2")
        .await
        .err()
        .expect("a WHEP viewer over max_clients is refused");
    assert!(
        refused.starts_with("WHEP answered 503") && refused.contains("max_clients"),
        "{refused}"
    );
    assert_eq!(
        origin_sessions(&origin, "cam2").await,
        0,
        "pulled for nobody"
    );
    let (_, routes) = http(&edge, "GET", "/api/v1/routes").await;
    assert!(
        !routes.contains("cam2"),
        "a route made for nobody: {routes}"
    );

    let (video, _) = holder.await.expect("the holder");
    assert!(video >= 100, "the holder played: {video} frames in 6 s");
    let streams = common::ffprobe_streams(&edge.url("cam2"));
    assert!(
        streams.contains("h264"),
        "cam2 once the place is free: {streams}"
    );
}

/// One address asking for names it never plays holds at most 64 of the routes patterns make
/// (1,024 in all), each for seconds: its next name is refused at once with the reason, while
/// another address's name becomes a route and plays. Before the cap, one address asking for 1,024
/// names every few seconds held every route patterns may make.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_no_more_than_its_share_of_the_routes_patterns_make() {
    const ATTACKER: [u8; 4] = [127, 0, 0, 2];
    let origin = origin("37000-37999", &file_route("cam1", &short_clip()));
    let edge = Server::start(&format!(
        "[routes.\"*\"]\nsource = \"rtsp://{}/{{name}}\"\non_demand_close_after_s = 600\n",
        origin.rtsp
    ));
    let describe = |name: &str| format!("DESCRIBE {} RTSP/1.0\r\nCSeq: 1\r\n\r\n", edge.url(name));
    let asked: Vec<_> = (0..64)
        .map(|i| {
            let (rtsp, request) = (edge.rtsp, describe(&format!("random-{i}")));
            tokio::spawn(async move { first_reply_from(ATTACKER, rtsp, &request).await })
        })
        .collect();
    wait_until(
        "the 64 names to become routes",
        Duration::from_secs(10),
        async || {
            let (_, routes) = http(&edge, "GET", "/api/v1/routes").await;
            routes.matches("\"random-").count() == 64
        },
    )
    .await;

    let (reply, took) = first_reply_from(ATTACKER, edge.rtsp, &describe("random-64")).await;
    assert!(
        reply.starts_with("RTSP/1.0 503") && reply.contains("for this address"),
        "the 65th name from one address: {reply}"
    );
    assert!(took < Duration::from_secs(2), "refused after {took:?}");
    let (video, _) = watch(edge.url("cam1"), 3).await;
    assert!(
        video >= 40,
        "another address's name plays: {video} frames in 3 s"
    );
    let (_, routes) = http(&edge, "GET", "/api/v1/routes").await;
    assert!(
        !routes.contains("random-64"),
        "a route past the share: {routes}"
    );
    for reply in asked {
        let (reply, _) = reply.await.expect("a DESCRIBE");
        assert!(!reply.starts_with("RTSP/1.0 200"), "{reply}");
    }
}
