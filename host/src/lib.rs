//! wasmcast: a programmable live-video router.
//!
//! The data path, top to bottom, one module per step:
//!
//! ```text
//! sources ──► pipeline ──► hub ──► rtsp / webrtc ──► players
//!   file, push      plugin chain,     per-route ring    RTSP over TCP/UDP,
//!   (HTTP, RTSP),   decode, frame     of RTP packets,   WHEP in browsers
//!   RTSP pull       plugins, encode   made once
//! ```
//!
//! - [`sources`] turn files, pushes and pulled streams into access units ([`media`]) and publish
//!   them into a route's [`hub`] through a publish claim.
//! - [`pipeline`] runs between a publisher and its hub when the route has plugins ([`plugins`]) or
//!   re-encodes; the hub sees it as a `Processor` and hands it a narrow `Sink`.
//! - [`hub`] packetizes each unit into RTP ([`rtp`]) once and shares it with every reader through
//!   a ring bounded in units and bytes; it keeps the current GOP for new readers.
//! - [`rtsp`] and [`webrtc`] read hubs and send to players; `http` serves WHEP, pushes, the player
//!   and status pages, the API and metrics.
//!
//! Around the data path: [`config`] is the model of the config file and its checker; `router`
//! owns the route map and wires each route's source, pipeline and hub; `auth` decides who may
//! connect, read, publish and use the API; `sessions` and `listen` count and cap clients and
//! connections; [`server`] starts everything and carries out reloads (`control` is how the API
//! asks for one). `docs/architecture.md` draws the threads, tasks and bounded queues.

mod auth;
pub mod config;
mod control;
pub mod events;
mod http;
pub mod hub;
mod listen;
pub mod media;
pub mod pipeline;
pub mod plugins;
mod router;
pub mod rtp;
pub mod rtsp;
pub mod server;
mod sessions;
mod snapshot;
pub mod sources;
pub mod webrtc;

pub use server::{Server, StartError};
