//! The stream hub of each route: what a route's publisher (or pipeline) publishes, packetized into
//! RTP once and shared by every reader.
//!
//! - `stream`: the hub itself ([`Stream`]): source state, the kept GOP, the ring, counters.
//! - `publish`: the claim a publisher holds, the [`Publisher`], and the [`Outlet`] that
//!   packetizes; a route's pipeline plugs in as a [`Processor`] and publishes through a [`Sink`].
//! - `reader`: one reader's paced view ([`Reader`]).
//! - `ring`: the ring readers share, bounded in units and in bytes.
//! - `timeline`: the RTP identity that outlives publishers, and source time to wall-clock time.

mod publish;
mod reader;
mod ring;
mod stream;
mod timeline;

pub use publish::{Outlet, Processor, PublishClaim, Publisher, Revocation, Revoked};
pub use reader::{Next, Reader};
pub use ring::Arrivals;
pub use stream::{Busy, Sink, SourceState, Stream, StreamStats};
pub use timeline::{MediaInfo, Timeline, TrackRtp};

use crate::media::AccessUnit;
use crate::rtp::RtpUnit;

/// An access unit and its RTP packets, shared by every reader.
#[derive(Debug)]
pub struct Unit {
    pub au: AccessUnit,
    pub rtp: RtpUnit,
    /// Which publisher made it: a change tells readers the source was replaced.
    pub generation: u64,
}

#[cfg(test)]
mod tests;
