//! The frame path on one core: decode → grayscale plugin → encode, in frames per second, at
//! 640x480 and 1920x1080; and what one call of the grayscale plugin costs with a 1080p picture.
//! Run with `cargo bench --bench transcode`.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmcast::config::{Config, TranscodeConfig};
use wasmcast::media::Picture;
use wasmcast::pipeline::{TranscodeStats, Transcoder};
use wasmcast::plugins::{Chain, Loader, Plugins};

const TARGETS: [(&str, f64); 2] = [("640x480", 200.0), ("1920x1080", 30.0)];
const PLUGIN_CALL_TARGET: Duration = Duration::from_millis(1);

fn main() {
    let quick = common::quick();
    let seconds = if quick { "2" } else { "8" };
    let config = Config::parse(
        "[plugins.gray]\nwasm = \"builtin:grayscale\"\ncpu_percent = 100\n",
        Path::new("bench.toml"),
    )
    .expect("bench config");
    let plugins = Loader::default()
        .load_all(&config, &Plugins::new())
        .expect("load grayscale");
    let gray = vec![Arc::clone(&plugins["gray"])];

    println!("decode -> grayscale -> encode (constrained baseline), one thread:");
    let mut failed = false;
    for (size, target) in TARGETS {
        let clip = common::clip(
            &format!("transcode-{size}-{seconds}s.mp4"),
            &[
                "-f",
                "lavfi",
                "-i",
                &format!("testsrc2=size={size}:rate=30:duration={seconds}"),
                "-c:v",
                "libx264",
                "-preset",
                "veryfast",
                "-profile:v",
                "high",
                "-bf",
                "2",
                "-g",
                "60",
                "-pix_fmt",
                "yuv420p",
            ],
        );
        let (description, units) = wasmcast::sources::mp4_units(&clip).expect("clip");
        let units: Vec<_> = units.map(|u| u.expect("unit")).collect();
        let settings = TranscodeConfig {
            width: None,
            height: None,
            fps: None,
            bitrate_kbps: if size == "640x480" { 1500 } else { 6000 },
            keyframe_interval: None,
            audio: false,
        };
        let stats = Arc::new(TranscodeStats::default());
        let mut transcoder = Transcoder::new(
            "bench",
            &settings,
            &description,
            Chain::new("bench", &gray, &[]),
            Arc::clone(&stats),
        )
        .expect("transcoder");
        let mut out = Vec::new();
        let started = Instant::now();
        for unit in units {
            transcoder.process(unit, false, &mut out);
        }
        let elapsed = started.elapsed().as_secs_f64();
        let encoded = stats.encoded.load(std::sync::atomic::Ordering::Relaxed);
        let fps = encoded as f64 / elapsed;
        println!(
            "  {size:>9}: {encoded} pictures in {elapsed:.2} s = {fps:.0} fps (target >= {target})"
        );
        failed |= fps < target;
    }

    let mut chain = Chain::new("bench", &gray, &[]);
    chain.start();
    let picture = Picture {
        width: 1920,
        height: 1080,
        pts: 0,
        keyframe: false,
        data: vec![100; Picture::size_of(1920, 1080)],
    };
    let mut times: Vec<Duration> = (0..if quick { 20 } else { 200 })
        .map(|_| {
            let mut frame = picture.clone();
            let started = Instant::now();
            chain.process_picture(&mut frame);
            started.elapsed()
        })
        .collect();
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "grayscale plugin call with a 1080p picture (copy in, change, copy out): median {median:?}, max {:?} (target <= {PLUGIN_CALL_TARGET:?})",
        times[times.len() - 1]
    );
    failed |= median > PLUGIN_CALL_TARGET;
    if failed && !quick {
        eprintln!("a target was missed");
        std::process::exit(1);
    }
}
