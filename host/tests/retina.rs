//! retina, a strict RTSP client nobody here wrote, reads looped files over TCP and UDP.

mod common;

use std::num::NonZeroU32;
use std::time::Duration;

use common::{Server, file_route, short_clip};
use futures::StreamExt;
use retina::client::{
    PlayOptions, SessionOptions, SetupOptions, TcpTransportOptions, Transport, UdpTransportOptions,
};
use retina::codec::{CodecItem, ParametersRef};

/// What a reader saw of one stream.
#[derive(Default, Debug)]
struct Seen {
    frames: usize,
    keyframes: usize,
    last_timestamp: Option<i64>,
    sender_reports: usize,
}

async fn read(url: &str, transport: Transport, seconds: u64) -> (Vec<String>, Seen, Seen) {
    let url = url::Url::parse(url).expect("url");
    let mut session = retina::client::Session::describe(url, SessionOptions::default())
        .await
        .expect("DESCRIBE");
    let mut described = Vec::new();
    for stream in session.streams() {
        described.push(match stream.parameters() {
            Some(ParametersRef::Video(v)) => {
                format!(
                    "{} {}x{}",
                    v.rfc6381_codec(),
                    v.pixel_dimensions().0,
                    v.pixel_dimensions().1
                )
            }
            Some(ParametersRef::Audio(a)) => format!(
                "{} {} Hz {} ch",
                a.rfc6381_codec().unwrap_or("?"),
                a.clock_rate(),
                a.channels()
            ),
            _ => format!("{} (no parameters)", stream.encoding_name()),
        });
    }
    for i in 0..session.streams().len() {
        session
            .setup(i, SetupOptions::default().transport(transport.clone()))
            .await
            .expect("SETUP");
    }
    let mut playing = session
        .play(
            PlayOptions::default()
                .enforce_timestamps_with_max_jump_secs(NonZeroU32::new(5).unwrap()),
        )
        .await
        .expect("PLAY")
        .demuxed()
        .expect("demuxed");
    let (mut video, mut audio) = (Seen::default(), Seen::default());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    while let Ok(Some(item)) = tokio::time::timeout_at(deadline, playing.next()).await {
        match item.expect("media without errors") {
            CodecItem::VideoFrame(frame) => {
                let ts = frame.timestamp().timestamp();
                if video.frames == 0 {
                    assert!(
                        frame.is_random_access_point(),
                        "the first frame is a keyframe"
                    );
                }
                if let Some(last) = video.last_timestamp {
                    assert!(ts > last, "video timestamp went from {last} to {ts}");
                }
                assert_eq!(frame.loss(), 0, "no packet lost on loopback");
                video.last_timestamp = Some(ts);
                video.frames += 1;
                video.keyframes += usize::from(frame.is_random_access_point());
            }
            CodecItem::AudioFrame(frame) => {
                let ts = frame.timestamp().timestamp();
                if let Some(last) = audio.last_timestamp {
                    assert!(ts > last, "audio timestamp went from {last} to {ts}");
                }
                audio.last_timestamp = Some(ts);
                audio.frames += 1;
            }
            CodecItem::Rtcp(rtcp)
                if rtcp
                    .pkts()
                    .any(|p| matches!(p.as_sender_report(), Ok(Some(_)))) =>
            {
                if rtcp.stream_id() == 0 {
                    video.sender_reports += 1;
                } else {
                    audio.sender_reports += 1;
                }
            }
            _ => {}
        }
    }
    (described, video, audio)
}

fn check_across_loops(described: &[String], video: &Seen, audio: &Seen) {
    assert_eq!(
        described,
        ["avc1.42C00D 320x240", "mp4a.40.2 48000 Hz 2 ch"],
        "codec parameters match the file"
    );
    // 5.5 s of a 2 s clip at 25 fps crosses two loop points.
    assert!(video.frames >= 120, "video frames: {video:?}");
    assert!(video.keyframes >= 3, "one keyframe per second: {video:?}");
    assert!(
        audio.frames >= 200,
        "audio frames (1024 samples at 48 kHz): {audio:?}"
    );
    assert!(
        video.sender_reports >= 1 && audio.sender_reports >= 1,
        "RTCP SRs: {video:?} {audio:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_reader_crosses_loop_points() {
    let server = Server::start(&file_route("clip", &short_clip()));
    let (described, video, audio) = read(
        &server.url("clip"),
        Transport::Tcp(TcpTransportOptions::default()),
        6,
    )
    .await;
    check_across_loops(&described, &video, &audio);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_reader_crosses_loop_points() {
    let server = Server::start(&file_route("clip", &short_clip()));
    let (described, video, audio) = read(
        &server.url("clip"),
        Transport::Udp(UdpTransportOptions::default()),
        6,
    )
    .await;
    check_across_loops(&described, &video, &audio);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h265_file_is_served() {
    let server = Server::start(&file_route("hevc", &common::h265_clip()));
    let (described, video, _) = read(
        &server.url("hevc"),
        Transport::Tcp(TcpTransportOptions::default()),
        3,
    )
    .await;
    assert_eq!(described.len(), 1);
    assert!(
        described[0].starts_with("hvc1.") && described[0].ends_with(" 320x240"),
        "{described:?}"
    );
    assert!(video.frames >= 50, "{video:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_does_not_loop_ends_its_readers() {
    let route = format!("{}loop = false\n", file_route("once", &short_clip()));
    let server = Server::start(&route);
    let tcp = Transport::Tcp(TcpTransportOptions::default());
    let mut playing = common::play(&server.url("once"), tcp, false).await;
    let mut frames = 0;
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(5), playing.next()).await {
            Err(_) => break false,
            Ok(None) | Ok(Some(Err(_))) => break true,
            Ok(Some(Ok(CodecItem::VideoFrame(_)))) => frames += 1,
            Ok(Some(Ok(_))) => {}
        }
    };
    assert!(ended, "the session ended with the file");
    assert!(
        (40..=52).contains(&frames),
        "the reader got the file once: {frames} frames"
    );
}

/// Audio frames a TCP reader of `url` gets from its third second to its `seconds`th, and the
/// spread of how late they come against their timestamps (the latest's lateness less the
/// earliest's). The first two seconds are left out: the kept GOP comes faster than real time.
async fn audio_lateness(url: &str, seconds: u64) -> (usize, Duration) {
    let url = url::Url::parse(url).expect("url");
    let mut session = retina::client::Session::describe(url, SessionOptions::default())
        .await
        .expect("DESCRIBE");
    for i in 0..session.streams().len() {
        session
            .setup(
                i,
                SetupOptions::default().transport(Transport::Tcp(TcpTransportOptions::default())),
            )
            .await
            .expect("SETUP");
    }
    let mut playing = session
        .play(PlayOptions::default())
        .await
        .expect("PLAY")
        .demuxed()
        .expect("demuxed");
    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let (mut frames, mut earliest, mut latest) = (0, f64::MAX, f64::MIN);
    while let Ok(Some(item)) = tokio::time::timeout_at(deadline, playing.next()).await {
        if let CodecItem::AudioFrame(frame) = item.expect("media without errors") {
            let arrived = started.elapsed();
            if arrived < Duration::from_secs(2) {
                continue;
            }
            let lateness = arrived.as_secs_f64() - frame.timestamp().elapsed_secs();
            earliest = earliest.min(lateness);
            latest = latest.max(lateness);
            frames += 1;
        }
    }
    (
        frames,
        Duration::from_secs_f64((latest - earliest).max(0.0)),
    )
}

/// Over TCP a reader's sound waits for its next picture to go out in the same write, 50 ms at
/// most: it comes in time beside a picture, and alone (a route without video) as much.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sound_over_tcp_comes_in_time_with_pictures_and_without() {
    let sound_only = common::clip(
        "sine-aac.mp4",
        "-f lavfi -i sine=frequency=440:sample_rate=48000:duration=2 -c:a aac -ac 2 -b:a 64k",
    );
    let server = Server::start(&format!(
        "{}{}",
        file_route("both", &short_clip()),
        file_route("sound", &sound_only)
    ));
    common::wait_live(&server, "both").await;
    common::wait_live(&server, "sound").await;
    for route in ["both", "sound"] {
        let (frames, spread) = audio_lateness(&server.url(route), 6).await;
        // 1024 samples at 48 kHz: 47 frames a second, 187 in four seconds.
        assert!(frames >= 170, "{route}: {frames} audio frames in 4 s");
        assert!(
            spread <= Duration::from_millis(120),
            "{route}: audio lateness spread over {spread:?}"
        );
    }
}
