//! IP allow and deny lists, server-wide and per route, with clients on other loopback addresses.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{Server, short_clip, wait_live};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// Sends `request` from the local address `from` to `to`; returns the reply ("" if the server closed
/// the connection without one).
async fn from(from: [u8; 4], to: SocketAddr, request: &str) -> String {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(IpAddr::from(from), 0))
        .expect("bind a loopback address");
    let mut stream = socket.connect(to).await.expect("connect");
    let _ = stream.write_all(request.as_bytes()).await;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut reply)).await;
    String::from_utf8_lossy(&reply).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_and_deny_lists_refuse_others_and_serve_the_rest() {
    let clip = short_clip();
    let routes = format!(
        "[routes.open]\nsource = \"file:{0}\"\n\
         [routes.private]\nsource = \"file:{0}\"\nallow = [\"127.0.0.2/32\"]\n\
         [routes.feed]\nsource = \"push\"\nallow = [\"127.0.0.2\"]\n",
        clip.display()
    );
    let server = Server::start_with(
        "rtsp = \"0.0.0.0:0\"\nhttp = \"0.0.0.0:0\"\nrtp_ports = \"31000-31999\"\ndeny = [\"127.0.0.3\"]\n",
        &routes,
    );
    wait_live(&server, "open").await;
    let rtsp: SocketAddr = ([127, 0, 0, 1], server.rtsp.port()).into();
    let http: SocketAddr = ([127, 0, 0, 1], server.http.port()).into();
    let describe =
        |route: &str| format!("DESCRIBE rtsp://{rtsp}/{route} RTSP/1.0\r\nCSeq: 1\r\n\r\n");

    assert!(
        from([127, 0, 0, 1], rtsp, &describe("open"))
            .await
            .starts_with("RTSP/1.0 200")
    );
    let refused = from([127, 0, 0, 1], rtsp, &describe("private")).await;
    assert!(
        refused.starts_with("RTSP/1.0 403"),
        "outside the route's allow list: {refused}"
    );
    assert!(
        from([127, 0, 0, 2], rtsp, &describe("private"))
            .await
            .starts_with("RTSP/1.0 200")
    );
    assert_eq!(
        from([127, 0, 0, 3], rtsp, &describe("open")).await,
        "",
        "denied server-wide: closed"
    );

    let push = "POST /feed HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx";
    let refused = from([127, 0, 0, 1], http, push).await;
    assert!(
        refused.starts_with("HTTP/1.1 403"),
        "push outside the route's allow list: {refused}"
    );
    let api = "GET /api/v1/routes HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    assert!(
        from([127, 0, 0, 3], http, api)
            .await
            .starts_with("HTTP/1.1 403")
    );
    assert!(
        from([127, 0, 0, 2], http, api)
            .await
            .starts_with("HTTP/1.1 200")
    );
}
