//! Ingest by RTSP publish: ffmpeg ANNOUNCEs and RECORDs over TCP and UDP, players read.

mod common;

use std::time::Duration;

use common::{Pusher, Server, ffprobe_streams, play, publish_once, short_clip, wait_live};
use futures::StreamExt;
use retina::client::{TcpTransportOptions, Transport};
use retina::codec::CodecItem;

/// Video and audio frames a retina reader gets in `seconds`.
async fn watch(url: &str, seconds: u64) -> (usize, usize) {
    let mut playing = play(url, Transport::Tcp(TcpTransportOptions::default()), true).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let (mut video, mut audio, mut last) = (0, 0, None::<i64>);
    while let Ok(Some(item)) = tokio::time::timeout_at(deadline, playing.next()).await {
        match item.expect("media") {
            CodecItem::VideoFrame(frame) => {
                let ts = frame.timestamp().timestamp();
                assert!(last.is_none_or(|l| ts > l), "video timestamps increase");
                last = Some(ts);
                video += 1;
            }
            CodecItem::AudioFrame(_) => audio += 1,
            _ => {}
        }
    }
    (video, audio)
}

async fn publish_and_read(transport: &str) {
    let server = Server::start("[routes.cam]\nsource = \"push\"\n");
    let _publisher = Pusher::rtsp(&short_clip(), &server.url("cam"), transport);
    wait_live(&server, "cam").await;
    let out = ffprobe_streams(&server.url("cam"));
    assert!(
        out.contains("codec_name=h264|width=320|height=240"),
        "{out}"
    );
    assert!(out.contains("codec_name=aac|sample_rate=48000"), "{out}");
    let (video, audio) = watch(&server.url("cam"), 4).await;
    assert!(video >= 85, "{video} video frames in 4 s");
    assert!(audio >= 150, "{audio} audio frames in 4 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_publishes_over_tcp() {
    publish_and_read("tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_publishes_over_udp() {
    publish_and_read("udp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publisher_per_route() {
    let server = Server::start(
        "[routes.cam]\nsource = \"push\"\n[routes.file]\nsource = \"file:/nonexistent.mp4\"\n",
    );
    let _first = Pusher::rtsp(&short_clip(), &server.url("cam"), "tcp");
    wait_live(&server, "cam").await;
    let (ok, err) = publish_once(&server.url("cam"));
    assert!(
        !ok && err.contains("455"),
        "a second RTSP publisher is refused: {err}"
    );
    let (ok, err) = publish_once(&server.url("nope"));
    assert!(!ok && err.contains("404"), "no such route: {err}");
    let (ok, err) = publish_once(&server.url("file"));
    assert!(
        !ok && err.contains("404"),
        "a file route takes no publisher: {err}"
    );
    let (video, _) = watch(&server.url("cam"), 2).await;
    assert!(video >= 40, "the first publisher plays on: {video}");
}
