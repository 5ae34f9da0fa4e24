//! The route map and the stream hub of each route.
//!
//! One actor task owns the map of routes and their running sources; a cloneable [`RouterHandle`]
//! applies new route sets to it and looks routes up. Lookups read a snapshot the actor publishes, so
//! the RTSP and HTTP servers never wait on the actor.

mod ring;
mod stage;
mod stream;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, oneshot};

use crate::auth::{self, AuthError, Users};
use crate::config::{AccessList, MemoryBudget, RouteConfig, SourceConfig};
use crate::plugins::{LoadedPlugin, Plugins};
use crate::sources::{self, RunningSource};

pub use stream::{
    Busy, MediaInfo, PublishClaim, Publisher, Reader, Revocation, SourceState, Stream, StreamStats,
    Timeline, TrackRtp, Unit,
};

type RouteMap = Arc<BTreeMap<String, Arc<Stream>>>;

/// What lookups read: the routes by name, and the push routes by feed name.
#[derive(Default)]
struct Snapshot {
    routes: RouteMap,
    feeds: BTreeMap<String, Arc<Stream>>,
    /// Each route's own access list and the users who may read and publish it.
    policies: BTreeMap<String, RoutePolicy>,
}

#[derive(Default)]
struct RoutePolicy {
    access: AccessList,
    read: Vec<String>,
    publish: Vec<String>,
}

/// One request's credentials and what Digest and the login throttle need to judge them.
pub struct Login<'a> {
    pub peer: IpAddr,
    /// The `Authorization` header, if any.
    pub header: Option<&'a str>,
    pub method: &'a str,
    /// What a Digest answer must match: the RTSP connection's challenge (`None` for HTTP, which
    /// sends no Digest challenge).
    pub digest: Option<auth::DigestChallenge<'a>>,
    pub now: std::time::Instant,
}

/// What a reload changed, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

enum Command {
    Apply {
        routes: BTreeMap<String, RouteConfig>,
        plugins: Plugins,
        done: oneshot::Sender<Changes>,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

/// The way to the route map from anywhere in the server.
#[derive(Clone)]
pub struct RouterHandle {
    snapshot: Arc<RwLock<Snapshot>>,
    /// Who may connect to the server at all.
    server_access: Arc<RwLock<AccessList>>,
    users: Arc<RwLock<Users>>,
    /// Who may use the API; empty: anyone.
    admins: Arc<RwLock<Vec<String>>>,
    logins: Arc<std::sync::Mutex<auth::LoginThrottle>>,
    commands: mpsc::Sender<Command>,
}

impl RouterHandle {
    /// Starts the router actor with no routes and the default [`MemoryBudget`].
    pub fn start() -> RouterHandle {
        RouterHandle::start_with(MemoryBudget::default())
    }

    /// Starts the router actor with no routes; every route it starts has `budget`.
    pub fn start_with(budget: MemoryBudget) -> RouterHandle {
        let snapshot: Arc<RwLock<Snapshot>> = Arc::default();
        let (commands, inbox) = mpsc::channel(16);
        let actor = Actor {
            routes: BTreeMap::new(),
            snapshot: Arc::clone(&snapshot),
            budget,
        };
        tokio::spawn(actor.run(inbox));
        RouterHandle {
            snapshot,
            server_access: Arc::default(),
            users: Arc::default(),
            admins: Arc::default(),
            logins: Arc::default(),
            commands,
        }
    }

    /// The hub of route `name`, if it exists.
    pub fn stream(&self, name: &str) -> Option<Arc<Stream>> {
        self.read().routes.get(name).cloned()
    }

    /// The hub of the push route that takes feed `name`, if any.
    pub fn feed(&self, name: &str) -> Option<Arc<Stream>> {
        self.read().feeds.get(name).cloned()
    }

    /// Replaces the server-wide access list.
    pub fn set_server_access(&self, access: AccessList) {
        *self
            .server_access
            .write()
            .unwrap_or_else(|p| p.into_inner()) = access;
    }

    /// Whether `ip` may connect at all (`route` is `None`), or use `route`.
    pub fn permits(&self, route: Option<&str>, ip: IpAddr) -> bool {
        let server = self
            .server_access
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .permits(ip);
        server
            && route.is_none_or(|route| {
                self.read()
                    .policies
                    .get(route)
                    .is_none_or(|p| p.access.permits(ip))
            })
    }

    /// Replaces the users who may log in.
    pub fn set_users(&self, users: Users) {
        *self.users.write().unwrap_or_else(|p| p.into_inner()) = users;
    }

    /// Replaces the users who may use the API.
    pub fn set_admins(&self, admins: Vec<String>) {
        *self.admins.write().unwrap_or_else(|p| p.into_inner()) = admins;
    }

    /// Whether the server names any admins.
    pub fn has_admins(&self) -> bool {
        !self
            .admins
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Checks the credentials of an API request (HTTP Basic or a bearer token): `Ok(None)` when the
    /// server names no admins.
    pub fn authorize_admin(&self, login: &Login<'_>) -> Result<Option<String>, AuthError> {
        let admins = self
            .admins
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if admins.is_empty() {
            return Ok(None);
        }
        self.throttled(login, |users| {
            auth::check(
                login.header,
                users,
                &admins,
                login.method,
                login.digest.as_ref(),
            )
        })
    }

    /// Runs a credentials `check` for `peer` unless it failed too often lately, and counts how it
    /// went.
    fn throttled(
        &self,
        login: &Login<'_>,
        check: impl FnOnce(&Users) -> Result<String, AuthError>,
    ) -> Result<Option<String>, AuthError> {
        let (peer, now) = (login.peer, login.now);
        let lock = || self.logins.lock().unwrap_or_else(|p| p.into_inner());
        if lock().blocked(peer, now) {
            return Err(AuthError::Throttled);
        }
        let outcome = check(&self.users.read().unwrap_or_else(|p| p.into_inner()));
        match outcome {
            Ok(user) => {
                lock().succeeded(peer);
                Ok(Some(user))
            }
            Err(
                err @ (AuthError::Wrong(_)
                | AuthError::NotAllowed(_)
                | AuthError::Malformed
                | AuthError::OtherUri(_)
                | AuthError::Replayed(_)),
            ) => {
                lock().failed(peer, now);
                Err(err)
            }
            Err(err) => Err(err),
        }
    }

    /// Checks the credentials of a request to read (or `publish` to) `route`: `Ok(None)` when the
    /// route asks for none, the user when they are right (see [`auth::check`]).
    pub fn authorize(
        &self,
        route: &str,
        publish: bool,
        login: &Login<'_>,
    ) -> Result<Option<String>, AuthError> {
        let snapshot = self.read();
        let Some(policy) = snapshot.policies.get(route) else {
            return Ok(None);
        };
        let allowed = if publish {
            &policy.publish
        } else {
            &policy.read
        };
        if allowed.is_empty() {
            return Ok(None);
        }
        let allowed = allowed.clone();
        drop(snapshot);
        self.throttled(login, |users| {
            auth::check(
                login.header,
                users,
                &allowed,
                login.method,
                login.digest.as_ref(),
            )
        })
    }

    /// Every route, by name.
    pub fn streams(&self) -> RouteMap {
        Arc::clone(&self.read().routes)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Snapshot> {
        self.snapshot.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the running routes match `routes`, whose chains name `plugins`, touching only those
    /// that differ.
    pub async fn apply(&self, routes: BTreeMap<String, RouteConfig>, plugins: Plugins) -> Changes {
        let (done, reply) = oneshot::channel();
        if self
            .commands
            .send(Command::Apply {
                routes,
                plugins,
                done,
            })
            .await
            .is_err()
        {
            return Changes::default();
        }
        reply.await.unwrap_or_default()
    }

    /// Stops every source and closes every stream.
    pub async fn shutdown(&self) {
        let (done, reply) = oneshot::channel();
        if self.commands.send(Command::Shutdown { done }).await.is_ok() {
            let _ = reply.await;
        }
    }
}

struct RunningRoute {
    config: RouteConfig,
    /// The plugins its chain runs, in order.
    chain: Vec<Arc<LoadedPlugin>>,
    stream: Arc<Stream>,
    /// Dropping it stops the source.
    _source: RunningSource,
}

struct Actor {
    routes: BTreeMap<String, RunningRoute>,
    snapshot: Arc<RwLock<Snapshot>>,
    budget: MemoryBudget,
}

impl Actor {
    async fn run(mut self, mut inbox: mpsc::Receiver<Command>) {
        while let Some(command) = inbox.recv().await {
            match command {
                Command::Apply {
                    routes,
                    plugins,
                    done,
                } => {
                    let changes = self.apply(routes, &plugins);
                    let _ = done.send(changes);
                }
                Command::Shutdown { done } => {
                    self.apply(BTreeMap::new(), &Plugins::new());
                    let _ = done.send(());
                    return;
                }
            }
        }
    }

    fn apply(&mut self, mut wanted: BTreeMap<String, RouteConfig>, plugins: &Plugins) -> Changes {
        let mut changes = Changes::default();
        let names: Vec<String> = self.routes.keys().cloned().collect();
        for name in names {
            match wanted.remove(&name) {
                None => {
                    if let Some(route) = self.routes.remove(&name) {
                        route.stream.close();
                    }
                    changes.removed.push(name);
                }
                Some(config) => {
                    let Some(route) = self.routes.get_mut(&name) else {
                        continue;
                    };
                    let chain = chain_of(&config, plugins);
                    let chain_changed = !same_chain(&route.chain, &chain)
                        || route.config.transcode != config.transcode;
                    if chain_changed {
                        // Swapped between two units: readers stay, no unit is lost.
                        route
                            .stream
                            .set_processing(&chain, config.transcode.clone());
                        route.chain = chain;
                    }
                    if route.config.publish != config.publish {
                        route.stream.revoke_publisher_unless(&config.publish);
                    }
                    if route.config != config || chain_changed {
                        if route.config.source != config.source {
                            // The hub stays, so readers stay connected; the new source publishes
                            // into it.
                            route._source =
                                sources::start(&config.source, Arc::clone(&route.stream));
                        }
                        route.config = config;
                        changes.changed.push(name);
                    }
                }
            }
        }
        for (name, config) in wanted {
            let stream = Stream::with_budget(&name, self.budget);
            let chain = chain_of(&config, plugins);
            stream.set_processing(&chain, config.transcode.clone());
            let source = sources::start(&config.source, Arc::clone(&stream));
            self.routes.insert(
                name.clone(),
                RunningRoute {
                    config,
                    chain,
                    stream,
                    _source: source,
                },
            );
            changes.added.push(name);
        }
        let mut snapshot = Snapshot::default();
        let mut routes = BTreeMap::new();
        for (name, route) in &self.routes {
            routes.insert(name.clone(), Arc::clone(&route.stream));
            snapshot.policies.insert(
                name.clone(),
                RoutePolicy {
                    access: route.config.access.clone(),
                    read: route.config.read.clone(),
                    publish: route.config.publish.clone(),
                },
            );
            if let SourceConfig::Push { feed } = &route.config.source {
                snapshot
                    .feeds
                    .insert(feed.clone(), Arc::clone(&route.stream));
            }
        }
        snapshot.routes = Arc::new(routes);
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = snapshot;
        changes
    }
}

/// The plugins `config`'s chain names, in order (a name not in `plugins` was refused by validation).
fn chain_of(config: &RouteConfig, plugins: &Plugins) -> Vec<Arc<LoadedPlugin>> {
    config
        .plugins
        .iter()
        .filter_map(|name| plugins.get(name).cloned())
        .collect()
}

fn same_chain(a: &[Arc<LoadedPlugin>], b: &[Arc<LoadedPlugin>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.same_as(b))
}
