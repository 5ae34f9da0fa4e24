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
        let Some(policy) = policy else {
            return Ok(None);
        };
        let allowed = if publish {
            &policy.publish
        } else {
            &policy.read
        };
        self.authorize_users(allowed, login)
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
        let throttle = || self.inner.logins.lock().unwrap_or_else(|p| p.into_inner());
        if throttle().blocked(peer, now) {
            return Err(AuthError::Throttled);
        }
        let outcome = check(
            login.header,
            &read(&self.inner.users),
            allowed,
            login.method,
            login.digest.as_ref(),
        );
        match outcome {
            Ok(user) => {
                throttle().succeeded(peer);
                Ok(Some(user))
            }
            Err(
                err @ (AuthError::Wrong(_)
                | AuthError::NotAllowed(_)
                | AuthError::Malformed
                | AuthError::OtherUri(_)
                | AuthError::Replayed(_)),
            ) => {
                throttle().failed(peer, now);
                Err(err)
            }
            Err(err) => Err(err),
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // Plain data: a panic elsewhere leaves it consistent enough to go on.
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}
