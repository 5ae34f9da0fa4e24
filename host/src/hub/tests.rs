use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::stream::RING_CAPACITY;
use super::*;
use crate::config::MemoryBudget;
use crate::media::{Codec, StreamDescription, Track};

fn description() -> StreamDescription {
    StreamDescription {
        tracks: vec![
            Track {
                codec: Codec::H264 {
                    sps: Bytes::from_static(&[0x67]),
                    pps: Bytes::from_static(&[0x68]),
                },
                dimensions: None,
            },
            Track {
                codec: Codec::Aac {
                    config: Bytes::from_static(&[0x11, 0x90]),
                    sample_rate: 48000,
                    channels: 2,
                },
                dimensions: None,
            },
        ],
    }
}

fn start(stream: &Arc<Stream>, anchor: Instant) -> Publisher {
    let timeline = Timeline {
        anchor,
        anchor_nanos: 0,
    };
    stream.claim().expect("free").start(description(), timeline)
}

fn au(track: usize, pts: i64, keyframe: bool) -> AccessUnit {
    AccessUnit {
        track,
        pts,
        dts: pts,
        keyframe,
        data: Bytes::from_static(&[0, 0, 0, 1, 0x65, 1]),
    }
}

#[tokio::test]
async fn new_reader_starts_at_latest_keyframe() {
    let stream = Stream::new("test");
    assert!(stream.subscribe().is_none(), "no media yet");
    let mut publisher = start(&stream, Instant::now());
    publisher.send(au(0, 0, true));
    publisher.send(au(0, 3600, false));
    publisher.send(au(0, 7200, true));
    publisher.send(au(1, 7000, true));
    publisher.send(au(0, 10800, false));
    let mut reader = stream.subscribe().expect("media");
    let pts: Vec<i64> = [
        reader.next().await.unwrap(),
        reader.next().await.unwrap(),
        reader.next().await.unwrap(),
    ]
    .iter()
    .map(|u| u.au.pts)
    .collect();
    assert_eq!(pts, vec![7200, 7000, 10800]);
    publisher.send(au(0, 14400, false));
    assert_eq!(reader.next().await.unwrap().au.pts, 14400);
    assert_eq!(stream.stats.readers.load(Ordering::Relaxed), 1);
    drop(reader);
    assert_eq!(stream.stats.readers.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn slow_reader_skips_to_next_keyframe_and_others_are_untouched() {
    let stream = Stream::new("test");
    let mut publisher = start(&stream, Instant::now());
    publisher.send(au(0, 0, true));
    let mut slow = stream.subscribe().expect("media");
    let mut fast = stream.subscribe().expect("media");
    for i in 1..=(RING_CAPACITY as i64 + 10) {
        publisher.send(au(0, i * 3600, false));
        assert_eq!(
            fast.next().await.unwrap().au.pts,
            if i == 1 { 0 } else { (i - 1) * 3600 }
        );
    }
    publisher.send(au(0, 999_999, true));
    publisher.send(au(0, 1_000_000, false));
    // The slow reader still has its backlog, then it lagged: it resumes at the keyframe.
    assert_eq!(slow.next().await.unwrap().au.pts, 0);
    assert_eq!(slow.next().await.unwrap().au.pts, 999_999);
    assert_eq!(slow.next().await.unwrap().au.pts, 1_000_000);
    assert_eq!(stream.stats.readers_too_slow.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn units_over_the_budget_are_dropped_and_a_slow_reader_skips_past_the_ring_bytes() {
    let budget = MemoryBudget {
        max_unit_bytes: 1000,
        route_buffer_bytes: 8000,
    };
    let stream = Stream::with_budget("test", budget);
    let mut publisher = start(&stream, Instant::now());
    let unit = |pts: i64, keyframe: bool, size: usize| AccessUnit {
        data: Bytes::from(vec![1u8; size]),
        ..au(0, pts, keyframe)
    };
    assert!(publisher.send(unit(0, true, 500)));
    assert!(
        !publisher.send(unit(3600, true, 1001)),
        "over max_unit_bytes"
    );
    assert_eq!(stream.stats.units_over_budget.load(Ordering::Relaxed), 1);
    let mut slow = stream.subscribe().expect("media");
    assert_eq!(slow.next().await.unwrap().au.pts, 0, "the kept keyframe");
    // 18 units of 900 bytes (and their packets) are far over the ring's 8000 bytes: it keeps the
    // last few, and a reader that read none of them goes on at the first keyframe among them.
    for i in 2..20 {
        assert!(publisher.send(unit(i * 3600, i % 5 == 0, 900)));
    }
    let next = slow.next().await.unwrap();
    assert_eq!(
        stream.stats.readers_too_slow.load(Ordering::Relaxed),
        1,
        "the slow reader fell out of the ring"
    );
    assert!(
        next.au.keyframe && next.au.pts == 15 * 3600,
        "{:?}",
        next.au
    );
}

#[tokio::test]
async fn close_ends_readers() {
    let stream = Stream::new("test");
    let mut publisher = start(&stream, Instant::now());
    publisher.send(au(0, 0, true));
    let mut reader = stream.subscribe().expect("media");
    stream.close();
    assert_eq!(reader.next().await.unwrap().au.pts, 0);
    assert!(reader.next().await.is_none());
}

#[tokio::test]
async fn a_returning_publisher_continues_the_rtp_stream_for_readers() {
    let stream = Stream::new("test");
    let t0 = Instant::now();
    let mut first = start(&stream, t0);
    assert!(stream.claim().is_err(), "one publisher at a time");
    first.send(au(0, 0, true));
    first.send(au(0, 3600, false));
    let mut reader = stream.subscribe().expect("media");
    let a = reader.next().await.unwrap();
    let b = reader.next().await.unwrap();
    drop(first);
    assert_eq!(stream.state(), SourceState::Waiting);

    // The new publisher's clock restarts at zero, ten seconds later in wall-clock time.
    let mut second = start(&stream, t0 + Duration::from_secs(10));
    second.send(au(0, 0, false));
    second.send(au(0, 3600, true));
    let c = reader.next().await.unwrap();
    assert!(
        c.au.keyframe,
        "after a change of publisher the reader resumes at a keyframe"
    );
    let first_packet = |u: &Unit| crate::rtp::header_seq_and_timestamp(&u.rtp.packets[0]).unwrap();
    let (seq_b, ts_b) = first_packet(&b);
    let (seq_c, ts_c) = first_packet(&c);
    assert_eq!(
        a.rtp.packets[0][8..12],
        c.rtp.packets[0][8..12],
        "same SSRC"
    );
    assert_eq!(seq_c, seq_b.wrapping_add(2), "sequence numbers continue");
    assert_eq!(
        ts_c.wrapping_sub(ts_b),
        10 * 90_000,
        "the RTP clock followed the wall clock"
    );
}

#[tokio::test]
async fn a_publisher_with_other_tracks_ends_old_readers() {
    let stream = Stream::new("test");
    let mut first = start(&stream, Instant::now());
    first.send(au(0, 0, true));
    let mut reader = stream.subscribe().expect("media");
    drop(first);
    let audio_only = StreamDescription {
        tracks: vec![description().tracks[1].clone()],
    };
    let timeline = Timeline {
        anchor: Instant::now(),
        anchor_nanos: 0,
    };
    let _second = stream.claim().expect("free").start(audio_only, timeline);
    assert!(reader.next().await.is_some(), "the backlog it already had");
    assert!(reader.next().await.is_none());
}

#[test]
fn rtp_clock_follows_the_timeline() {
    let anchor = Instant::now();
    let stream = Stream::new("test");
    let _publisher = start(&stream, anchor);
    let media = stream.media().unwrap();
    let at_start = media.rtp_timestamp_at(0, anchor).unwrap();
    let later = media
        .rtp_timestamp_at(0, anchor + Duration::from_secs(2))
        .unwrap();
    assert_eq!(later.wrapping_sub(at_start), 180_000);
    let audio_start = media.rtp_timestamp_at(1, anchor).unwrap();
    let audio_later = media
        .rtp_timestamp_at(1, anchor + Duration::from_millis(500))
        .unwrap();
    assert_eq!(audio_later.wrapping_sub(audio_start), 24_000);
}
