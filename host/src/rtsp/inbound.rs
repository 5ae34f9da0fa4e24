//! How many bytes a client may send on its control connection (read through a
//! [`crate::listen::MeteredRead`]).
//!
//! A reader sends requests and RTCP reports: a few hundred bytes a second. A publisher sends its
//! media in real time. Anything more is a flood the server reads and throws away at the cost of
//! a core (one client sending interleaved frames to no session kept half a core busy, for as
//! long as it liked), so past its allowance a connection is closed.

use crate::listen::{Allowance, Inbound};

/// A connection that is not recording: the burst takes four requests of the largest size.
pub const READER: Inbound = Inbound {
    bytes: Allowance {
        per_second: 64 * 1024,
        burst: 256 * 1024,
    },
    sender: "a reader sends requests and RTCP reports",
};

/// A publisher recording over TCP: the ceiling every publisher is held to.
pub const PUBLISHER: Inbound = crate::sources::PUBLISHER_INBOUND;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_says_what_each_sender_is_expected_to_send() {
        assert_eq!(
            READER.to_string(),
            "256 KiB at over 64 KiB/s (a reader sends requests and RTCP reports)"
        );
        assert_eq!(
            PUBLISHER.to_string(),
            "64 MiB at over 32 MiB/s (a publisher sends its media in real time)"
        );
    }
}
