//! Reload latency: from renaming a new config over the old one to the added route answering
//! DESCRIBE with 200 (debounce included). Run with `cargo bench --bench reload`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::BenchServer;

const TARGET: Duration = Duration::from_millis(250);

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let rounds = if quick { 3 } else { 20 };
    let clip = common::clip(
        "reload-2s.mp4",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=25:duration=2",
            "-c:v",
            "libx264",
            "-g",
            "25",
            "-pix_fmt",
            "yuv420p",
        ],
    );
    let route = |name: &str| format!("[routes.{name}]\nsource = \"file:{}\"\n", clip.display());
    let server = BenchServer::start("reload", "rtp_ports = \"36000-36999\"", &route("base"));
    let mut times = Vec::new();
    for round in 0..rounds {
        let name = format!("added{round}");
        let text = format!(
            "[server]\nrtsp = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\nrtp_ports = \"36000-36999\"\n{}{}",
            route("base"),
            route(&name)
        );
        let temporary = server.config_path().with_extension("toml.new");
        std::fs::write(&temporary, text).expect("write config");
        let renamed = Instant::now();
        std::fs::rename(&temporary, server.config_path()).expect("rename");
        while !describe_ok(&server, &name) {
            assert!(
                renamed.elapsed() < Duration::from_secs(5),
                "{name} never appeared"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        times.push(renamed.elapsed());
    }
    times.sort();
    let p50 = times[times.len() / 2];
    let max = times[times.len() - 1];
    println!(
        "config rename -> new route playable over {rounds} reloads: p50 {:.0} ms, max {:.0} ms; target <= 250 ms: {}",
        p50.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        if max <= TARGET { "ok" } else { "MISSED" }
    );
}

fn describe_ok(server: &BenchServer, route: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(server.rtsp) else {
        return false;
    };
    let request = format!(
        "DESCRIBE rtsp://{}/{route} RTSP/1.0\r\nCSeq: 1\r\n\r\n",
        server.rtsp
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut reply = [0u8; 12];
    stream.read_exact(&mut reply).is_ok() && reply.starts_with(b"RTSP/1.0 200")
}
