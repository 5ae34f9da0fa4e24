//! Snapshots: `GET /ROUTE/snapshot.jpg` is the route's latest keyframe as a JPEG picture that
//! ffprobe reads at the route's size; what cannot be pictured gets a clear refusal.

mod common;

use std::time::Duration;

use common::{Server, TempDir, exchange, file_route, h265_clip, run, sample_clip, wait_live};

/// The status and the head of a GET (with the body, for a text one).
async fn get(server: &Server, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let reply = exchange(server.http, request.as_bytes(), Duration::from_secs(5)).await;
    let status = reply.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let head = reply
        .get(..reply.len().min(600))
        .unwrap_or(&reply)
        .to_owned();
    (status, head)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_the_routes_latest_keyframe_as_a_jpeg() {
    let server = Server::start(&format!(
        "{}{}",
        file_route("sample", &sample_clip()),
        file_route("hevc", &h265_clip())
    ));
    wait_live(&server, "sample").await;
    wait_live(&server, "hevc").await;

    // ffmpeg fetches it as any HTTP client would, and reads it as an image.
    let dir = TempDir::new();
    let picture = dir.path().join("snapshot.jpg");
    let url = format!("http://{}/sample/snapshot.jpg", server.http);
    let (ok, _, stderr) = run(
        std::process::Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-y",
                "-i",
                &url,
                "-c",
                "copy",
            ])
            .arg(&picture),
        Duration::from_secs(20),
    );
    assert!(ok, "{stderr}");
    let (ok, probed, stderr) = run(
        std::process::Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-show_entries",
                "stream=codec_name,width,height",
                "-of",
                "csv=p=0",
            ])
            .arg(&picture),
        Duration::from_secs(20),
    );
    assert!(ok, "{stderr}");
    let (ok, sample, stderr) = run(
        std::process::Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-select_streams",
                "v:0",
                "-show_entries",
                "stream=width,height",
                "-of",
                "csv=p=0",
            ])
            .arg(sample_clip()),
        Duration::from_secs(20),
    );
    assert!(ok, "{stderr}");
    assert_eq!(probed.trim(), format!("mjpeg,{}", sample.trim()));
    // The picture itself: the sample's colour bars, not a black or gray frame.
    let (ok, _, stats) = run(
        std::process::Command::new("ffmpeg")
            .args(["-hide_banner", "-i"])
            .arg(&picture)
            .args([
                "-vf",
                "signalstats,metadata=print:key=lavfi.signalstats.SATAVG",
                "-f",
                "null",
                "-",
            ]),
        Duration::from_secs(20),
    );
    assert!(ok, "{stats}");
    let saturation: f64 = stats
        .split("lavfi.signalstats.SATAVG=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no signalstats: {stats}"));
    assert!(
        saturation > 20.0,
        "a colourful picture: SATAVG {saturation}"
    );

    let (status, head) = get(&server, "/sample/snapshot.jpg").await;
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: image/jpeg"),
        "{head}"
    );
    let (status, head) = get(&server, "/hevc/snapshot.jpg").await;
    assert_eq!(status, 415, "H.265 is refused with the reason: {head}");
    assert_eq!(get(&server, "/nope/snapshot.jpg").await.0, 404);
}
