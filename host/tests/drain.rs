//! Graceful drain: on SIGTERM the server stops taking sessions and says so on `/readyz`, lets the
//! open ones play through its grace period, then ends them cleanly and exits in time.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, file_route, http, play, short_clip, wait_live};
use futures::StreamExt;
use retina::client::{TcpTransportOptions, Transport};
use retina::codec::CodecItem;

const GRACE: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_readers_finish_then_ends_them_and_exits_in_time() {
    let mut server = Server::start_adding(
        &format!("drain_grace_s = {}\n", GRACE.as_secs()),
        &file_route("clip", &short_clip()),
    );
    wait_live(&server, "clip").await;
    assert_eq!(
        http(&server, "GET", "/readyz").await,
        (200, "ready\n".into())
    );

    // ffmpeg over TCP and over UDP: a BYE ends its input as the end of a file would, and it exits
    // with success.
    let url = server.url("clip");
    let mut ffmpegs: Vec<_> = ["tcp", "udp"]
        .iter()
        .map(|transport| {
            Command::new("ffmpeg")
                .args(["-hide_banner", "-loglevel", "error", "-rtsp_transport"])
                .args([*transport, "-i", &url, "-f", "null", "-"])
                .stdin(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start ffmpeg")
        })
        .collect();
    // A retina reader notes when its frames came.
    let reader = tokio::spawn({
        let url = url.clone();
        async move {
            let mut playing =
                play(&url, Transport::Tcp(TcpTransportOptions::default()), true).await;
            let mut frames = Vec::new();
            while let Ok(Some(Ok(item))) =
                tokio::time::timeout(Duration::from_secs(10), playing.next()).await
            {
                if let CodecItem::VideoFrame(_) = item {
                    frames.push(Instant::now());
                }
            }
            frames
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;

    let term = Instant::now();
    server.signal("TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        http(&server, "GET", "/readyz").await,
        (503, "draining\n".into())
    );
    assert_eq!(
        http(&server, "GET", "/healthz").await.0,
        200,
        "alive while it drains"
    );
    assert!(
        tokio::net::TcpStream::connect(server.rtsp).await.is_err(),
        "the RTSP listener is closed"
    );

    let frames = reader.await.expect("the retina reader");
    let during_grace = frames
        .iter()
        .filter(|at| **at > term + Duration::from_secs(1) && **at < term + GRACE)
        .count();
    assert!(
        during_grace >= 25,
        "{during_grace} frames in the grace period"
    );
    let last = frames.last().expect("frames");
    assert!(
        last.duration_since(term) < GRACE + Duration::from_secs(2),
        "the reader was ended after the grace period, not left hanging: last frame {:?} after SIGTERM",
        last.duration_since(term)
    );
    for ffmpeg in &mut ffmpegs {
        let deadline = Instant::now() + GRACE + Duration::from_secs(5);
        let status = loop {
            if let Some(status) = ffmpeg.try_wait().expect("ffmpeg") {
                break status;
            }
            assert!(Instant::now() < deadline, "ffmpeg still reading");
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut errors = String::new();
        if let Some(mut stderr) = ffmpeg.stderr.take() {
            use std::io::Read;
            let _ = stderr.read_to_string(&mut errors);
        }
        assert!(status.success(), "ffmpeg ended with {status}: {errors}");
        assert!(
            term.elapsed() >= GRACE,
            "ffmpeg ended before the grace period"
        );
    }
    let status = server
        .wait_exit(GRACE + Duration::from_secs(6))
        .expect("the server exits within the grace period and its cleanup");
    assert!(status.success(), "{status}");
    assert!(
        server.log().iter().any(|l| l.contains("draining")),
        "{:#?}",
        server.log()
    );
}

#[test]
fn without_sessions_sigterm_exits_at_once() {
    let mut server =
        Server::start_adding("drain_grace_s = 30\n", &file_route("clip", &short_clip()));
    std::thread::sleep(Duration::from_millis(500));
    let term = Instant::now();
    server.signal("TERM");
    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("the server exits");
    assert!(status.success(), "{status}");
    assert!(term.elapsed() < Duration::from_secs(5));
}
