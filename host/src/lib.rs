//! wasmcast: a programmable live-video router.
//!
//! The data path, top to bottom: [`sources`] (files today) publish access units into the [`router`]'s
//! per-route stream hubs, which packetize them once into RTP ([`rtp`]); the egress servers ([`rtsp`])
//! read the hubs and send to players. [`config`] is the file that says which routes exist.

pub mod config;
pub mod media;
pub mod router;
pub mod rtp;
pub mod rtsp;
pub mod sources;

use std::future::Future;
use std::net::SocketAddr;

use config::Config;
use router::RouterHandle;
use rtsp::RtspServer;

/// A server with its listeners bound and its routes started, ready to run.
pub struct Server {
    router: RouterHandle,
    rtsp: RtspServer,
}

impl Server {
    /// Starts the routes of `config` and binds its listeners.
    pub async fn start(config: Config) -> Result<Server, rtsp::Error> {
        let router = RouterHandle::start();
        let rtsp = RtspServer::bind(&config.server, router.clone()).await?;
        let changes = router.apply(config.routes).await;
        tracing::info!(routes = ?changes.added, "routes started");
        Ok(Server { router, rtsp })
    }

    /// Where the RTSP server listens.
    pub fn rtsp_addr(&self) -> std::io::Result<SocketAddr> {
        self.rtsp.local_addr()
    }

    /// The server's RTP and RTCP ports for UDP transport.
    pub fn rtp_ports(&self) -> (u16, u16) {
        self.rtsp.udp_ports()
    }

    /// Serves until `shutdown` completes, then stops every route.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        self.rtsp.run(shutdown).await;
        self.router.shutdown().await;
    }
}
