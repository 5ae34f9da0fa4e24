//! Hostile clients, each against the real binary: clients that hold sessions without playing,
//! floods of connections, publishers that send endless fragments, impossible clock rates, that
//! hold a route without sending, WHEP bodies that never arrive, strangers at the API, floods of
//! bytes on a control connection (once, and reconnecting to pour again), HTTP requests pipelined
//! without end, pushes far faster than real time, packets poured into a WebRTC peer over ICE-TCP
//! and over UDP.
//!
//! The attackers connect from 127.0.0.2; an honest reader plays from 127.0.0.1 through every
//! attack and must not miss a frame, and the server's memory and open files must stay bounded.

mod common;

#[path = "common/whep.rs"]
#[allow(
    dead_code,
    reason = "the viewer's media counters are the WebRTC tests' concern"
)]
mod whep_client;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::{
    Server, exchange, ffprobe_streams, file_route, play, publish_once, push_route, run,
    sample_clip, short_clip, wait_live,
};
use futures::StreamExt;
use retina::client::{TcpTransportOptions, Transport};
use retina::codec::CodecItem;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// Where attacks come from: another loopback address than the honest reader's.
const ATTACKER: [u8; 4] = [127, 0, 0, 2];

/// A TCP connection to `addr` from [`ATTACKER`].
async fn attacker_connection(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::from(ATTACKER), 0))?;
    socket.connect(addr).await
}

/// The server's resident memory in KiB and its open file descriptors.
fn resources(server: &Server) -> (u64, usize) {
    let rss = common::resident_kib(server.pid());
    let fds = std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
        .map(|d| d.count())
        .unwrap_or(0);
    (rss, fds)
}

/// The value of the metric whose line starts with `name` (labels included) in `/metrics`.
async fn metric(server: &Server, name: &str) -> u64 {
    let metrics = exchange(
        server.http,
        b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
}

/// An honest TCP reader of a 25 fps route, playing from 127.0.0.1 until [`Honest::finish`].
struct Honest {
    task: JoinHandle<(usize, u64)>,
    stop: tokio::sync::watch::Sender<bool>,
    started: Instant,
    /// What the server held once the reader played, after warm-up.
    baseline: (u64, usize),
}

impl Honest {
    async fn start(server: &Server, route: &str) -> Honest {
        wait_live(server, route).await;
        let mut playing = play(
            &server.url(route),
            Transport::Tcp(TcpTransportOptions::default()),
            false,
        )
        .await;
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let (mut frames, mut lost) = (0usize, 0u64);
            loop {
                tokio::select! {
                    item = playing.next() => match item {
                        Some(Ok(CodecItem::VideoFrame(frame))) => {
                            frames += 1;
                            lost += u64::from(frame.loss());
                        }
                        Some(Ok(_)) => {}
                        Some(Err(err)) => panic!("the honest reader failed: {err}"),
                        None => panic!("the honest reader's session ended"),
                    },
                    _ = stopped.changed() => return (frames, lost),
                }
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        Honest {
            task,
            stop,
            started: Instant::now(),
            baseline: resources(server),
        }
    }

    /// Stops reading; checks that the reader got every frame and that the server holds no more
    /// than `extra_rss_mib` more memory and a few more files than at the start.
    async fn finish(self, server: &Server, extra_rss_mib: u64) {
        let seconds = self.started.elapsed().as_secs_f64();
        let _ = self.stop.send(true);
        let (frames, lost) = self.task.await.expect("honest reader");
        assert_eq!(lost, 0, "the honest reader lost packets");
        // 25 fps; the first second of reading was before `started`.
        let expected = (seconds * 25.0) as usize;
        assert!(
            frames + 10 >= expected,
            "the honest reader got {frames} frames in {seconds:.1} s"
        );
        let (rss, fds) = resources(server);
        let (base_rss, base_fds) = self.baseline;
        assert!(
            rss <= base_rss + extra_rss_mib * 1024,
            "server memory grew from {base_rss} to {rss} KiB"
        );
        assert!(
            fds <= base_fds + 8,
            "server has {fds} open files, {base_fds} at the start"
        );
    }
}

/// Reads until the peer closes or `limit` passes; true when it closed.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Sends one RTSP request on `stream` and reads one response (headers and body).
async fn request(stream: &mut TcpStream, text: &str) -> String {
    stream.write_all(text.as_bytes()).await.expect("send");
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&reply).contains("\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => reply.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&reply).into_owned()
}

fn session_of(reply: &str) -> String {
    reply
        .lines()
        .find_map(|l| l.strip_prefix("Session: "))
        .and_then(|s| s.split(';').next())
        .unwrap_or_else(|| panic!("no session in {reply}"))
        .to_owned()
}

/// An ANNOUNCE of one track as ffmpeg announces it (`rtpmap` and `fmtp`: its payload
/// description).
fn announce(url: &str, rtpmap: &str, fmtp: &str) -> String {
    announce_tracks(url, &format!("{rtpmap}{fmtp}a=control:streamid=0\r\n"))
}

/// An ANNOUNCE of the media sections `medias`.
fn announce_tracks(url: &str, medias: &str) -> String {
    let sdp = format!(
        "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=attack\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n{medias}"
    );
    format!(
        "ANNOUNCE {url} RTSP/1.0\r\nCSeq: 1\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

const H264_MEDIA: &str = "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n";
const H264_FMTP: &str = "a=fmtp:96 packetization-mode=1; sprop-parameter-sets=Z0LAHtkDxWhAAAADAEAAAAwDxYuS,aMuMsg==\r\n";

/// `tracks` H.264 media sections, track `i` with control `streamid=i`.
fn h264_tracks(tracks: usize) -> String {
    (0..tracks)
        .map(|i| format!("{H264_MEDIA}{H264_FMTP}a=control:streamid={i}\r\n"))
        .collect()
}

/// ANNOUNCE, SETUP over TCP and RECORD on `url` from the attacker's address.
async fn recording_publisher(server: &Server, url: &str) -> TcpStream {
    recording_publisher_of(server, url, 1).await
}

/// ANNOUNCE of `tracks` H.264 tracks, SETUP of each over TCP (track `i` on channels `2i` and
/// `2i + 1`) and RECORD on `url` from the attacker's address.
async fn recording_publisher_of(server: &Server, url: &str, tracks: usize) -> TcpStream {
    let mut stream = attacker_connection(server.rtsp).await.expect("connect");
    let reply = request(&mut stream, &announce_tracks(url, &h264_tracks(tracks))).await;
    assert!(reply.starts_with("RTSP/1.0 200"), "ANNOUNCE: {reply}");
    let session = session_of(&reply);
    for track in 0..tracks {
        let setup = format!(
            "SETUP {url}/streamid={track} RTSP/1.0\r\nCSeq: {}\r\nSession: {session}\r\nTransport: RTP/AVP/TCP;unicast;interleaved={}-{};mode=record\r\n\r\n",
            track + 2,
            2 * track,
            2 * track + 1
        );
        let reply = request(&mut stream, &setup).await;
        assert!(reply.starts_with("RTSP/1.0 200"), "SETUP: {reply}");
    }
    let record = format!("RECORD {url} RTSP/1.0\r\nCSeq: 1000\r\nSession: {session}\r\n\r\n");
    let reply = request(&mut stream, &record).await;
    assert!(reply.starts_with("RTSP/1.0 200"), "RECORD: {reply}");
    stream
}

/// An FU-A fragment on `channel` that starts at packet `first` and never ends: its first piece
/// and `more` after it, each carrying `piece`.
fn open_fragment(channel: u8, first: u16, more: u16, piece: &[u8]) -> Vec<u8> {
    let mut packets = fu_a(channel, first, true, piece);
    for seq in first + 1..=first + more {
        packets.extend_from_slice(&fu_a(channel, seq, false, piece));
    }
    packets
}

/// An interleaved RTP packet on `channel` carrying an H.264 FU-A piece.
fn fu_a(channel: u8, seq: u16, start: bool, payload: &[u8]) -> Vec<u8> {
    let mut rtp = vec![0x80, 96];
    rtp.extend_from_slice(&seq.to_be_bytes());
    rtp.extend_from_slice(&[0, 0, 0x10, 0, 0, 0, 0, 1]);
    rtp.push(28 | 0x60);
    rtp.push(if start { 0x80 | 5 } else { 5 });
    rtp.extend_from_slice(payload);
    let mut framed = vec![b'$', channel];
    framed.extend_from_slice(&(rtp.len() as u16).to_be_bytes());
    framed.extend_from_slice(&rtp);
    framed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_that_never_play_hold_no_slot_and_are_ended() {
    let server = Server::start_adding("max_clients = 10\n", &file_route("unicast", &sample_clip()));
    let honest = Honest::start(&server, "unicast").await;
    let url = server.url("unicast");
    let mut idle = Vec::new();
    for i in 0..10 {
        let mut stream = attacker_connection(server.rtsp).await.expect("connect");
        let setup = format!(
            "SETUP {url}/trackID=0 RTSP/1.0\r\nCSeq: {i}\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n"
        );
        let reply = request(&mut stream, &setup).await;
        assert!(reply.starts_with("RTSP/1.0 200"), "{reply}");
        idle.push(stream);
    }
    // Ten sessions that only set up leave the nine free slots to readers that play.
    let probes: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            tokio::task::spawn_blocking(move || ffprobe_streams(&url))
        })
        .collect();
    for probe in probes {
        let streams = probe.await.expect("ffprobe reads the route");
        assert!(streams.contains("h264"), "{streams}");
    }
    // Every idle session is ended once it failed to play in time (10 s, checked every 5 s).
    for (i, stream) in idle.iter_mut().enumerate() {
        assert!(
            closed_within(stream, Duration::from_secs(25)).await,
            "idle session {i} is still open"
        );
    }
    assert!(server.wait_for_log("no PLAY in time after SETUP", Duration::from_secs(1)));
    honest.finish(&server, 32).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_connections_from_one_address_is_refused_at_accept() {
    let server = Server::start_adding(
        "max_connections = 64\nmax_connections_per_address = 8\n",
        &file_route("unicast", &sample_clip()),
    );
    let honest = Honest::start(&server, "unicast").await;
    let mut flood = Vec::new();
    for target in [server.rtsp, server.http] {
        for _ in 0..40 {
            if let Ok(stream) = attacker_connection(target).await {
                flood.push(stream);
            }
        }
    }
    let mut refused = 0;
    for stream in &mut flood {
        if closed_within(stream, Duration::from_millis(200)).await {
            refused += 1;
        }
    }
    // 8 connections from the attacker's address stay (RTSP and HTTP together); the rest were
    // closed at accept.
    assert_eq!(refused, flood.len() - 8, "{} connections", flood.len());
    // Everyone else still gets in, on both protocols.
    let streams = ffprobe_streams(&server.url("unicast"));
    assert!(streams.contains("h264"), "{streams}");
    let counted = metric(
        &server,
        "wasmcast_connections_refused_total{cap=\"max_connections_per_address\"}",
    )
    .await;
    assert_eq!(counted, refused as u64, "every refusal is counted");
    drop(flood);
    honest.finish(&server, 32).await;
}

/// Requests pipelined on one connection whose client never reads the answers, on HTTP and on
/// RTSP: the server writes until the connection's buffers are full; then the connection is cut off
/// once its writes have made no progress for 10 s, rather than held until the client reads again
/// (RTSP's egress had a deadline per write, but its last flush waited without one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_its_answers_is_cut_off() {
    let server = Server::start(&file_route("unicast", &sample_clip()));
    let honest = Honest::start(&server, "unicast").await;
    let before = metric(&server, "wasmcast_connections_open").await;
    let http = "GET / HTTP/1.1\r\nHost: t\r\n\r\n".repeat(2000);
    let rtsp = (0..40_000)
        .map(|cseq| {
            format!(
                "DESCRIBE {} RTSP/1.0\r\nCSeq: {cseq}\r\n\r\n",
                server.url("unicast")
            )
        })
        .collect::<String>();
    let mut stalled = Vec::new();
    for (target, requests, answer) in [
        (server.http, http, "HTTP/1.1 200"),
        (server.rtsp, rtsp, "RTSP/1.0 200"),
    ] {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(IpAddr::from(ATTACKER), 0))
            .expect("bind");
        // A small receive window, so that the server's writes block soon.
        socket.set_recv_buffer_size(4096).expect("receive buffer");
        let stream = socket.connect(target).await.expect("connect");
        let (read, mut write) = stream.into_split();
        let count = requests.matches("\r\n\r\n").count();
        // Sent on the side (the server stops taking requests once its answers are stuck); the
        // writing half stays open, as its end would end the connection.
        let sender = tokio::spawn(async move {
            let _ = write.write_all(requests.as_bytes()).await;
            write
        });
        stalled.push((read, sender, count, answer));
    }
    tokio::time::sleep(Duration::from_secs(16)).await;
    // Everyone else is answered, and the two connections are gone before their clients read.
    assert_eq!(
        metric(&server, "wasmcast_connections_open").await,
        before,
        "open connections 16 s after the stalled clients connected"
    );
    for (mut read, sender, count, answer) in stalled {
        let mut answers = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let closed = loop {
            match tokio::time::timeout(Duration::from_secs(5), read.read(&mut buf)).await {
                Err(_) => break false,
                Ok(Ok(0) | Err(_)) => break true,
                Ok(Ok(n)) => answers.extend_from_slice(&buf[..n]),
            }
        };
        let answered = String::from_utf8_lossy(&answers).matches(answer).count();
        assert!(
            closed && answered < count / 2,
            "{answer}: the connection was {} after {answered} of {count} answers",
            if closed { "closed" } else { "still open" },
        );
        sender.abort();
    }
    honest.finish(&server, 32).await;
}

/// An HTTP request head past 64 KiB is refused at once, rather than buffered (hyper would take
/// some 400 KiB a connection) until the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_head_past_64_kib_is_refused_at_once() {
    let server = Server::start(&file_route("unicast", &sample_clip()));
    let mut stream = attacker_connection(server.http).await.expect("connect");
    let started = Instant::now();
    let mut head = b"GET / HTTP/1.1\r\nHost: t\r\nX-Junk: ".to_vec();
    head.resize(head.len() + 100_000, b'a');
    // The server may close before it has read all of it.
    let _ = stream.write_all(&head).await;
    let mut answer = vec![0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("an answer before the 10 s header timeout")
        .unwrap_or(0);
    let answer = String::from_utf8_lossy(&answer[..read]).into_owned();
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{answer:?} after {:?}",
        started.elapsed()
    );
}

/// Writes each of `rounds` in 64 KiB pieces until the server closes the connection (or, after the
/// last, within 5 s): whether it did, and the bytes written.
async fn send_until_closed(
    stream: &mut TcpStream,
    rounds: impl Iterator<Item = Vec<u8>>,
) -> (bool, usize) {
    let mut sent = 0;
    for round in rounds {
        for piece in round.chunks(64 * 1024) {
            if stream.write_all(piece).await.is_err() {
                return (true, sent);
            }
            sent += piece.len();
        }
    }
    (closed_within(stream, Duration::from_secs(5)).await, sent)
}

/// A server (with `server_keys`) whose route `unicast` an honest reader plays, and whose push
/// route `cam` an attacker publishes to.
async fn publish_target(server_keys: &str) -> (Server, Honest) {
    let server = Server::start_adding(
        server_keys,
        &format!(
            "{}{}",
            file_route("unicast", &sample_clip()),
            push_route("cam", "cam")
        ),
    );
    let honest = Honest::start(&server, "unicast").await;
    (server, honest)
}

/// After an attacker publishing to `cam` was ended: the log gives `reason`, a real publisher
/// then gets the route, and the honest reader played throughout.
async fn ended_for(server: &Server, honest: Honest, reason: &str) {
    assert!(
        server.wait_for_log(reason, Duration::from_secs(2)),
        "the log gives the reason: {:#?}",
        server.log()
    );
    let (ok, err) = publish_once(&server.url("cam"));
    assert!(ok, "a real publisher after the attack: {err}");
    honest.finish(server, 48).await;
}

/// Packets cost the server as much as bytes: a publisher whose every packet is a whole picture of
/// two bytes sent a million pictures a second within the byte ceiling, keeping a core busy for
/// as long as it liked. Past 250,000 packets at over 50,000 a second it is ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_of_tiny_pictures_as_fast_as_it_can_is_ended() {
    let (server, honest) = publish_target("").await;
    let mut stream = recording_publisher(&server, &server.url("cam")).await;
    let mut pictures = Vec::new();
    for seq in 0..20_000u32 {
        let mut rtp = vec![0x80, 0x80 | 96];
        rtp.extend_from_slice(&(seq as u16).to_be_bytes());
        rtp.extend_from_slice(&(seq * 3600).to_be_bytes());
        rtp.extend_from_slice(&[0, 0, 0x10, 0, 0x41, 0x9a]);
        pictures.extend_from_slice(&[b'$', 0]);
        pictures.extend_from_slice(&(rtp.len() as u16).to_be_bytes());
        pictures.extend_from_slice(&rtp);
    }
    let started = Instant::now();
    let mut ended = false;
    while started.elapsed() < Duration::from_secs(10) {
        if stream.write_all(&pictures).await.is_err() {
            ended = true;
            break;
        }
    }
    ended = ended || closed_within(&mut stream, Duration::from_secs(5)).await;
    assert!(
        ended,
        "the publisher of tiny pictures is still connected after 10 s"
    );
    ended_for(
        &server,
        honest,
        "sent more than 250000 packets at over 50000 a second",
    )
    .await;
}

/// Each track's unit in the making is held to `max_unit_mb`, and so are all of a publisher's
/// together: sixteen tracks each holding a fragment just under the cap, never ended, are sixteen
/// times the cap; the publisher is ended instead. More than sixteen tracks are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragments_spread_over_many_tracks_are_held_to_one_unit_together() {
    let (server, honest) = publish_target("max_unit_mb = 1\nroute_buffer_mb = 4\n").await;
    let mut refused = attacker_connection(server.rtsp).await.expect("connect");
    let reply = request(
        &mut refused,
        &announce_tracks(&server.url("cam"), &h264_tracks(17)),
    )
    .await;
    assert!(
        reply.starts_with("RTSP/1.0 415") && reply.contains("at most 16"),
        "{reply}"
    );
    let mut stream = recording_publisher_of(&server, &server.url("cam"), 16).await;
    let middle = vec![0x55u8; 1400];
    // On each track in turn, a fragment that starts and never ends, 0.7 MB long: under the cap
    // of 1 MiB for one track.
    let rounds = (0..16u8).map(|track| open_fragment(2 * track, 0, 500, &middle));
    let (ended, sent) = send_until_closed(&mut stream, rounds).await;
    assert!(ended, "the publisher is still connected after {sent} bytes");
    ended_for(
        &server,
        honest,
        "3 access units over the route's memory budget",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_fragments_are_capped_and_a_publisher_that_keeps_sending_them_is_ended() {
    let (server, honest) = publish_target("max_unit_mb = 1\nroute_buffer_mb = 4\n").await;
    let mut stream = recording_publisher(&server, &server.url("cam")).await;
    let middle = vec![0x55u8; 1400];
    // Each round: a fragment that starts and never ends, 1.4 MB long. The first rounds are
    // dropped at the 1 MiB cap; the third gets the publisher disconnected.
    let rounds = (0..10u16).map(|round| open_fragment(0, round * 1001, 1000, &middle));
    let (ended, sent) = send_until_closed(&mut stream, rounds).await;
    // (What the attacker could write includes what the loopback socket buffers took meanwhile.)
    assert!(ended, "the publisher is still connected after {sent} bytes");
    ended_for(
        &server,
        honest,
        "3 access units over the route's memory budget",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_clock_rates_channels_and_payload_types_are_refused_with_a_reason() {
    let server = Server::start(&format!(
        "{}{}",
        file_route("unicast", &sample_clip()),
        push_route("cam", "cam")
    ));
    let honest = Honest::start(&server, "unicast").await;
    let url = server.url("cam");
    let aac_fmtp = "a=fmtp:97 streamtype=5; profile-level-id=15; mode=AAC-hbr; config=1190; sizelength=13; indexlength=3; indexdeltalength=3\r\n";
    for (media, fmtp, why) in [
        (
            "m=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/0/2\r\n",
            aac_fmtp,
            "clock rate 0",
        ),
        (
            "m=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/48000/0\r\n",
            aac_fmtp,
            "channel count",
        ),
        (
            "m=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/4294967295/2\r\n",
            aac_fmtp,
            "clock rate 4294967295",
        ),
        (
            "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/1\r\n",
            H264_FMTP,
            "clock rate 1",
        ),
        (
            "m=video 0 RTP/AVP 300\r\na=rtpmap:300 H264/90000\r\n",
            "",
            "payload type",
        ),
    ] {
        let mut stream = attacker_connection(server.rtsp).await.expect("connect");
        let reply = request(&mut stream, &announce(&url, media, fmtp)).await;
        assert!(
            reply.starts_with("RTSP/1.0 415") && reply.lines().next().unwrap().contains(why),
            "{why}: {reply}"
        );
    }
    // The route was never held: a real publisher gets it.
    let (ok, err) = publish_once(&url);
    assert!(ok, "a real publisher: {err}");
    honest.finish(&server, 32).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_that_hold_a_route_without_sending_lose_it_to_a_real_one() {
    let server = Server::start(&format!(
        "{}{}{}",
        file_route("unicast", &sample_clip()),
        push_route("cam", "cam"),
        push_route("feed", "feed.ffm"),
    ));
    let honest = Honest::start(&server, "unicast").await;
    // ANNOUNCE, then nothing.
    let mut announced = attacker_connection(server.rtsp).await.expect("connect");
    let reply = request(
        &mut announced,
        &announce(&server.url("cam"), H264_MEDIA, H264_FMTP),
    )
    .await;
    assert!(reply.starts_with("RTSP/1.0 200"), "{reply}");
    // An HTTP push that trickles a byte a second.
    let mut trickle = attacker_connection(server.http).await.expect("connect");
    trickle
        .write_all(b"POST /feed.ffm HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .expect("push headers");
    let trickling = tokio::spawn(async move {
        let mut reply = Vec::new();
        for _ in 0..40 {
            if trickle.write_all(b"1\r\nG\r\n").await.is_err() {
                break;
            }
            let mut buf = [0u8; 1024];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_secs(1), trickle.read(&mut buf)).await
            {
                if n == 0 {
                    break;
                }
                reply.extend_from_slice(&buf[..n]);
            }
        }
        String::from_utf8_lossy(&reply).into_owned()
    });
    // Both are busy meanwhile: one publisher per route.
    let (ok, _) = publish_once(&server.url("cam"));
    assert!(!ok, "the route is held while the ANNOUNCE is young");
    assert!(
        closed_within(&mut announced, Duration::from_secs(25)).await,
        "ANNOUNCE without RECORD is ended"
    );
    assert!(server.wait_for_log("no RECORD in time after ANNOUNCE", Duration::from_secs(1)));
    let (ok, err) = publish_once(&server.url("cam"));
    assert!(ok, "the real publisher gets the route: {err}");
    let reply = trickling.await.expect("trickle");
    assert!(
        reply.starts_with("HTTP/1.1 408") && reply.contains("under the floor"),
        "{reply}"
    );
    let clip = short_clip();
    let (ok, _, err) = run(
        std::process::Command::new("ffmpeg")
            .args(["-hide_banner", "-v", "error", "-re", "-i"])
            .arg(&clip)
            .args(["-t", "1", "-c", "copy", "-f", "mpegts"])
            .arg(format!("http://{}/feed.ffm", server.http)),
        Duration::from_secs(20),
    );
    assert!(ok, "the real push gets the feed: {err}");
    honest.finish(&server, 32).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whep_sessions_cannot_be_named_by_others_and_bodies_have_a_deadline() {
    let server = Server::start(&file_route("unicast", &short_clip()));
    let honest = Honest::start(&server, "unicast").await;
    let viewer = whep_client::Viewer::connect(server.http, "unicast")
        .await
        .expect("WHEP viewer");
    let id = viewer
        .location
        .rsplit('/')
        .next()
        .expect("resource id")
        .to_owned();
    let random: String = id.chars().filter(char::is_ascii_hexdigit).collect();
    assert!(random.len() >= 32, "128 random bits in `{id}`");
    for guess in ["whep-1", "whep-2", "1", &id[..id.len() - 1]] {
        let delete = format!(
            "DELETE /unicast/whep/{guess} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        );
        let reply = exchange(server.http, delete.as_bytes(), Duration::from_secs(5)).await;
        assert!(reply.starts_with("HTTP/1.1 404"), "{guess}: {reply}");
    }
    // A session trickles a browser's handful of candidates, not an endless list.
    let candidates: String = (0..65)
        .map(|i| {
            format!(
                "a=candidate:{i} 1 udp 2130706431 127.0.0.1 {} typ host\r\n",
                40000 + i
            )
        })
        .collect();
    let body = format!("a=mid:0\r\n{candidates}");
    let patch = format!(
        "PATCH {} HTTP/1.1\r\nHost: t\r\nContent-Type: application/trickle-ice-sdpfrag\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        viewer.location,
        body.len()
    );
    let reply = exchange(server.http, patch.as_bytes(), Duration::from_secs(5)).await;
    assert!(
        reply.starts_with("HTTP/1.1 400") && reply.contains("trickled candidates"),
        "{reply}"
    );
    // A connection that never sends a request is closed like one that never finishes its body.
    let mut silent = attacker_connection(server.http).await.expect("connect");
    let silent_closed =
        tokio::spawn(async move { closed_within(&mut silent, Duration::from_secs(15)).await });
    // A body promised and never sent is given up after the deadline, not held.
    let mut stream = attacker_connection(server.http).await.expect("connect");
    stream
        .write_all(
            b"POST /unicast/whep HTTP/1.1\r\nHost: t\r\nContent-Type: application/sdp\r\nContent-Length: 1000\r\n\r\nv=0\n",
        )
        .await
        .expect("send");
    let asked = Instant::now();
    let mut reply = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut reply))
        .await
        .expect("an answer within the deadline")
        .expect("read");
    let reply = String::from_utf8_lossy(&reply[..n]);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(asked.elapsed() >= Duration::from_secs(9));
    assert!(
        silent_closed.await.expect("silent connection"),
        "a silent HTTP connection is closed"
    );
    let delete = format!(
        "DELETE {} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        viewer.location
    );
    let reply = exchange(server.http, delete.as_bytes(), Duration::from_secs(5)).await;
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "the creator ends it: {reply}"
    );
    viewer.close().await;
    honest.finish(&server, 48).await;
}

/// Without `admins` the API and `/metrics` answer clients on this machine (every test client is
/// one: the refusal of other addresses is unit-tested in `http`); with admins, only them, from
/// anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_and_metrics_answer_this_machine_or_admins_only() {
    let requests = [
        "GET /api/v1/sessions HTTP/1.1\r\n",
        "DELETE /api/v1/sessions/ABC HTTP/1.1\r\n",
        "POST /api/v1/reload HTTP/1.1\r\nContent-Length: 0\r\n",
        "GET /metrics HTTP/1.1\r\n",
    ];
    let send = |server: &Server, request: &str, authorization: &str| {
        let text = format!("{request}{authorization}Host: t\r\nConnection: close\r\n\r\n");
        let http = server.http;
        async move {
            let mut stream = attacker_connection(http).await.expect("connect");
            stream.write_all(text.as_bytes()).await.expect("send");
            let mut reply = String::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut reply))
                .await;
            reply
        }
    };
    // Answered (a 404 for a session that does not exist is an answer), not refused.
    let admitted = |reply: &str| {
        reply.starts_with("HTTP/1.1 ")
            && !reply.starts_with("HTTP/1.1 401")
            && !reply.starts_with("HTTP/1.1 403")
    };
    let open = Server::start(&file_route("unicast", &short_clip()));
    for request in requests {
        let reply = send(&open, request, "").await;
        assert!(admitted(&reply), "from this machine, {request}: {reply}");
    }
    // alice's password is `secret` (as in the auth tests).
    let guarded = Server::start_adding(
        "admins = [\"alice\"]\n",
        &format!(
            "{}[users.alice]\npassword = \"md5:c206c90659c395ee90e28f0a59a5095b\"\n",
            file_route("unicast", &short_clip())
        ),
    );
    for request in requests {
        let reply = send(&guarded, request, "").await;
        assert!(reply.starts_with("HTTP/1.1 401"), "{request}: {reply}");
        let basic = "Authorization: Basic YWxpY2U6c2VjcmV0\r\n";
        let reply = send(&guarded, request, basic).await;
        assert!(admitted(&reply), "as alice, {request}: {reply}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_taken_off_the_publish_list_by_a_reload_is_ended() {
    // alice's password is `secret`, bob's `pw` (as in the auth tests).
    let users = "[users.alice]\npassword = \"md5:c206c90659c395ee90e28f0a59a5095b\"\n\
                 [users.bob]\npassword = \"md5:bda3639a90eb5c10040253f561af04e9\"\n";
    let routes = |publishers: &str| {
        format!(
            "{}publish = [{publishers}]\n{users}",
            push_route("cam", "cam")
        )
    };
    let server = Server::start(&routes("\"alice\", \"bob\""));
    let url = server.url("cam").replace("rtsp://", "rtsp://alice:secret@");
    let _pusher = common::Pusher::rtsp(&short_clip(), &url, "tcp");
    wait_live(&server, "cam").await;
    server.write_routes(&routes("\"bob\""), true);
    assert!(
        server.wait_for_log(
            "no longer on the route's publish list",
            Duration::from_secs(10)
        ),
        "{:#?}",
        server.log()
    );
    assert!(
        server.wait_for_log(
            "RTSP publisher ended: no longer on the route's publish list",
            Duration::from_secs(5)
        ),
        "{:#?}",
        server.log()
    );
}

/// Writes `chunk` over and over until the server closes the connection or `limit` passes;
/// true when it closed.
async fn flood_until_closed(
    mut write: impl AsyncWriteExt + Unpin,
    chunk: Vec<u8>,
    limit: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, write.write_all(&chunk)).await {
            Err(_) => return false,
            Ok(Err(_)) => return true,
            Ok(Ok(())) => {}
        }
    }
}

/// A control connection is for requests and RTCP reports (and a publisher's media): a client
/// that pours bytes into it, which the server would read and throw away at the cost of a core,
/// is cut off within seconds, whether it has no session, sends blank lines, plays over TCP and
/// sends endless "reports", or publishes far faster than real time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_pour_bytes_into_their_control_connection_are_cut_off() {
    let server = Server::start(&format!(
        "{}{}",
        file_route("unicast", &sample_clip()),
        push_route("feed", "feed")
    ));
    let honest = Honest::start(&server, "unicast").await;
    let url = server.url("unicast");

    let mut frame = vec![b'$', 1, 0xff, 0xff];
    frame.resize(4 + 0xffff, 0x80);
    let no_session = attacker_connection(server.rtsp).await.expect("connect");
    let blank_lines = attacker_connection(server.rtsp).await.expect("connect");

    // A reader that plays over TCP, keeps reading its media, and sends 1 KB "receiver reports"
    // on its RTCP channel as fast as it can.
    let mut reader = attacker_connection(server.rtsp).await.expect("connect");
    let setup = format!(
        "SETUP {url}/trackID=0 RTSP/1.0\r\nCSeq: 1\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n"
    );
    let reply = request(&mut reader, &setup).await;
    assert!(reply.starts_with("RTSP/1.0 200"), "SETUP: {reply}");
    let play = format!(
        "PLAY {url} RTSP/1.0\r\nCSeq: 2\r\nSession: {}\r\n\r\n",
        session_of(&reply)
    );
    let reply = request(&mut reader, &play).await;
    assert!(reply.starts_with("RTSP/1.0 200"), "PLAY: {reply}");
    let (mut media, reports) = reader.into_split();
    let drain = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while matches!(media.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    let mut report = vec![b'$', 1, 0x03, 0xe8];
    report.resize(4 + 1000, 0x81);

    // A publisher whose packets are each a whole (made-up) picture, a thousand a round.
    let publisher = recording_publisher(&server, &server.url("feed")).await;
    let mut pictures = Vec::new();
    for seq in 0..1000u16 {
        let mut rtp = vec![0x80, 0x80 | 96];
        rtp.extend_from_slice(&seq.to_be_bytes());
        rtp.extend_from_slice(&(u32::from(seq) * 3600).to_be_bytes());
        rtp.extend_from_slice(&[0, 0, 0x10, 0, 0x41]);
        rtp.resize(1400, 0x9a);
        pictures.extend_from_slice(&[b'$', 0]);
        pictures.extend_from_slice(&(rtp.len() as u16).to_be_bytes());
        pictures.extend_from_slice(&rtp);
    }

    let limit = Duration::from_secs(10);
    let (no_session, blank_lines, reports, publisher) = tokio::join!(
        flood_until_closed(no_session, frame, limit),
        flood_until_closed(blank_lines, b"\r\n".repeat(32 * 1024), limit),
        flood_until_closed(reports, report, limit),
        flood_until_closed(publisher, pictures, limit),
    );
    assert!(
        no_session,
        "interleaved frames without a session: still open"
    );
    assert!(blank_lines, "blank lines: still open");
    assert!(reports, "a reader's endless reports: still open");
    assert!(
        publisher,
        "a publisher far faster than real time: still open"
    );
    assert!(server.wait_for_log(
        "RTSP connection closed: sent more than 64 MiB at over 32 MiB/s (a publisher sends its media in real time)",
        Duration::from_secs(1)
    ));
    drain.abort();
    let cut_off = server
        .log()
        .iter()
        .filter(|l| {
            l.contains("RTSP connection closed: sent more than 256 KiB at over 64 KiB/s")
                && l.contains("127.0.0.2")
        })
        .count();
    assert_eq!(cut_off, 3, "{:#?}", server.log());
    honest.finish(&server, 32).await;
}

/// A client that pipelines HTTP requests as fast as it can (reading the answers) would keep a core
/// busy answering it alone: past 200 requests at over 50 a second it is answered `429` and its
/// connection closed; a new connection is answered as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_pipelines_requests_without_end_is_cut_off() {
    let server = Server::start(&file_route("unicast", &sample_clip()));
    let honest = Honest::start(&server, "unicast").await;
    let stream = attacker_connection(server.http).await.expect("connect");
    let (mut answers, requests) = stream.into_split();
    let drain = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while matches!(answers.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    let burst = "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n".repeat(1000);
    assert!(
        flood_until_closed(requests, burst.into_bytes(), Duration::from_secs(10)).await,
        "the pipelining client is still connected"
    );
    drain.abort();
    assert!(server.wait_for_log(
        "HTTP connection closed: more than 200 requests at over 50 a second on one connection",
        Duration::from_secs(1)
    ));
    let fresh = exchange(
        server.http,
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(fresh.starts_with("HTTP/1.1 200"), "{fresh}");
    honest.finish(&server, 32).await;
}

/// RTSP requests are as cheap to send as HTTP ones: keep-alives pipelined under the allowance of
/// bytes (a thousand small requests a second) would keep a core busy answering one client. The
/// connection is held to the same allowance of requests as HTTP's, gets `503` and is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_pipelines_rtsp_requests_without_end_is_cut_off() {
    let server = Server::start(&file_route("unicast", &sample_clip()));
    let honest = Honest::start(&server, "unicast").await;
    let stream = attacker_connection(server.rtsp).await.expect("connect");
    let (mut answers, mut requests) = stream.into_split();
    let replies = tokio::spawn(async move {
        let mut replies = Vec::new();
        let _ = answers.read_to_end(&mut replies).await;
        String::from_utf8_lossy(&replies).into_owned()
    });
    // A hundred keep-alives every 0.1 s: some 60 KB/s, within the allowance of bytes.
    let batch = format!(
        "GET_PARAMETER {} RTSP/1.0\r\nCSeq: 1\r\n\r\n",
        server.url("unicast")
    )
    .repeat(100);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) && !replies.is_finished() {
        if requests.write_all(batch.as_bytes()).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let replies = tokio::time::timeout(Duration::from_secs(5), replies)
        .await
        .expect("the pipelining client is still connected after 10 s")
        .expect("the replies");
    assert!(
        replies.contains(
            "RTSP/1.0 503 Service Unavailable (more than 200 requests at over 50 a second on one connection)"
        ),
        "{}",
        &replies[replies.len().saturating_sub(300)..]
    );
    assert!(server.wait_for_log(
        "RTSP connection closed: more than 200 requests at over 50 a second on one connection",
        Duration::from_secs(1)
    ));
    let options = format!(
        "OPTIONS {} RTSP/1.0\r\nCSeq: 1\r\n\r\n",
        server.url("unicast")
    );
    let fresh = exchange(server.rtsp, options.as_bytes(), Duration::from_secs(1)).await;
    assert!(fresh.starts_with("RTSP/1.0 200"), "{fresh}");
    honest.finish(&server, 32).await;
}

/// A push far faster than real time (ffmpeg without `-re`, or a flood of TS) would be taken in as
/// fast as a core can: past 64 MiB at over 32 MiB/s the publisher is ended with `429` and the
/// route is free for a real one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_far_faster_than_real_time_is_ended() {
    let server = Server::start(&format!(
        "{}{}",
        file_route("unicast", &sample_clip()),
        push_route("feed", "feed")
    ));
    let honest = Honest::start(&server, "unicast").await;
    let ts = common::clip(
        "short-h264-aac.ts",
        &format!("-i {} -c copy -f mpegts", short_clip().display()),
    );
    let ts = std::fs::read(ts).expect("read the TS clip");
    let mut stream = attacker_connection(server.http).await.expect("connect");
    stream
        .write_all(b"POST /feed HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000000000\r\n\r\n")
        .await
        .expect("send the head");
    assert!(
        flood_until_closed(stream, ts, Duration::from_secs(10)).await,
        "the push is still taken in"
    );
    assert!(server.wait_for_log(
        "push: sent more than 64 MiB at over 32 MiB/s: a publisher sends its media in real time (ffmpeg -re)",
        Duration::from_secs(1)
    ));
    let _pusher = common::Pusher::start(
        &short_clip(),
        &format!("http://{}/feed", server.http),
        "-c copy",
    );
    let url = server.url("feed");
    let streams = tokio::task::spawn_blocking(move || ffprobe_streams(&url))
        .await
        .expect("ffprobe");
    assert!(streams.contains("h264"), "{streams}");
    honest.finish(&server, 32).await;
}

/// A client cut off for what it pours into a connection reconnects and pours again: the rate of
/// new connections from its address (`connection_rate_per_address`, here 5 a second after 50) is
/// what bounds it, and it holds nobody else back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reconnects_to_pour_again_is_held_to_its_connection_rate() {
    let server = Server::start_adding(
        "connection_rate_per_address = 5\n",
        &file_route("unicast", &sample_clip()),
    );
    let honest = Honest::start(&server, "unicast").await;
    let started = Instant::now();
    let mut frame = vec![b'$', 1, 0xff, 0xff];
    frame.resize(4 + 0xffff, 0x80);
    for round in 0..300 {
        let stream = attacker_connection(server.rtsp).await.expect("connect");
        assert!(
            flood_until_closed(stream, frame.clone(), Duration::from_secs(10)).await,
            "connection {round} is still open"
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    let cut_off = server
        .log()
        .iter()
        .filter(|l| l.contains("RTSP connection closed: sent more than"))
        .count();
    let allowed = 50 + (5.0 * seconds).ceil() as usize;
    assert!(
        cut_off <= allowed,
        "{cut_off} connections poured in {seconds:.1} s (at most {allowed} admitted)"
    );
    let refused = metric(
        &server,
        "wasmcast_connections_refused_total{cap=\"connection_rate_per_address\"}",
    )
    .await as usize;
    assert!(
        refused + cut_off >= 300,
        "{refused} refused, {cut_off} cut off"
    );
    // Another address plays as ever.
    let url = server.url("unicast");
    let streams = tokio::task::spawn_blocking(move || ffprobe_streams(&url))
        .await
        .expect("ffprobe");
    assert!(streams.contains("h264"), "{streams}");
    honest.finish(&server, 32).await;
}

/// An offer as a browser sends it (no real ICE or DTLS behind it), `recvonly` for WHEP or
/// `sendonly` for WHIP.
fn webrtc_offer(direction: &str) -> String {
    format!(
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
         m=video 9 UDP/TLS/RTP/SAVPF 102\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na={direction}\r\n\
         a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
         a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
         a=setup:actpass\r\na=rtcp-mux\r\na=ssrc:1234 cname:attack\r\na=rtpmap:102 H264/90000\r\n\
         a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n"
    )
}

/// Posts `offer` to `path` (a WHEP or WHIP endpoint): the answer's ICE ufrag, and the port of its
/// candidate of `transport` (`udp`, or `tcp` for the passive ICE-TCP one).
async fn offer_for_candidate(
    server: &Server,
    path: &str,
    offer: &str,
    transport: &str,
) -> (String, u16) {
    let offer = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{offer}",
        offer.len()
    );
    let answer = exchange(server.http, offer.as_bytes(), Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let ufrag = answer
        .lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .unwrap_or_else(|| panic!("no ufrag in {answer}"));
    let port: u16 = answer
        .lines()
        .find(|l| {
            l.starts_with("a=candidate:")
                && l.split_whitespace().nth(2) == Some(transport)
                && (transport != "tcp" || l.contains("tcptype passive"))
        })
        .and_then(|l| l.split_whitespace().nth(5)?.parse().ok())
        .unwrap_or_else(|| panic!("no {transport} candidate in {answer}"));
    (ufrag.to_owned(), port)
}

/// A binding request that names the peer whose answer had `ufrag` (no integrity: naming is all
/// the mux looks at).
fn naming_check(ufrag: &str) -> Vec<u8> {
    let username = format!("{ufrag}:abcd").into_bytes();
    let mut attribute = vec![0x00, 0x06];
    attribute.extend_from_slice(&(username.len() as u16).to_be_bytes());
    attribute.extend_from_slice(&username);
    attribute.resize(attribute.len().next_multiple_of(4), 0);
    let mut stun = vec![0x00, 0x01];
    stun.extend_from_slice(&(attribute.len() as u16).to_be_bytes());
    stun.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    stun.extend_from_slice(&[7; 12]);
    stun.extend_from_slice(&attribute);
    stun
}

/// Posts `offer` to `path` (a WHEP or WHIP endpoint) and connects to the ICE-TCP port the answer
/// names from the attacker's address: the connection, and a framed [`naming_check`], sent once on
/// it already.
async fn ice_tcp_to_peer(server: &Server, path: &str, offer: &str) -> (TcpStream, Vec<u8>) {
    let (ufrag, port) = offer_for_candidate(server, path, offer, "tcp").await;
    let stun = naming_check(&ufrag);
    let naming = [&(stun.len() as u16).to_be_bytes()[..], &stun].concat();
    let mut stream = attacker_connection(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .expect("connect");
    stream.write_all(&naming).await.expect("name the peer");
    (stream, naming)
}

/// Connects to the peer `offer` makes at `path` over ICE-TCP and pours packets in: whether it
/// was cut off within 10 s.
async fn pour_into_ice_tcp(server: &Server, path: &str, offer: &str) -> bool {
    let (stream, _) = ice_tcp_to_peer(server, path, offer).await;
    let mut packets = Vec::new();
    for _ in 0..100 {
        packets.extend_from_slice(&1400u16.to_be_bytes());
        packets.extend_from_slice(&[0x80, 102]);
        packets.resize(packets.len() + 1398, 0x5a);
    }
    flood_until_closed(stream, packets, Duration::from_secs(10)).await
}

/// A connection to the ICE-TCP port only has to name a peer (by the ICE ufrag of its WHEP or WHIP
/// answer) to be handed to it, and what it then sends is the peer's to process: one that pours
/// packets into a viewer or a publisher is cut off within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_tcp_connections_that_pour_packets_into_a_peer_are_cut_off() {
    let server = Server::start(&format!(
        "{}{}",
        file_route("unicast", &sample_clip()),
        push_route("feed", "feed")
    ));
    let honest = Honest::start(&server, "unicast").await;
    assert!(
        pour_into_ice_tcp(&server, "/unicast/whep", &webrtc_offer("recvonly")).await,
        "a viewer's ICE-TCP connection is still open"
    );
    assert!(server.wait_for_log(
        "ICE-TCP connection closed: sent more than 256 KiB at over 64 KiB/s (a viewer sends RTCP feedback and ICE checks)",
        Duration::from_secs(1)
    ));
    assert!(
        pour_into_ice_tcp(&server, "/feed/whip", &webrtc_offer("sendonly")).await,
        "a publisher's ICE-TCP connection is still open"
    );
    assert!(server.wait_for_log(
        "ICE-TCP connection closed: sent more than 64 MiB at over 32 MiB/s (a publisher sends its media in real time)",
        Duration::from_secs(1)
    ));
    honest.finish(&server, 32).await;
}

/// WHEP offers that never connect: each used to take a place under `max_clients` for the 20 s a
/// viewer has to connect, so one address posting offers locked every reader out. Now a viewer
/// takes its place when it connects, and one address may have 64 waiting to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whep_offers_that_never_connect_hold_no_place() {
    let server = Server::start_adding("max_clients = 10\n", &file_route("unicast", &sample_clip()));
    let honest = Honest::start(&server, "unicast").await;
    let offer = webrtc_offer("recvonly");
    let post = format!(
        "POST /unicast/whep HTTP/1.1\r\nHost: t\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{offer}",
        offer.len()
    );
    let mut answers = Vec::new();
    for _ in 0..68 {
        let mut stream = attacker_connection(server.http).await.expect("connect");
        stream.write_all(post.as_bytes()).await.expect("offer");
        let mut answer = String::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer)).await;
        answers.push(answer.lines().next().unwrap_or_default().to_owned());
    }
    let answered = answers
        .iter()
        .filter(|a| a.starts_with("HTTP/1.1 201"))
        .count();
    let refused = answers
        .iter()
        .filter(|a| a.starts_with("HTTP/1.1 429"))
        .count();
    assert_eq!((answered, refused), (64, 4), "{answers:#?}");
    // The 64 wait to connect without a place: readers from elsewhere still get in, over RTSP
    // and over WebRTC.
    let url = server.url("unicast");
    let streams = tokio::task::spawn_blocking(move || ffprobe_streams(&url))
        .await
        .expect("ffprobe");
    assert!(streams.contains("h264"), "an RTSP reader: {streams}");
    let viewer = whep_client::Viewer::connect(server.http, "unicast")
        .await
        .expect("a WebRTC viewer");
    let deadline = Instant::now() + Duration::from_secs(10);
    while viewer.packets.load(std::sync::atomic::Ordering::Relaxed) < 50 {
        assert!(Instant::now() < deadline, "the WebRTC viewer got no media");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    viewer.close().await;
    honest.finish(&server, 32).await;
}

/// A viewer whose browser sends tiny packets just under its byte allowance: bad ICE checks,
/// which the WebRTC stack logs two warnings for each, and scraps of RTP. It is ended once past
/// its allowance of packets, and the stack's warnings about it are held to a few lines, the rest
/// counted in one line; before, it was never ended and wrote 10,000 lines a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_that_sends_tiny_packets_is_ended_and_its_warnings_held_back() {
    let server = Server::start(&file_route("unicast", &sample_clip()));
    let honest = Honest::start(&server, "unicast").await;
    let (mut stream, bad_check) =
        ice_tcp_to_peer(&server, "/unicast/whep", &webrtc_offer("recvonly")).await;
    // In 50 ms: 20 checks and 150 scraps, 2.8 kB (56 kB/s, under 64 KiB/s), 3,400 packets/s.
    let mut round = bad_check.repeat(20);
    for _ in 0..150 {
        round.extend_from_slice(&[0, 12, 0x80, 102]);
        round.extend_from_slice(&[0x5a; 10]);
    }
    let started = Instant::now();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(15) && !closed {
        closed = stream.write_all(&round).await.is_err();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    assert!(
        closed || closed_within(&mut stream, Duration::from_secs(1)).await,
        "the viewer's connection is still open after {took:?}"
    );
    assert!(
        server.wait_for_log(
            "WebRTC viewer ended: sent more than 5000 packets at over 1000 a second (a browser sends RTCP feedback and ICE checks)",
            Duration::from_secs(1)
        ),
        "{:#?}",
        server.log()
    );
    assert!(
        server.wait_for_log("log lines of the WebRTC stack", Duration::from_secs(12)),
        "what was held back is counted: {:#?}",
        server.log()
    );
    let from_stack = server
        .log()
        .iter()
        .filter(|l| l.contains(" rtc::") || l.contains(" rtc_"))
        .count();
    assert!(
        from_stack <= 30,
        "{from_stack} lines from the WebRTC stack: {:#?}",
        server.log()
    );
    honest.finish(&server, 32).await;
}

/// The same viewer over UDP: ICE checks that name it and scraps of RTP, 3,400 datagrams a second
/// from the attacker's address, end it as they do over ICE-TCP, and nothing else is disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_that_sends_tiny_datagrams_is_ended() {
    let server = Server::start(&file_route("unicast", &sample_clip()));
    let honest = Honest::start(&server, "unicast").await;
    let (ufrag, port) =
        offer_for_candidate(&server, "/unicast/whep", &webrtc_offer("recvonly"), "udp").await;
    let socket = tokio::net::UdpSocket::bind(SocketAddr::new(IpAddr::from(ATTACKER), 0))
        .await
        .expect("a UDP socket");
    socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .expect("connect");
    let check = naming_check(&ufrag);
    let scrap = [[0x80, 102].as_slice(), &[0x5a; 10]].concat();
    let started = Instant::now();
    let mut ended = false;
    while started.elapsed() < Duration::from_secs(15) && !ended {
        // In 50 ms: 20 checks and 150 scraps, 3,400 datagrams a second.
        for _ in 0..20 {
            let _ = socket.send(&check).await;
        }
        for _ in 0..150 {
            let _ = socket.send(&scrap).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        ended = server
            .log()
            .iter()
            .any(|l| l.contains("WebRTC viewer ended: sent more than 5000 packets"));
    }
    assert!(
        ended,
        "the viewer was not ended in {:?}: {:#?}",
        started.elapsed(),
        server.log()
    );
    honest.finish(&server, 32).await;
}
