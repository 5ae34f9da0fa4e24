//! wasmcast: a programmable live-video router.
//!
//! The data path, top to bottom: [`sources`] (looped files, and publishers pushing MPEG-TS through
//! [`http`]) publish access units into the [`router`]'s per-route stream hubs, which packetize them
//! once into RTP ([`rtp`]); the egress servers ([`rtsp`]) read the hubs and send to players.
//! [`config`] is the file that says which routes exist.

pub mod auth;
pub mod config;
pub mod control;
pub mod http;
pub mod hub;
pub mod listen;
pub mod media;
pub mod pipeline;
pub mod plugins;
pub mod router;
pub mod rtp;
pub mod rtsp;
pub mod server;
pub mod sessions;
pub mod sources;
pub mod webrtc;

pub use server::{Server, StartError};
