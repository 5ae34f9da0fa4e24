//! The route map: for each route, its source, its pipeline and its hub, wired together.
//!
//! One actor task owns the map of routes and their running sources; a cloneable [`RouterHandle`]
//! applies new route sets to it and looks routes up. Lookups read a snapshot the actor publishes, so
//! the RTSP and HTTP servers never wait on the actor.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, oneshot};

use crate::auth::Policy;
use crate::config::{MemoryBudget, RouteConfig, SourceConfig};
use crate::hub::Stream;
use crate::pipeline::{Stage, TranscodeStats};
use crate::plugins::{LoadedPlugin, PluginStatus, Plugins};
use crate::sources::{self, RunningSource};

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

    /// The rules of route `name` (who may connect, read, publish), if it exists.
    pub fn policy(&self, name: &str) -> Option<Arc<Policy>> {
        self.read().policies.get(name).cloned()
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
    /// From the first time the route has plugins or re-encodes.
    stage: Option<Stage>,
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
                        set_processing(route, &chain, config.transcode.clone());
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
            // The pipeline comes first, so that the source's first unit goes through it.
            let stage = (!chain.is_empty() || config.transcode.is_some()).then(|| {
                let stage = Stage::attach(&stream);
                stage.set_processing(&chain, config.transcode.clone());
                stage
            });
            let source = sources::start(&config.source, Arc::clone(&stream));
            self.routes.insert(
                name.clone(),
                RunningRoute {
                    config,
                    chain,
                    stream,
                    stage,
                    _source: source,
                },
            );
            changes.added.push(name);
        }
        let mut snapshot = Snapshot::default();
        let mut routes = BTreeMap::new();
        for (name, route) in &self.routes {
            routes.insert(name.clone(), Arc::clone(&route.stream));
            if let Some(stage) = &route.stage {
                snapshot.stages.insert(name.clone(), stage.clone());
            }
            snapshot
                .policies
                .insert(name.clone(), Arc::new(Policy::of(&route.config)));
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

/// Gives `route` its `chain` and `transcode` settings, attaching a pipeline the first time it has
/// something to do.
fn set_processing(
    route: &mut RunningRoute,
    chain: &[Arc<LoadedPlugin>],
    transcode: Option<crate::config::TranscodeConfig>,
) {
    if chain.is_empty() && transcode.is_none() && route.stage.is_none() {
        return;
    }
    route
        .stage
        .get_or_insert_with(|| Stage::attach(&route.stream))
        .set_processing(chain, transcode);
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
