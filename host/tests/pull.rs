//! RTSP pull: one wasmcast (the edge) relays a route of another (the origin), and recovers when
//! the origin goes away and comes back.

mod common;

use std::time::Duration;

use common::{Server, file_route, free_port, play, short_clip, wait_live};
use futures::StreamExt;
use retina::client::{TcpTransportOptions, Transport};
use retina::codec::CodecItem;

fn origin(port: u16) -> Server {
    Server::start_with(
        &format!(
            "rtsp = \"127.0.0.1:{port}\"\nhttp = \"127.0.0.1:0\"\nrtp_ports = \"33000-33999\"\n"
        ),
        &file_route("clip", &short_clip()),
    )
}

/// (video frames, audio frames, frames after `split`) a reader gets in `seconds`.
async fn watch(url: String, seconds: u64, split: Duration) -> (usize, usize, usize) {
    let mut playing = play(&url, Transport::Tcp(TcpTransportOptions::default()), true).await;
    let start = tokio::time::Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let (mut video, mut audio, mut late, mut last) = (0, 0, 0, None::<i64>);
    while let Ok(Some(item)) = tokio::time::timeout_at(deadline, playing.next()).await {
        match item.expect("media") {
            CodecItem::VideoFrame(frame) => {
                let ts = frame.timestamp().timestamp();
                assert!(
                    last.is_none_or(|l| ts > l),
                    "timestamps keep increasing across the outage"
                );
                last = Some(ts);
                video += 1;
                if start.elapsed() > split {
                    late += 1;
                }
            }
            CodecItem::AudioFrame(_) => audio += 1,
            _ => {}
        }
    }
    (video, audio, late)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_relays_the_origin_and_recovers_when_it_returns() {
    let port = free_port();
    let first_origin = origin(port);
    let edge = Server::start(&format!(
        "[routes.relay]\nsource = \"rtsp://127.0.0.1:{port}/clip\"\n"
    ));
    wait_live(&edge, "relay").await;

    let reader = tokio::spawn(watch(edge.url("relay"), 12, Duration::from_secs(8)));
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(first_origin);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _second_origin = origin(port);
    let (video, audio, late) = reader.await.expect("reader");
    assert!(video >= 150, "{video} video frames relayed");
    assert!(audio >= 200, "{audio} audio frames relayed");
    assert!(
        late >= 75,
        "the edge recovered: {late} frames in the last 4 s"
    );
    assert!(
        edge.log()
            .iter()
            .filter(|l| l.contains("RTSP pull connected"))
            .count()
            >= 2
    );
}
