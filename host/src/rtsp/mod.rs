//! The RTSP server: players (VLC, ffmpeg/OpenCV, GStreamer) read routes at `rtsp://host:port/ROUTE`.
//!
//! In: requests on TCP; the route hubs of the [`RouterHandle`](crate::router::RouterHandle). Out:
//! responses, and each route's shared RTP packets over UDP or interleaved in the TCP connection,
//! with RTCP sender reports. `codec` frames the connection, `session` is the protocol core (no
//! sockets, no clock), `sdp` describes streams, `server` is the tokio edge.

mod codec;
mod egress;
#[cfg(any(fuzzing, test))]
pub mod fuzz;
mod publish;
mod sdp;
mod server;
mod session;
mod transport;
mod udp;

use std::net::SocketAddr;

pub use server::RtspServer;

/// Why the RTSP server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no free pair of UDP ports for RTP/RTCP in {first}-{last} (server.rtp_ports)")]
    NoUdpPorts { first: u16, last: u16 },
}
