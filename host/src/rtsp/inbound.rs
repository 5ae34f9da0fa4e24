//! How many bytes a client may send on its control connection.
//!
//! A reader sends requests and RTCP reports: a few hundred bytes a second. A publisher sends its
//! media in real time. Anything more is a flood the server reads and throws away at the cost of
//! a core (one client sending interleaved frames to no session kept half a core busy, for as
//! long as it liked), so past its allowance a connection is closed.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use tokio::io::{AsyncRead, ReadBuf};

use crate::listen::{Allowance, Budget};
use crate::sources::PUBLISH_CEILING;

/// An allowance of bytes, and who is held to it.
#[derive(Clone, Copy, Debug)]
pub struct Inbound {
    bytes: Allowance,
    /// What such a sender sends, for the log line of a connection closed for sending more.
    sender: &'static str,
}

/// A connection that is not recording: the burst takes four requests of the largest size.
pub const READER: Inbound = Inbound {
    bytes: Allowance {
        per_second: 64 * 1024,
        burst: 256 * 1024,
    },
    sender: "a reader sends requests and RTCP reports",
};

/// A publisher recording over TCP: the ceiling every publisher is held to.
pub const PUBLISHER: Inbound = Inbound {
    bytes: PUBLISH_CEILING,
    sender: "a publisher sends its media in real time",
};

/// A connection sent more than its allowance.
#[derive(Debug, thiserror::Error)]
#[error("sent more than {} ({})", .0.bytes.in_bytes(), .0.sender)]
pub struct Flood(Inbound);

/// The read half of a control connection, charged for every read: a read past the allowance
/// fails with a [`Flood`] (see [`flood_in`]).
pub struct MeteredRead<R> {
    inner: R,
    held_to: Inbound,
    budget: Budget,
}

impl<R> MeteredRead<R> {
    pub fn new(inner: R, held_to: Inbound) -> MeteredRead<R> {
        MeteredRead {
            inner,
            held_to,
            budget: Budget::new(held_to.bytes, Instant::now()),
        }
    }

    pub fn hold_to(&mut self, inbound: Inbound) {
        self.budget.hold_to(inbound.bytes);
        self.held_to = inbound;
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for MeteredRead<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let read = (buf.filled().len() - before) as u64;
        if !this.budget.charge(read, Instant::now()) {
            return Poll::Ready(Err(io::Error::other(Flood(this.held_to))));
        }
        Poll::Ready(Ok(()))
    }
}

/// The flood a read failed for, if it failed for one.
pub fn flood_in(err: &io::Error) -> Option<&Flood> {
    err.get_ref()?.downcast_ref()
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn a_read_past_the_allowance_fails_with_what_was_sent_and_what_is_expected() {
        let (mut client, server) = tokio::io::duplex(512 * 1024);
        let mut metered = MeteredRead::new(server, READER);
        let mut buf = vec![0; 512 * 1024];
        client.write_all(&[0; 200 * 1024]).await.expect("write");
        let read = metered.read(&mut buf).await.expect("within the burst");
        assert_eq!(read, 200 * 1024);
        client.write_all(&[0; 200 * 1024]).await.expect("write");
        let err = metered.read(&mut buf).await.expect_err("past the burst");
        let flood = flood_in(&err).expect("a flood");
        assert_eq!(
            flood.to_string(),
            "sent more than 256 KiB at over 64 KiB/s (a reader sends requests and RTCP reports)"
        );
        // A publisher that starts recording gets its larger allowance at once.
        metered.hold_to(PUBLISHER);
        client.write_all(&[0; 300 * 1024]).await.expect("write");
        assert!(metered.read(&mut buf).await.is_ok());
        assert_eq!(
            Flood(PUBLISHER).to_string(),
            "sent more than 64 MiB at over 32 MiB/s (a publisher sends its media in real time)"
        );
    }
}
