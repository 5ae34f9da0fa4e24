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

/// An origin that takes connections and answers as `answer` says (`None`: not at all); counts
/// the connections.
fn hung_origin(
    answer: fn(method: &str, cseq: &str, base: &str) -> Option<String>,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind origin");
    listener.set_nonblocking(true).expect("non-blocking");
    let listener = tokio::net::TcpListener::from_std(listener).expect("origin listener");
    let port = listener.local_addr().expect("address").port();
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let base = format!("rtsp://127.0.0.1:{port}/cam/");
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&pending[..end]).into_owned();
                        pending.drain(..end + 4);
                        let method = head.split(' ').next().unwrap_or("");
                        let cseq = head
                            .lines()
                            .find_map(|l| l.strip_prefix("CSeq: "))
                            .unwrap_or("0");
                        if let Some(reply) = answer(method, cseq, &base) {
                            let _ = socket.write_all(reply.as_bytes()).await;
                        }
                    }
                }
            });
        }
    });
    (port, connections)
}

/// An origin that answers DESCRIBE, SETUP and PLAY as a camera does, then sends nothing.
fn answers_then_falls_silent(method: &str, cseq: &str, base: &str) -> Option<String> {
    let (headers, body) = match method {
        "DESCRIBE" => {
            let sdp = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=hung\r\nt=0 0\r\n\
                       m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n\
                       a=fmtp:96 packetization-mode=1;profile-level-id=42e01f\r\n\
                       a=control:trackID=0\r\n";
            (
                format!("Content-Base: {base}\r\nContent-Type: application/sdp\r\n"),
                sdp.to_owned(),
            )
        }
        "SETUP" => (
            "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\nSession: 4242;timeout=60\r\n"
                .to_owned(),
            String::new(),
        ),
        _ => ("Session: 4242\r\n".to_owned(), String::new()),
    };
    Some(format!(
        "RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    ))
}

/// An origin that holds the connection without answering, or that answers and then sends no
/// media, loses it after 10 s: the edge reconnects rather than keep its route waiting for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_hangs_is_left_and_tried_again() {
    let (mute, mute_connections) = hung_origin(|_, _, _| None);
    let (silent, silent_connections) = hung_origin(answers_then_falls_silent);
    let edge = Server::start(&format!(
        "[routes.mute]\nsource = \"rtsp://127.0.0.1:{mute}/cam\"\non_demand = false\n\
         [routes.silent]\nsource = \"rtsp://127.0.0.1:{silent}/cam\"\non_demand = false\n"
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let counts = || {
        (
            mute_connections.load(std::sync::atomic::Ordering::Relaxed),
            silent_connections.load(std::sync::atomic::Ordering::Relaxed),
        )
    };
    while counts().0 < 2 || counts().1 < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections to the mute and silent origins in 30 s: {:?}\n{}",
            counts(),
            edge.log().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let log = edge.log();
    assert!(
        log.iter()
            .any(|l| l.contains("the origin did not answer DESCRIBE within 10s")),
        "{}",
        log.join("\n")
    );
    assert!(
        log.iter()
            .any(|l| l.contains("the origin sent no media for 10s")),
        "{}",
        log.join("\n")
    );
}
