//! aiortc, a WebRTC stack nobody here wrote (Python), plays an AAC route over WHEP (with its Opus
//! rendition) and publishes over WHIP; ffprobe reads the published route over RTSP and aiortc
//! plays it back. It also places each beep of a flash-and-beep clip against its flash through the
//! server's sender reports, which is how a browser keeps the two in step, and loses packets on
//! the way to see them sent again.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Server, file_route, flash_and_beep_clip, run, sample_clip, wait_live};

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
        server.wait_for_log("ended by its client", Duration::from_secs(5)),
        "the publisher's DELETE ended it"
    );
}

/// Where the server's sender reports put each beep against its flash, in milliseconds (a beep
/// after its flash is positive), from aiortc playing `route` for eight seconds.
fn beep_offsets(server: &Server, route: &str) -> Vec<f64> {
    let (ok, out, err) = run(
        Command::new("python3").arg(client()).args([
            "sync",
            &format!("http://{}", server.http),
            route,
            "8",
        ]),
        Duration::from_secs(40),
    );
    assert!(ok, "aiortc sync: {err}\n{}", server.log().join("\n"));
    let placed: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|_| panic!("aiortc printed {out}"));
    let times = |key: &str| -> Vec<f64> {
        placed[key]
            .as_array()
            .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
            .unwrap_or_default()
    };
    let (flashes, beeps) = (times("flashes"), times("beeps"));
    // Each beep with the flash nearest to it (they come a second apart).
    let offsets: Vec<f64> = beeps
        .iter()
        .filter_map(|beep| {
            flashes
                .iter()
                .map(|flash| (beep - flash) * 1000.0)
                .min_by(|a, b| a.abs().total_cmp(&b.abs()))
        })
        .collect();
    assert!(
        offsets.len() >= 5,
        "{route}: flashes {flashes:?} and beeps {beeps:?} pair up: {placed}"
    );
    offsets
}

/// The sender reports of a WebRTC viewer's two tracks agree on the route's clock to the sample:
/// the Opus rendition's timestamps take off the AAC decoder's, the resampler's and the Opus
/// encoder's delays, so a browser that follows the reports plays each beep on its flash. (A browser
/// only corrects differences past some 30 ms, see `audio.rs`; this measures the server itself.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_reports_put_each_beep_on_its_flash() {
    let server = Server::start(&format!(
        "{}{}",
        file_route("at48", &flash_and_beep_clip(48_000)),
        file_route("at44", &flash_and_beep_clip(44_100))
    ));
    wait_live(&server, "at48").await;
    wait_live(&server, "at44").await;
    for route in ["at48", "at44"] {
        let offsets = tokio::task::block_in_place(|| beep_offsets(&server, route));
        eprintln!("{route}: beeps after their flashes by (ms) {offsets:?}");
        // The smallest delay to miss is the Opus encoder's look-ahead, 6.5 ms; the codecs move
        // a beep's onset by well under 2 ms.
        assert!(
            offsets.iter().all(|offset| offset.abs() < 2.0),
            "{route}: beeps against their flashes (ms): {offsets:?}"
        );
    }
}

/// A viewer that loses packets gets them again: aiortc, made to drop the first copy of every
/// 10th video packet, asks for each with a NACK, and the server resends it from the viewer's
/// send history (the one interceptor a viewer's connection keeps).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_that_loses_packets_gets_them_again() {
    let server = Server::start(&file_route("unicast", &sample_clip()));
    wait_live(&server, "unicast").await;
    let (ok, out, err) = tokio::task::block_in_place(|| {
        run(
            Command::new("python3").arg(client()).args([
                "lossy",
                &format!("http://{}", server.http),
                "unicast",
                "8",
            ]),
            Duration::from_secs(40),
        )
    });
    assert!(ok, "aiortc lossy: {err}\n{}", server.log().join("\n"));
    let seen: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|_| panic!("aiortc printed {out}"));
    let count = |key: &str| seen[key].as_u64().unwrap_or(0);
    eprintln!("losses: {seen}");
    assert!(count("dropped") >= 20, "enough packets were lost: {seen}");
    // The first packet of all cannot be asked for (nothing came before it to show a gap).
    assert!(
        count("nacked") + 1 >= count("dropped") && count("recovered") + 1 >= count("dropped"),
        "every lost packet was asked for and came again: {seen}"
    );
    assert!(count("video") > 75, "the picture kept decoding: {seen}");
}
