//! How fast a connection may send: an [`Allowance`] (a rate after a burst), the token bucket that
//! holds a connection to it ([`Budget`], time passed in), and a reader charged for every read
//! ([`MeteredRead`]), which RTSP control connections and ICE-TCP connections are read through.
//!
//! A client that sends more than its protocol needs is a flood the server reads and throws away
//! at the cost of a core, for as long as the client likes: past its allowance a connection is
//! closed, and the log says what was sent and what such a sender is expected to send.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, ReadBuf};

/// How much a connection may send, in bytes or in requests: `per_second` after a first `burst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allowance {
    pub per_second: u64,
    pub burst: u64,
}

/// Requests one connection may make, HTTP or RTSP: a page, a player or a dashboard polling
/// snapshots makes a few a second, an RTSP player or publisher a handful and then a keep-alive
/// now and then. A client that pipelines requests as fast as it can would keep a core busy
/// answering it alone: past this its connection is closed.
pub const REQUESTS: Allowance = Allowance {
    per_second: 50,
    burst: 200,
};

/// Why a connection past [`REQUESTS`] is closed, for its log line and its last answer.
pub fn past_requests() -> String {
    format!(
        "more than {} on one connection",
        REQUESTS.counted("requests")
    )
}

impl Allowance {
    /// How an allowance of things counted reads: "200 `what` at over 50 a second".
    pub fn counted(&self, what: &str) -> String {
        format!("{} {what} at over {} a second", self.burst, self.per_second)
    }

    /// How an allowance of bytes reads: "256 KiB at over 64 KiB/s".
    pub fn in_bytes(&self) -> String {
        format!(
            "{} at over {}/s",
            in_units(self.burst),
            in_units(self.per_second)
        )
    }
}

/// `bytes` in whole MiB where it is that, else in KiB.
fn in_units(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes / 1024)
    }
}

/// A token bucket, with the time passed in. Written here rather than taken from `governor`: it is
/// one bucket owned by one connection's task, charged as the connection reads, which governor's
/// shared limiters with clocks of their own are not made for.
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

    /// Takes `amount` that arrived at `now`; false when it is past the allowance.
    pub fn charge(&mut self, amount: u64, now: Instant) -> bool {
        self.refill(now);
        match self.available.checked_sub(amount) {
            Some(left) => {
                self.available = left;
                true
            }
            None => false,
        }
    }

    /// Takes `amount`, spent at `now`, even past the allowance: what is missing is borrowed from
    /// the allowance to come, which earns nothing until it has paid it back. Returns how long
    /// that takes (zero within the allowance). For what has been spent already (time a call
    /// took), where refusing cannot undo it.
    pub fn take(&mut self, amount: u64, now: Instant) -> Duration {
        self.refill(now);
        if let Some(left) = self.available.checked_sub(amount) {
            self.available = left;
            return Duration::ZERO;
        }
        let owed = u128::from(amount - self.available);
        self.available = 0;
        let per_second = u128::from(self.allowance.per_second.max(1));
        let nanos = u64::try_from(owed * 1_000_000_000 / per_second).unwrap_or(u64::MAX);
        let paid_back = Duration::from_nanos(nanos);
        self.refilled_at = self.refilled_at.max(now) + paid_back;
        paid_back
    }

    /// Adds what the allowance earned up to `now`, up to its burst.
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled_at);
        let per_second = u128::from(self.allowance.per_second);
        let earned = elapsed.as_nanos() * per_second / 1_000_000_000;
        if earned > 0 {
            let filled = self
                .available
                .saturating_add(u64::try_from(earned).unwrap_or(u64::MAX));
            // Only the time the whole units took is spent: the fraction of the next carries over
            // (or a client charged often would earn less than its allowance).
            let took = u64::try_from(earned * 1_000_000_000 / per_second).ok();
            match took {
                Some(took) if filled < self.allowance.burst => {
                    self.available = filled;
                    self.refilled_at += Duration::from_nanos(took);
                }
                _ => {
                    self.available = self.allowance.burst;
                    self.refilled_at = now;
                }
            }
        }
    }
}

/// An allowance of bytes, and who is held to it.
#[derive(Clone, Copy, Debug)]
pub struct Inbound {
    pub bytes: Allowance,
    /// What such a sender sends, for the log line of a connection closed for sending more.
    pub sender: &'static str,
}

impl std::fmt::Display for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.bytes.in_bytes(), self.sender)
    }
}

/// A connection sent more than its allowance.
#[derive(Debug, thiserror::Error)]
#[error("sent more than {0}")]
pub struct Flood(Inbound);

/// A read half charged for every read: a read past the allowance fails with a [`Flood`] (see
/// [`flood_in`]).
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

    /// Holds the connection to `inbound` from now on (see [`Budget::hold_to`]).
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

    const SMALL: Allowance = Allowance {
        per_second: 1000,
        burst: 4000,
    };

    #[test]
    fn the_burst_then_the_rate_is_allowed_and_no_more() {
        let start = Instant::now();
        let mut budget = Budget::new(SMALL, start);
        assert!(budget.charge(4000, start));
        assert!(!budget.charge(1, start));
        let later = start + Duration::from_millis(500);
        assert!(budget.charge(500, later));
        assert!(!budget.charge(1, later));
        // A long pause earns the burst back, never more.
        let much_later = later + Duration::from_secs(3600);
        assert!(budget.charge(4000, much_later));
        assert!(!budget.charge(1, much_later));
    }

    #[test]
    fn what_is_taken_past_the_allowance_is_paid_back_before_more_is_earned() {
        let start = Instant::now();
        let mut budget = Budget::new(SMALL, start);
        assert_eq!(budget.take(3000, start), Duration::ZERO);
        // 1,000 of the 3,000 came from the burst; 2,000 more take two seconds to earn.
        assert_eq!(budget.take(3000, start), Duration::from_secs(2));
        assert!(!budget.charge(1, start + Duration::from_millis(1999)));
        // More borrowed meanwhile is paid back after that.
        assert_eq!(
            budget.take(500, start + Duration::from_secs(1)),
            Duration::from_millis(500)
        );
        assert!(!budget.charge(1, start + Duration::from_millis(2499)));
        assert!(budget.charge(500, start + Duration::from_secs(3)));
        assert!(!budget.charge(1, start + Duration::from_secs(3)));
    }

    #[test]
    fn a_steady_sender_at_the_rate_is_never_cut_off() {
        let start = Instant::now();
        let mut budget = Budget::new(SMALL, start);
        // Ten every 10 ms is the rate exactly, for a minute after the burst is spent.
        assert!(budget.charge(4000, start));
        for step in 1..=6000u64 {
            let now = start + Duration::from_millis(10 * step);
            assert!(budget.charge(10, now), "cut off at step {step}");
        }
    }

    #[test]
    fn a_fraction_earned_between_charges_is_kept() {
        let start = Instant::now();
        let mut budget = Budget::new(
            Allowance {
                per_second: 3,
                burst: 10,
            },
            start,
        );
        assert!(budget.charge(10, start));
        // Half a second earns one and a half: one now, and the half counts toward the next.
        assert!(budget.charge(1, start + Duration::from_millis(500)));
        assert!(budget.charge(2, start + Duration::from_millis(1000)));
        assert!(!budget.charge(1, start + Duration::from_millis(1000)));
    }

    #[test]
    fn a_larger_allowance_grants_its_burst_at_once() {
        let start = Instant::now();
        let mut budget = Budget::new(SMALL, start);
        assert!(budget.charge(4000, start));
        budget.hold_to(Allowance {
            burst: 10_000,
            ..SMALL
        });
        assert!(budget.charge(6000, start));
        assert!(!budget.charge(1, start));
    }

    #[tokio::test]
    async fn a_read_past_the_allowance_fails_with_what_was_sent_and_what_is_expected() {
        const TALKER: Inbound = Inbound {
            bytes: Allowance {
                per_second: 64 * 1024,
                burst: 256 * 1024,
            },
            sender: "a talker talks a little",
        };
        let (mut client, server) = tokio::io::duplex(512 * 1024);
        let mut metered = MeteredRead::new(server, TALKER);
        let mut buf = vec![0; 512 * 1024];
        client.write_all(&[0; 200 * 1024]).await.expect("write");
        let read = metered.read(&mut buf).await.expect("within the burst");
        assert_eq!(read, 200 * 1024);
        client.write_all(&[0; 200 * 1024]).await.expect("write");
        let err = metered.read(&mut buf).await.expect_err("past the burst");
        let flood = flood_in(&err).expect("a flood");
        assert_eq!(
            flood.to_string(),
            "sent more than 256 KiB at over 64 KiB/s (a talker talks a little)"
        );
        // A larger allowance is granted at once.
        metered.hold_to(Inbound {
            bytes: Allowance {
                per_second: 32 << 20,
                burst: 64 << 20,
            },
            sender: "a shouter",
        });
        client.write_all(&[0; 300 * 1024]).await.expect("write");
        assert!(metered.read(&mut buf).await.is_ok());
    }
}
