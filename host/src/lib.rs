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
//! connections; `udp_port` is the UDP port RTP goes out of to many peers; [`server`] starts
//! everything and carries out reloads (`control` is how the API asks for one).
//! `docs/architecture.md` draws the threads, tasks and bounded queues.

/// The process's allocator. A frame path allocates and frees pictures of megabytes every frame
/// (decoder output, each frame plugin's result, encoder input); glibc's malloc hands such blocks
/// back to the kernel at each free and takes fresh zeroed pages at the next allocation, which cost
/// a 1080p grayscale route 609,000 page faults in 16 s and 1.8 ms a plugin call. jemalloc keeps
/// freed pages for reuse: 17,600 faults and 0.55 ms a call, with glibc's memory per RTSP reader
/// (mimalloc was as fast but doubled that). Set in the library rather than in `main.rs` so that the
/// benchmarks, which run the library in their own process, measure what the server does. Fuzzing
/// builds keep the system allocator, which the sanitizers watch.
#[cfg(not(fuzzing))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod auth;
pub mod config;
mod control;
pub mod events;
mod http;
pub mod hub;
mod listen;
pub mod logs;
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
mod udp_port;
pub mod webrtc;

pub use server::{Server, StartError};
