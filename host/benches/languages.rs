//! What a frame plugin costs in each language: the same grayscale plugin in Rust (the built-in
//! `grayscale`), Python (plugins/python-grayscale, componentize-py), JavaScript
//! (plugins/javascript-grayscale, componentize-js) and C (plugins/c-grayscale, wit-bindgen's C
//! generator and clang). For each: component size, compile time, a new
//! instance (with `init`), and the time per call on 640x360 and 1920x1080 pictures, all measured in
//! the same run. Needs the componentizers `scripts/install-test-deps.sh` installs. Run with
//! `cargo bench --bench languages`.

#[path = "../tests/common/componentize.rs"]
mod componentize;

use std::path::Path;
use std::time::{Duration, Instant};

use wasmcast::config::Config;
use wasmcast::media::Picture;
use wasmcast::plugins::{Chain, Loader, Plugins};

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let dir = std::env::temp_dir().join(format!("wasmcast-languages-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench directory");
    let components = [
        ("rust", None),
        ("python", Some(componentize::build_example("python", &dir))),
        (
            "javascript",
            Some(componentize::build_example("javascript", &dir)),
        ),
        ("c", Some(componentize::build_example("c", &dir))),
    ];
    println!(
        "{:<11} {:>9} {:>10} {:>13} {:>14} {:>15}",
        "language", "size", "compile", "new instance", "call 640x360", "call 1920x1080"
    );
    for (language, wasm) in components {
        let (wasm_key, size) = match &wasm {
            Some(path) => (
                format!("\"{}\"", path.display()),
                std::fs::metadata(path).map_or(0, |m| m.len()),
            ),
            None => (
                "\"builtin:grayscale\"".to_owned(),
                wasmcast::plugins::builtin("grayscale").map_or(0, |b| b.len() as u64),
            ),
        };
        let config = Config::parse(
            &format!(
                "[plugins.gray]\nwasm = {wasm_key}\ntime_limit_ms = 5000\nmemory_limit_mb = 512\ncpu_percent = 100\n"
            ),
            Path::new("bench.toml"),
        )
        .expect("bench config");
        let started = Instant::now();
        let plugins = Loader::default()
            .load_all(&config, &Plugins::new())
            .expect("load the plugin");
        let compile = started.elapsed();
        let plugin = plugins["gray"].clone();
        let mut instantiations: Vec<Duration> = (0..if quick { 3 } else { 20 })
            .map(|_| {
                let started = Instant::now();
                let instance = plugin.instantiate("bench").expect("instantiate");
                let elapsed = started.elapsed();
                drop(instance);
                elapsed
            })
            .collect();
        instantiations.sort();
        let mut chain = Chain::new("bench", std::slice::from_ref(&plugin), &[]);
        chain.start();
        let calls = if quick { 10 } else { 200 };
        let small = time_calls(&mut chain, 640, 360, calls);
        let large = time_calls(&mut chain, 1920, 1080, calls);
        println!(
            "{language:<11} {:>8.1}M {:>10} {:>13} {:>14} {:>15}",
            size as f64 / 1e6,
            format!("{compile:.2?}"),
            format!("{:.2?}", instantiations[instantiations.len() / 2]),
            format!("{small:.2?}"),
            format!("{large:.2?}")
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The median time of one call of the chain's frame plugin on a `width`x`height` picture.
fn time_calls(chain: &mut Chain, width: u32, height: u32, calls: usize) -> Duration {
    let mut times: Vec<Duration> = (0..calls)
        .map(|i| {
            let mut picture = Picture {
                width,
                height,
                pts: i as i64 * 3600,
                keyframe: false,
                data: vec![90; Picture::size_of(width, height)],
            };
            let started = Instant::now();
            chain.process_picture(&mut picture);
            started.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}
