//! Operations: /metrics parses as Prometheus text and moves with traffic; the API lists routes and
//! sessions and kicks a session.

mod common;

use std::time::Duration;

use common::{Server, file_route, http, play, push_route, short_clip, wait_live};
use futures::StreamExt;
use retina::client::{TcpTransportOptions, Transport};

/// Every sample line of a Prometheus text exposition, as (name with labels, value).
fn samples(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|line| {
            let (name, value) = line.rsplit_once(' ').expect("name and value");
            let metric = name.split('{').next().unwrap();
            assert!(
                metric
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "bad metric name in {line}"
            );
            assert!(
                !name.contains('{') || name.ends_with('}'),
                "bad labels in {line}"
            );
            (name.to_owned(), value.parse().expect("numeric value"))
        })
        .collect()
}

fn sample(samples: &[(String, f64)], name: &str) -> f64 {
    samples
        .iter()
        .find(|(n, _)| n == name)
        .map_or_else(|| panic!("no {name}"), |(_, v)| *v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_routes_and_sessions_follow_traffic_and_a_kick_ends_a_session() {
    let routes = format!(
        "{}{}",
        file_route("clip", &short_clip()),
        push_route("feed", "feed")
    );
    let server = Server::start(&routes);
    wait_live(&server, "clip").await;
    let mut playing = play(
        &server.url("clip"),
        Transport::Tcp(TcpTransportOptions::default()),
        true,
    )
    .await;
    let reader = tokio::spawn(async move {
        let mut frames = 0;
        while let Ok(Some(Ok(_))) =
            tokio::time::timeout(Duration::from_secs(10), playing.next()).await
        {
            frames += 1;
        }
        frames
    });
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (status, first) = http(&server, "GET", "/metrics").await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, second) = http(&server, "GET", "/metrics").await;
    let (first, second) = (samples(&first), samples(&second));
    assert_eq!(sample(&second, "wasmcast_readers{route=\"clip\"}"), 1.0);
    assert_eq!(sample(&second, "wasmcast_source_live{route=\"feed\"}"), 0.0);
    assert_eq!(
        sample(&second, "wasmcast_sessions{kind=\"rtsp-reader\"}"),
        1.0
    );
    let bytes_out = "wasmcast_bytes_out_total{route=\"clip\"}";
    assert!(
        sample(&second, bytes_out) > sample(&first, bytes_out),
        "bytes out move with traffic"
    );

    let (status, routes) = http(&server, "GET", "/api/v1/routes").await;
    assert_eq!(status, 200);
    let routes: serde_json::Value = serde_json::from_str(&routes).expect("JSON");
    let clip = routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "clip")
        .expect("clip");
    assert_eq!(clip["source"], "live");
    assert_eq!(clip["codecs"], serde_json::json!(["H264", "AAC"]));
    let feed = routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "feed")
        .expect("feed");
    assert_eq!(feed["source"], "waiting");

    let (_, sessions) = http(&server, "GET", "/api/v1/sessions").await;
    let sessions: serde_json::Value = serde_json::from_str(&sessions).expect("JSON");
    let session = &sessions.as_array().unwrap()[0];
    assert_eq!(session["kind"], "rtsp-reader");
    assert_eq!(session["route"], "clip");
    let id = session["id"].as_str().unwrap().to_owned();

    assert_eq!(
        http(&server, "DELETE", "/api/v1/sessions/nope").await.0,
        404
    );
    assert_eq!(
        http(&server, "DELETE", &format!("/api/v1/sessions/{id}"))
            .await
            .0,
        200
    );
    let frames = tokio::time::timeout(Duration::from_secs(3), reader)
        .await
        .expect("the kicked reader's session ended")
        .expect("reader");
    assert!(frames > 20, "{frames} frames before the kick");
    // The client may see its connection end a moment before the server has cleaned up after it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let (_, sessions) = http(&server, "GET", "/api/v1/sessions").await;
        if sessions.trim() == "[]" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the kicked session is gone: {sessions}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (status, page) = http(&server, "GET", "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("<title>wasmcast status</title>"));
    assert!(
        page.contains(&format!("const rtspPort = {};", server.rtsp.port())),
        "the page names the RTSP port"
    );
    assert!(
        page.contains("/api/v1/routes") && !page.contains("http://") && !page.contains("https://"),
        "no external URLs"
    );
}
