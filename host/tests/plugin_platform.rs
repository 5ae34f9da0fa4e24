//! What plugins get from the platform beyond their verdicts: state that outlives instances,
//! events (read by curl from `/api/v1/events`, by a webhook receiver and by the status page in
//! Chromium), metrics, and plugins built against an earlier 0.1 interface.

#[path = "common/browser.rs"]
#[allow(
    dead_code,
    reason = "the browser helpers are shared with the WebRTC tests, which use all of them"
)]
mod browser;
mod common;
#[path = "common/componentize.rs"]
mod componentize;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{
    Server, TempDir, clip, ffprobe_streams, file_route, http, plugin_wasm, sample_clip, wait_live,
};

/// The API's entry for `plugin` on `route` (null when there is none).
async fn plugin_entry(server: &Server, route: &str, plugin: &str) -> serde_json::Value {
    let (status, body) = http(server, "GET", "/api/v1/routes").await;
    assert_eq!(status, 200, "{body}");
    let routes: serde_json::Value = serde_json::from_str(&body).expect("routes JSON");
    routes
        .as_array()
        .and_then(|routes| routes.iter().find(|r| r["name"] == route))
        .and_then(|r| r["plugins"].as_array())
        .and_then(|plugins| plugins.iter().find(|p| p["name"] == plugin))
        .cloned()
        // Not there (yet): a reload that adds it has not been applied.
        .unwrap_or_default()
}

/// Polls the API until `ready` holds for `plugin` on `route`, for up to `within`; returns its
/// entry.
async fn wait_until(
    server: &Server,
    (route, plugin): (&str, &str),
    within: Duration,
    what: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let entry = plugin_entry(server, route, plugin).await;
        if ready(&entry) {
            return entry;
        }
        assert!(
            Instant::now() < deadline,
            "{route}/{plugin}: {what}: {entry}\n{:#?}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// [`wait_until`] for `plugin` on the route `counted`, for up to 30 s.
async fn wait_for(
    server: &Server,
    plugin: &str,
    what: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_until(
        server,
        ("counted", plugin),
        Duration::from_secs(30),
        what,
        ready,
    )
    .await
}

fn metric(entry: &serde_json::Value, name: &str) -> f64 {
    entry["metrics"][name].as_f64().unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_keeps_counting_across_a_rebuild_a_config_edit_and_traps_beside_an_untouched_neighbour()
 {
    let dir = TempDir::new();
    let (a, b) = (dir.path().join("a.wasm"), dir.path().join("b.wasm"));
    let counter = std::fs::read(plugin_wasm("counter")).expect("counter plugin");
    std::fs::write(&a, &counter).expect("write a");
    std::fs::write(&b, &counter).expect("write b");
    let routes = |a_config: &str| {
        format!(
            "{}plugins = [\"a\", \"b\"]\n\
             [plugins.a]\nwasm = \"{}\"\nsnapshot_every_s = 1\nconfig = {{ {a_config} }}\n\
             [plugins.b]\nwasm = \"{}\"\n",
            file_route("counted", &sample_clip()),
            a.display(),
            b.display()
        )
    };
    let server = Server::start(&routes("label = \"one\""));
    wait_live(&server, "counted").await;
    let first = wait_for(&server, "a", "counts 100 units", |e| {
        metric(e, "count") >= 100.0
    })
    .await;
    let neighbour = plugin_entry(&server, "counted", "b").await;
    let neighbour_instance = metric(&neighbour, "instance");

    // A new build of a.wasm (the same code with a custom section appended: other bytes).
    let before = metric(&plugin_entry(&server, "counted", "a").await, "count");
    let mut rebuilt = counter.clone();
    rebuilt.extend_from_slice(&[0, 7, 6, b'r', b'e', b'b', b'u', b'i', b'l']);
    std::fs::write(dir.path().join("a.wasm.new"), &rebuilt).expect("write build");
    std::fs::rename(dir.path().join("a.wasm.new"), &a).expect("replace a.wasm");
    let swapped = wait_for(&server, "a", "restored after the rebuild", |e| {
        e["restores"].as_u64() >= Some(1)
    })
    .await;
    assert_ne!(
        metric(&swapped, "instance"),
        metric(&first, "instance"),
        "the rebuild made a new instance: {swapped}"
    );
    assert!(
        metric(&swapped, "count") >= before,
        "the new build went on from {before}: {swapped}"
    );

    // Its config edited.
    let before = metric(&plugin_entry(&server, "counted", "a").await, "count");
    server.write_routes(&routes("label = \"two\""), true);
    let edited = wait_for(&server, "a", "restored after the config edit", |e| {
        e["restores"].as_u64() >= Some(2)
    })
    .await;
    assert!(
        metric(&edited, "count") >= before,
        "the edited plugin went on from {before}: {edited}"
    );

    // Each instance now traps after 150 units of its own; the next starts from the last
    // snapshot (taken every second), so the count goes on past any one instance's 150.
    let before = metric(&plugin_entry(&server, "counted", "a").await, "count");
    server.write_routes(&routes("label = \"two\", trap_after = 150"), true);
    let trapped = wait_for(&server, "a", "traps twice and counts on", |e| {
        e["errors"].as_u64() >= Some(2) && metric(e, "count") > before + 200.0
    })
    .await;
    // The rebuild, the two edits, and at least the instance after the first trap (the one after
    // the latest trap starts with the next unit).
    assert!(
        trapped["restores"].as_u64() >= Some(4),
        "each instance after a trap started from the saved state: {trapped}"
    );

    let neighbour = plugin_entry(&server, "counted", "b").await;
    assert_eq!(
        metric(&neighbour, "instance"),
        neighbour_instance,
        "b did not change, so it kept its instance through every swap of a: {neighbour}"
    );
    assert_eq!(neighbour["restores"], 0, "{neighbour}");
    assert_eq!(neighbour["errors"], 0, "{neighbour}");
    assert!(
        metric(&neighbour, "count") > metric(&trapped, "count"),
        "b counted every unit without a break: {neighbour} vs {trapped}"
    );
}

/// With `[server] state_dir`, plugin state outlives the server: a counter goes on counting after
/// the server is killed (no chance to save anything at exit) and started again; a state file of
/// garbage is refused by the plugin, which starts afresh while the route plays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counters_state_outlives_a_killed_server_and_a_garbage_state_file_is_refused() {
    let dir = TempDir::new();
    let state = dir.path().join("state");
    let keys = format!("state_dir = \"{}\"\n", state.display());
    let routes = format!(
        "{}plugins = [\"a\"]\n[plugins.a]\nwasm = \"{}\"\nsnapshot_every_s = 1\n",
        file_route("counted", &sample_clip()),
        plugin_wasm("counter").display()
    );
    let file = state.join("counted").join("a.state");
    let saved_count = || -> u64 {
        std::fs::read(&file)
            .ok()
            .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
            .map_or(0, u64::from_le_bytes)
    };

    let first = Server::start_adding(&keys, &routes);
    wait_live(&first, "counted").await;
    wait_for(&first, "a", "counts 200 units", |e| {
        metric(e, "count") >= 200.0
    })
    .await;
    // A snapshot a second, written by the store's own thread.
    let deadline = Instant::now() + Duration::from_secs(10);
    while saved_count() < 200 {
        assert!(
            Instant::now() < deadline,
            "{} holds no count of 200 or more: {}",
            file.display(),
            saved_count()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let on_disk = saved_count();
    drop(first);

    let second = Server::start_adding(&keys, &routes);
    wait_live(&second, "counted").await;
    let resumed = wait_for(&second, "a", "starts from the state on disk", |e| {
        e["restores"].as_u64() >= Some(1)
    })
    .await;
    assert!(
        metric(&resumed, "count") >= on_disk as f64,
        "the restarted server's counter went on from {on_disk}: {resumed}"
    );
    drop(second);

    std::fs::write(&file, b"garbage").expect("spoil the state");
    let third = Server::start_adding(&keys, &routes);
    wait_live(&third, "counted").await;
    let fresh = wait_for(&third, "a", "counts afresh", |e| metric(e, "count") >= 1.0).await;
    assert_eq!(fresh["restores"], 0, "{fresh}");
    assert!(
        third
            .log()
            .iter()
            .any(|l| l.contains("refused its saved state") && l.contains("7 bytes")),
        "the refusal is logged with the plugin's reason: {:#?}",
        third.log()
    );
}

/// A state file the plugin traps on (its `restore` panics) costs one fault: the state is let go,
/// the next instance starts afresh and the plugin runs on, rather than failing at every start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_the_plugin_traps_on_is_let_go_and_the_plugin_runs_on() {
    let dir = TempDir::new();
    let state = dir.path().join("state");
    std::fs::create_dir_all(state.join("counted")).expect("state dir");
    std::fs::write(state.join("counted").join("h.state"), b"poison").expect("state file");
    let server = Server::start_adding(
        &format!("state_dir = \"{}\"\n", state.display()),
        &format!(
            "{}plugins = [\"h\"]\n[plugins.h]\nwasm = \"{}\"\nconfig = {{ attack = \"restore-trap\" }}\n",
            file_route("counted", &sample_clip()),
            plugin_wasm("hostile").display()
        ),
    );
    wait_live(&server, "counted").await;
    let running = wait_for(&server, "h", "runs after one fault", |e| {
        e["calls"].as_u64() >= Some(100)
    })
    .await;
    assert_eq!(
        running["errors"], 1,
        "one fault, at the first start: {running}"
    );
    assert!(
        server
            .log()
            .iter()
            .any(|l| l.contains("cannot make sense of a state of 6 bytes")),
        "the panic is logged: {:#?}",
        server.log()
    );
}

/// Eight seconds of a grey picture in which a white square crosses from 3 s to 5 s.
fn motion_clip() -> PathBuf {
    clip(
        "motion-square.mp4",
        "-f lavfi -i color=c=gray:s=320x240:r=25:d=8 \
         -f lavfi -i color=c=white:s=48x48:r=25:d=8 \
         -filter_complex [0][1]overlay=x='if(between(t,3,5),(t-3)*120,-100)':y=96 \
         -c:v libx264 -profile:v baseline -g 25 -pix_fmt yuv420p",
    )
}

/// A webhook receiver: answers 200 to every POST and hands over its body.
fn webhook_receiver() -> (u16, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
    let port = listener.local_addr().expect("address").port();
    let (bodies, received) = mpsc::channel();
    std::thread::spawn(move || {
        for connection in listener.incoming() {
            let Ok(mut connection) = connection else {
                continue;
            };
            let mut reader = BufReader::new(connection.try_clone().expect("clone"));
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let _ = connection.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
            if bodies
                .send(String::from_utf8_lossy(&body).into_owned())
                .is_err()
            {
                return;
            }
        }
    });
    (port, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_motion_plugin_reports_motion_to_curl_a_webhook_and_metrics_while_ffprobe_reads_on() {
    let (hook_port, hooked) = webhook_receiver();
    let server = Server::start(&format!(
        "{}plugins = [\"motion\"]\n\
         [plugins.motion]\nwasm = \"builtin:motion\"\nwebhook = \"http://127.0.0.1:{hook_port}/motion\"\n\
         config = {{ sensitivity = 60, draw = true }}\n",
        file_route("yard", &motion_clip())
    ));
    // curl follows the event stream from before the route goes live.
    let curl = Command::new("curl")
        .args(["-sN", "--max-time", "16"])
        .arg(format!(
            "http://{}/api/v1/events?route=yard&plugin=motion",
            server.http
        ))
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl is installed");
    wait_live(&server, "yard").await;
    let streams = ffprobe_streams(&server.url("yard"));
    assert!(streams.contains("h264"), "{streams}");
    let output = tokio::task::spawn_blocking(move || curl.wait_with_output())
        .await
        .expect("join")
        .expect("curl output");
    let stream = String::from_utf8_lossy(&output.stdout);
    let events: Vec<serde_json::Value> = stream
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(|data| serde_json::from_str(data).expect("event JSON"))
        .collect();
    let start = events
        .iter()
        .find(|e| e["name"] == "motion-start")
        .unwrap_or_else(|| panic!("motion-start in the stream: {stream}"));
    assert_eq!(start["route"], "yard");
    assert_eq!(start["plugin"], "motion");
    let bounds = start["payload"]["box"].as_array().expect("a box");
    assert!(
        bounds[1].as_u64().is_some_and(|y| (64..=112).contains(&y)),
        "the box is where the square moves (y 96): {start}"
    );
    assert!(
        events.iter().any(
            |e| e["name"] == "motion-end" && e["payload"]["duration_ms"].as_u64() >= Some(1000)
        ),
        "motion-end after the square's two seconds: {stream}"
    );
    assert!(
        !events.iter().any(|e| e["route"] != "yard"),
        "the filter holds"
    );

    let hooked: Vec<serde_json::Value> = hooked
        .try_iter()
        .map(|body| serde_json::from_str(&body).expect("webhook JSON"))
        .collect();
    assert!(
        hooked
            .iter()
            .any(|e| e["name"] == "motion-start" && e["route"] == "yard"),
        "the webhook got motion-start: {hooked:?}"
    );
    let (_, metrics) = http(&server, "GET", "/metrics").await;
    assert!(
        metrics.lines().any(|l| l.starts_with(
            "wasmcast_plugin_metric{route=\"yard\",plugin=\"motion\",name=\"motions\"}"
        ) && !l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(|l| l
            .starts_with("wasmcast_webhook_events_total{outcome=\"delivered\"}")
            && !l.ends_with(" 0")),
        "{metrics}"
    );

    // A browser coming back with Last-Event-ID 0 (as `after=0`) gets the kept events first.
    let (status, replay) = tokio::time::timeout(
        Duration::from_secs(10),
        common::exchange(
            server.http,
            b"GET /api/v1/events?after=0&name=motion-start HTTP/1.1\r\nHost: t\r\n\r\n",
            Duration::from_secs(1),
        ),
    )
    .await
    .map(|reply| (reply.get(9..12).map(str::to_owned), reply))
    .expect("replay");
    assert_eq!(status.as_deref(), Some("200"), "{replay}");
    assert!(
        replay.contains("text/event-stream") && replay.contains("motion-start"),
        "{replay}"
    );
    assert!(
        !replay.contains("motion-end"),
        "the name filter holds: {replay}"
    );

    // The status page lists them too, from its own event stream.
    let mut chromium = browser::Browser::launch().await;
    let page = chromium.open(&format!("http://{}/", server.http)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = chromium
            .eval(
                &page,
                "JSON.stringify([...document.querySelectorAll('#events tr')].map(tr => tr.textContent))",
            )
            .await;
        let rows = rows.as_str().unwrap_or("[]").to_owned();
        if rows.contains("yardmotionmotion-start") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the status page lists the motion events: {rows}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_events_metrics_and_a_huge_snapshot_is_held_to_its_limits() {
    let server = Server::start(&format!(
        "{}plugins = [\"flood\"]\n\
         [plugins.flood]\nwasm = \"{}\"\nsnapshot_every_s = 1\ntime_limit_ms = 2000\nconfig = {{ attack = \"event-flood\" }}\n",
        file_route("flooded", &sample_clip()),
        plugin_wasm("hostile").display()
    ));
    wait_live(&server, "flooded").await;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let entry = {
        let (_, body) = http(&server, "GET", "/api/v1/routes").await;
        let routes: serde_json::Value = serde_json::from_str(&body).expect("routes JSON");
        routes[0]["plugins"][0].clone()
    };
    let seconds = started.elapsed().as_secs_f64() + 3.0;
    let sent = entry["events"].as_u64().unwrap_or(0);
    assert!(
        sent > 0 && (sent as f64) <= 20.0 * (seconds + 1.0),
        "at most 20 events a second for the plugin on its route, restarts included: {entry}"
    );
    assert!(
        entry["events_refused"].as_u64().unwrap_or(0) > 1000,
        "the rest were counted: {entry}"
    );
    assert!(
        entry["metrics"].as_object().is_some_and(|m| m.len() <= 32),
        "at most 32 metric names: {entry}"
    );
    assert!(
        entry["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("snapshot of 33554432 bytes; at most 16777216")),
        "the 32 MiB snapshot is refused: {entry}"
    );
    assert_eq!(entry["snapshots"], 0, "{entry}");
    let (_, metrics) = http(&server, "GET", "/metrics").await;
    assert!(
        metrics
            .lines()
            .filter(|l| l.starts_with("wasmcast_plugin_metric{"))
            .count()
            <= 32,
        "{metrics}"
    );
    let streams = ffprobe_streams(&server.url("flooded"));
    assert!(streams.contains("h264"), "the route plays on: {streams}");
}

/// A server whose route `flooded` runs the hostile plugin's event flood, with `port` on loopback
/// as the plugin's webhook.
fn flooding_events_to(port: u16) -> Server {
    Server::start(&format!(
        "{}plugins = [\"flood\"]\n\
         [plugins.flood]\nwasm = \"{}\"\ntime_limit_ms = 2000\nwebhook = \"http://127.0.0.1:{port}/hook\"\n\
         config = {{ attack = \"event-flood\" }}\n",
        file_route("flooded", &sample_clip()),
        plugin_wasm("hostile").display()
    ))
}

/// The webhook events `/metrics` counts with `outcome`.
fn webhook_events(metrics: &str, outcome: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!(
                "wasmcast_webhook_events_total{{outcome=\"{outcome}\"}} "
            ))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A webhook receiver that takes connections and never answers; counts them.
fn silent_receiver() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
    let port = listener.local_addr().expect("address").port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&accepted);
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for connection in listener.incoming().flatten() {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            held.push(connection);
        }
    });
    (port, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_never_answers_costs_its_own_queue_and_nothing_else() {
    let (port, accepted) = silent_receiver();
    let server = flooding_events_to(port);
    wait_live(&server, "flooded").await;
    let (mut stream, head) = open_event_stream(&server).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // 20 events a second into a queue of 256 that moves one try of 5 s at a time: full in some
    // 13 s, and the first event has had its three tries after 15 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let (_, metrics) = http(&server, "GET", "/metrics").await;
        if webhook_events(&metrics, "failed") >= 1 && webhook_events(&metrics, "dropped") >= 1 {
            break metrics;
        }
        assert!(
            Instant::now() < deadline,
            "the silent webhook's events failed and overflowed its queue: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(webhook_events(&metrics, "delivered"), 0, "{metrics}");
    // One try at a time: a connection per try, not one per event.
    let connections = accepted.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        (1..=8).contains(&connections),
        "{connections} connections to the silent receiver"
    );
    // Everything else goes on: the event stream, the route.
    use tokio::io::AsyncReadExt;
    let mut events = vec![0; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut events))
        .await
        .expect("the event stream goes on")
        .expect("read");
    assert!(
        String::from_utf8_lossy(&events[..read]).contains("data:"),
        "{}",
        String::from_utf8_lossy(&events[..read])
    );
    let streams = ffprobe_streams(&server.url("flooded"));
    assert!(streams.contains("h264"), "the route plays on: {streams}");
}

/// A webhook receiver that answers 200 to each POST with a chunked body of 256 MiB, sent as fast as
/// it goes, that never ends.
fn flooding_receiver() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for mut connection in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut request = [0u8; 4096];
                let _ = connection.read(&mut request);
                let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
                if connection.write_all(head).is_err() {
                    return;
                }
                let chunk = [b'x'; 1 << 16];
                let mut flood = Vec::with_capacity(chunk.len() + 16);
                for _ in 0..(256 << 20) / chunk.len() {
                    flood.clear();
                    flood.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    flood.extend_from_slice(&chunk);
                    flood.extend_from_slice(b"\r\n");
                    if connection.write_all(&flood).is_err() {
                        return;
                    }
                }
                // No last chunk: the body never ends.
                std::thread::sleep(Duration::from_secs(60));
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_answers_with_a_body_without_end_costs_nothing() {
    let port = flooding_receiver();
    let server = flooding_events_to(port);
    wait_live(&server, "flooded").await;
    let before = common::resident_kib(server.pid());
    // The answer's status is all a delivery needs: its body is not read.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut peak = before;
    loop {
        let (_, metrics) = http(&server, "GET", "/metrics").await;
        peak = peak.max(common::resident_kib(server.pid()));
        if webhook_events(&metrics, "delivered") >= 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "events to a receiver whose answers never end are delivered: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        peak < before + 64 * 1024,
        "the server's memory grew from {before} KiB to {peak} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_against_the_0_1_0_interface_runs_on_this_host() {
    let server = Server::start(&format!(
        "{}plugins = [\"old\"]\n[plugins.old]\nwasm = \"{}\"\n",
        file_route("old", &sample_clip()),
        plugin_wasm("world-0-1-0").display()
    ));
    wait_live(&server, "old").await;
    let entry = wait_until(
        &server,
        ("old", "old"),
        Duration::from_secs(10),
        "the 0.1.0 plugin runs",
        |e| e["dropped"].as_u64() > Some(50) && e["calls"].as_u64() > Some(100),
    )
    .await;
    assert_eq!(entry["errors"], 0, "{entry}");
    assert!(
        server
            .log()
            .iter()
            .any(|l| l.contains("a plugin of wasmcast:plugin@0.1.0 runs")),
        "{:#?}",
        server.log()
    );
}

/// Opens an event stream and returns its connection once the answer's head has come.
async fn open_event_stream(server: &Server) -> (tokio::net::TcpStream, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(server.http)
        .await
        .expect("connect");
    socket
        .write_all(b"GET /api/v1/events HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("request");
    let mut head = vec![0; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut head))
        .await
        .expect("an answer")
        .expect("read");
    (socket, String::from_utf8_lossy(&head[..n]).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_are_capped_and_a_closed_one_frees_its_place() {
    let server = Server::start(&file_route("quiet", &sample_clip()));
    let mut open = Vec::new();
    for _ in 0..64 {
        let (socket, head) = open_event_stream(&server).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        open.push(socket);
    }
    let (_, head) = open_event_stream(&server).await;
    assert!(
        head.starts_with("HTTP/1.1 503") && head.contains("64 event streams are open"),
        "{head}"
    );
    let (_, metrics) = http(&server, "GET", "/metrics").await;
    assert!(metrics.contains("wasmcast_event_streams 64"), "{metrics}");
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, head) = open_event_stream(&server).await;
        if head.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "a place came free: {head}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_a_plugin_marks_falsely_as_keyframes_or_sends_back_in_time_are_refused() {
    let hostile = |name: &str, attack: &str| {
        format!(
            "{}plugins = [\"{name}\"]\n[plugins.{name}]\nwasm = \"{}\"\nconfig = {{ attack = \"{attack}\" }}\n",
            file_route(name, &sample_clip()),
            plugin_wasm("hostile").display()
        )
    };
    let server = Server::start(&format!(
        "{}{}",
        hostile("liar", "false-keyframes"),
        hostile("traveller", "time-travel")
    ));
    for (route, reason) in [
        ("liar", "marked keyframe that holds no IDR"),
        ("traveller", "decode times only grow"),
    ] {
        wait_live(&server, route).await;
        wait_until(
            &server,
            (route, route),
            Duration::from_secs(10),
            reason,
            |e| e["last_error"].as_str().is_some_and(|e| e.contains(reason)),
        )
        .await;
        // The refused units were bypassed as they came in: new readers start at true keyframes.
        let streams = ffprobe_streams(&server.url(route));
        assert!(streams.contains("h264"), "{route}: {streams}");
    }
}

/// The mean saturation ffmpeg's signalstats measures over two seconds of `url`.
fn mean_saturation(url: &str) -> f64 {
    let (ok, out, err) = common::run(
        Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-rtsp_transport",
                "tcp",
                "-i",
                url,
                "-t",
                "2",
            ])
            .args([
                "-vf",
                "signalstats,metadata=print:key=lavfi.signalstats.SATAVG",
            ])
            .args(["-f", "null", "-"]),
        Duration::from_secs(60),
    );
    assert!(ok, "ffmpeg reads {url}: {err}");
    let values: Vec<f64> = format!("{out}{err}")
        .split("SATAVG=")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(values.len() >= 25, "signalstats of {url}: {err}");
    values.iter().sum::<f64>() / values.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_written_in_python_and_javascript_change_live_routes() {
    let dir = TempDir::new();
    let python = componentize::build_example("python", dir.path());
    let javascript = componentize::build_example("javascript", dir.path());
    let routes = |plugins: bool| {
        let mut text = String::new();
        for (language, wasm) in [("python", &python), ("javascript", &javascript)] {
            text.push_str(&file_route(language, &sample_clip()));
            if plugins {
                text.push_str(&format!(
                    "plugins = [\"{language}\"]\n[plugins.{language}]\nwasm = \"{}\"\n\
                     time_limit_ms = 1000\nmemory_limit_mb = 256\n",
                    wasm.display()
                ));
            }
        }
        text
    };
    // The plugins come with a reload: compiling a component of an interpreter takes seconds (a
    // minute and more on a loaded 2-core machine).
    let server = Server::start(&routes(false));
    let colour = mean_saturation(&server.url("python"));
    assert!(colour > 10.0, "the sample has colour: {colour}");
    server.write_routes(&routes(true), true);
    for language in ["python", "javascript"] {
        let entry = wait_until(
            &server,
            (language, language),
            Duration::from_secs(300),
            "the plugin runs",
            |e| e["metrics"]["pictures"].as_f64() > Some(50.0),
        )
        .await;
        assert_eq!(entry["errors"], 0, "{language}: {entry}");
        let saturation = mean_saturation(&server.url(language));
        assert!(
            saturation < 1.0,
            "{language}: the plugin took the colour out: mean saturation {saturation}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_written_in_c_changes_a_live_route() {
    let dir = TempDir::new();
    let c = componentize::build_example("c", dir.path());
    let server = Server::start(&format!(
        "{}plugins = [\"c\"]\n[plugins.c]\nwasm = \"{}\"\n",
        file_route("grey", &sample_clip()),
        c.display()
    ));
    let entry = wait_until(
        &server,
        ("grey", "c"),
        Duration::from_secs(30),
        "the plugin runs",
        |e| e["metrics"]["pictures"].as_f64() > Some(50.0),
    )
    .await;
    assert_eq!(entry["errors"], 0, "{entry}");
    let saturation = mean_saturation(&server.url("grey"));
    assert!(
        saturation < 1.0,
        "the C plugin took the colour out: mean saturation {saturation}"
    );
    assert!(
        server
            .log()
            .iter()
            .any(|l| l.contains("grayscale in C, on route grey")),
        "its log line: {:#?}",
        server.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_swaps_at_a_keyframe_starts_its_new_version_on_one() {
    let dir = TempDir::new();
    let wasm = dir.path().join("counter.wasm");
    std::fs::copy(plugin_wasm("counter"), &wasm).expect("copy counter");
    let routes = |label: &str| {
        format!(
            "{}plugins = [\"a\"]\n[plugins.a]\nwasm = \"{}\"\nswap = \"keyframe\"\n\
             config = {{ label = \"{label}\" }}\n",
            file_route("counted", &sample_clip()),
            wasm.display()
        )
    };
    let server = Server::start(&routes("one"));
    wait_live(&server, "counted").await;
    wait_for(&server, "a", "counts", |e| metric(e, "count") > 50.0).await;
    // Several edits, at moments that fall anywhere in the sample's two-second GOPs.
    for (round, label) in ["two", "three", "four"].into_iter().enumerate() {
        server.write_routes(&routes(label), true);
        let swapped = wait_for(&server, "a", "swapped", |e| {
            e["restores"].as_u64() >= Some(round as u64 + 1)
        })
        .await;
        // The new instance starts at -1 ("no unit yet"): wait for its first unit.
        let swapped = if metric(&swapped, "first_unit_keyframe") < 0.0 {
            wait_for(&server, "a", "a first unit", |e| {
                metric(e, "first_unit_keyframe") >= 0.0
            })
            .await
        } else {
            swapped
        };
        assert_eq!(
            metric(&swapped, "first_unit_keyframe"),
            1.0,
            "round {round}: the new version's first unit is a video keyframe: {swapped}"
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_reads_the_stream_it_runs_on_and_starts_again_with_its_state_when_it_changes() {
    let routes = format!(
        "{}plugins = [\"a\"]\n[plugins.a]\nwasm = \"{}\"\n",
        common::push_route("cam", "cam.ts"),
        plugin_wasm("counter").display()
    );
    let server = Server::start(&routes);
    let url = format!("http://{}/cam.ts", server.http);
    let small = common::Pusher::start(&common::short_clip(), &url, "-c copy");
    let before = wait_until(
        &server,
        ("cam", "a"),
        Duration::from_secs(30),
        "a 320-pixel stream",
        |e| metric(e, "video_width") == 320.0 && metric(e, "count") > 50.0,
    )
    .await;
    drop(small);
    // The same route, a new publisher with a larger picture.
    let _large = common::Pusher::start(&sample_clip(), &url, "-c copy");
    let after = wait_until(
        &server,
        ("cam", "a"),
        Duration::from_secs(30),
        "the 640-pixel stream",
        |e| metric(e, "video_width") == 640.0,
    )
    .await;
    assert!(
        after["restores"].as_u64() >= Some(1)
            && metric(&after, "count") >= metric(&before, "count"),
        "the instance made for the new stream went on counting: {before} then {after}"
    );
}

/// Picture plugins, whose pictures stay in the server: in one chain, `grayscale-in-place` takes
/// the colour out of a live route (as ffmpeg measures it), `luma-meter` reads a square of what it
/// left and counts keyframes, and a plugin that traps halfway through a picture is restarted while
/// the route plays on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn picture_plugins_change_measure_and_trap_on_live_routes() {
    let server = Server::start(&format!(
        "{}plugins = [\"gray\", \"meter\"]\n\
         [plugins.gray]\nwasm = \"builtin:grayscale-in-place\"\n\
         [plugins.meter]\nwasm = \"builtin:luma-meter\"\n\
         {}plugins = [\"trap\"]\n\
         [plugins.trap]\nwasm = \"{}\"\n",
        file_route("grey", &sample_clip()),
        file_route("trapped", &sample_clip()),
        plugin_wasm("picture-trap").display()
    ));
    let meter = wait_until(
        &server,
        ("grey", "meter"),
        Duration::from_secs(30),
        "the meter measures",
        |e| e["calls"].as_u64() > Some(50) && metric(e, "keyframes") >= 1.0,
    )
    .await;
    let luma = metric(&meter, "luma");
    assert!(
        (16.0..=235.0).contains(&luma) && meter["errors"] == 0,
        "the middle square's mean luma: {meter}"
    );
    let gray = plugin_entry(&server, "grey", "gray").await;
    assert_eq!(gray["errors"], 0, "{gray}");
    let saturation = mean_saturation(&server.url("grey"));
    assert!(
        saturation < 1.0,
        "the plugin took the colour out: mean saturation {saturation}"
    );

    let trap = wait_until(
        &server,
        ("trapped", "trap"),
        Duration::from_secs(30),
        "the plugin traps and is restarted",
        |e| e["restarts"].as_u64() >= Some(2),
    )
    .await;
    assert!(
        metric(&trap, "refused-rectangles") >= 9.0,
        "a rectangle past the edge is an error to the plugin, not a fault: {trap}"
    );
    assert!(
        trap["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("panicked") || e.contains("unreachable")),
        "{trap}"
    );
    let streams = ffprobe_streams(&server.url("trapped"));
    assert!(streams.contains("codec_name=h264"), "{streams}");
}
