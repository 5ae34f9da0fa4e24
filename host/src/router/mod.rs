//! The route map: for each route, its source, its pipeline and its hub, wired together.
//!
//! One actor task ([`actor`]) owns the map of routes and their running sources; a cloneable
//! [`RouterHandle`] applies new route sets to it and looks routes up. Lookups read a snapshot the
//! actor publishes, so the RTSP and HTTP servers never wait on the actor — but for the first reader
//! of an on-demand route, whose source the actor starts ([`RouterHandle::open`]).
//!
//! On demand: a route with `on_demand` runs its source only while someone reads it, and a route
//! pattern (`[routes."cam-*"]`) becomes a route when a reader first asks for a name it matches.
//! Either stops its source when it has had no reader for its `on_demand_close_after_s`; a route
//! made from a pattern is then removed.

mod actor;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::auth::Policy;
use crate::config::{self, MemoryBudget, PatternConfig, RouteConfig};
use crate::hub::Stream;
use crate::listen::AddressKey;
use crate::pipeline::{Stage, TranscodeStats};
use crate::plugins::{PluginStatus, Plugins};

type RouteMap = Arc<BTreeMap<String, Arc<Stream>>>;

/// What lookups read: the routes by name, and the push routes by feed name.
#[derive(Default)]
struct Snapshot {
    routes: RouteMap,
    feeds: BTreeMap<String, Arc<Stream>>,
    /// The pipelines of the routes that have one.
    stages: BTreeMap<String, Stage>,
    /// Each route's own access list and the users who may read and publish it.
    policies: BTreeMap<String, Arc<Policy>>,
    /// The on-demand routes: when they were last asked for, whether their source runs.
    demands: BTreeMap<String, Arc<Demand>>,
    /// The route patterns, with the rules the routes they make will have.
    patterns: BTreeMap<String, Arc<Policy>>,
}

/// An on-demand route's demand: readers that ask for it keep its source running.
#[derive(Debug)]
pub struct Demand {
    /// The pattern the route was made from, if it was.
    pub pattern: Option<String>,
    /// How long the source outlives the last reader.
    pub close_after: Duration,
    last_asked: Mutex<Instant>,
    running: AtomicBool,
}

impl Demand {
    fn new(pattern: Option<String>, close_after: Duration) -> Demand {
        Demand {
            pattern,
            close_after,
            last_asked: Mutex::new(Instant::now()),
            running: AtomicBool::new(false),
        }
    }

    /// Someone asked for the route now.
    fn ask(&self) {
        *self.last_asked.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// Whether nobody asked for `close_after` (readers that stay count apart).
    fn idle(&self, now: Instant) -> bool {
        self.unasked_for(now, self.close_after)
    }

    /// Whether nobody asked for `period`.
    fn unasked_for(&self, now: Instant, period: Duration) -> bool {
        now.saturating_duration_since(*self.last_asked.lock().unwrap_or_else(|p| p.into_inner()))
            >= period
    }

    /// Whether the source runs now.
    pub fn running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }

    fn set_running(&self, running: bool) {
        self.running.store(running, Ordering::Relaxed);
    }
}

/// Routes made from patterns at once, at most: each is a pull from the origin, and any name a
/// pattern matches makes one, so a client asking for random names must not make the server pull
/// without end. Past it, new names are refused until idle ones close.
pub const MAX_PATTERN_ROUTES: usize = 1024;
/// Routes made from patterns for one client address (an IPv6 client by its /64) that nobody
/// reads yet, at most: a player asks for a name and plays it within seconds, a wall of cameras
/// some dozens at once. Without it one address asking for names it never played, again every few
/// seconds, held every route patterns may make and refused everybody else's new names.
pub const PATTERN_ROUTES_PER_ADDRESS: usize = 64;

/// Why a reader's route could not be opened.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouterError {
    #[error("no route `{0}`")]
    NoRoute(String),
    #[error("{MAX_PATTERN_ROUTES} routes made from patterns run already")]
    PatternRoutesInAll,
    #[error(
        "{PATTERN_ROUTES_PER_ADDRESS} routes made from patterns for this address have no reader yet"
    )]
    PatternRoutesFromAddress,
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
        patterns: BTreeMap<String, PatternConfig>,
        plugins: Plugins,
        done: oneshot::Sender<Changes>,
    },
    /// A reader from `asker` asks for a route: start its source on demand, or make it from a
    /// pattern.
    Open {
        name: String,
        asker: AddressKey,
        done: oneshot::Sender<Result<Arc<Stream>, RouterError>>,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

/// The way to the route map from anywhere in the server.
#[derive(Clone)]
pub struct RouterHandle {
    snapshot: Arc<RwLock<Snapshot>>,
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
        tokio::spawn(actor::Actor::new(Arc::clone(&snapshot), budget).run(inbox));
        RouterHandle { snapshot, commands }
    }

    /// The hub of route `name`, if it exists.
    pub fn stream(&self, name: &str) -> Option<Arc<Stream>> {
        self.read().routes.get(name).cloned()
    }

    /// The hub of the push route that takes feed `name`, if any.
    pub fn feed(&self, name: &str) -> Option<Arc<Stream>> {
        self.read().feeds.get(name).cloned()
    }

    /// The rules of route `name` (who may connect, read, publish), if it exists or a pattern
    /// would make it.
    pub fn policy(&self, name: &str) -> Option<Arc<Policy>> {
        let snapshot = self.read();
        match snapshot.policies.get(name) {
            Some(policy) => Some(Arc::clone(policy)),
            None => config::best_pattern(&snapshot.patterns, name).map(|(_, p)| Arc::clone(p)),
        }
    }

    /// Whether route `name` exists or a pattern would make it.
    pub fn knows(&self, name: &str) -> bool {
        let snapshot = self.read();
        snapshot.routes.contains_key(name)
            || (config::check_route_name(name).is_ok()
                && config::best_pattern(&snapshot.patterns, name).is_some())
    }

    /// The demand of on-demand route `name`, if it is one.
    pub fn demand(&self, name: &str) -> Option<Arc<Demand>> {
        self.read().demands.get(name).cloned()
    }

    /// The hub of route `name` for a reader from `asker` about to read it: an on-demand route's
    /// source starts (or keeps running), and a name that only a pattern matches becomes a route,
    /// within the caps on such routes.
    pub async fn open(&self, name: &str, asker: IpAddr) -> Result<Arc<Stream>, RouterError> {
        let no_route = || RouterError::NoRoute(name.to_owned());
        {
            let snapshot = self.read();
            let stream = snapshot.routes.get(name);
            match (stream, snapshot.demands.get(name)) {
                (Some(stream), None) => return Ok(Arc::clone(stream)),
                (Some(stream), Some(demand)) if demand.running() => {
                    demand.ask();
                    return Ok(Arc::clone(stream));
                }
                (None, _) if config::best_pattern(&snapshot.patterns, name).is_none() => {
                    return Err(no_route());
                }
                _ => {}
            }
        }
        let (done, reply) = oneshot::channel();
        let open = Command::Open {
            name: name.to_owned(),
            asker: AddressKey::of(asker),
            done,
        };
        self.commands.send(open).await.map_err(|_| no_route())?;
        reply.await.map_err(|_| no_route())?
    }

    /// The plugins running on `route`, with their counters.
    pub fn plugins(&self, route: &str) -> Vec<PluginStatus> {
        self.read()
            .stages
            .get(route)
            .map(Stage::status)
            .unwrap_or_default()
    }

    /// Counters of `route`'s frame path, once it has a pipeline.
    pub fn transcode_stats(&self, route: &str) -> Option<Arc<TranscodeStats>> {
        self.read()
            .stages
            .get(route)
            .map(|s| Arc::clone(s.transcode_stats()))
    }

    /// Every route, by name.
    pub fn streams(&self) -> RouteMap {
        Arc::clone(&self.read().routes)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Snapshot> {
        self.snapshot.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the running routes match `routes` and `patterns`, whose chains name `plugins`,
    /// touching only those that differ.
    pub async fn apply(
        &self,
        routes: BTreeMap<String, RouteConfig>,
        patterns: BTreeMap<String, PatternConfig>,
        plugins: Plugins,
    ) -> Changes {
        let (done, reply) = oneshot::channel();
        if self
            .commands
            .send(Command::Apply {
                routes,
                patterns,
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
