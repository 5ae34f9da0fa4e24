//! How much a client may send on its control connection, and for how long.
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

/// What a connection may send: `per_second` bytes, after a first `burst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allowance {
    pub per_second: u64,
    pub burst: u64,
    /// Who is held to it and what they send, for the log line of a connection closed for it.
    pub sender: &'static str,
}

/// A connection that is not recording: the burst takes four requests of the largest size.
pub const READER: Allowance = Allowance {
    per_second: 64 * 1024,
    burst: 256 * 1024,
    sender: "a reader sends requests and RTCP reports",
};

/// A recording publisher: far above any camera (32 MiB/s is 268 Mb/s), low enough that a flood
/// of media is not read faster than a core can throw it away.
pub const PUBLISHER: Allowance = Allowance {
    per_second: 32 << 20,
    burst: 64 << 20,
    sender: "a publisher sends its media in real time",
};

/// A connection sent more than its allowance.
#[derive(Debug, thiserror::Error)]
#[error(
    "sent more than {} at over {}/s ({})",
    in_units(.allowance.burst),
    in_units(.allowance.per_second),
    .allowance.sender
)]
pub struct Flood {
    allowance: Allowance,
}

/// `bytes` in whole MiB where it is that, else in KiB.
fn in_units(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes / 1024)
    }
}

/// A token bucket over bytes, with the time passed in. Written here rather than taken from
/// `governor`: it is one bucket owned by one connection's task, charged once per socket read,
/// which governor's shared limiters with clocks of their own are not made for.
#[derive(Debug)]
pub struct Budget {
    allowance: Allowance,
    available: u64,
    refilled_at: Instant,
}

impl Budget {
    pub fn new(allowance: Allowance, now: Instant) -> Budget {
        Budget {
            allowance,
            available: allowance.burst,
            refilled_at: now,
        }
    }

    /// Holds the connection to `allowance` from now on; a larger burst is granted at once.
    pub fn hold_to(&mut self, allowance: Allowance) {
        self.available += allowance.burst.saturating_sub(self.allowance.burst);
        self.available = self.available.min(allowance.burst);
        self.allowance = allowance;
    }

    /// Takes `bytes` that arrived at `now`.
    pub fn charge(&mut self, bytes: usize, now: Instant) -> Result<(), Flood> {
        let elapsed = now.saturating_duration_since(self.refilled_at);
        let earned = elapsed.as_nanos() * u128::from(self.allowance.per_second) / 1_000_000_000;
        if earned > 0 {
            let earned = u64::try_from(earned).unwrap_or(u64::MAX);
            self.available = self
                .available
                .saturating_add(earned)
                .min(self.allowance.burst);
            self.refilled_at = now;
        }
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        self.available = self.available.checked_sub(bytes).ok_or(Flood {
            allowance: self.allowance,
        })?;
        Ok(())
    }
}

/// The read half of a control connection, charged for every read: a read past the allowance
/// fails with a [`Flood`] (see [`flood_in`]).
pub struct MeteredRead<R> {
    inner: R,
    budget: Budget,
}

impl<R> MeteredRead<R> {
    pub fn new(inner: R, allowance: Allowance) -> MeteredRead<R> {
        MeteredRead {
            inner,
            budget: Budget::new(allowance, Instant::now()),
        }
    }

    pub fn hold_to(&mut self, allowance: Allowance) {
        self.budget.hold_to(allowance);
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
        let read = buf.filled().len() - before;
        this.budget
            .charge(read, Instant::now())
            .map_err(io::Error::other)?;
        Poll::Ready(Ok(()))
    }
}

/// The flood a read failed for, if it failed for one.
pub fn flood_in(err: &io::Error) -> Option<&Flood> {
    err.get_ref()?.downcast_ref()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const SMALL: Allowance = Allowance {
        per_second: 1000,
        burst: 4000,
        sender: "a test sends little",
    };

    #[test]
    fn the_burst_then_the_rate_is_allowed_and_no_more() {
        let start = Instant::now();
        let mut budget = Budget::new(SMALL, start);
        assert!(budget.charge(4000, start).is_ok());
        assert!(budget.charge(1, start).is_err());
        let later = start + Duration::from_millis(500);
        assert!(budget.charge(500, later).is_ok());
        assert!(budget.charge(1, later).is_err());
        // A long pause earns the burst back, never more.
        let much_later = later + Duration::from_secs(3600);
        assert!(budget.charge(4000, much_later).is_ok());
        assert!(budget.charge(1, much_later).is_err());
    }

    #[test]
    fn a_steady_sender_at_the_rate_is_never_cut_off() {
        let start = Instant::now();
        let mut budget = Budget::new(SMALL, start);
        // Ten bytes every 10 ms is the rate exactly, for a minute after the burst is spent.
        assert!(budget.charge(4000, start).is_ok());
        for step in 1..=6000u64 {
            let now = start + Duration::from_millis(10 * step);
            assert!(budget.charge(10, now).is_ok(), "cut off at step {step}");
        }
    }

    #[test]
    fn a_larger_allowance_grants_its_burst_at_once() {
        let start = Instant::now();
        let mut budget = Budget::new(SMALL, start);
        assert!(budget.charge(4000, start).is_ok());
        budget.hold_to(Allowance {
            burst: 10_000,
            ..SMALL
        });
        assert!(budget.charge(6000, start).is_ok());
        assert!(budget.charge(1, start).is_err());
    }

    #[test]
    fn the_refusal_says_what_was_sent_and_what_is_expected() {
        let start = Instant::now();
        let mut budget = Budget::new(READER, start);
        let flood = budget.charge(1 << 20, start).expect_err("a flood");
        assert_eq!(
            flood.to_string(),
            "sent more than 256 KiB at over 64 KiB/s (a reader sends requests and RTCP reports)"
        );
        let mut budget = Budget::new(PUBLISHER, start);
        let flood = budget.charge(100 << 20, start).expect_err("a flood");
        assert_eq!(
            flood.to_string(),
            "sent more than 64 MiB at over 32 MiB/s (a publisher sends its media in real time)"
        );
    }

    #[tokio::test]
    async fn a_read_past_the_allowance_fails_with_the_flood() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut metered = MeteredRead::new(server, SMALL);
        client.write_all(&[0; 3000]).await.expect("write");
        let mut buf = vec![0; 8192];
        let read = metered.read(&mut buf).await.expect("within the burst");
        assert_eq!(read, 3000);
        client.write_all(&[0; 3000]).await.expect("write");
        let err = metered.read(&mut buf).await.expect_err("past the burst");
        assert!(flood_in(&err).is_some(), "{err}");
    }
}
