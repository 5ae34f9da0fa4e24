//! The ring that hands a route's units to its readers, bounded in units and in bytes.
//!
//! The publisher appends; each reader keeps its own position. Past either bound the oldest units
//! leave the ring, whoever has not read them yet: such a reader finds it [`Recv::Lagged`] and skips
//! ahead, so what a route holds for its readers is bounded in memory however slow they are, and no
//! reader can hold the publisher or another reader back. (tokio's broadcast channel, used before,
//! bounds the number of units only: 512 units of a hostile publisher's 8 MiB each are 4 GiB.)

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// The sending side of a ring; cheap to clone.
pub(super) struct Ring<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for Ring<T> {
    fn clone(&self) -> Self {
        Ring {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<T> {
    state: Mutex<State<T>>,
    /// Woken when a unit arrives or the ring closes.
    arrived: Notify,
}

struct State<T> {
    /// Units with the bytes each holds, oldest first.
    units: VecDeque<(Arc<T>, usize)>,
    /// The position of `units[0]` in the stream of units ever sent.
    first: u64,
    bytes: usize,
    max_units: usize,
    max_bytes: usize,
    closed: bool,
}

/// What a reader gets next.
pub(super) enum Recv<T> {
    Unit(Arc<T>),
    /// Units this reader had not read yet left the ring; it goes on from the oldest one left.
    Lagged,
    /// The ring was closed and the reader has read everything.
    Closed,
}

impl<T> Ring<T> {
    pub(super) fn new(max_units: usize, max_bytes: usize) -> Ring<T> {
        Ring {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    units: VecDeque::with_capacity(max_units),
                    first: 0,
                    bytes: 0,
                    max_units,
                    max_bytes,
                    closed: false,
                }),
                arrived: Notify::new(),
            }),
        }
    }

    /// Appends `unit`, which holds `bytes`, and lets the oldest units go past the bounds (the
    /// newest always stays).
    pub(super) fn send(&self, unit: Arc<T>, bytes: usize) {
        let mut state = self.inner.lock();
        state.units.push_back((unit, bytes));
        state.bytes += bytes;
        while state.units.len() > 1
            && (state.units.len() > state.max_units || state.bytes > state.max_bytes)
        {
            if let Some((_, gone)) = state.units.pop_front() {
                state.bytes -= gone;
                state.first += 1;
            }
        }
        drop(state);
        self.inner.arrived.notify_waiters();
    }

    /// Ends the ring: readers get what is left, then [`Recv::Closed`].
    pub(super) fn close(&self) {
        self.inner.lock().closed = true;
        self.inner.arrived.notify_waiters();
    }

    /// A reader of the units sent from now on.
    pub(super) fn subscribe(&self) -> RingReader<T> {
        let state = self.inner.lock();
        RingReader {
            inner: Arc::clone(&self.inner),
            next: state.first + state.units.len() as u64,
        }
    }
}

impl<T> Inner<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Plain data: still consistent after a panic elsewhere.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One reader's position in a ring.
pub(super) struct RingReader<T> {
    inner: Arc<Inner<T>>,
    /// The position of the next unit to read.
    next: u64,
}

impl<T> RingReader<T> {
    /// The next unit if one is there, without waiting (`None`: nothing yet).
    pub(super) fn try_recv(&mut self) -> Option<Recv<T>> {
        let state = self.inner.lock();
        if self.next < state.first {
            self.next = state.first;
            return Some(Recv::Lagged);
        }
        let index = (self.next - state.first) as usize;
        if let Some((unit, _)) = state.units.get(index) {
            self.next += 1;
            return Some(Recv::Unit(Arc::clone(unit)));
        }
        state.closed.then_some(Recv::Closed)
    }

    /// A waiter for the units of this ring, shared by every reader of it.
    pub(super) fn arrivals(&self) -> Arrivals<T> {
        Arrivals(Arc::clone(&self.inner))
    }
}

/// Wakes whoever waits on it when a unit arrives in a ring or the ring closes: one task can wait
/// for many readers of the same ring at once.
pub struct Arrivals<T>(Arc<Inner<T>>);

impl<T> Clone for Arrivals<T> {
    fn clone(&self) -> Self {
        Arrivals(Arc::clone(&self.0))
    }
}

impl<T> Arrivals<T> {
    /// Resolves at the next arrival after it is enabled (see [`tokio::sync::Notify::notified`]).
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.0.arrived.notified()
    }

    /// Tells rings apart: the same for every waiter of one ring, and not reused while any waiter
    /// of it lives.
    pub fn ring_id(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The next unit, once there is one, as a reader task waits for it.
    async fn recv<T>(reader: &mut RingReader<T>) -> Recv<T> {
        let arrivals = reader.arrivals();
        loop {
            let arrived = arrivals.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if let Some(next) = reader.try_recv() {
                return next;
            }
            arrived.await;
        }
    }

    #[tokio::test]
    async fn past_its_bytes_the_ring_lets_the_oldest_go_and_slow_readers_lag() {
        let ring = Ring::new(512, 1000);
        let mut slow = ring.subscribe();
        let mut fast = ring.subscribe();
        for i in 0..10u32 {
            ring.send(Arc::new(i), 300);
            assert!(matches!(recv(&mut fast).await, Recv::Unit(unit) if *unit == i));
        }
        // 1000 bytes hold three units of 300: the slow reader lost the first seven.
        assert!(matches!(recv(&mut slow).await, Recv::Lagged));
        assert!(matches!(recv(&mut slow).await, Recv::Unit(unit) if *unit == 7));
        assert_eq!(ring.inner.lock().bytes, 900);
        ring.close();
        assert!(matches!(recv(&mut slow).await, Recv::Unit(unit) if *unit == 8));
        assert!(matches!(recv(&mut slow).await, Recv::Unit(unit) if *unit == 9));
        assert!(matches!(recv(&mut slow).await, Recv::Closed));
    }

    #[tokio::test]
    async fn a_waiting_reader_wakes_for_the_next_unit() {
        let ring = Ring::new(4, usize::MAX);
        let mut reader = ring.subscribe();
        let sender = ring.clone();
        let waiting = tokio::spawn(async move {
            match recv(&mut reader).await {
                Recv::Unit(unit) => *unit,
                _ => u32::MAX,
            }
        });
        tokio::task::yield_now().await;
        sender.send(Arc::new(42u32), 1);
        assert_eq!(waiting.await.unwrap(), 42);
    }
}
