//! Many readers, a reader that stops reading, broken requests and broken files: each is that
//! party's problem alone.

mod common;

use std::time::Duration;

use common::{Server, file_route, play, sample_clip, short_clip};
use futures::StreamExt;
use retina::client::{TcpTransportOptions, Transport, UdpTransportOptions};
use retina::codec::CodecItem;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

/// Reads a route with retina for `seconds`; returns the video frames received and the RTP packets
/// reported lost.
async fn count_frames(url: String, transport: Transport, seconds: u64) -> (usize, u64) {
    let mut playing = play(&url, transport, false).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let (mut frames, mut lost) = (0, 0);
    while let Ok(Some(item)) = tokio::time::timeout_at(deadline, playing.next()).await {
        if let CodecItem::VideoFrame(frame) = item.expect("media") {
            frames += 1;
            lost += u64::from(frame.loss());
        }
    }
    (frames, lost)
}

/// Sends raw bytes on a fresh connection and returns what the server answered.
async fn exchange(server: &Server, request: &[u8]) -> String {
    common::exchange(server.rtsp, request, Duration::from_millis(500)).await
}

/// Sets up a TCP-interleaved session by hand on a socket with a `receive_buffer`-byte window and
/// sends PLAY; returns the connection (PLAY's answer not read yet) and the session.
async fn tcp_reader(server: &Server, route: &str, receive_buffer: u32) -> (TcpStream, String) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(receive_buffer).expect("rcvbuf");
    let mut stream = socket.connect(server.rtsp).await.expect("connect");
    let url = server.url(route);
    let setup = format!(
        "SETUP {url}/trackID=0 RTSP/1.0\r\nCSeq: 1\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n"
    );
    stream.write_all(setup.as_bytes()).await.expect("SETUP");
    let mut buf = vec![0u8; 2048];
    let n = stream.read(&mut buf).await.expect("SETUP reply");
    let reply = String::from_utf8_lossy(&buf[..n]);
    assert!(reply.starts_with("RTSP/1.0 200"), "{reply}");
    let session = reply
        .lines()
        .find_map(|l| l.strip_prefix("Session: "))
        .and_then(|s| s.split(';').next())
        .expect("session")
        .to_owned();
    let play = format!("PLAY {url} RTSP/1.0\r\nCSeq: 2\r\nSession: {session}\r\n\r\n");
    stream.write_all(play.as_bytes()).await.expect("PLAY");
    (stream, session)
}

/// Sets up a TCP-interleaved session by hand, starts it, and then never reads again.
async fn stalled_reader(server: &Server, route: &str) -> TcpStream {
    // A tiny receive window makes the stall reach the server at once.
    tcp_reader(server, route, 4096).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_readers_all_receive_and_a_stalled_one_slows_nobody() {
    let server = Server::start(&file_route("unicast", &sample_clip()));
    let _stalled = stalled_reader(&server, "unicast").await;
    let readers: Vec<_> = (0..20)
        .map(|i| {
            let transport = if i % 2 == 0 {
                Transport::Tcp(TcpTransportOptions::default())
            } else {
                Transport::Udp(UdpTransportOptions::default())
            };
            tokio::spawn(count_frames(server.url("unicast"), transport, 6))
        })
        .collect();
    for (i, reader) in readers.into_iter().enumerate() {
        let (frames, lost) = reader.await.expect("reader task");
        // 6 s at 25 fps is 150 frames, plus up to a second of kept GOP at the start.
        assert!(frames >= 140, "reader {i} got {frames} frames");
        assert_eq!(lost, 0, "reader {i} lost packets");
    }
}

/// A reader that stops reading and never closes is let go: the kernel buffers at most a fixed
/// amount for it (not the 4 MiB it would grow to, which a route of this rate takes over a minute
/// to fill), and the server gives up once a write has waited 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_is_let_go() {
    let server = Server::start(&file_route("unicast", &sample_clip()));
    let stalled = stalled_reader(&server, "unicast").await;
    let port = stalled.local_addr().expect("local address").port();
    assert!(common::server_holds(server.rtsp.port(), port));
    let after =
        common::until_server_lets_go(server.rtsp.port(), &[port], Duration::from_secs(40)).await;
    println!("the server let go of the stalled reader after {after:?}");
}

/// Twenty-six megabits a second of 640x360 noise, H.264 baseline, one keyframe a second: enough
/// that a reader that pauses for 400 ms fills the server's socket buffer.
fn heavy_clip() -> std::path::PathBuf {
    common::clip(
        "heavy-noise.mp4",
        "-f lavfi -i testsrc2=size=640x360:rate=25:duration=4 -vf noise=alls=40:allf=t \
         -c:v libx264 -preset ultrafast -profile:v baseline -g 25 -qp 28 -pix_fmt yuv420p",
    )
}

/// What a TCP-interleaved connection carried, parsed as a player does.
#[derive(Debug, Default)]
struct Interleaved {
    packets: u64,
    /// RTP sequence numbers that did not follow the one before.
    gaps: u64,
    /// The CSeq of each response, in the order they came.
    responses: Vec<u32>,
    last_sequence: Option<u16>,
}

impl Interleaved {
    /// Takes what `buf` holds whole (a `$` frame or a response) and returns how much it took;
    /// panics on a byte that starts neither, i.e. a frame or response cut by another.
    fn take(&mut self, buf: &[u8]) -> usize {
        match buf.first() {
            None => 0,
            Some(b'$') => {
                let Some(&[_, channel, hi, lo]) = buf.get(..4) else {
                    return 0;
                };
                let end = 4 + usize::from(u16::from_be_bytes([hi, lo]));
                let Some(packet) = buf.get(4..end) else {
                    return 0;
                };
                if channel == 0 {
                    assert_eq!(packet[0] >> 6, 2, "an RTP packet of version 2");
                    let sequence = u16::from_be_bytes([packet[2], packet[3]]);
                    if self
                        .last_sequence
                        .is_some_and(|last| last.wrapping_add(1) != sequence)
                    {
                        self.gaps += 1;
                    }
                    self.last_sequence = Some(sequence);
                    self.packets += 1;
                }
                end
            }
            Some(_) => {
                let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    assert!(buf.len() < 4096, "a response head without end");
                    return 0;
                };
                let head = std::str::from_utf8(&buf[..head_end]).expect("a text response head");
                assert!(head.starts_with("RTSP/1.0 200"), "response: {head:?}");
                let field = |name: &str| {
                    head.lines().find_map(|l| {
                        l.split_once(':')
                            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                            .map(|(_, v)| v.trim().to_owned())
                    })
                };
                let body: usize = field("Content-Length").map_or(0, |v| v.parse().expect("length"));
                let end = head_end + 4 + body;
                if buf.len() < end {
                    return 0;
                }
                self.responses
                    .push(field("CSeq").and_then(|v| v.parse().ok()).expect("CSeq"));
                end
            }
        }
    }
}

/// A TCP reader that keeps pausing (so the server's writes to it block, and its media goes out by
/// the slow path and back) and asks for GET_PARAMETER keep-alives in between gets an intact
/// stream: every `$` frame whole, no RTP packet missing, every response whole and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_reader_that_pauses_and_keeps_alive_gets_every_packet_and_answer_intact() {
    let server = Server::start(&file_route("heavy", &heavy_clip()));
    common::wait_live(&server, "heavy").await;
    let (stream, session) = tcp_reader(&server, "heavy", 16 * 1024).await;
    let (mut read, mut write) = stream.into_split();
    let url = server.url("heavy");
    // PLAY's answer and everything after it go through the parser.
    let mut parsed = Interleaved::default();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut cseq = 2;
    let until = tokio::time::Instant::now() + Duration::from_secs(8);
    while tokio::time::Instant::now() < until {
        cseq += 1;
        let keep_alive =
            format!("GET_PARAMETER {url} RTSP/1.0\r\nCSeq: {cseq}\r\nSession: {session}\r\n\r\n");
        write
            .write_all(keep_alive.as_bytes())
            .await
            .expect("GET_PARAMETER");
        // Read for 100 ms, then pause for 400 (a second of this clip is 3.3 MB).
        let reading = tokio::time::Instant::now() + Duration::from_millis(100);
        while let Ok(read) = tokio::time::timeout_at(reading, read.read(&mut chunk)).await {
            let n = read.expect("the server keeps the connection");
            assert!(n > 0, "the server closed the connection");
            buf.extend_from_slice(&chunk[..n]);
            loop {
                let taken = parsed.take(&buf);
                if taken == 0 {
                    break;
                }
                buf.drain(..taken);
            }
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    println!(
        "{} packets, {} gaps, responses {:?}",
        parsed.packets, parsed.gaps, parsed.responses
    );
    assert_eq!(parsed.gaps, 0, "no RTP packet missing");
    assert!(
        parsed.packets > 1000,
        "media flowed: {} packets",
        parsed.packets
    );
    let expected: Vec<u32> = (2..cseq).collect();
    assert!(
        parsed.responses.starts_with(&expected),
        "every response whole and in order: {:?}",
        parsed.responses
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_errors_and_other_readers_play_on() {
    let server = Server::start(&file_route("clip", &short_clip()));
    let reader = tokio::spawn(count_frames(
        server.url("clip"),
        Transport::Tcp(TcpTransportOptions::default()),
        5,
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let url = server.url("clip");

    let garbage = exchange(
        &server,
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage\r\n\r\n",
    )
    .await;
    assert!(garbage.starts_with("RTSP/1.0 400"), "garbage: {garbage:?}");

    let truncated = exchange(
        &server,
        format!("DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\nAcc").as_bytes(),
    )
    .await;
    assert_eq!(truncated, "", "a truncated request waits for more");

    let mut huge = format!("OPTIONS {url} RTSP/1.0\r\nCSeq: 1\r\nX-Padding: ").into_bytes();
    huge.extend(std::iter::repeat_n(b'x', 100 * 1024));
    huge.extend_from_slice(b"\r\n\r\n");
    let huge = exchange(&server, &huge).await;
    assert!(huge.starts_with("RTSP/1.0 400"), "huge: {huge:?}");

    let wrong_cseq = exchange(
        &server,
        format!(
            "OPTIONS {url} RTSP/1.0\r\nCSeq: nope\r\n\r\nOPTIONS {url} RTSP/1.0\r\nCSeq: 2\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(
        wrong_cseq.starts_with("RTSP/1.0 400"),
        "wrong CSeq: {wrong_cseq:?}"
    );
    assert!(
        wrong_cseq.contains("RTSP/1.0 200 OK\r\n"),
        "the connection goes on: {wrong_cseq:?}"
    );

    let unknown = exchange(
        &server,
        format!("FROB {url} RTSP/1.0\r\nCSeq: 1\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(
        unknown.starts_with("RTSP/1.0 501"),
        "unknown method: {unknown:?}"
    );

    let not_found = exchange(
        &server,
        format!(
            "DESCRIBE rtsp://{}/nope RTSP/1.0\r\nCSeq: 1\r\n\r\n",
            server.rtsp
        )
        .as_bytes(),
    )
    .await;
    assert!(
        not_found.starts_with("RTSP/1.0 404"),
        "unknown route: {not_found:?}"
    );

    let bad_session = exchange(
        &server,
        format!("PLAY {url} RTSP/1.0\r\nCSeq: 1\r\nSession: 123\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(
        bad_session.starts_with("RTSP/1.0 454"),
        "bad session: {bad_session:?}"
    );

    let bad_transport = exchange(
        &server,
        format!("SETUP {url}/trackID=0 RTSP/1.0\r\nCSeq: 1\r\nTransport: RTP/SAVP;unicast;client_port=1-2\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert!(
        bad_transport.starts_with("RTSP/1.0 461"),
        "unsupported transport: {bad_transport:?}"
    );

    let (frames, lost) = reader.await.expect("reader");
    assert!(
        frames >= 115 && lost == 0,
        "the reader kept playing: {frames} frames, {lost} lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_corrupt_files_fail_their_route_only() {
    let dir = common::TempDir::new();
    let corrupt = dir.path().join("corrupt.mp4");
    let mut bytes = std::fs::read(short_clip()).expect("clip");
    // Keep the header, scramble the rest: the sample tables no longer make sense.
    for (i, b) in bytes.iter_mut().enumerate().skip(32) {
        *b = (i as u8).wrapping_mul(31);
    }
    std::fs::write(&corrupt, &bytes).expect("write corrupt file");
    let routes = format!(
        "{}{}{}",
        file_route("good", &short_clip()),
        file_route("missing", &dir.path().join("nope.mp4")),
        file_route("corrupt", &corrupt)
    );
    let mut server = Server::start(&routes);
    for route in ["missing", "corrupt"] {
        let reply = exchange(
            &server,
            format!("DESCRIBE {} RTSP/1.0\r\nCSeq: 1\r\n\r\n", server.url(route)).as_bytes(),
        )
        .await;
        assert!(reply.starts_with("RTSP/1.0 503"), "{route}: {reply:?}");
        assert!(
            reply.contains("source failed"),
            "{route} says why: {reply:?}"
        );
    }
    assert!(
        server.wait_for_log("nope.mp4", Duration::from_secs(5)),
        "the log names the file"
    );
    let (frames, _) = count_frames(
        server.url("good"),
        Transport::Tcp(TcpTransportOptions::default()),
        3,
    )
    .await;
    assert!(frames >= 60, "the good route serves: {frames}");
    assert!(server.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_half_open_connections_are_dropped_and_stop_no_reader() {
    let server = Server::start(&file_route("clip", &short_clip()));
    let mut half_open = Vec::new();
    for _ in 0..50 {
        half_open.push(TcpStream::connect(server.rtsp).await.expect("connect"));
    }
    let mut trickling = TcpStream::connect(server.rtsp).await.expect("connect");
    trickling
        .write_all(b"OPTIONS rtsp://127.0.0.1/clip RTSP/1.0\r\nCSe")
        .await
        .expect("send");
    let (frames, lost) = count_frames(
        server.url("clip"),
        Transport::Tcp(TcpTransportOptions::default()),
        4,
    )
    .await;
    assert!(
        frames >= 90 && lost == 0,
        "the reader played beside them: {frames}"
    );
    // A request that never completes is dropped after about 10-15 s.
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(20), trickling.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the trickling connection was closed"
    );
}

/// Sets up and plays a TCP-interleaved session by hand; returns the connection, media flowing, or
/// the refusal.
async fn raw_reader(server: &Server, route: &str) -> Result<TcpStream, String> {
    let mut stream = TcpStream::connect(server.rtsp)
        .await
        .map_err(|e| e.to_string())?;
    let url = server.url(route);
    let setup = format!(
        "SETUP {url}/trackID=0 RTSP/1.0\r\nCSeq: 1\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n"
    );
    stream
        .write_all(setup.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 2048];
    let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
    let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
    let Some(session) = reply
        .lines()
        .find_map(|l| l.strip_prefix("Session: "))
        .and_then(|s| s.split(';').next())
    else {
        return Err(reply);
    };
    let play = format!("PLAY {url} RTSP/1.0\r\nCSeq: 2\r\nSession: {session}\r\n\r\n");
    stream
        .write_all(play.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    // A reader's place under max_clients is taken at PLAY: a refusal comes here (or at SETUP,
    // above, when the server was full already).
    let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
    let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
    if reply.starts_with("RTSP/1.0 200") {
        Ok(stream)
    } else {
        Err(reply)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_over_max_clients_is_refused_while_the_others_play() {
    let server = Server::start_adding("max_clients = 100\n", &file_route("clip", &short_clip()));
    common::wait_live(&server, "clip").await;
    let mut readers = Vec::new();
    for _ in 0..100 {
        let stream = raw_reader(&server, "clip")
            .await
            .expect("one of the first 100");
        readers.push(tokio::spawn(async move {
            let mut stream = stream;
            let mut buf = vec![0u8; 16 * 1024];
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            let mut late_bytes = 0usize;
            while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                if n == 0 {
                    break;
                }
                if deadline.saturating_duration_since(tokio::time::Instant::now())
                    < Duration::from_secs(1)
                {
                    late_bytes += n;
                }
            }
            late_bytes
        }));
    }
    let refused = raw_reader(&server, "clip")
        .await
        .expect_err("the 101st is refused");
    assert!(refused.starts_with("RTSP/1.0 453"), "{refused}");
    for (i, reader) in readers.into_iter().enumerate() {
        let late = reader.await.expect("reader");
        assert!(
            late > 0,
            "reader {i} still received media in its last second"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_over_max_bandwidth_is_refused_while_the_first_plays() {
    // The sample sends about 450 kbit/s, never less than 100 in a second: one reader is over a
    // 100 kbit/s budget.
    let server = Server::start_adding(
        "max_bandwidth_kbps = 100\n",
        &file_route("clip", &common::sample_clip()),
    );
    common::wait_live(&server, "clip").await;
    let mut first = raw_reader(&server, "clip").await.expect("the first reader");
    let playing = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut bytes = 0usize;
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, first.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            bytes += n;
        }
        bytes
    });
    // The meter measures once a second; a second reader admitted before it saw the first one's
    // traffic only adds to it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut admitted = Vec::new();
    let refused = loop {
        match raw_reader(&server, "clip").await {
            Err(refused) => break refused,
            Ok(stream) => admitted.push(stream),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reader was refused over the budget"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(
        refused.starts_with("RTSP/1.0 453") && refused.contains("max_bandwidth_kbps"),
        "{refused}"
    );
    let bytes = playing.await.expect("first reader");
    assert!(bytes > 150_000, "the first reader played on: {bytes} bytes");
}

/// A UDP session set up by hand on track 0: the connection, the session id and the socket its
/// RTP comes to.
async fn udp_session(server: &Server, route: &str) -> (TcpStream, String, UdpSocket) {
    let rtp = UdpSocket::bind("127.0.0.1:0").await.expect("rtp socket");
    let port = rtp.local_addr().expect("rtp port").port();
    let mut stream = TcpStream::connect(server.rtsp).await.expect("connect");
    let url = server.url(route);
    let reply = request(
        &mut stream,
        &format!(
            "SETUP {url}/trackID=0 RTSP/1.0\r\nCSeq: 1\r\n\
             Transport: RTP/AVP;unicast;client_port={port}-{}\r\n\r\n",
            port + 1
        ),
    )
    .await;
    let session = reply
        .lines()
        .find_map(|l| l.strip_prefix("Session: "))
        .and_then(|s| s.split(';').next())
        .unwrap_or_else(|| panic!("SETUP: {reply}"))
        .to_owned();
    let reply = request(
        &mut stream,
        &format!("PLAY {url} RTSP/1.0\r\nCSeq: 2\r\nSession: {session}\r\n\r\n"),
    )
    .await;
    assert!(reply.starts_with("RTSP/1.0 200"), "PLAY: {reply}");
    (stream, session, rtp)
}

async fn request(stream: &mut TcpStream, text: &str) -> String {
    stream.write_all(text.as_bytes()).await.expect("request");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("a reply in time")
        .expect("reply");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Checks that nothing more comes to `rtp` once what was on its way is drained.
async fn goes_quiet(rtp: &UdpSocket, who: &str) {
    while receives(rtp, Duration::from_millis(100)).await {}
    assert!(
        !receives(rtp, Duration::from_millis(400)).await,
        "{who} gets nothing more"
    );
}

/// Whether an RTP packet comes to `rtp` within `within`.
async fn receives(rtp: &UdpSocket, within: Duration) -> bool {
    let mut buf = vec![0u8; 2048];
    tokio::time::timeout(within, rtp.recv(&mut buf))
        .await
        .is_ok()
}

/// UDP readers of a route are served together by the route's fan-out: readers that come, pause,
/// play again, tear down or vanish must not disturb the one that stays, and a paused or gone one
/// gets nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_readers_that_come_pause_and_go_leave_the_others_untouched() {
    let server = Server::start(&file_route("unicast", &sample_clip()));
    let steady = tokio::spawn(count_frames(
        server.url("unicast"),
        Transport::Udp(UdpTransportOptions::default()),
        8,
    ));
    let url = server.url("unicast");
    let started = tokio::time::Instant::now();
    let mut comers = 0;
    while started.elapsed() < Duration::from_secs(6) {
        let (mut stream, session, rtp) = udp_session(&server, "unicast").await;
        assert!(
            receives(&rtp, Duration::from_secs(2)).await,
            "a newcomer gets RTP"
        );
        let mut command = async |method: &str, cseq: u32| {
            let text =
                format!("{method} {url} RTSP/1.0\r\nCSeq: {cseq}\r\nSession: {session}\r\n\r\n");
            let reply = request(&mut stream, &text).await;
            assert!(reply.starts_with("RTSP/1.0 200"), "{method}: {reply}");
        };
        let what = match comers % 3 {
            // Pauses: nothing more comes, then it plays again.
            0 => {
                command("PAUSE", 3).await;
                goes_quiet(&rtp, "a paused reader").await;
                command("PLAY", 4).await;
                assert!(
                    receives(&rtp, Duration::from_secs(2)).await,
                    "it plays again"
                );
                "a reader that paused and played again"
            }
            1 => {
                command("TEARDOWN", 3).await;
                "a reader that tore down"
            }
            // The connection closes without a word.
            _ => {
                drop(stream);
                "a reader whose connection closed"
            }
        };
        if comers % 3 != 0 {
            goes_quiet(&rtp, what).await;
        }
        comers += 1;
    }
    let (frames, lost) = steady.await.expect("steady reader");
    assert!(comers >= 6, "only {comers} readers came and went");
    // 8 s at 25 fps is 200 frames, plus up to a second of kept GOP at the start.
    assert!(frames >= 190, "the steady reader got {frames} frames");
    assert_eq!(lost, 0, "the steady reader lost packets");
}
