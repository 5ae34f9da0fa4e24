//! What runs between a route's publisher and its hub: the packet plugin chain and, when the route
//! re-encodes, the frame path (decode, frame plugins, encode), all on the route's own thread.
//!
//! A route without plugins or re-encoding has no pipeline: its publisher packetizes straight into
//! the hub. The first time a route has something to do, the router attaches a [`Stage`] to its hub
//! (as the hub's [`Processor`](crate::hub::Processor)); the stage publishes through the hub's
//! narrow [`Sink`](crate::hub::Sink) and nothing else.

mod stage;
pub mod transcode;
pub mod trial;
mod worker;

pub use stage::Stage;
pub use transcode::{TranscodeStats, Transcoder};
