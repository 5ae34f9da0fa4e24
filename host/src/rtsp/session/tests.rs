//! The protocol core driven directly, one test per client behaviour it must satisfy.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::*;
use crate::config::{RouteConfig, SourceConfig};
use crate::sessions::ClientLimit;

struct Fixture {
    router: RouterHandle,
    auth: crate::auth::Auth,
    clients: Arc<ClientLimit>,
}

impl Fixture {
    /// A router with route `cam` playing the bundled sample.
    async fn new(max_clients: usize) -> Fixture {
        let router = RouterHandle::start();
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../media/sample.mp4");
        let routes = BTreeMap::from([(
            "cam".to_owned(),
            RouteConfig {
                source: SourceConfig::File {
                    path,
                    looping: true,
                },
                plugins: Vec::new(),
                access: Default::default(),
                read: Vec::new(),
                publish: Vec::new(),
                transcode: None,
                on_demand: None,
            },
        )]);
        router
            .apply(routes, Default::default(), Default::default())
            .await;
        for _ in 0..200 {
            let has_keyframe = router
                .stream("cam")
                .and_then(|s| s.subscribe())
                .is_some_and(|r| !r.backlog().is_empty());
            if has_keyframe {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Fixture {
            router,
            auth: crate::auth::Auth::default(),
            clients: ClientLimit::new(max_clients, u64::MAX),
        }
    }

    fn ctx(&self) -> Context<'_> {
        Context {
            router: &self.router,
            auth: &self.auth,
            clients: &self.clients,
            udp_ports: (30000, 30001),
            peer: "127.0.0.1:50000".parse().unwrap(),
            local: "127.0.0.1:8554".parse().unwrap(),
        }
    }
}

fn request(method: Method, url: &str, headers: &[(&'static str, &str)]) -> Request<Vec<u8>> {
    let mut builder = Request::builder(method, Version::V1_0).request_uri(Url::parse(url).unwrap());
    for (name, value) in headers {
        builder = builder.header(headers::HeaderName::from_static_str(name).unwrap(), *value);
    }
    builder.build(Vec::new())
}

fn header<'a>(response: &'a Response<Vec<u8>>, name: &'static str) -> Option<&'a str> {
    response
        .header(&headers::HeaderName::from_static_str(name).unwrap())
        .map(|v| v.as_str())
}

fn session_of(response: &Response<Vec<u8>>) -> String {
    header(response, "Session")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn options_lists_get_parameter_so_players_send_keepalives() {
    let fixture = Fixture::new(10).await;
    let mut conn = Connection::default();
    let reply = conn.handle(
        &request(
            Method::Options,
            "rtsp://127.0.0.1:8554/cam",
            &[("CSeq", "1")],
        ),
        &fixture.ctx(),
        Instant::now(),
    );
    assert_eq!(reply.response.status(), StatusCode::Ok);
    assert_eq!(header(&reply.response, "CSeq"), Some("1"));
    assert!(
        header(&reply.response, "Public")
            .unwrap()
            .contains("GET_PARAMETER")
    );
}

#[tokio::test]
async fn describe_gives_sdp_and_content_base_with_trailing_slash() {
    let fixture = Fixture::new(10).await;
    let mut conn = Connection::default();
    let reply = conn.handle(
        &request(
            Method::Describe,
            "rtsp://127.0.0.1:8554/cam",
            &[("CSeq", "2")],
        ),
        &fixture.ctx(),
        Instant::now(),
    );
    assert_eq!(reply.response.status(), StatusCode::Ok);
    assert_eq!(
        header(&reply.response, "Content-Base"),
        Some("rtsp://127.0.0.1:8554/cam/")
    );
    assert_eq!(
        header(&reply.response, "Content-Type"),
        Some("application/sdp")
    );
    let sdp = String::from_utf8(reply.response.body().clone()).unwrap();
    assert!(sdp.contains("a=rtpmap:96 H264/90000"), "{sdp}");
    assert!(sdp.contains("a=rtpmap:97 mpeg4-generic/48000/2"), "{sdp}");
}

#[tokio::test]
async fn unknown_route_is_404() {
    let fixture = Fixture::new(10).await;
    let mut conn = Connection::default();
    let reply = conn.handle(
        &request(
            Method::Describe,
            "rtsp://127.0.0.1:8554/nope",
            &[("CSeq", "2")],
        ),
        &fixture.ctx(),
        Instant::now(),
    );
    assert_eq!(reply.response.status(), StatusCode::NotFound);
}

#[tokio::test]
async fn missing_or_wrong_cseq_is_400() {
    let fixture = Fixture::new(10).await;
    let mut conn = Connection::default();
    for headers in [&[][..], &[("CSeq", "abc")][..]] {
        let reply = conn.handle(
            &request(Method::Options, "rtsp://127.0.0.1:8554/cam", headers),
            &fixture.ctx(),
            Instant::now(),
        );
        assert_eq!(reply.response.status(), StatusCode::BadRequest);
    }
}

#[tokio::test]
async fn setup_with_ffmpeg_query_url_then_play_names_the_first_packet() {
    let fixture = Fixture::new(10).await;
    let ctx = fixture.ctx();
    let mut conn = Connection::default();
    let now = Instant::now();
    let reply = conn.handle(
        &request(
            Method::Setup,
            "rtsp://127.0.0.1:8554/cam?token=x/trackID=0",
            &[
                ("CSeq", "3"),
                ("Transport", "RTP/AVP/UDP;unicast;client_port=5000-5001"),
            ],
        ),
        &ctx,
        now,
    );
    assert_eq!(reply.response.status(), StatusCode::Ok);
    let transport = header(&reply.response, "Transport").unwrap();
    assert!(
        transport
            .starts_with("RTP/AVP;unicast;client_port=5000-5001;server_port=30000-30001;ssrc="),
        "{transport}"
    );
    let session = session_of(&reply.response);
    assert_eq!(session.len(), 16);
    assert!(
        header(&reply.response, "Session")
            .unwrap()
            .ends_with(";timeout=60")
    );

    let reply = conn.handle(
        &request(
            Method::Play,
            "rtsp://127.0.0.1:8554/cam/",
            &[("CSeq", "4"), ("Session", &session)],
        ),
        &ctx,
        now,
    );
    assert_eq!(reply.response.status(), StatusCode::Ok);
    let rtp_info = header(&reply.response, "RTP-Info").unwrap().to_owned();
    let Action::Play(play) = reply.action else {
        panic!("PLAY starts sending");
    };
    let first = play.reader.backlog().first().expect("a kept keyframe");
    assert!(first.au.keyframe && first.au.track == 0);
    assert_eq!(
        rtp_info,
        format!(
            "url=rtsp://127.0.0.1:8554/cam?token=x/trackID=0;seq={};rtptime={}",
            first.rtp.first_seq, first.rtp.timestamp
        )
    );
    assert_eq!(
        play.tracks,
        vec![
            Some(TrackTransport::Udp {
                rtp: "127.0.0.1:5000".parse().unwrap(),
                rtcp: "127.0.0.1:5001".parse().unwrap()
            }),
            None
        ]
    );
}

#[tokio::test]
async fn play_gives_every_track_the_rtp_time_of_one_start_instant() {
    let fixture = Fixture::new(10).await;
    let ctx = fixture.ctx();
    let mut conn = Connection::default();
    // Past the sample's second keyframe (at 1 s), where no audio frame begins (they are 21.3 ms
    // apart): the first kept audio unit is a few milliseconds off the keyframe.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let now = Instant::now();
    let mut session: Option<String> = None;
    for track in 0..2 {
        let cseq = (track + 2).to_string();
        let transport = format!(
            "RTP/AVP/TCP;unicast;interleaved={}-{}",
            2 * track,
            2 * track + 1
        );
        let mut headers = vec![("CSeq", cseq.as_str()), ("Transport", transport.as_str())];
        if let Some(session) = &session {
            headers.push(("Session", session.as_str()));
        }
        let url = format!("rtsp://127.0.0.1:8554/cam/trackID={track}");
        let reply = conn.handle(&request(Method::Setup, &url, &headers), &ctx, now);
        assert_eq!(reply.response.status(), StatusCode::Ok);
        session.get_or_insert_with(|| session_of(&reply.response));
    }
    let session = session.unwrap();
    let reply = conn.handle(
        &request(
            Method::Play,
            "rtsp://127.0.0.1:8554/cam/",
            &[("CSeq", "4"), ("Session", &session)],
        ),
        &ctx,
        now,
    );
    let rtp_info = header(&reply.response, "RTP-Info").unwrap().to_owned();
    let Action::Play(play) = reply.action else {
        panic!("PLAY starts sending");
    };
    let media = play.reader.media();
    let starts: Vec<Instant> = rtp_info
        .split(',')
        .enumerate()
        .map(|(track, entry)| {
            let rtptime = entry
                .split(';')
                .find_map(|field| field.strip_prefix("rtptime="))
                .unwrap_or_else(|| panic!("rtptime in {entry}"));
            media
                .instant_of(track, rtptime.parse().unwrap(), now)
                .unwrap()
        })
        .collect();
    assert_eq!(starts.len(), 2, "{rtp_info}");
    let apart = starts[0]
        .max(starts[1])
        .duration_since(starts[0].min(starts[1]));
    assert!(
        apart < Duration::from_millis(1),
        "both rtptimes name one instant: {rtp_info} ({apart:?} apart)"
    );
    let audio = play.reader.backlog().iter().find(|unit| unit.au.track == 1);
    let audio = audio.expect("audio kept behind the keyframe");
    assert!(rtp_info.contains(&format!("seq={}", audio.rtp.first_seq)));
}

#[tokio::test]
async fn tcp_interleaved_channels_default_per_track() {
    let fixture = Fixture::new(10).await;
    let mut conn = Connection::default();
    let reply = conn.handle(
        &request(
            Method::Setup,
            "rtsp://127.0.0.1:8554/cam/trackID=1",
            &[("CSeq", "3"), ("Transport", "RTP/AVP/TCP;unicast")],
        ),
        &fixture.ctx(),
        Instant::now(),
    );
    let transport = header(&reply.response, "Transport").unwrap();
    assert!(
        transport.starts_with("RTP/AVP/TCP;unicast;interleaved=2-3;ssrc="),
        "{transport}"
    );
}

#[tokio::test]
async fn multicast_and_mixed_transports_are_461() {
    let fixture = Fixture::new(10).await;
    let ctx = fixture.ctx();
    let mut conn = Connection::default();
    let reply = conn.handle(
        &request(
            Method::Setup,
            "rtsp://127.0.0.1:8554/cam/trackID=0",
            &[("CSeq", "3"), ("Transport", "RTP/AVP;multicast")],
        ),
        &ctx,
        Instant::now(),
    );
    assert_eq!(reply.response.status(), StatusCode::UnsupportedTransport);

    let reply = conn.handle(
        &request(
            Method::Setup,
            "rtsp://127.0.0.1:8554/cam/trackID=0",
            &[("CSeq", "4"), ("Transport", "RTP/AVP/TCP;interleaved=0-1")],
        ),
        &ctx,
        Instant::now(),
    );
    let session = session_of(&reply.response);
    let reply = conn.handle(
        &request(
            Method::Setup,
            "rtsp://127.0.0.1:8554/cam/trackID=1",
            &[
                ("CSeq", "5"),
                ("Session", &session),
                ("Transport", "RTP/AVP;unicast;client_port=6000-6001"),
            ],
        ),
        &ctx,
        Instant::now(),
    );
    assert_eq!(reply.response.status(), StatusCode::UnsupportedTransport);
}

#[tokio::test]
async fn wrong_session_is_454_and_play_without_setup_too() {
    let fixture = Fixture::new(10).await;
    let ctx = fixture.ctx();
    let mut conn = Connection::default();
    let reply = conn.handle(
        &request(Method::Play, "rtsp://127.0.0.1:8554/cam", &[("CSeq", "1")]),
        &ctx,
        Instant::now(),
    );
    assert_eq!(reply.response.status(), StatusCode::SessionNotFound);
    let reply = conn.handle(
        &request(
            Method::GetParameter,
            "rtsp://127.0.0.1:8554/cam",
            &[("CSeq", "2"), ("Session", "BOGUS")],
        ),
        &ctx,
        Instant::now(),
    );
    assert_eq!(reply.response.status(), StatusCode::SessionNotFound);
}

/// The status of a SETUP of one track on `conn` (TCP or UDP), and its session if it has one.
fn set_up(
    conn: &mut Connection,
    ctx: &Context<'_>,
    transport: &str,
    now: Instant,
) -> (StatusCode, Option<String>) {
    let setup = request(
        Method::Setup,
        "rtsp://127.0.0.1:8554/cam/trackID=0",
        &[("CSeq", "1"), ("Transport", transport)],
    );
    let reply = conn.handle(&setup, ctx, now);
    let status = reply.response.status();
    (
        status,
        (status == StatusCode::Ok).then(|| session_of(&reply.response)),
    )
}

/// The status of a PLAY of `session` on `conn`.
fn play(conn: &mut Connection, ctx: &Context<'_>, session: &str, now: Instant) -> StatusCode {
    let play = request(
        Method::Play,
        "rtsp://127.0.0.1:8554/cam/",
        &[("CSeq", "2"), ("Session", session)],
    );
    conn.handle(&play, ctx, now).response.status()
}

/// SETUP then PLAY on `conn` (one track, TCP or UDP); the PLAY response's status.
fn setup_and_play(
    conn: &mut Connection,
    ctx: &Context<'_>,
    transport: &str,
    now: Instant,
) -> StatusCode {
    let (status, session) = set_up(conn, ctx, transport, now);
    assert_eq!(status, StatusCode::Ok);
    play(conn, ctx, &session.unwrap_or_default(), now)
}

#[tokio::test]
async fn max_clients_counts_sessions_that_play_and_refuses_the_next_with_453_before_a_route_opens()
{
    let fixture = Fixture::new(1).await;
    let ctx = fixture.ctx();
    let tcp = "RTP/AVP/TCP;interleaved=0-1";
    // Sessions that only SETUP hold no slot: any number of them leave room for a reader.
    let mut idle: Vec<Connection> = (0..5).map(|_| Connection::default()).collect();
    for conn in &mut idle {
        let setup = request(
            Method::Setup,
            "rtsp://127.0.0.1:8554/cam/trackID=0",
            &[("CSeq", "1"), ("Transport", tcp)],
        );
        assert_eq!(
            conn.handle(&setup, &ctx, Instant::now()).response.status(),
            StatusCode::Ok
        );
    }
    let mut late = Connection::default();
    let (_, late_session) = set_up(&mut late, &ctx, tcp, Instant::now());
    let mut first = Connection::default();
    assert_eq!(
        setup_and_play(&mut first, &ctx, tcp, Instant::now()),
        StatusCode::Ok
    );
    // Full now: a session set up while there was room is refused at PLAY, and a new reader at
    // SETUP already, before a route is opened for it.
    assert_eq!(
        play(
            &mut late,
            &ctx,
            &late_session.unwrap_or_default(),
            Instant::now()
        ),
        StatusCode::NotEnoughBandwidth
    );
    let mut second = Connection::default();
    assert_eq!(
        set_up(&mut second, &ctx, tcp, Instant::now()).0,
        StatusCode::NotEnoughBandwidth
    );
    assert!(
        second
            .route_to_open(
                &request(
                    Method::Describe,
                    "rtsp://127.0.0.1:8554/cam",
                    &[("CSeq", "3")]
                ),
                &ctx,
                Instant::now()
            )
            .is_none()
    );
    drop(first);
    let mut third = Connection::default();
    assert_eq!(
        setup_and_play(&mut third, &ctx, tcp, Instant::now()),
        StatusCode::Ok
    );
}

#[tokio::test]
async fn a_session_that_does_not_play_in_time_expires() {
    let fixture = Fixture::new(10).await;
    let mut conn = Connection::default();
    let start = Instant::now();
    let setup = request(
        Method::Setup,
        "rtsp://127.0.0.1:8554/cam/trackID=0",
        &[("CSeq", "1"), ("Transport", "RTP/AVP/TCP;interleaved=0-1")],
    );
    assert_eq!(
        conn.handle(&setup, &fixture.ctx(), start).response.status(),
        StatusCode::Ok
    );
    // Keep-alives do not help a session that never plays.
    conn.keep_alive(start + SESSION_START_TIMEOUT);
    assert!(conn.expiry(start + SESSION_START_TIMEOUT).is_none());
    assert!(
        conn.expiry(start + SESSION_START_TIMEOUT + Duration::from_secs(1))
            .is_some_and(|why| why.contains("PLAY"))
    );
}

#[tokio::test]
async fn tcp_sessions_expire_like_udp_ones_unless_they_play() {
    let fixture = Fixture::new(10).await;
    let start = Instant::now();
    let late = start + Duration::from_secs(30) + SESSION_TIMEOUT + Duration::from_secs(1);
    for transport in [
        "RTP/AVP;unicast;client_port=5000-5001",
        "RTP/AVP/TCP;interleaved=0-1",
    ] {
        let mut conn = Connection::default();
        assert_eq!(
            setup_and_play(&mut conn, &fixture.ctx(), transport, start),
            StatusCode::Ok
        );
        assert!(conn.expiry(start + SESSION_TIMEOUT).is_none());
        conn.keep_alive(start + Duration::from_secs(30));
        assert!(
            conn.expiry(start + SESSION_TIMEOUT + Duration::from_secs(1))
                .is_none()
        );
        let playing_tcp = transport.contains("TCP");
        assert_eq!(
            conn.expiry(late).is_some(),
            !playing_tcp,
            "{transport}: a playing TCP reader shows life by taking its bytes"
        );
        // Paused, a TCP session has only requests and RTCP to show life with.
        let session = conn.session_id().unwrap().to_owned();
        let pause = request(
            Method::Pause,
            "rtsp://127.0.0.1:8554/cam/",
            &[("CSeq", "3"), ("Session", &session)],
        );
        conn.handle(&pause, &fixture.ctx(), start + Duration::from_secs(30));
        assert!(conn.expiry(late).is_some(), "{transport} paused");
    }
}
