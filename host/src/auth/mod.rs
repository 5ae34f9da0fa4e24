//! Who may connect, read, publish and use the API: the server's access list, the users and their
//! credentials, the admins, and the login throttle, behind one handle ([`Auth`]) that the RTSP and
//! HTTP servers hold. Each route's own rules come from the router as a [`Policy`] snapshot.
//!
//! The checks are sans-IO: no sockets, and the time is passed in (see [`Login::now`]).

mod credentials;
mod throttle;

use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use crate::config::{AccessList, RouteConfig, Users};

pub use credentials::{AuthError, DigestChallenge, challenge, check};
use throttle::LoginThrottle;

/// One route's rules: who may connect to it, and which users may read and publish it (empty:
/// anyone).
#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub access: AccessList,
    pub read: Vec<String>,
    pub publish: Vec<String>,
}

impl Policy {
    pub fn of<Source>(route: &RouteConfig<Source>) -> Policy {
        Policy {
            access: route.access.clone(),
            read: route.read.clone(),
            publish: route.publish.clone(),
        }
    }
}

/// One request's credentials and what Digest and the login throttle need to judge them.
pub struct Login<'a> {
    pub peer: IpAddr,
    /// The `Authorization` header, if any.
    pub header: Option<&'a str>,
    pub method: &'a str,
    /// What a Digest answer must match: the RTSP connection's challenge (`None` for HTTP, which
    /// sends no Digest challenge).
    pub digest: Option<DigestChallenge<'a>>,
    pub now: Instant,
}

/// The server-wide half of access control; cheap to clone, replaced as a whole on reload.
#[derive(Clone, Default)]
pub struct Auth {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Who may connect to the server at all.
    server_access: RwLock<AccessList>,
    users: RwLock<Users>,
    /// Who may use the API; empty: anyone.
    admins: RwLock<Vec<String>>,
    logins: Mutex<LoginThrottle>,
}

impl Auth {
    /// Access control from the config's `[server]` access list, users and admins.
    pub fn new(server_access: AccessList, users: Users, admins: Vec<String>) -> Auth {
        let auth = Auth::default();
        auth.update(server_access, users, admins);
        auth
    }

    /// Replaces the server-wide access list, the users and the admins (a reload). The login
    /// throttle keeps its count.
    pub fn update(&self, server_access: AccessList, users: Users, admins: Vec<String>) {
        *write(&self.inner.server_access) = server_access;
        *write(&self.inner.users) = users;
        *write(&self.inner.admins) = admins;
    }

    /// Whether `ip` may connect at all (`policy` is `None`), or use the route of `policy`.
    pub fn permits(&self, ip: IpAddr, policy: Option<&Policy>) -> bool {
        read(&self.inner.server_access).permits(ip)
            && policy.is_none_or(|policy| policy.access.permits(ip))
    }

    /// Whether the server names any admins.
    pub fn has_admins(&self) -> bool {
        !read(&self.inner.admins).is_empty()
    }

    /// Checks the credentials of an API request (HTTP Basic or a bearer token): `Ok(None)` when the
    /// server names no admins.
    pub fn authorize_admin(&self, login: &Login<'_>) -> Result<Option<String>, AuthError> {
        let admins = read(&self.inner.admins).clone();
        self.authorize_users(&admins, login)
    }

    /// Checks the credentials of a request to read (or `publish` to) the route of `policy`:
    /// `Ok(None)` when the route asks for none, the user when they are right (see [`check`]).
    pub fn authorize(
        &self,
        policy: Option<&Policy>,
        publish: bool,
        login: &Login<'_>,
    ) -> Result<Option<String>, AuthError> {
        self.authorize_users(allowed(policy, publish), login)
    }

    /// Whether [`Auth::authorize`] would take `login` now, judged the same way but leaving no
    /// trace: neither the login throttle nor a Digest nonce's count hear of it. For a server that
    /// must know before doing the work a request asks for (starting a route's source) and then
    /// answers the request with the real check.
    pub fn would_authorize(
        &self,
        policy: Option<&Policy>,
        publish: bool,
        login: &Login<'_>,
    ) -> bool {
        let allowed = allowed(policy, publish);
        if allowed.is_empty() {
            return true;
        }
        // The nonce count a right answer would record, recorded in a copy.
        let scratch_nc = login.digest.as_ref().map(|d| {
            std::sync::atomic::AtomicU32::new(d.last_nc.load(std::sync::atomic::Ordering::Relaxed))
        });
        let digest = login
            .digest
            .as_ref()
            .zip(scratch_nc.as_ref())
            .map(|(d, last_nc)| DigestChallenge {
                nonce: d.nonce,
                request_uri: d.request_uri,
                last_nc,
            });
        let login = Login { digest, ..*login };
        self.judge(allowed, &login).is_ok()
    }

    /// `login` checked against `allowed` users, unless its address failed too often lately.
    fn judge(&self, allowed: &[String], login: &Login<'_>) -> Result<String, AuthError> {
        if self.throttle().blocked(login.peer, login.now) {
            return Err(AuthError::Throttled);
        }
        check(
            login.header,
            &read(&self.inner.users),
            allowed,
            login.method,
            login.digest.as_ref(),
        )
    }

    fn throttle(&self) -> std::sync::MutexGuard<'_, LoginThrottle> {
        self.inner.logins.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks `login` against `allowed` users (empty: anyone, no check) unless its address failed
    /// too often lately, and counts how it went.
    fn authorize_users(
        &self,
        allowed: &[String],
        login: &Login<'_>,
    ) -> Result<Option<String>, AuthError> {
        if allowed.is_empty() {
            return Ok(None);
        }
        let (peer, now) = (login.peer, login.now);
        match self.judge(allowed, login) {
            Ok(user) => {
                self.throttle().succeeded(peer);
                Ok(Some(user))
            }
            Err(
                err @ (AuthError::Wrong(_)
                | AuthError::NotAllowed(_)
                | AuthError::Malformed
                | AuthError::OtherUri(_)
                | AuthError::Replayed(_)),
            ) => {
                self.throttle().failed(peer, now);
                Err(err)
            }
            Err(err) => Err(err),
        }
    }
}

/// The users who may read (or `publish` to) the route of `policy`; empty: anyone.
fn allowed(policy: Option<&Policy>, publish: bool) -> &[String] {
    match policy {
        None => &[],
        Some(policy) if publish => &policy.publish,
        Some(policy) => &policy.read,
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // Plain data: a panic elsewhere leaves it consistent enough to go on.
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PasswordHash;
    use md5::{Digest, Md5};
    use std::sync::atomic::AtomicU32;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A DESCRIBE from 192.0.2.7 presenting `header`, answering Digest challenge `abc`.
    fn login<'a>(header: &'a str, last_nc: &'a AtomicU32, now: Instant) -> Login<'a> {
        Login {
            peer: "192.0.2.7".parse().expect("an address"),
            header: Some(header),
            method: "DESCRIBE",
            digest: Some(DigestChallenge {
                nonce: "abc",
                request_uri: "rtsp://h/cam",
                last_nc,
            }),
            now,
        }
    }

    #[test]
    fn a_judgement_in_advance_leaves_no_trace() {
        let users = Users::from([(
            "alice".to_owned(),
            PasswordHash::of("alice", "secret").into(),
        )]);
        let auth = Auth::new(AccessList::default(), users, Vec::new());
        let policy = Policy {
            read: vec!["alice".to_owned()],
            ..Policy::default()
        };
        let last_nc = AtomicU32::new(0);
        let now = Instant::now();
        let login = |header| login(header, &last_nc, now);
        // A Digest answer with a nonce count, judged in advance twice, is still good for the real
        // check, and only after that is it a replay.
        let ha1 = hex(PasswordHash::of("alice", "secret").bytes());
        let ha2 = hex(&Md5::digest("DESCRIBE:rtsp://h/cam"));
        let response = hex(&Md5::digest(format!("{ha1}:abc:00000001:xyz:auth:{ha2}")));
        let digest = format!(
            "Digest username=\"alice\", realm=\"wasmcast\", nonce=\"abc\", \
             uri=\"rtsp://h/cam\", qop=auth, nc=00000001, cnonce=\"xyz\", \
             response=\"{response}\""
        );
        assert!(auth.would_authorize(Some(&policy), false, &login(&digest)));
        assert!(auth.would_authorize(Some(&policy), false, &login(&digest)));
        assert_eq!(
            auth.authorize(Some(&policy), false, &login(&digest)),
            Ok(Some("alice".to_owned()))
        );
        assert!(!auth.would_authorize(Some(&policy), false, &login(&digest)));
        // Wrong passwords judged in advance do not count toward the login throttle...
        let wrong = "Basic YWxpY2U6bm9wZQ==";
        let right = "Basic YWxpY2U6c2VjcmV0";
        for _ in 0..2 * throttle::MAX_FAILED_LOGINS {
            assert!(!auth.would_authorize(Some(&policy), false, &login(wrong)));
        }
        assert!(auth.authorize(Some(&policy), false, &login(right)).is_ok());
        // ...while those the real check refuses do, and a throttled address is judged so too.
        for _ in 0..throttle::MAX_FAILED_LOGINS {
            assert!(auth.authorize(Some(&policy), false, &login(wrong)).is_err());
        }
        assert!(!auth.would_authorize(Some(&policy), false, &login(right)));
        // A route that names no readers takes anyone.
        assert!(auth.would_authorize(None, false, &login("")));
        assert!(auth.would_authorize(Some(&Policy::default()), false, &login("")));
    }
}
