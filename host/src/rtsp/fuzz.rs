//! Entry point for the fuzz targets in `fuzz/` (built only by `cargo fuzz`): a client's bytes
//! through the codec and the protocol core, with a push route to ANNOUNCE to and play from.

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
            };
            router
                .apply(BTreeMap::from([("cam".to_owned(), route)]))
                .await;
            router
        });
        World {
            runtime,
            router,
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
        clients: &world.clients,
        udp_ports: (30000, 30001),
        peer,
        local: ([127, 0, 0, 1], 8554).into(),
    };
    let mut connection = Connection::default();
    let mut buffer = BytesMut::from(data);
    let mut response = Vec::new();
    while let Ok(Some(incoming)) = RtspDecoder.decode(&mut buffer) {
        match incoming {
            Incoming::Request(request) => {
                let reply = connection.handle(&request, &ctx, Instant::now());
                response.clear();
                let _ = reply.response.write(&mut response);
            }
            Incoming::Data { channel, payload } => {
                connection.receive_interleaved(channel, &payload, Instant::now());
            }
            Incoming::Response => {}
        }
    }
}
