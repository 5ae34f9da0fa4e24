//! What a frame plugin costs in each language: the same grayscale plugin in Rust (the built-in
//! `grayscale`), Python (plugins/python-grayscale, componentize-py) and JavaScript
//! (plugins/javascript-grayscale, componentize-js). For each: component size, compile time, a new
//! instance (with `init`), and the time per call on 640x360 and 1920x1080 pictures, all measured in
//! the same run. Needs the componentizers `scripts/install-test-deps.sh` installs. Run with
//! `cargo bench --bench languages`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use wasmcast::config::Config;
use wasmcast::media::Picture;
use wasmcast::plugins::{Chain, Loader, Plugins};

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let dir = std::env::temp_dir().join(format!("wasmcast-languages-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench directory");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let components = [
        ("rust", None),
        ("python", Some(build_python(&repo, &dir))),
        ("javascript", Some(build_javascript(&repo, &dir))),
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
                "[plugins.gray]\nwasm = {wasm_key}\ntime_limit_ms = 5000\nmemory_limit_mb = 512\n"
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

fn build_python(repo: &Path, dir: &Path) -> PathBuf {
    let source = dir.join("python");
    std::fs::create_dir_all(&source).expect("source directory");
    std::fs::copy(
        repo.join("plugins/python-grayscale/app.py"),
        source.join("app.py"),
    )
    .expect("copy app.py");
    let wasm = dir.join("python.wasm");
    let status = Command::new("python3")
        .args([
            "-c",
            "import sys; from componentize_py import script; \
             sys.argv[0] = 'componentize-py'; sys.exit(script())",
        ])
        .arg("-d")
        .arg(repo.join("wit"))
        .args([
            "-w",
            "wasmcast:plugin/frame-plugin",
            "componentize",
            "app",
            "-o",
        ])
        .arg(&wasm)
        .current_dir(&source)
        .status()
        .expect("componentize-py is installed (scripts/install-test-deps.sh)");
    assert!(status.success(), "componentize-py failed");
    wasm
}

fn build_javascript(repo: &Path, dir: &Path) -> PathBuf {
    let project = repo.join("plugins/javascript-grayscale");
    let wasm = dir.join("javascript.wasm");
    let status = Command::new(project.join("node_modules/.bin/componentize-js"))
        .arg("--wit")
        .arg(repo.join("wit"))
        .args(["--world-name", "wasmcast:plugin/frame-plugin"])
        .args(["--disable", "http", "fetch-event", "-o"])
        .arg(&wasm)
        .arg("app.js")
        .current_dir(&project)
        .status()
        .expect("componentize-js is installed (scripts/install-test-deps.sh)");
    assert!(status.success(), "componentize-js failed");
    wasm
}
