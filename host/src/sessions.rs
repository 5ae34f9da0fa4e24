//! The registry of client sessions (RTSP readers and publishers, HTTP pushes, WebRTC viewers), for
//! the API: list them, and end one; and the count of sessions against `max_clients`.
//!
//! A session registers when it starts and holds a [`Registration`]; dropping it removes the entry.
//! Ending one from outside its connection (an operator, the client's own `DELETE`, the server's
//! drain) wakes the session's [`Registration::ended`] future with who did; the session ends itself.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::SystemTime;

use tokio::sync::Notify;

/// What kind of client a session serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionKind {
    RtspReader,
    RtspPublisher,
    HttpPush,
    WebRtcViewer,
    WebRtcPublisher,
}

impl SessionKind {
    /// Whether the session sends media in rather than reading it.
    pub fn is_publisher(self) -> bool {
        matches!(
            self,
            SessionKind::RtspPublisher | SessionKind::HttpPush | SessionKind::WebRtcPublisher
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::RtspReader => "rtsp-reader",
            SessionKind::RtspPublisher => "rtsp-publisher",
            SessionKind::HttpPush => "http-push",
            SessionKind::WebRtcViewer => "webrtc-viewer",
            SessionKind::WebRtcPublisher => "webrtc-publisher",
        }
    }
}

/// Who ended a session from outside its own connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EndedBy {
    #[error("kicked by an operator")]
    Operator,
    /// `DELETE` on its WHEP or WHIP resource.
    #[error("ended by its client")]
    Client,
    #[error("ended: the server shuts down")]
    Shutdown,
}

/// The wake-up of a session ended from outside, and who ended it (the first to ask).
#[derive(Default)]
struct Ending {
    notify: Notify,
    by: OnceLock<EndedBy>,
}

/// One session as the API shows it.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    pub id: String,
    pub kind: SessionKind,
    pub route: String,
    pub peer: SocketAddr,
    pub started: SystemTime,
}

struct Entry {
    info: SessionInfo,
    ending: Arc<Ending>,
}

/// Every live session, by id.
#[derive(Clone, Default)]
pub struct Sessions {
    entries: Arc<Mutex<BTreeMap<String, Entry>>>,
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a session; `id` is its protocol's own id where it has one (RTSP).
    pub fn register(
        &self,
        id: Option<&str>,
        kind: SessionKind,
        route: &str,
        peer: SocketAddr,
    ) -> Registration {
        // An id is also the key to a session's WHEP resource (`DELETE`/`PATCH` on
        // `/ROUTE/whep/ID`): 128 random bits, so no client can name another's.
        let id = match id {
            Some(id) => id.to_owned(),
            None => format!(
                "{}-{:032x}",
                match kind {
                    SessionKind::WebRtcViewer => "whep",
                    SessionKind::WebRtcPublisher => "whip",
                    _ => "push",
                },
                rand::random::<u128>()
            ),
        };
        let ending = Arc::new(Ending::default());
        self.lock().insert(
            id.clone(),
            Entry {
                info: SessionInfo {
                    id: id.clone(),
                    kind,
                    route: route.to_owned(),
                    peer,
                    started: SystemTime::now(),
                },
                ending: Arc::clone(&ending),
            },
        );
        Registration {
            sessions: self.clone(),
            id,
            ending,
        }
    }

    pub fn list(&self) -> Vec<SessionInfo> {
        self.lock().values().map(|e| e.info.clone()).collect()
    }

    /// Asks session `id` to end; false when there is no such session.
    pub fn end(&self, id: &str, by: EndedBy) -> bool {
        match self.lock().get(id) {
            Some(entry) => {
                let _ = entry.ending.by.set(by);
                // A stored permit: the session hears it even if it is not waiting right now.
                entry.ending.notify.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Admits client sessions of every protocol against `max_clients` and `max_bandwidth_kbps`, like
/// ffserver's MaxClients and MaxBandwidth: a new reader is refused while the server already sends
/// that much.
#[derive(Debug)]
pub struct ClientLimit {
    active: AtomicUsize,
    max: usize,
    max_kbps: u64,
    /// What the server sends now, in kbit/s, as the bandwidth meter last measured.
    sending_kbps: AtomicU64,
    /// The server is shutting down: no new session.
    draining: AtomicBool,
}

/// Why a session was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum Full {
    #[error("max_clients ({0}) reached")]
    Clients(usize),
    #[error("max_bandwidth_kbps reached: {sending} of {max} kbit/s in use")]
    Bandwidth { sending: u64, max: u64 },
    #[error("the server is shutting down")]
    Draining,
}

impl ClientLimit {
    pub fn new(max: usize, max_kbps: u64) -> Arc<ClientLimit> {
        Arc::new(ClientLimit {
            active: AtomicUsize::new(0),
            max,
            max_kbps,
            sending_kbps: AtomicU64::new(0),
            draining: AtomicBool::new(false),
        })
    }

    /// Whether a new session would be admitted now, taking no place: a request that would only
    /// be refused later starts nothing (an on-demand source, a route a pattern makes).
    pub fn admits(&self) -> Result<(), Full> {
        if self.draining() {
            return Err(Full::Draining);
        }
        let sending = self.sending_kbps.load(Ordering::Relaxed);
        if sending >= self.max_kbps {
            return Err(Full::Bandwidth {
                sending,
                max: self.max_kbps,
            });
        }
        if self.active.load(Ordering::Acquire) >= self.max {
            return Err(Full::Clients(self.max));
        }
        Ok(())
    }

    /// A place for one more session, or why there is none.
    pub fn acquire(self: &Arc<Self>) -> Result<ClientSlot, Full> {
        self.admits()?;
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .map_err(|_| Full::Clients(self.max))?;
        Ok(ClientSlot(Arc::clone(self)))
    }

    /// Admits no new session from now on: the server is shutting down.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Records what the server sends now.
    pub fn set_sending_kbps(&self, kbps: u64) {
        self.sending_kbps.store(kbps, Ordering::Relaxed);
    }

    pub fn sending_kbps(&self) -> u64 {
        self.sending_kbps.load(Ordering::Relaxed)
    }
}

/// One session's place under `max_clients`, given back on drop.
#[derive(Debug)]
pub struct ClientSlot(Arc<ClientLimit>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A session's place in the registry, removed on drop.
pub struct Registration {
    sessions: Sessions,
    id: String,
    ending: Arc<Ending>,
}

impl Registration {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Completes, with who did, when the session is ended from outside its connection.
    pub async fn ended(&self) -> EndedBy {
        loop {
            if let Some(by) = self.ending.by.get() {
                return *by;
            }
            self.ending.notify.notified().await;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.sessions.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ending_wakes_the_session_with_who_ended_it_and_drop_removes_it() {
        let sessions = Sessions::default();
        let peer = "127.0.0.1:1".parse().unwrap();
        let registration = sessions.register(Some("ABC"), SessionKind::RtspReader, "cam", peer);
        let push = sessions.register(None, SessionKind::HttpPush, "feed", peer);
        assert_eq!(sessions.list().len(), 2);
        assert!(sessions.end("ABC", EndedBy::Client));
        // The first to end a session names who did.
        assert!(sessions.end("ABC", EndedBy::Shutdown));
        assert_eq!(registration.ended().await, EndedBy::Client);
        assert!(!sessions.end("nope", EndedBy::Operator));
        drop(registration);
        drop(push);
        assert!(sessions.list().is_empty());
    }
}
