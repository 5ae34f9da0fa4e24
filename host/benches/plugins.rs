//! What a packet plugin costs: the time a passthrough plugin adds to each access unit, for a small
//! (1.2 KB) and a large (100 KB) unit, against a route with no plugin; and the time to make a new
//! instance of a compiled plugin (what a restart or a swap costs). Run with `cargo bench --bench
//! plugins`; without `--bench` (as `cargo test` runs benches) it makes a quick pass.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmcast::config::Config;
use wasmcast::media::{AccessUnit, Codec, Track};
use wasmcast::plugins::{Chain, Loader, Plugins};

const TARGETS: [(usize, Duration); 2] = [
    (1200, Duration::from_micros(3)),
    (100_000, Duration::from_micros(30)),
];
const INSTANTIATE_TARGET: Duration = Duration::from_millis(1);

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let calls = if quick { 2_000 } else { 50_000 };
    let config = Config::parse(
        "[plugins.pass]\nwasm = \"builtin:passthrough\"\ncpu_percent = 100\n",
        Path::new("bench.toml"),
    )
    .expect("bench config");
    let plugins = Loader::default()
        .load_all(&config, &Plugins::new())
        .expect("load passthrough");
    let passthrough = vec![plugins["pass"].clone()];
    let tracks = [Track {
        codec: Codec::H264 {
            sps: Bytes::from_static(&[0x67, 0x42, 0xc0, 0x1e]),
            pps: Bytes::from_static(&[0x68, 0xce, 0x3c, 0x80]),
        },
        dimensions: None,
    }];

    println!("per-unit time through the chain, {calls} units each (median / p99):");
    let mut failed = false;
    for (size, target) in TARGETS {
        let mut data = vec![0x5a; size];
        data[..5].copy_from_slice(&[0, 0, 0, 1, 0x41]);
        let data = Bytes::from(data);
        let without = time_units(&mut Chain::new("bench", &[], &[]), &tracks, &data, calls);
        let with = time_units(
            &mut Chain::new("bench", &passthrough, &[]),
            &tracks,
            &data,
            calls,
        );
        let added_median = with.0.saturating_sub(without.0);
        let added_p99 = with.1.saturating_sub(without.1);
        println!(
            "  {size:>6} B: no plugin {:?} / {:?}; passthrough {:?} / {:?}; added {added_median:?} / {added_p99:?} (target median ≤ {target:?})",
            without.0, without.1, with.0, with.1
        );
        failed |= added_median > target;
    }

    let plugin = &passthrough[0];
    let mut times: Vec<Duration> = (0..if quick { 20 } else { 200 })
        .map(|_| {
            let started = Instant::now();
            let instance = plugin.instantiate("bench").expect("instantiate");
            let elapsed = started.elapsed();
            drop(instance);
            elapsed
        })
        .collect();
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "new instance of a compiled plugin (with init): median {median:?}, max {:?} (target ≤ {INSTANTIATE_TARGET:?})",
        times[times.len() - 1]
    );
    failed |= median > INSTANTIATE_TARGET;
    if failed && !quick {
        eprintln!("a target was missed");
        std::process::exit(1);
    }
}

/// Median and p99 time of one unit through `chain`.
fn time_units(
    chain: &mut Chain,
    tracks: &[Track],
    data: &Bytes,
    calls: usize,
) -> (Duration, Duration) {
    let mut out = Vec::with_capacity(4);
    let mut times = Vec::with_capacity(calls);
    for i in 0..calls {
        let unit = AccessUnit {
            track: 0,
            pts: i as i64 * 3600,
            dts: i as i64 * 3600,
            keyframe: false,
            data: data.clone(),
        };
        let started = Instant::now();
        chain.process(unit, tracks, &mut out);
        times.push(started.elapsed());
        out.clear();
    }
    times.sort();
    (times[calls / 2], times[calls * 99 / 100])
}
