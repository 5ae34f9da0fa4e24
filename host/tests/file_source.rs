//! The MP4 demuxer against ffprobe's reading of the same files.

mod common;

use std::os::unix::fs::FileExt;
use std::process::Command;
use std::time::Duration;

use wasmcast::sources::Mp4Media;

/// (pts, dts) of every video packet in decode order, as ffprobe reads them, in a 90 kHz clock.
fn ffprobe_timestamps(path: &std::path::Path) -> Vec<(i64, i64)> {
    let (ok, out, err) = common::run(
        Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-select_streams",
                "v:0",
                "-show_entries",
                "stream=time_base:packet=pts,dts",
                "-of",
                "csv=p=0",
            ])
            .arg(path),
        Duration::from_secs(30),
    );
    assert!(ok, "ffprobe failed: {err}");
    let mut lines = out.lines();
    let mut packets = Vec::new();
    let mut time_base = None;
    for line in lines.by_ref() {
        let fields: Vec<&str> = line.split(',').collect();
        match fields.as_slice() {
            [pts, dts] => packets.push((pts.parse::<i64>().unwrap(), dts.parse::<i64>().unwrap())),
            [tb] if tb.contains('/') => {
                let (num, den) = tb.split_once('/').unwrap();
                time_base = Some((num.parse::<i64>().unwrap(), den.parse::<i64>().unwrap()));
            }
            _ => {}
        }
    }
    let (num, den) = time_base.expect("time base");
    let scale = |t: i64| t * num * 90_000 / den;
    packets
        .into_iter()
        .map(|(p, d)| (scale(p), scale(d)))
        .collect()
}

fn our_timestamps(media: &Mp4Media, file: &std::fs::File, pass: u64) -> Vec<(i64, i64, bool)> {
    media
        .schedule()
        .iter()
        .filter(|s| s.track == 0)
        .map(|s| {
            let sample = media.sample(s.track, s.sample).unwrap();
            let mut bytes = vec![0; sample.size as usize];
            file.read_exact_at(&mut bytes, sample.offset).unwrap();
            let unit = media.access_unit(s.track, s.sample, &bytes, pass).unwrap();
            (unit.pts, unit.dts, unit.keyframe)
        })
        .collect()
}

#[test]
fn b_frames_keep_ffprobes_pts_and_dts_across_loops() {
    let path = common::b_frame_clip();
    let file = std::fs::File::open(&path).unwrap();
    let media = Mp4Media::parse(
        std::io::BufReader::new(&file),
        file.metadata().unwrap().len(),
    )
    .expect("parse");
    let expected = ffprobe_timestamps(&path);
    let first = our_timestamps(&media, &file, 0);
    assert_eq!(first.len(), expected.len());
    assert!(
        first
            .iter()
            .zip(&expected)
            .any(|(ours, _)| ours.0 != ours.1),
        "the clip has B-frames"
    );
    // ffprobe shows the file's own offsets; ours start the decode timeline at zero. Differences between
    // packets are what must match.
    let (shift_pts, shift_dts) = (first[0].0 - expected[0].0, first[0].1 - expected[0].1);
    for (ours, theirs) in first.iter().zip(&expected) {
        assert_eq!((ours.0 - shift_pts, ours.1 - shift_dts), *theirs);
    }
    assert_eq!(shift_pts, shift_dts, "pts - dts is preserved");

    let second = our_timestamps(&media, &file, 1);
    let period = (media.period_nanos() * 90_000 / 1_000_000_000) as i64;
    assert_eq!(period, 180_000, "two seconds at 25 fps");
    let last_dts = first.last().unwrap().1;
    let max_pts = first.iter().map(|t| t.0).max().unwrap();
    assert!(second[0].1 > last_dts && second.iter().map(|t| t.0).min().unwrap() > max_pts);
    for (a, b) in first.iter().zip(&second) {
        assert!((b.0 - a.0 - period).abs() <= 1 && (b.1 - a.1 - period).abs() <= 1);
        assert_eq!(a.2, b.2);
    }
}

#[test]
fn keyframes_carry_parameter_sets_in_annex_b() {
    let path = common::short_clip();
    let file = std::fs::File::open(&path).unwrap();
    let media = Mp4Media::parse(
        std::io::BufReader::new(&file),
        file.metadata().unwrap().len(),
    )
    .expect("parse");
    let entry = media.schedule().iter().find(|s| s.track == 0).unwrap();
    let sample = media.sample(0, entry.sample).unwrap();
    let mut bytes = vec![0; sample.size as usize];
    file.read_exact_at(&mut bytes, sample.offset).unwrap();
    let unit = media.access_unit(0, entry.sample, &bytes, 0).unwrap();
    assert!(unit.keyframe);
    let types: Vec<u8> = wasmcast::media::annex_b_nal_units(&unit.data)
        .map(|n| n[0] & 0x1f)
        .collect();
    assert_eq!(&types[..2], &[7, 8], "SPS and PPS lead the IDR: {types:?}");
    assert!(types.contains(&5));
}

#[test]
fn truncated_file_is_an_error_not_a_panic() {
    let bytes = std::fs::read(common::short_clip()).unwrap();
    for cut in [0, 8, 100, 1000, bytes.len() / 2] {
        let truncated = bytes[..cut].to_vec();
        let size = truncated.len() as u64;
        // The test clips keep their index (moov) at the end: any cut loses it.
        assert!(
            Mp4Media::parse(std::io::Cursor::new(truncated), size).is_err(),
            "cut at {cut}"
        );
    }
}
