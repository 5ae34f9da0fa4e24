//! aiortc, a WebRTC stack nobody here wrote (Python), plays an AAC route over WHEP (with its Opus
//! rendition) and publishes over WHIP; ffprobe reads the published route over RTSP and aiortc
//! plays it back.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Server, file_route, run, sample_clip, wait_live};

fn client() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/aiortc_client.py")
}

/// Plays `route` with aiortc for `seconds`: the video and audio frames it decoded, and the size.
fn aiortc_play(server: &Server, route: &str, seconds: u32) -> serde_json::Value {
    let (ok, out, err) = run(
        Command::new("python3").arg(client()).args([
            "play",
            &format!("http://{}", server.http),
            route,
            &seconds.to_string(),
        ]),
        Duration::from_secs(u64::from(seconds) + 30),
    );
    assert!(ok, "aiortc play: {err}\n{}", server.log().join("\n"));
    serde_json::from_str(out.trim()).unwrap_or_else(|_| panic!("aiortc printed {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiortc_plays_over_whep_and_publishes_over_whip() {
    let server = Server::start(&format!(
        "{}[routes.cam]\nsource = \"push\"\n",
        file_route("unicast", &sample_clip())
    ));
    wait_live(&server, "unicast").await;

    // WHEP: H.264 passed through, the sample's AAC heard as Opus.
    let seen = aiortc_play(&server, "unicast", 6);
    assert!(
        seen["video"].as_u64().unwrap_or(0) > 75 && seen["width"] == 640 && seen["height"] == 360,
        "aiortc decoded the route's video: {seen}"
    );
    assert!(
        seen["audio"].as_u64().unwrap_or(0) > 150,
        "aiortc decoded the route's audio (20 ms frames): {seen}"
    );

    // WHIP: aiortc encodes the sample as H.264 and Opus and publishes it.
    let publisher = Command::new("python3")
        .arg(client())
        .args([
            "publish",
            &format!("http://{}", server.http),
            "cam",
            &sample_clip().display().to_string(),
            "16",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start aiortc");
    wait_live(&server, "cam").await;
    let streams = tokio::task::spawn_blocking({
        let url = server.url("cam");
        move || common::ffprobe_streams(&url)
    })
    .await
    .expect("ffprobe");
    assert!(
        streams.contains("codec_name=h264") && streams.contains("codec_name=opus"),
        "what aiortc published, over RTSP: {streams}"
    );
    let seen = aiortc_play(&server, "cam", 4);
    assert!(
        seen["video"].as_u64().unwrap_or(0) > 50 && seen["audio"].as_u64().unwrap_or(0) > 100,
        "aiortc plays back what aiortc published: {seen}"
    );
    let output = tokio::task::spawn_blocking(move || publisher.wait_with_output())
        .await
        .expect("join")
        .expect("aiortc publish");
    assert!(
        output.status.success()
            && String::from_utf8_lossy(&output.stdout).contains("\"status\": 201"),
        "aiortc publish: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        server.wait_for_log("Kicked", Duration::from_secs(5)),
        "the publisher's DELETE ended it"
    );
}
