//! Hot reload: the config file changes under a running server with readers connected.

mod common;

use std::time::{Duration, Instant};

use common::{
    Pusher, Server, exchange, ffprobe_streams, file_route, free_port, play, push_route,
    sample_clip, short_clip, wait_live,
};
use futures::StreamExt;
use retina::client::{TcpTransportOptions, Transport};
use retina::codec::CodecItem;

async fn describe(server: &Server, route: &str) -> String {
    let request = format!("DESCRIBE {} RTSP/1.0\r\nCSeq: 1\r\n\r\n", server.url(route));
    let reply = exchange(server.rtsp, request.as_bytes(), Duration::from_millis(300)).await;
    reply.lines().next().unwrap_or("").to_owned()
}

/// Waits until DESCRIBE of `route` answers with `status`; returns how long that took.
async fn until_status(server: &Server, route: &str, status: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    while started.elapsed() < limit {
        if describe(server, route).await.starts_with(status) {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "{route} did not answer {status} within {limit:?}: {:#?}",
        server.log()
    );
}

async fn http(server: &Server, method: &str, path: &str) -> String {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    exchange(server.http, request.as_bytes(), Duration::from_secs(5)).await
}

/// Frames and lost packets a reader sees over `seconds`, and whether its session was ended.
async fn watch(url: String, seconds: u64) -> (usize, u64, bool) {
    let watched = watch_pictures(url, seconds).await;
    (watched.frames, watched.lost, watched.ended)
}

struct Watched {
    frames: usize,
    lost: u64,
    ended: bool,
    /// When each picture that was not a keyframe arrived.
    non_keyframes_at: Vec<Instant>,
}

async fn watch_pictures(url: String, seconds: u64) -> Watched {
    let mut playing = play(&url, Transport::Tcp(TcpTransportOptions::default()), false).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let mut watched = Watched {
        frames: 0,
        lost: 0,
        ended: false,
        non_keyframes_at: Vec::new(),
    };
    loop {
        match tokio::time::timeout_at(deadline, playing.next()).await {
            Err(_) => return watched,
            Ok(None) | Ok(Some(Err(_))) => {
                watched.ended = true;
                return watched;
            }
            Ok(Some(Ok(CodecItem::VideoFrame(frame)))) => {
                watched.frames += 1;
                watched.lost += u64::from(frame.loss());
                if !frame.is_random_access_point() {
                    watched.non_keyframes_at.push(Instant::now());
                }
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

const KEYFRAMES_PLUGIN: &str = "[plugins.kf]\nwasm = \"builtin:keyframes\"\n";

async fn edit_routes(by_rename: bool) {
    let a = file_route("a", &short_clip());
    let c = file_route("c", &short_clip());
    let server = Server::start(&format!("{a}{c}"));
    wait_live(&server, "a").await;
    wait_live(&server, "c").await;
    let reader_a = tokio::spawn(watch_pictures(server.url("a"), 6));
    let reader_c = tokio::spawn(watch(server.url("c"), 6));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Add b; give a another file with the same kinds of tracks and a plugin chain that passes only
    // keyframes; remove c.
    let edited = format!(
        "{}plugins = [\"kf\"]\n{}{KEYFRAMES_PLUGIN}",
        file_route("a", &sample_clip()),
        file_route("b", &short_clip())
    );
    let edited_at = Instant::now();
    server.write_routes(&edited, by_rename);
    let b_after = until_status(&server, "b", "RTSP/1.0 200", Duration::from_secs(1)).await;
    until_status(&server, "c", "RTSP/1.0 404", Duration::from_secs(1)).await;

    let (c_frames, _, c_ended) = reader_c.await.expect("reader c");
    assert!(
        c_ended && c_frames > 0,
        "c's reader was ended by the reload ({c_frames} frames)"
    );
    let a = reader_a.await.expect("reader a");
    assert!(!a.ended, "a's reader stayed connected");
    assert_eq!(a.lost, 0, "no gap in a's sequence numbers");
    assert!(
        a.frames >= 40,
        "a kept playing across the change of file: {} frames",
        a.frames
    );
    assert!(
        a.non_keyframes_at.iter().any(|at| *at < edited_at),
        "every picture before the edit"
    );
    assert!(
        a.non_keyframes_at
            .iter()
            .all(|at| *at < edited_at + Duration::from_millis(700)),
        "a's reader sees the new chain's effect: keyframes only"
    );
    assert!(b_after < Duration::from_secs(1));
    assert!(
        server
            .log()
            .iter()
            .any(|l| l.contains("config reloaded") && l.contains("removed"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_saved_by_rename_adds_changes_and_removes_routes() {
    edit_routes(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_written_in_place_adds_changes_and_removes_routes() {
    edit_routes(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_edits_keep_the_running_config_and_say_why() {
    let server = Server::start(&file_route("a", &short_clip()));
    wait_live(&server, "a").await;
    let reader = tokio::spawn(watch(server.url("a"), 4));

    server.write_raw_config("[server]\nrtsp = \"127.0.0.1:0\"\n[routes.a]\nsource = \n");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = http(&server, "GET", "/api/v1/config").await;
    assert!(
        status.contains("\"version\":1") && status.contains("wasmcast.toml:4"),
        "{status}"
    );
    // Once per edit: the reload's own reading of the file is no edit.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let refusals = server
        .log()
        .iter()
        .filter(|l| l.contains("config reload refused"))
        .count();
    assert_eq!(refusals, 1, "{:#?}", server.log());

    server.write_routes(
        &format!(
            "{}[routes.b]\nsource = \"file:x.mp4\"\nplugins = [\"nope\"]\n",
            file_route("a", &short_clip())
        ),
        true,
    );
    let refused = http(&server, "POST", "/api/v1/reload").await;
    assert!(
        refused.starts_with("HTTP/1.1 422") && refused.contains("no plugin named `nope`"),
        "{refused}"
    );
    assert_eq!(
        describe(&server, "b").await,
        "RTSP/1.0 404 Not Found (no route `b`)"
    );

    server.write_routes(
        &format!(
            "{}plugins = [\"gone\"]\n[plugins.gone]\nwasm = \"missing.wasm\"\n",
            file_route("a", &short_clip())
        ),
        true,
    );
    let refused = http(&server, "POST", "/api/v1/reload").await;
    assert!(
        refused.starts_with("HTTP/1.1 422")
            && refused.contains("plugins.gone")
            && refused.contains("missing.wasm"),
        "a plugin that cannot load is refused: {refused}"
    );

    let (frames, lost, ended) = reader.await.expect("reader");
    assert!(
        !ended && lost == 0 && frames >= 80,
        "a played on: {frames} frames"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_rapid_edits_end_on_the_last_without_leaks() {
    let server = Server::start(&file_route("a", &short_clip()));
    wait_live(&server, "a").await;
    let (threads_before, fds_before, rss_before) = resources(server.pid());
    for i in 0..100 {
        // Each added route has a plugin stage too: its thread must go with the route.
        let extra = format!(
            "{}plugins = [\"kf\"]\n{KEYFRAMES_PLUGIN}",
            file_route(&format!("r{i}"), &short_clip())
        );
        server.write_routes(
            &format!("{}{extra}", file_route("a", &short_clip())),
            i % 2 == 0,
        );
        tokio::time::sleep(Duration::from_millis(7)).await;
    }
    until_status(&server, "r99", "RTSP/1.0 200", Duration::from_secs(3)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = http(&server, "GET", "/api/v1/config").await;
    assert!(status.contains("\"routes\":[\"a\",\"r99\"]"), "{status}");
    assert_eq!(
        describe(&server, "r98").await,
        "RTSP/1.0 404 Not Found (no route `r98`)"
    );
    // r99 runs two new threads (its file and its plugin stage), the plugin engine one (its clock),
    // and tokio may keep a blocking-pool thread or two (plugins are loaded there).
    let (threads_after, fds_after, rss_after) = resources(server.pid());
    assert!(
        threads_after <= threads_before + 6,
        "threads went from {threads_before} to {threads_after}"
    );
    assert!(
        fds_after <= fds_before + 4,
        "file descriptors went from {fds_before} to {fds_after}"
    );
    assert!(
        rss_after < rss_before + (32 << 20),
        "memory went from {rss_before} to {rss_after} bytes"
    );
}

/// Threads, open file descriptors and resident memory of a process.
fn resources(pid: u32) -> (usize, usize, u64) {
    let count =
        |dir: &str| std::fs::read_dir(format!("/proc/{pid}/{dir}")).map_or(0, |d| d.count());
    let rss = common::resident_kib(pid) * 1024;
    (count("task"), count("fd"), rss)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rtsp_listener_moves_without_touching_readers() {
    let (first, second) = (free_port(), free_port());
    let server_keys = |port: u16| {
        format!(
            "rtsp = \"127.0.0.1:{port}\"\nhttp = \"127.0.0.1:0\"\nrtp_ports = \"31000-31999\"\n"
        )
    };
    let routes = file_route("a", &short_clip());
    let server = Server::start_with(&server_keys(first), &routes);
    wait_live(&server, "a").await;
    let reader = tokio::spawn(watch(server.url("a"), 5));
    tokio::time::sleep(Duration::from_secs(1)).await;

    server.write_raw_config(&format!("[server]\n{}{routes}", server_keys(second)));
    let moved: std::net::SocketAddr = ([127, 0, 0, 1], second).into();
    let describe = format!("DESCRIBE rtsp://{moved}/a RTSP/1.0\r\nCSeq: 1\r\n\r\n");
    let started = Instant::now();
    while !exchange_if_up(moved, &describe)
        .await
        .starts_with("RTSP/1.0 200")
    {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the new address never answered: {:#?}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        tokio::net::TcpStream::connect(server.rtsp).await.is_err(),
        "the old address is closed"
    );
    let (frames, lost, ended) = reader.await.expect("reader");
    assert!(
        !ended && lost == 0 && frames >= 100,
        "the reader stayed: {frames} frames"
    );
}

/// Like [`exchange`], but an address nobody listens on yet answers nothing.
async fn exchange_if_up(addr: std::net::SocketAddr, request: &str) -> String {
    if tokio::net::TcpStream::connect(addr).await.is_err() {
        return String::new();
    }
    exchange(addr, request.as_bytes(), Duration::from_millis(300)).await
}

/// Writes `files` the way the kubelet updates a mounted ConfigMap: into a new timestamped
/// directory, then renames a new `..data` link over the old one; the files themselves are links
/// through `..data`, made once.
fn kubelet_update(dir: &std::path::Path, version: u32, files: &[(&str, Vec<u8>)]) {
    let data = format!("..2026_11_30_00_00_{version:02}.{version:09}");
    std::fs::create_dir(dir.join(&data)).expect("a version directory");
    for (name, contents) in files {
        std::fs::write(dir.join(&data).join(name), contents).expect("a file");
    }
    let old = std::fs::read_link(dir.join("..data")).ok();
    std::os::unix::fs::symlink(&data, dir.join("..data_tmp")).expect("a new ..data link");
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("the swap");
    for (name, _) in files {
        let link = dir.join(name);
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), link).expect("a file link");
        }
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old)).expect("the old version goes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_configmap_update_reloads_the_config_and_its_plugins() {
    let plugin = |name: &str| {
        std::fs::read(std::path::Path::new(env!("WASMCAST_PLUGIN_DIR")).join(name))
            .expect("a built plugin")
    };
    let server_keys = &common::with_loopback_webrtc(
        "rtsp = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\nrtp_ports = \"31000-31999\"\n",
    );
    let config = |routes: &str| {
        format!("[server]\n{server_keys}\n{routes}[plugins.p]\nwasm = \"p.wasm\"\n",).into_bytes()
    };
    let dir = common::TempDir::new();
    let one = file_route("one", &short_clip());
    kubelet_update(
        dir.path(),
        1,
        &[
            ("wasmcast.toml", config(&one)),
            ("p.wasm", plugin("passthrough.wasm")),
        ],
    );
    let path = dir.path().join("wasmcast.toml");
    let server = Server::start_at(&path, server_keys, dir);
    wait_live(&server, "one").await;

    let two = file_route("two", &short_clip());
    kubelet_update(
        server.config_dir(),
        2,
        &[
            ("wasmcast.toml", config(&format!("{one}{two}"))),
            ("p.wasm", plugin("grayscale.wasm")),
        ],
    );
    until_status(&server, "two", "RTSP/1.0 200", Duration::from_secs(5)).await;
    let reloaded = server
        .log()
        .into_iter()
        .find(|line| line.contains("config reloaded"))
        .expect("a reload");
    assert!(
        reloaded
            .split("plugins_replaced")
            .nth(1)
            .is_some_and(|rest| rest.contains("[\"p\"]")),
        "the plugin behind the swapped link was reloaded: {reloaded}"
    );
}

/// A reload that removes a route ends the publisher pushing into it, and one that gives a route
/// another source ends its publisher so the new source can take the route over: neither is left
/// holding a connection (and the route) into nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_ends_the_publishers_of_routes_it_removes_or_gives_another_source() {
    let server = Server::start(&format!(
        "{}{}",
        push_route("gone", "gone"),
        push_route("moved", "moved")
    ));
    let mut rtsp = Pusher::rtsp(&short_clip(), &server.url("gone"), "tcp");
    let mut http = Pusher::start(
        &short_clip(),
        &format!("http://{}/moved", server.http),
        "-c copy",
    );
    wait_live(&server, "gone").await;
    wait_live(&server, "moved").await;

    server.write_routes(&file_route("moved", &sample_clip()), true);
    assert!(
        rtsp.exits_within(Duration::from_secs(10)),
        "the RTSP publisher of the removed route still runs: {:#?}",
        server.log()
    );
    assert!(
        http.exits_within(Duration::from_secs(10)),
        "the HTTP pusher of the route with a new source still runs: {:#?}",
        server.log()
    );
    assert!(
        server.wait_for_log(
            "RTSP publisher ended: the route was removed",
            Duration::from_secs(5)
        ),
        "{:#?}",
        server.log()
    );
    assert!(
        server.wait_for_log("the route's source changed", Duration::from_secs(5)),
        "{:#?}",
        server.log()
    );
    // The file took the route over: its picture, not the pusher's 320x240.
    let url = server.url("moved");
    let streams = tokio::task::spawn_blocking(move || ffprobe_streams(&url))
        .await
        .expect("ffprobe");
    assert!(
        streams.contains("width=") && !streams.contains("width=320"),
        "{streams}"
    );
}
