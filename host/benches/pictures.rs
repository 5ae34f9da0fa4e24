//! What a frame plugin costs when its pictures are copied into it and back (the `frame-plugin`
//! world) and when they are lent (the `picture-plugin` world, where a plugin reads and writes
//! rectangles of a picture the server holds), at 640x480 and 1920x1080, measured in the same run:
//! - a memcpy of the whole picture, the yardstick;
//! - read-write: `grayscale` (copied) and `grayscale-in-place` (lent; sets the chroma planes);
//! - read-only: `luma-meter` (lent; reads a 64x64 square of Y), and the same reading 1x1, which
//!   is what a link of a chain costs the host beside its plugin's own work;
//! - chains of three of each, against one, and three meters of a 64x64 square each against one
//!   meter of a 64x192 rectangle: the same work split over a chain or done by one plugin.
//!
//! Targets (issue #17): read-only at most 10 µs at 1080p, read-write at most 2x the memcpy, a
//! chain of three at most 1.5x one plugin. The chain target is judged on the same work: three
//! meters of a 64x64 square against one meter of a 64x192 rectangle, so that what is measured is
//! what the chain adds (a link's calls), not its plugins' work. Three copies of one plugin do
//! three plugins' work: with the picture lent, nothing is paid once per picture that the links
//! could share (the copy in and out was, and it is gone), so they cost about three times one,
//! as any set of plugins that each read or write the picture would, and that ratio is printed
//! beside the target. Run with `cargo bench --bench pictures`.

use std::path::Path;
use std::time::{Duration, Instant};

use wasmcast::config::Config;
use wasmcast::media::Picture;
use wasmcast::plugins::{Chain, Loader, Plugins};

const SIZES: [(u32, u32); 2] = [(640, 480), (1920, 1080)];

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let calls = if quick { 10 } else { 400 };
    let config = Config::parse(
        // Calls back to back take all the time there is: no share of real time holds them.
        "[plugins.copied]\nwasm = \"builtin:grayscale\"\ncpu_percent = 100\n\
         [plugins.in_place]\nwasm = \"builtin:grayscale-in-place\"\ncpu_percent = 100\n\
         [plugins.meter]\nwasm = \"builtin:luma-meter\"\ncpu_percent = 100\n\
         [plugins.dot]\nwasm = \"builtin:luma-meter\"\nconfig = { width = 1, height = 1 }\n\
         cpu_percent = 100\n\
         [plugins.tall]\nwasm = \"builtin:luma-meter\"\nconfig = { width = 64, height = 192 }\n\
         cpu_percent = 100\n",
        Path::new("bench.toml"),
    )
    .expect("bench config");
    let plugins = Loader::default()
        .load_all(&config, &Plugins::new())
        .expect("load the plugins");
    let chain = |name: &str, links: usize| {
        let mut chain = Chain::new("bench", &vec![plugins[name].clone(); links], &[]);
        chain.start();
        chain
    };
    println!(
        "{:<34} {:>12} {:>12}",
        "per picture (median)", "640x480", "1920x1080"
    );
    let memcpy = SIZES.map(|(w, h)| time_memcpy(w, h, calls));
    print_row("memcpy of the picture", memcpy);
    let mut rows = Vec::new();
    for (label, name, links) in [
        ("grayscale, copied (frame world)", "copied", 1),
        ("grayscale-in-place, lent", "in_place", 1),
        ("luma-meter, lent (read-only)", "meter", 1),
        ("luma-meter of 1x1 (a link's cost)", "dot", 1),
        ("luma-meter of 64x192", "tall", 1),
        ("3 x grayscale, copied", "copied", 3),
        ("3 x grayscale-in-place, lent", "in_place", 3),
        ("3 x luma-meter, lent", "meter", 3),
    ] {
        let mut chain = chain(name, links);
        let times = SIZES.map(|(w, h)| time_calls(&mut chain, w, h, calls));
        print_row(label, times);
        rows.push(times);
    }
    let [
        copied,
        in_place,
        meter,
        dot,
        tall,
        copied3,
        in_place3,
        meter3,
    ] = rows[..]
    else {
        unreachable!("eight rows")
    };
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    let split = ratio(meter3[1], tall[1]);
    println!(
        "targets at 1080p: read-only {:.1?} (<= 10 µs: {}); read-write {:.2}x memcpy (<= 2x: {}); \
         a chain of three against one plugin doing the same work (<= 1.5x): {split:.2}x ({})\n\
         beside them: a link costs the host {:.1?}; three copies of one plugin, each doing a \
         whole plugin's work, against one: lent read-write {:.2}x, read-only {:.2}x, copied {:.2}x",
        meter[1],
        meter[1] <= Duration::from_micros(10),
        ratio(in_place[1], memcpy[1]),
        ratio(in_place[1], memcpy[1]) <= 2.0,
        if split <= 1.5 { "ok" } else { "MISSED" },
        dot[1],
        ratio(in_place3[1], in_place[1]),
        ratio(meter3[1], meter[1]),
        ratio(copied3[1], copied[1]),
    );
}

fn print_row(label: &str, [small, large]: [Duration; 2]) {
    println!(
        "{label:<34} {:>12} {:>12}",
        format!("{small:.1?}"),
        format!("{large:.1?}")
    );
}

fn picture(width: u32, height: u32, pts: i64) -> Picture {
    Picture {
        width,
        height,
        pts,
        keyframe: pts == 0,
        data: vec![90; Picture::size_of(width, height)],
    }
}

/// The median time of one copy of a `width`x`height` picture into a buffer of its size.
fn time_memcpy(width: u32, height: u32, calls: usize) -> Duration {
    let source = picture(width, height, 0);
    let mut target = vec![0u8; source.data.len()];
    let mut times: Vec<Duration> = (0..calls)
        .map(|_| {
            let started = Instant::now();
            target.copy_from_slice(std::hint::black_box(&source.data));
            std::hint::black_box(&mut target);
            started.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

/// The median time of one run of `chain` on a `width`x`height` picture.
fn time_calls(chain: &mut Chain, width: u32, height: u32, calls: usize) -> Duration {
    let mut times: Vec<Duration> = (0..calls)
        .map(|i| {
            let mut picture = picture(width, height, i as i64 * 3600);
            let started = Instant::now();
            chain.process_picture(&mut picture);
            started.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}
