//! The frame path: routes re-encoded by a `[transcode]` table or for frame plugins, checked with
//! ffprobe and ffmpeg's signalstats on what the RTSP server sends.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{
    Server, TempDir, b_frame_clip, clip, exchange, file_route, run, sample_clip, wait_live,
};

/// `key` of ffmpeg's signalstats for each picture of `seconds` of `url` (after `filters`).
fn signalstats(url: &str, seconds: u32, filters: &str, key: &str) -> Vec<f64> {
    let filter = format!("{filters}signalstats,metadata=print:key=lavfi.signalstats.{key}");
    let (ok, _, stderr) = run(
        Command::new("ffmpeg")
            .args(["-v", "info", "-rtsp_transport", "tcp", "-i", url])
            .args([
                "-t",
                &seconds.to_string(),
                "-an",
                "-vf",
                &filter,
                "-f",
                "null",
                "-",
            ]),
        Duration::from_secs(60),
    );
    assert!(ok, "ffmpeg on {url}: {stderr}");
    let marker = format!("lavfi.signalstats.{key}=");
    stderr
        .lines()
        .filter_map(|l| l.split(&marker).nth(1))
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transcode_table_sends_constrained_baseline_at_its_size_rate_and_bitrate() {
    let server = Server::start(&format!(
        "{}[routes.unicast.transcode]\nwidth = 640\nheight = 480\nfps = 24\nbitrate_kbps = 100\naudio = false\n",
        file_route("unicast", &sample_clip())
    ));
    wait_live(&server, "unicast").await;
    let (ok, streams, stderr) = run(
        Command::new("ffprobe")
            .args(["-v", "error", "-rtsp_transport", "tcp"])
            .args([
                "-show_entries",
                "stream=codec_type,codec_name,profile,width,height,r_frame_rate",
                "-of",
                "compact",
            ])
            .arg(server.url("unicast")),
        Duration::from_secs(30),
    );
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = streams.lines().collect();
    assert_eq!(lines.len(), 1, "video only (audio = false): {streams}");
    for expected in [
        "codec_name=h264",
        "profile=Constrained Baseline",
        "codec_type=video",
        "width=640",
        "height=480",
        "r_frame_rate=24/1",
    ] {
        assert!(lines[0].contains(expected), "{expected}: {streams}");
    }

    let dir = TempDir::new();
    let recording = dir.path().join("unicast.h264");
    let seconds = 10;
    let (ok, _, stderr) = run(
        Command::new("ffmpeg")
            .args(["-v", "error", "-rtsp_transport", "tcp", "-i"])
            .arg(server.url("unicast"))
            .args(["-t", &seconds.to_string(), "-c", "copy", "-f", "h264", "-y"])
            .arg(&recording),
        Duration::from_secs(60),
    );
    assert!(ok, "{stderr}");
    let kbps = std::fs::metadata(&recording).expect("recording").len() as f64 * 8.0
        / 1000.0
        / f64::from(seconds);
    assert!(
        (50.0..=160.0).contains(&kbps),
        "about 100 kbit/s: {kbps:.0} kbit/s"
    );

    let request = "GET /api/v1/routes HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let routes = exchange(server.http, request.as_bytes(), Duration::from_secs(5)).await;
    assert!(
        routes.contains("\"decode_errors\":0"),
        "the API counts the frame path: {routes}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grayscale_and_privacy_box_frame_plugins_change_the_picture() {
    let clip = sample_clip();
    let server = Server::start(&format!(
        "{}{}plugins = [\"gray\"]\n{}plugins = [\"hide\"]\n\
         [plugins.gray]\nwasm = \"builtin:grayscale\"\n\
         [plugins.hide]\nwasm = \"builtin:privacy-box\"\nconfig = {{ boxes = [{{ x = 64, y = 64, width = 192, height = 128 }}] }}\n",
        file_route("colour", &clip),
        file_route("gray", &clip),
        file_route("hidden", &clip),
    ));
    for route in ["colour", "gray", "hidden"] {
        wait_live(&server, route).await;
    }
    let colour = mean(&signalstats(&server.url("colour"), 2, "", "SATAVG"));
    let gray = signalstats(&server.url("gray"), 2, "", "SATAVG");
    assert!(colour > 30.0, "the source is colourful: SATAVG {colour:.1}");
    assert!(gray.len() >= 25, "{} pictures", gray.len());
    assert!(
        gray.iter().all(|s| *s < 1.0),
        "no chroma left after grayscale: {gray:?}"
    );

    // Inside the box (away from its edges, where encoding blurs a little): black and flat.
    let inside = "crop=160:96:80:80,";
    let luma = signalstats(&server.url("hidden"), 2, inside, "YAVG");
    let spread: Vec<f64> = signalstats(&server.url("hidden"), 2, inside, "YMAX")
        .iter()
        .zip(signalstats(&server.url("hidden"), 2, inside, "YMIN"))
        .map(|(max, min)| max - min)
        .collect();
    assert!(
        luma.iter().all(|y| *y < 24.0),
        "the box is black: YAVG {luma:?}"
    );
    assert!(
        spread.iter().all(|s| *s <= 12.0),
        "the box is uniform: YMAX-YMIN {spread:?}"
    );
    let outside = signalstats(&server.url("hidden"), 2, "crop=160:96:400:200,", "YAVG");
    assert!(
        mean(&outside) > 40.0,
        "the rest of the picture is untouched: {outside:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_b_frame_source_transcodes_in_presentation_order() {
    // The picture brightens by one step per frame: out-of-order pictures would show as dips.
    let ramp = clip(
        "ramp-bframes.mp4",
        "-f lavfi -i color=c=black:s=320x240:r=25:d=8 -vf geq=lum='16+N*0.9':cb=128:cr=128 \
         -c:v libx264 -profile:v high -bf 2 -g 50 -pix_fmt yuv420p",
    );
    let server = Server::start(&format!(
        "{}[routes.ramp.transcode]\nbitrate_kbps = 2000\n{}[routes.bframes.transcode]\nbitrate_kbps = 1000\n",
        file_route("ramp", &ramp),
        file_route("bframes", &b_frame_clip())
    ));
    wait_live(&server, "ramp").await;
    wait_live(&server, "bframes").await;
    let luma = signalstats(&server.url("ramp"), 4, "", "YAVG");
    assert!(luma.len() >= 80, "{} pictures", luma.len());
    let dips: Vec<(usize, f64)> = luma
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[1] < w[0] - 0.5)
        .map(|(i, w)| (i, w[1] - w[0]))
        .collect();
    // One dip is the loop point of the file; reordering mistakes would make many.
    assert!(
        dips.len() <= 1,
        "pictures out of order: {dips:?} in {luma:?}"
    );

    let (ok, _, stderr) = run(
        Command::new("ffmpeg")
            .args(["-v", "error", "-rtsp_transport", "tcp", "-i"])
            .arg(server.url("bframes"))
            .args(["-t", "4", "-f", "null", "-"]),
        Duration::from_secs(60),
    );
    assert!(ok && stderr.trim().is_empty(), "decodes cleanly: {stderr}");
    let request = "GET /api/v1/routes HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let routes = exchange(server.http, request.as_bytes(), Duration::from_secs(5)).await;
    assert!(
        !routes.contains("\"decode_errors\":1")
            && routes.matches("\"decode_errors\":0").count() == 2,
        "the B-frame sources decode without errors: {routes}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ffserver_config_takes_a_push_and_serves_it_re_encoded() {
    let config = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/ffserver.toml"),
    )
    .expect("config/ffserver.toml");
    // Its routes as they are; its [server] ports become loopback ones the OS picks.
    let routes = &config[config.find("[routes.").expect("a route")..];
    let server = Server::start(routes);
    let _pusher = common::Pusher::start(
        &sample_clip(),
        &format!("http://{}/feed.ffm", server.http),
        "-c copy",
    );
    wait_live(&server, "unicast").await;
    let streams = common::ffprobe_streams(&server.url("unicast"));
    assert!(
        streams.contains("h264")
            && streams.contains("640")
            && streams.contains("480")
            && !streams.contains("aac"),
        "ffserver's <Stream unicast>: H.264 640x480, no audio: {streams}"
    );
}

#[test]
fn the_shipped_configs_check() {
    for config in ["wasmcast.toml", "ffserver.toml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../config")
            .join(config);
        let output = Command::new(env!("CARGO_BIN_EXE_wasmcast"))
            .arg("check")
            .arg("--config")
            .arg(&path)
            .output()
            .expect("run check");
        assert!(
            output.status.success(),
            "{config}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
