//! Ingest by HTTP push: ffmpeg sends MPEG-TS the way the old ffserver set-up did, players read.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{
    Pusher, Server, exchange, ffprobe_streams, file_route, play, push_route, run, short_clip,
    wait_live,
};
use futures::StreamExt;
use retina::client::{TcpTransportOptions, Transport};
use retina::codec::CodecItem;

/// How long an HTTP reply may pause before the exchange is taken as over.
const QUIET: Duration = Duration::from_secs(10);

/// Video frames a retina reader gets in `seconds`, and the largest gap between two of them.
async fn watch(url: &str, seconds: u64) -> (usize, Duration) {
    let mut playing = play(url, Transport::Tcp(TcpTransportOptions::default()), false).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let (mut frames, mut last_ts, mut largest_gap) = (0, None::<i64>, Duration::ZERO);
    while let Ok(Some(item)) = tokio::time::timeout_at(deadline, playing.next()).await {
        if let CodecItem::VideoFrame(frame) = item.expect("media") {
            let ts = frame.timestamp().timestamp();
            if let Some(last) = last_ts {
                assert!(
                    ts > last,
                    "video timestamps keep increasing: {last} then {ts}"
                );
                largest_gap =
                    largest_gap.max(Duration::from_secs_f64((ts - last) as f64 / 90_000.0));
            }
            last_ts = Some(ts);
            frames += 1;
        }
    }
    (frames, largest_gap)
}

fn post(feed: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST /{feed} HTTP/1.1\r\nHost: wasmcast\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_push_with_stream_copy_plays() {
    let server = Server::start(&push_route("feed", "feed.ffm"));
    let _pusher = Pusher::start(
        &short_clip(),
        &format!("http://{}/feed.ffm", server.http),
        "-c copy",
    );
    wait_live(&server, "feed").await;
    let streams = ffprobe_streams(&server.url("feed"));
    assert!(
        streams.contains("codec_name=h264|width=320|height=240"),
        "{streams}"
    );
    assert!(
        streams.contains("codec_name=aac|sample_rate=48000"),
        "{streams}"
    );
    let (frames, gap) = watch(&server.url("feed"), 4).await;
    assert!(frames >= 85, "{frames} frames in 4 s");
    assert!(gap < Duration::from_millis(200), "largest gap {gap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_push_with_reencode_plays() {
    let server = Server::start(&push_route("feed", "feed.ffm"));
    let _pusher = Pusher::start(
        &short_clip(),
        &format!("http://{}/feed.ffm", server.http),
        "-c:v libx264 -preset ultrafast -tune zerolatency -g 25 -c:a aac -b:a 64k",
    );
    wait_live(&server, "feed").await;
    let streams = ffprobe_streams(&server.url("feed"));
    assert!(
        streams.contains("codec_name=h264|width=320|height=240"),
        "{streams}"
    );
    assert!(streams.contains("codec_name=aac"), "{streams}");
    let (frames, _) = watch(&server.url("feed"), 3).await;
    assert!(frames >= 60, "{frames} frames in 3 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_stays_connected_when_the_publisher_drops_and_returns() {
    let server = Server::start(&push_route("feed", "feed.ffm"));
    let url = format!("http://{}/feed.ffm", server.http);
    let pusher = Pusher::start(&short_clip(), &url, "-c copy");
    wait_live(&server, "feed").await;
    let reader = tokio::spawn({
        let url = server.url("feed");
        async move { watch(&url, 9).await }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(pusher);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _pusher = Pusher::start(&short_clip(), &url, "-c copy");
    let (frames, gap) = reader.await.expect("reader");
    // About 3 s before the drop and 4 s after the return; the gap is the outage.
    assert!(
        frames >= 140,
        "{frames} frames: the reader kept receiving after the publisher came back"
    );
    assert!(
        gap >= Duration::from_millis(800),
        "the outage shows as a gap in time: {gap:?}"
    );
    assert!(
        server
            .log()
            .iter()
            .filter(|l| l.contains("publisher live"))
            .count()
            >= 2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pushes_are_refused_and_other_routes_play_on() {
    let routes = format!(
        "{}{}",
        push_route("feed", "feed.ffm"),
        file_route("clip", &short_clip())
    );
    let server = Server::start(&routes);
    let reader = tokio::spawn({
        let url = server.url("clip");
        async move { watch(&url, 6).await }
    });

    let unknown = exchange(server.http, &post("nope.ffm", b"x"), QUIET).await;
    assert!(
        unknown.starts_with("HTTP/1.1 404"),
        "unknown feed: {unknown}"
    );

    let garbage: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + 3) as u8 & 0x3f).collect();
    let garbage = exchange(server.http, &post("feed.ffm", &garbage), QUIET).await;
    assert!(garbage.starts_with("HTTP/1.1 400"), "garbage: {garbage}");
    assert!(garbage.contains("not an MPEG-TS stream"), "{garbage}");

    let mp2 = common::clip(
        "mp2-only.ts",
        "-f lavfi -i sine=frequency=440:sample_rate=48000:duration=30 -c:a mp2 -f mpegts",
    );
    let unsupported = exchange(
        server.http,
        &post("feed.ffm", &std::fs::read(mp2).unwrap()),
        QUIET,
    )
    .await;
    assert!(
        unsupported.starts_with("HTTP/1.1 415"),
        "unsupported codec: {unsupported}"
    );

    let truncated = std::fs::read(common::clip(
        "short.ts",
        "-f lavfi -i testsrc2=size=320x240:rate=25:duration=1 -c:v libx264 -g 25 -f mpegts",
    ))
    .unwrap();
    let truncated = exchange(
        server.http,
        &post("feed.ffm", &truncated[..truncated.len() / 2]),
        QUIET,
    )
    .await;
    assert!(
        truncated.starts_with("HTTP/1.1 200"),
        "a truncated body is just a short push: {truncated}"
    );

    let _pusher = Pusher::start(
        &short_clip(),
        &format!("http://{}/feed.ffm", server.http),
        "-c copy",
    );
    wait_live(&server, "feed").await;
    let second = exchange(server.http, &post("feed.ffm", b"\x47"), QUIET).await;
    assert!(
        second.starts_with("HTTP/1.1 409"),
        "second publisher: {second}"
    );

    let (frames, gap) = reader.await.expect("reader");
    assert!(
        frames >= 140 && gap < Duration::from_millis(200),
        "the file route played on: {frames}, {gap:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h265_and_opus_pushes_play() {
    let server = Server::start(&push_route("feed", "feed.ffm"));
    let _pusher = Pusher::start(
        &short_clip(),
        &format!("http://{}/feed.ffm", server.http),
        "-c:v libx265 -x265-params log-level=error:bframes=0:keyint=25 -preset ultrafast -c:a libopus -b:a 64k",
    );
    wait_live(&server, "feed").await;
    let streams = ffprobe_streams(&server.url("feed"));
    assert!(
        streams.contains("codec_name=hevc|width=320|height=240"),
        "{streams}"
    );
    assert!(
        streams.contains("codec_name=opus|sample_rate=48000"),
        "{streams}"
    );
    let (ok, _, err) = run(
        Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-v",
                "error",
                "-rtsp_transport",
                "tcp",
                "-i",
            ])
            .arg(server.url("feed"))
            .args(["-t", "3", "-f", "null", "-"]),
        Duration::from_secs(30),
    );
    assert!(
        ok && err.trim().is_empty(),
        "ffmpeg decodes H.265 and Opus: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_push_times_out_and_frees_the_feed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start(&push_route("feed", "feed.ffm"));
    let mut stalled = tokio::net::TcpStream::connect(server.http)
        .await
        .expect("connect");
    stalled
        .write_all(
            b"POST /feed.ffm HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nG\r\n",
        )
        .await
        .expect("send");
    let mut reply = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(15), stalled.read(&mut reply))
        .await
        .expect("answered within the stall timeout")
        .expect("read");
    let reply = String::from_utf8_lossy(&reply[..n]);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    let _pusher = Pusher::start(
        &short_clip(),
        &format!("http://{}/feed.ffm", server.http),
        "-c copy",
    );
    wait_live(&server, "feed").await;
}
