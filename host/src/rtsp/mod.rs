//! The RTSP server: players (VLC, ffmpeg/OpenCV, GStreamer) read routes at `rtsp://host:port/ROUTE`.
//!
//! In: requests on TCP; the route hubs of the router (`RouterHandle`). Out: responses, and each
//! route's shared RTP packets over UDP or interleaved in the TCP connection, with RTCP sender
//! reports. Publishers (ANNOUNCE/RECORD) come in the same way.
//!
//! The protocol core has no sockets and reads no clock: `codec` frames the connection, `inbound` holds
//! it to an allowance of bytes a second, `session`
//! handles requests (its `play` and `record` halves), `transport` chooses a track's transport,
//! `publish` turns a publisher's RTP into access units, `sdp` describes streams. The tokio edge:
//! `server` (accept loop, one task per connection), `egress` (one writer task per connection, which
//! sends to TCP readers itself), `fanout` (the tasks that send to the UDP readers of a route), `udp`
//! (the shared RTP and RTCP sockets).

mod codec;
mod egress;
mod fanout;
#[cfg(any(fuzzing, test))]
pub mod fuzz;
mod inbound;
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
