//! Credentials: readers and publishers log in with Basic or Digest, as real clients do.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Pusher, Server, exchange, play_as, publish_once, run, short_clip, wait_live};
use futures::StreamExt;
use retina::client::{Credentials, TcpTransportOptions, Transport};

/// alice's password is `secret`, bob's `pw`: the hashes are what `wasmcast hash-password` prints.
const USERS: &str = "[users.alice]\npassword = \"md5:c206c90659c395ee90e28f0a59a5095b\"\n\
                     [users.bob]\npassword = \"md5:bda3639a90eb5c10040253f561af04e9\"\n";

fn start() -> Server {
    let routes = format!(
        "{USERS}[routes.cam]\nsource = \"file:{}\"\nread = [\"alice\"]\n\
         [routes.feed]\nsource = \"push\"\npublish = [\"bob\"]\n",
        short_clip().display()
    );
    let server = Server::start(&routes);
    assert!(server.wait_for_log("file source playing", Duration::from_secs(5)));
    server
}

#[test]
fn hash_password_prints_the_stored_form() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_wasmcast"))
        .args(["hash-password", "alice"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("hash-password");
    writeln!(child.stdin.take().expect("stdin"), "secret").expect("password");
    let out = child.wait_with_output().expect("output");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "md5:c206c90659c395ee90e28f0a59a5095b"
    );
}

fn ffprobe(url: &str) -> (bool, String) {
    let (ok, out, err) = run(
        Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-show_entries",
                "stream=codec_name",
                "-of",
                "csv",
            ])
            .arg(url),
        Duration::from_secs(20),
    );
    (ok, format!("{out}{err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_log_in_with_digest_or_basic_and_wrong_credentials_are_refused() {
    let server = start();
    let with = |user: &str| format!("rtsp://{user}@{}/cam", server.rtsp);
    let (ok, out) = ffprobe(&with("alice:secret"));
    assert!(ok && out.contains("h264"), "ffmpeg logs in (Digest): {out}");
    let (ok, out) = ffprobe(&with("alice:wrong"));
    assert!(
        !ok && out.contains("401"),
        "a wrong password is refused: {out}"
    );
    let (ok, out) = ffprobe(&server.url("cam"));
    assert!(
        !ok && out.contains("401"),
        "no credentials, no stream: {out}"
    );

    let describe = format!("DESCRIBE {} RTSP/1.0\r\nCSeq: 1\r\n\r\n", server.url("cam"));
    let challenge = exchange(server.rtsp, describe.as_bytes(), Duration::from_millis(300)).await;
    assert!(
        challenge.contains("WWW-Authenticate: Digest realm=\"wasmcast\""),
        "{challenge}"
    );
    let basic = format!(
        "DESCRIBE {} RTSP/1.0\r\nCSeq: 1\r\nAuthorization: Basic YWxpY2U6c2VjcmV0\r\n\r\n",
        server.url("cam")
    );
    let accepted = exchange(server.rtsp, basic.as_bytes(), Duration::from_millis(300)).await;
    assert!(
        accepted.starts_with("RTSP/1.0 200"),
        "Basic sent unasked is accepted: {accepted}"
    );

    let (_, out, err) = run(
        Command::new("gst-launch-1.0")
            .arg("rtspsrc")
            .arg(format!("location={}", server.url("cam")))
            .args([
                "user-id=alice",
                "user-pw=secret",
                "latency=0",
                "protocols=tcp",
            ])
            .args(["!", "rtph264depay", "!", "h264parse", "!", "avdec_h264"])
            .args(["!", "identity", "eos-after=25", "!", "fakesink"]),
        Duration::from_secs(20),
    );
    // The EOS after 25 decoded frames is the proof, not the exit status (see the players test:
    // GStreamer 1.22's rtspsrc can fail its own PAUSE while gst-launch shuts down after EOS).
    assert!(
        out.contains("Got EOS from element"),
        "GStreamer logs in and decodes: {out}\n{err}"
    );

    let credentials = Credentials {
        username: "alice".into(),
        password: "secret".into(),
    };
    let tcp = Transport::Tcp(TcpTransportOptions::default());
    let mut playing = play_as(&server.url("cam"), tcp, false, Some(credentials)).await;
    let mut items = 0;
    while items < 25 {
        match tokio::time::timeout(Duration::from_secs(5), playing.next()).await {
            Ok(Some(Ok(_))) => items += 1,
            other => panic!("retina stopped receiving: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_need_their_credentials_over_rtsp_and_http() {
    let server = start();
    let (ok, err) = publish_once(&server.url("feed"));
    assert!(
        !ok && err.contains("401"),
        "publishing without credentials is refused: {err}"
    );

    let rtsp = Pusher::rtsp(
        &short_clip(),
        &format!("rtsp://bob:pw@{}/feed", server.rtsp),
        "tcp",
    );
    wait_live(&server, "feed").await;
    drop(rtsp);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let push = "POST /feed HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx";
    let refused = exchange(server.http, push.as_bytes(), Duration::from_secs(5)).await;
    assert!(
        refused.starts_with("HTTP/1.1 401") && refused.contains("Basic realm"),
        "{refused}"
    );
    let _http = Pusher::start(
        &short_clip(),
        &format!("http://bob:pw@{}/feed", server.http),
        "-c copy -auth_type basic",
    );
    wait_live(&server, "feed").await;
}

async fn get(server: &Server, path: &str, authorization: Option<&str>) -> String {
    let header = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\n{header}Connection: close\r\n\r\n");
    exchange(server.http, request.as_bytes(), Duration::from_secs(5)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_and_whep_take_admin_passwords_and_bearer_tokens() {
    let (token, stored) = common::new_token("ci");
    let server = Server::start_adding(
        "admins = [\"alice\", \"ci\"]\n",
        &format!(
            "{USERS}{stored}\n[routes.cam]\nsource = \"file:{}\"\nread = [\"alice\", \"ci\"]\n",
            short_clip().display()
        ),
    );
    assert!(server.wait_for_log("file source playing", Duration::from_secs(5)));
    let status = |reply: &str| reply.lines().next().unwrap_or_default().to_owned();

    let refused = get(&server, "/api/v1/routes", None).await;
    assert!(status(&refused).contains("401"), "{refused}");
    assert!(
        refused
            .to_ascii_lowercase()
            .contains("www-authenticate: basic realm=\"wasmcast\", bearer"),
        "{refused}"
    );
    let basic = format!("Basic {}", base64_encode("alice:secret"));
    assert!(status(&get(&server, "/api/v1/routes", Some(&basic)).await).contains("200"));
    let bearer = format!("Bearer {token}");
    let reply = get(&server, "/api/v1/routes", Some(&bearer)).await;
    assert!(
        status(&reply).contains("200") && reply.contains("\"cam\""),
        "{reply}"
    );
    let not_admin = format!("Basic {}", base64_encode("bob:pw"));
    assert!(status(&get(&server, "/api/v1/routes", Some(&not_admin)).await).contains("401"));
    assert!(status(&get(&server, "/api/v1/routes", Some("Bearer wrong")).await).contains("401"));

    // WHEP: the route's readers, by token; the offer is then checked (and this one is no SDP).
    let whep = |authorization: Option<&str>| {
        let header = authorization
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        format!(
            "POST /cam/whep HTTP/1.1\r\nHost: t\r\n{header}Content-Type: application/sdp\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
        )
    };
    let reply = exchange(server.http, whep(None).as_bytes(), Duration::from_secs(5)).await;
    assert!(status(&reply).contains("401"), "{reply}");
    let reply = exchange(
        server.http,
        whep(Some(&bearer)).as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(
        status(&reply).contains("400"),
        "past the credentials: {reply}"
    );
}

fn base64_encode(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}
