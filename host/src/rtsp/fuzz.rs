//! Entry point for the fuzz targets in `fuzz/` (built by `cargo fuzz`, and by the unit tests so
//! that it keeps compiling): a client's bytes through the codec and the protocol core, with a push
//! route to ANNOUNCE to and play from.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use super::codec::{Incoming, RtspDecoder};
use super::session::{Connection, Context};
use crate::config::{RouteConfig, SourceConfig};
use crate::router::RouterHandle;
use crate::sessions::ClientLimit;

struct World {
    runtime: tokio::runtime::Runtime,
    router: RouterHandle,
    auth: crate::auth::Auth,
    clients: Arc<ClientLimit>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let router = runtime.block_on(async {
            let router = RouterHandle::start();
            let route = RouteConfig {
                source: SourceConfig::Push { feed: "cam".into() },
                plugins: Vec::new(),
                access: Default::default(),
                read: Vec::new(),
                publish: Vec::new(),
                transcode: None,
                on_demand: None,
            };
            router
                .apply(
                    BTreeMap::from([("cam".to_owned(), route)]),
                    BTreeMap::new(),
                    BTreeMap::new(),
                )
                .await;
            router
        });
        World {
            runtime,
            router,
            auth: crate::auth::Auth::default(),
            clients: ClientLimit::new(8, u64::MAX),
        }
    })
}

/// Feeds `data` to one connection as if a client had sent it.
pub fn connection(data: &[u8]) {
    let world = world();
    let _runtime = world.runtime.enter();
    let peer: SocketAddr = ([127, 0, 0, 1], 50000).into();
    let ctx = Context {
        router: &world.router,
        auth: &world.auth,
        clients: &world.clients,
        udp_ports: (30000, 30001),
        peer,
        local: ([127, 0, 0, 1], 8554).into(),
    };
    let mut connection = Connection::default();
    let mut buffer = BytesMut::from(data);
    let mut response = Vec::new();
    let mut decoder = RtspDecoder::default();
    while let Ok(Some(incoming)) = decoder.decode(&mut buffer) {
        match incoming {
            Incoming::Request(request) => {
                let reply = connection.handle(&request, &ctx, Instant::now());
                response.clear();
                let _ = reply.response.write(&mut response);
            }
            Incoming::Data { channel, payload } => {
                let _ = connection.receive_interleaved(channel, &payload, Instant::now());
            }
            Incoming::Response => {}
        }
    }
}

#[cfg(test)]
mod tests {
    /// A publisher's whole session, then a reader's, then the same bytes cut short everywhere.
    #[test]
    fn a_publish_and_a_play_session_and_their_prefixes_go_through() {
        let sdp = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
            m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n\
            a=fmtp:96 packetization-mode=1;sprop-parameter-sets=Z0LAHtkBQH7AEQAAAwABAAADADIPFi5I,aMuMsg==\r\n\
            a=control:trackID=0\r\n";
        let mut session = format!(
            "OPTIONS rtsp://h/cam RTSP/1.0\r\nCSeq: 1\r\n\r\n\
             ANNOUNCE rtsp://h/cam RTSP/1.0\r\nCSeq: 2\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}\
             SETUP rtsp://h/cam/trackID=0 RTSP/1.0\r\nCSeq: 3\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1;mode=record\r\n\r\n\
             RECORD rtsp://h/cam RTSP/1.0\r\nCSeq: 4\r\nSession: 1\r\n\r\n",
            sdp.len()
        )
        .into_bytes();
        // One interleaved RTP packet carrying an IDR slice.
        let rtp = [
            0x80, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0x65, 0x88, 0x80, 0x40,
        ];
        session.extend_from_slice(&[b'$', 0, 0, rtp.len() as u8]);
        session.extend_from_slice(&rtp);
        session.extend_from_slice(
            b"DESCRIBE rtsp://h/cam RTSP/1.0\r\nCSeq: 1\r\n\r\n\
              SETUP rtsp://h/cam/trackID=0 RTSP/1.0\r\nCSeq: 2\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n\
              PLAY rtsp://h/cam RTSP/1.0\r\nCSeq: 3\r\n\r\n\
              TEARDOWN rtsp://h/cam RTSP/1.0\r\nCSeq: 4\r\n\r\n",
        );
        for end in 0..=session.len() {
            super::connection(&session[..end]);
        }
    }
}
